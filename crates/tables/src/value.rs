//! DynamoDB's attribute values (docs/tables.md, "Values").
//!
//! - Numbers are exact decimals ([`Number`]): up to 38 significant digits, magnitudes
//!   from 1E-130 to below 1E+126, as DynamoDB stores them; never a float.
//! - Sets are kept sorted and without duplicates (DynamoDB's sets have no order;
//!   a set sent with a duplicate is refused, as DynamoDB refuses it).
//! - [`AttributeValue::from_json`] / [`AttributeValue::to_json`] read and write the
//!   wire form (`{"S": "x"}`, `{"N": "1.5"}`, `{"B": "<base64>"}`, …).
//! - [`key_bytes`] encodes a key value so that byte order is DynamoDB's order (S by
//!   UTF-8 bytes, N numerically, B by bytes): the store sorts range keys with it.

use base64::Engine as _;
use serde_json::{Map, Value};
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

pub type Item = BTreeMap<String, AttributeValue>;

/// The largest item DynamoDB stores: 400 KB, names included.
pub const MAX_ITEM_BYTES: usize = 400 * 1024;
/// The largest partition (hash) key value.
pub const MAX_HASH_KEY_BYTES: usize = 2048;
/// The largest sort (range) key value.
pub const MAX_RANGE_KEY_BYTES: usize = 1024;
/// The most significant digits of a number.
pub const MAX_DIGITS: usize = 38;

/// A value that does not fit DynamoDB's rules; the message is DynamoDB's
/// ValidationException text (or as close as the case allows).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValueError(pub String);

fn invalid(msg: impl Into<String>) -> ValueError {
    ValueError(msg.into())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttributeValue {
    S(String),
    N(Number),
    B(Vec<u8>),
    Bool(bool),
    Null,
    M(BTreeMap<String, AttributeValue>),
    L(Vec<AttributeValue>),
    Ss(Vec<String>),
    Ns(Vec<Number>),
    Bs(Vec<Vec<u8>>),
}

/// The type of a value, as DynamoDB names it (`S`, `N`, `SS`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ValueType {
    S,
    N,
    B,
    Bool,
    Null,
    M,
    L,
    Ss,
    Ns,
    Bs,
}

impl ValueType {
    pub fn name(self) -> &'static str {
        match self {
            ValueType::S => "S",
            ValueType::N => "N",
            ValueType::B => "B",
            ValueType::Bool => "BOOL",
            ValueType::Null => "NULL",
            ValueType::M => "M",
            ValueType::L => "L",
            ValueType::Ss => "SS",
            ValueType::Ns => "NS",
            ValueType::Bs => "BS",
        }
    }

    pub fn parse(s: &str) -> Option<ValueType> {
        Some(match s {
            "S" => ValueType::S,
            "N" => ValueType::N,
            "B" => ValueType::B,
            "BOOL" => ValueType::Bool,
            "NULL" => ValueType::Null,
            "M" => ValueType::M,
            "L" => ValueType::L,
            "SS" => ValueType::Ss,
            "NS" => ValueType::Ns,
            "BS" => ValueType::Bs,
            _ => return None,
        })
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

impl AttributeValue {
    pub fn value_type(&self) -> ValueType {
        match self {
            AttributeValue::S(_) => ValueType::S,
            AttributeValue::N(_) => ValueType::N,
            AttributeValue::B(_) => ValueType::B,
            AttributeValue::Bool(_) => ValueType::Bool,
            AttributeValue::Null => ValueType::Null,
            AttributeValue::M(_) => ValueType::M,
            AttributeValue::L(_) => ValueType::L,
            AttributeValue::Ss(_) => ValueType::Ss,
            AttributeValue::Ns(_) => ValueType::Ns,
            AttributeValue::Bs(_) => ValueType::Bs,
        }
    }

    /// A string set, sorted; a duplicate or an empty set is refused.
    pub fn string_set(mut v: Vec<String>) -> Result<AttributeValue, ValueError> {
        v.sort();
        check_set(&v, "string")?;
        Ok(AttributeValue::Ss(v))
    }

    pub fn number_set(mut v: Vec<Number>) -> Result<AttributeValue, ValueError> {
        v.sort();
        check_set(&v, "number")?;
        Ok(AttributeValue::Ns(v))
    }

    pub fn binary_set(mut v: Vec<Vec<u8>>) -> Result<AttributeValue, ValueError> {
        v.sort();
        check_set(&v, "binary")?;
        Ok(AttributeValue::Bs(v))
    }

    /// Read the wire form: an object with exactly one type key.
    pub fn from_json(v: &Value) -> Result<AttributeValue, ValueError> {
        let Some(obj) = v.as_object() else {
            return Err(invalid(format!(
                "Supplied AttributeValue is not an object: {v}"
            )));
        };
        if obj.len() != 1 {
            return Err(invalid(
                "Supplied AttributeValue has more than one datatypes set, must contain exactly one of the supported datatypes",
            ));
        }
        let Some((ty, inner)) = obj.iter().next() else {
            return Err(invalid(
                "Supplied AttributeValue is empty, must contain exactly one of the supported datatypes",
            ));
        };
        let string = |what: &str| {
            inner
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| invalid(format!("{what} attribute value must be a string: {inner}")))
        };
        let list = |what: &str| {
            inner
                .as_array()
                .ok_or_else(|| invalid(format!("{what} attribute value must be a list: {inner}")))
        };
        let binary = |s: &Value| -> Result<Vec<u8>, ValueError> {
            let s = s
                .as_str()
                .ok_or_else(|| invalid(format!("B attribute value must be base64 text: {s}")))?;
            b64()
                .decode(s)
                .map_err(|e| invalid(format!("B attribute value is not valid base64 ({e})")))
        };
        Ok(match ty.as_str() {
            "S" => AttributeValue::S(string("S")?),
            "N" => AttributeValue::N(Number::parse(&string("N")?)?),
            "B" => AttributeValue::B(binary(inner)?),
            "BOOL" => AttributeValue::Bool(inner.as_bool().ok_or_else(|| {
                invalid(format!(
                    "BOOL attribute value must be true or false: {inner}"
                ))
            })?),
            "NULL" => {
                if inner.as_bool() != Some(true) {
                    return Err(invalid(
                        "One or more parameter values were invalid: Null attribute value types must have the value of true",
                    ));
                }
                AttributeValue::Null
            }
            "M" => {
                let m = inner
                    .as_object()
                    .ok_or_else(|| invalid(format!("M attribute value must be a map: {inner}")))?;
                let mut out = BTreeMap::new();
                for (k, v) in m {
                    out.insert(k.clone(), AttributeValue::from_json(v)?);
                }
                AttributeValue::M(out)
            }
            "L" => AttributeValue::L(
                list("L")?
                    .iter()
                    .map(AttributeValue::from_json)
                    .collect::<Result<_, _>>()?,
            ),
            "SS" => AttributeValue::string_set(
                list("SS")?
                    .iter()
                    .map(|s| {
                        s.as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| invalid(format!("SS members must be strings: {s}")))
                    })
                    .collect::<Result<_, _>>()?,
            )?,
            "NS" => AttributeValue::number_set(
                list("NS")?
                    .iter()
                    .map(|s| {
                        s.as_str()
                            .ok_or_else(|| invalid(format!("NS members must be strings: {s}")))
                            .and_then(Number::parse)
                    })
                    .collect::<Result<_, _>>()?,
            )?,
            "BS" => AttributeValue::binary_set(
                list("BS")?.iter().map(binary).collect::<Result<_, _>>()?,
            )?,
            other => {
                return Err(invalid(format!(
                    "Supplied AttributeValue has an unknown datatype {other:?}; the supported ones are S, N, B, BOOL, NULL, M, L, SS, NS, BS"
                )));
            }
        })
    }

    pub fn to_json(&self) -> Value {
        let (k, v) = match self {
            AttributeValue::S(s) => ("S", Value::String(s.clone())),
            AttributeValue::N(n) => ("N", Value::String(n.to_string())),
            AttributeValue::B(b) => ("B", Value::String(b64().encode(b))),
            AttributeValue::Bool(b) => ("BOOL", Value::Bool(*b)),
            AttributeValue::Null => ("NULL", Value::Bool(true)),
            AttributeValue::M(m) => (
                "M",
                Value::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
            ),
            AttributeValue::L(l) => ("L", Value::Array(l.iter().map(|v| v.to_json()).collect())),
            AttributeValue::Ss(s) => (
                "SS",
                Value::Array(s.iter().cloned().map(Value::String).collect()),
            ),
            AttributeValue::Ns(s) => (
                "NS",
                Value::Array(s.iter().map(|n| Value::String(n.to_string())).collect()),
            ),
            AttributeValue::Bs(s) => (
                "BS",
                Value::Array(s.iter().map(|b| Value::String(b64().encode(b))).collect()),
            ),
        };
        let mut m = Map::new();
        m.insert(k.to_owned(), v);
        Value::Object(m)
    }

    /// The bytes this value counts for in an item's size (DynamoDB's rules:
    /// strings and binaries their length, numbers about one byte per two digits
    /// plus one, booleans and nulls one, maps and lists three plus one per element
    /// plus their contents).
    pub fn size(&self) -> usize {
        match self {
            AttributeValue::S(s) => s.len(),
            AttributeValue::N(n) => n.size(),
            AttributeValue::B(b) => b.len(),
            AttributeValue::Bool(_) | AttributeValue::Null => 1,
            AttributeValue::M(m) => {
                3 + m.iter().map(|(k, v)| k.len() + v.size() + 1).sum::<usize>()
            }
            AttributeValue::L(l) => 3 + l.iter().map(|v| v.size() + 1).sum::<usize>(),
            AttributeValue::Ss(s) => s.iter().map(String::len).sum(),
            AttributeValue::Ns(s) => s.iter().map(Number::size).sum(),
            AttributeValue::Bs(s) => s.iter().map(Vec::len).sum(),
        }
    }
}

fn check_set<T: PartialEq>(sorted: &[T], what: &str) -> Result<(), ValueError> {
    if sorted.is_empty() {
        return Err(invalid(format!(
            "One or more parameter values were invalid: An {what} set  may not be empty"
        )));
    }
    if sorted.windows(2).any(|w| w[0] == w[1]) {
        return Err(invalid("Input collection contains duplicates"));
    }
    Ok(())
}

/// An item's size by DynamoDB's rules: each attribute's name and value.
pub fn item_size(item: &Item) -> usize {
    item.iter().map(|(k, v)| k.len() + v.size()).sum()
}

/// Read an item (`{"name": {"S": "x"}, …}`).
pub fn item_from_json(v: &Value) -> Result<Item, ValueError> {
    let Some(obj) = v.as_object() else {
        return Err(invalid(format!(
            "an item must be a map of attribute names to values: {v}"
        )));
    };
    obj.iter()
        .map(|(k, v)| Ok((k.clone(), AttributeValue::from_json(v)?)))
        .collect()
}

pub fn item_to_json(item: &Item) -> Value {
    Value::Object(item.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
}

/// A DynamoDB number: an exact decimal `±0.d1d2…dn × 10^exp`, `digits` without
/// leading or trailing zeros (empty for zero, which has no sign).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Number {
    neg: bool,
    digits: Vec<u8>,
    exp: i32,
}

impl fmt::Debug for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "N({self})")
    }
}

impl Number {
    pub fn zero() -> Number {
        Number {
            neg: false,
            digits: Vec::new(),
            exp: 0,
        }
    }

    pub fn is_zero(&self) -> bool {
        self.digits.is_empty()
    }

    /// Parse DynamoDB's number text: `[+-]digits[.digits][e[+-]digits]`, checked
    /// against 38 significant digits and the magnitudes DynamoDB stores.
    pub fn parse(s: &str) -> Result<Number, ValueError> {
        let bad = || {
            invalid(format!(
                "The parameter cannot be converted to a numeric value: {s}"
            ))
        };
        let t = s.trim();
        if t.is_empty() || t.len() > 1000 {
            return Err(bad());
        }
        let (neg, rest) = match t.as_bytes()[0] {
            b'-' => (true, &t[1..]),
            b'+' => (false, &t[1..]),
            _ => (false, t),
        };
        let (mantissa, e) = match rest.find(['e', 'E']) {
            Some(i) => {
                let e: i64 = rest[i + 1..].parse().map_err(|_| bad())?;
                (&rest[..i], e)
            }
            None => (rest, 0),
        };
        let (int, frac) = match mantissa.split_once('.') {
            Some((i, f)) => (i, f),
            None => (mantissa, ""),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(bad());
        }
        if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let all: Vec<u8> = int.bytes().chain(frac.bytes()).map(|b| b - b'0').collect();
        // value = 0.all × 10^(int.len() + e)
        let exp = i64::try_from(int.len()).map_err(|_| bad())? + e;
        let lead = all.iter().take_while(|d| **d == 0).count();
        let exp = exp - i64::try_from(lead).map_err(|_| bad())?;
        let mut digits = all[lead..].to_vec();
        while digits.last() == Some(&0) {
            digits.pop();
        }
        if digits.is_empty() {
            return Ok(Number::zero());
        }
        let exp = i32::try_from(exp).map_err(|_| bad())?;
        Number::checked(neg, digits, exp)
    }

    /// Check the limits of a normalized (sign, digits, exponent).
    fn checked(neg: bool, digits: Vec<u8>, exp: i32) -> Result<Number, ValueError> {
        if digits.is_empty() {
            return Ok(Number::zero());
        }
        if digits.len() > MAX_DIGITS {
            return Err(invalid(
                "Attempting to store more than 38 significant digits in a Number",
            ));
        }
        // 0.d × 10^exp < 10^126  ⇔  exp ≤ 126;  ≥ 10^-130  ⇔  exp ≥ -129.
        if exp > 126 {
            return Err(invalid(
                "Number overflow. Attempting to store a number with magnitude larger than supported range",
            ));
        }
        if exp < -129 {
            return Err(invalid(
                "Number underflow. Attempting to store a number with magnitude smaller than supported range",
            ));
        }
        Ok(Number { neg, digits, exp })
    }

    fn size(&self) -> usize {
        self.digits.len().div_ceil(2) + 1
    }

    /// The value as an integer of digits times a power of ten: (digits, scale).
    fn scaled(&self) -> (Vec<u8>, i64) {
        (
            self.digits.clone(),
            i64::from(self.exp) - self.digits.len() as i64,
        )
    }

    pub fn add(&self, other: &Number) -> Result<Number, ValueError> {
        if self.is_zero() {
            return Ok(other.clone());
        }
        if other.is_zero() {
            return Ok(self.clone());
        }
        let (mut a, sa) = self.scaled();
        let (mut b, sb) = other.scaled();
        let scale = sa.min(sb);
        a.extend(std::iter::repeat_n(0, (sa - scale) as usize));
        b.extend(std::iter::repeat_n(0, (sb - scale) as usize));
        let (neg, mag) = if self.neg == other.neg {
            (self.neg, add_mag(&a, &b))
        } else {
            match cmp_mag(&a, &b) {
                Ordering::Equal => return Ok(Number::zero()),
                Ordering::Greater => (self.neg, sub_mag(&a, &b)),
                Ordering::Less => (other.neg, sub_mag(&b, &a)),
            }
        };
        Number::from_scaled(neg, mag, scale)
    }

    pub fn sub(&self, other: &Number) -> Result<Number, ValueError> {
        self.add(&other.negated())
    }

    pub fn negated(&self) -> Number {
        let mut n = self.clone();
        if !n.is_zero() {
            n.neg = !n.neg;
        }
        n
    }

    fn from_scaled(neg: bool, mag: Vec<u8>, scale: i64) -> Result<Number, ValueError> {
        let lead = mag.iter().take_while(|d| **d == 0).count();
        let mut digits = mag[lead..].to_vec();
        let exp = scale + digits.len() as i64;
        while digits.last() == Some(&0) {
            digits.pop();
        }
        let exp = i32::try_from(exp).map_err(|_| {
            invalid("Number overflow. Attempting to store a number with magnitude larger than supported range")
        })?;
        Number::checked(neg, digits, exp)
    }

    /// The value as an i64 if it is an integer that fits (for Segment, Limit, …).
    pub fn to_i64(&self) -> Option<i64> {
        if self.is_zero() {
            return Some(0);
        }
        if self.exp < self.digits.len() as i32 || self.exp > 19 {
            return None;
        }
        let mut v: i64 = 0;
        for i in 0..self.exp as usize {
            let d = i64::from(self.digits.get(i).copied().unwrap_or(0));
            v = v.checked_mul(10)?.checked_add(d)?;
        }
        Some(if self.neg { -v } else { v })
    }

    pub fn from_i64(v: i64) -> Number {
        // Always within the limits: 19 digits, exponent ≤ 19.
        Number::parse(&v.to_string()).unwrap_or_else(|_| Number::zero())
    }
}

fn cmp_mag(a: &[u8], b: &[u8]) -> Ordering {
    let a = &a[a.iter().take_while(|d| **d == 0).count()..];
    let b = &b[b.iter().take_while(|d| **d == 0).count()..];
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn add_mag(a: &[u8], b: &[u8]) -> Vec<u8> {
    let n = a.len().max(b.len());
    let mut out = vec![0u8; n + 1];
    let mut carry = 0u8;
    for i in 0..n {
        let da = if i < a.len() { a[a.len() - 1 - i] } else { 0 };
        let db = if i < b.len() { b[b.len() - 1 - i] } else { 0 };
        let s = da + db + carry;
        out[n - i] = s % 10;
        carry = s / 10;
    }
    out[0] = carry;
    out
}

/// a − b for a ≥ b.
fn sub_mag(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = a.to_vec();
    let mut borrow = 0i8;
    for i in 0..a.len() {
        let da = a[a.len() - 1 - i] as i8;
        let db = if i < b.len() {
            b[b.len() - 1 - i] as i8
        } else {
            0
        };
        let mut d = da - db - borrow;
        borrow = 0;
        if d < 0 {
            d += 10;
            borrow = 1;
        }
        out[a.len() - 1 - i] = d as u8;
    }
    out
}

impl Ord for Number {
    fn cmp(&self, other: &Number) -> Ordering {
        let sign = |n: &Number| {
            if n.is_zero() {
                0
            } else if n.neg {
                -1
            } else {
                1
            }
        };
        let (a, b) = (sign(self), sign(other));
        if a != b || a == 0 {
            return a.cmp(&b);
        }
        let mag = self
            .exp
            .cmp(&other.exp)
            .then_with(|| self.digits.cmp(&other.digits));
        if a < 0 { mag.reverse() } else { mag }
    }
}

impl PartialOrd for Number {
    fn partial_cmp(&self, other: &Number) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_zero() {
            return f.write_str("0");
        }
        let digits: String = self.digits.iter().map(|d| char::from(b'0' + d)).collect();
        if self.neg {
            f.write_str("-")?;
        }
        let n = self.digits.len() as i32;
        if self.exp <= 0 {
            write!(f, "0.{}{digits}", "0".repeat((-self.exp) as usize))
        } else if self.exp >= n {
            write!(f, "{digits}{}", "0".repeat((self.exp - n) as usize))
        } else {
            let (i, fr) = digits.split_at(self.exp as usize);
            write!(f, "{i}.{fr}")
        }
    }
}

/// A key value's bytes in DynamoDB's order: S its UTF-8, B itself, N an encoding
/// whose byte order is numeric order (sign class, then the exponent and the
/// digits, inverted for negatives and closed by 0xFF so that a longer negative
/// sorts first). `None` for a type that cannot be a key.
pub fn key_bytes(v: &AttributeValue) -> Option<Vec<u8>> {
    match v {
        AttributeValue::S(s) => Some(s.as_bytes().to_vec()),
        AttributeValue::B(b) => Some(b.clone()),
        AttributeValue::N(n) => {
            if n.is_zero() {
                return Some(vec![1]);
            }
            let biased = u16::try_from(n.exp + 1000).unwrap_or(0);
            let mut out = Vec::with_capacity(n.digits.len() + 4);
            if n.neg {
                out.push(0);
                out.extend((u16::MAX - biased).to_be_bytes());
                out.extend(n.digits.iter().map(|d| 9 - d));
                out.push(0xFF);
            } else {
                out.push(2);
                out.extend(biased.to_be_bytes());
                out.extend(n.digits.iter().copied());
            }
            Some(out)
        }
        _ => None,
    }
}

/// The inverse of [`key_bytes`] for a key of type `ty` (S, N or B).
pub fn key_from_bytes(ty: ValueType, b: &[u8]) -> Option<AttributeValue> {
    match ty {
        ValueType::S => String::from_utf8(b.to_vec()).ok().map(AttributeValue::S),
        ValueType::B => Some(AttributeValue::B(b.to_vec())),
        ValueType::N => {
            let (&class, rest) = b.split_first()?;
            match class {
                1 => Some(AttributeValue::N(Number::zero())),
                2 if rest.len() >= 3 => {
                    let biased = u16::from_be_bytes([rest[0], rest[1]]);
                    Some(AttributeValue::N(Number {
                        neg: false,
                        digits: rest[2..].to_vec(),
                        exp: i32::from(biased) - 1000,
                    }))
                }
                0 if rest.len() >= 4 => {
                    let biased = u16::MAX - u16::from_be_bytes([rest[0], rest[1]]);
                    let body = &rest[2..rest.len() - 1];
                    Some(AttributeValue::N(Number {
                        neg: true,
                        digits: body.iter().map(|d| 9 - d).collect(),
                        exp: i32::from(biased) - 1000,
                    }))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn n(s: &str) -> Number {
        Number::parse(s).unwrap()
    }

    #[test]
    fn numbers_are_exact_and_normalized() {
        for (input, shown) in [
            ("0", "0"),
            ("-0", "0"),
            ("0.000", "0"),
            ("1.50", "1.5"),
            ("007", "7"),
            ("+3", "3"),
            ("-12.3400", "-12.34"),
            ("1e3", "1000"),
            ("1.25E-2", "0.0125"),
            (".5", "0.5"),
            ("5.", "5"),
            (
                "12345678901234567890123456789012345678",
                "12345678901234567890123456789012345678",
            ),
        ] {
            assert_eq!(n(input).to_string(), shown, "{input}");
        }
        assert_eq!(n("0.1").add(&n("0.2")).unwrap().to_string(), "0.3");
        assert_eq!(n("-5").add(&n("3")).unwrap().to_string(), "-2");
        assert_eq!(n("10").sub(&n("10")).unwrap().to_string(), "0");
        assert_eq!(
            n("1e20").add(&n("1")).unwrap().to_string(),
            "100000000000000000001"
        );
        assert_eq!(n("99.9").add(&n("0.1")).unwrap().to_string(), "100");
        assert_eq!(n("-0.5").sub(&n("0.25")).unwrap().to_string(), "-0.75");
    }

    #[test]
    fn numbers_out_of_dynamodbs_range_are_refused_with_its_message() {
        for bad in ["", "abc", "1..2", "1e", "--1", "1-", "e5", "0x10", "1,5"] {
            let e = Number::parse(bad).unwrap_err();
            assert!(
                e.0.contains("cannot be converted to a numeric value"),
                "{bad}: {e}"
            );
        }
        assert!(
            Number::parse("123456789012345678901234567890123456789")
                .unwrap_err()
                .0
                .contains("38 significant digits")
        );
        assert!(Number::parse("1e126").unwrap_err().0.contains("overflow"));
        assert!(Number::parse("9.9999999999999999999999999999999999999E+125").is_ok());
        assert!(Number::parse("1e-130").is_ok());
        assert!(Number::parse("1e-131").unwrap_err().0.contains("underflow"));
        // 1e38 + 1 needs 39 digits.
        assert!(
            n("1e38")
                .add(&n("1"))
                .unwrap_err()
                .0
                .contains("38 significant digits")
        );
    }

    #[test]
    fn numbers_order_numerically_and_so_do_their_key_bytes() {
        let mut values: Vec<Number> = [
            "-1e10", "-100", "-12.5", "-12.34", "-12.3", "-1", "-0.001", "0", "0.001", "0.1", "1",
            "1.5", "2", "9.99", "10", "12.3", "12.34", "100", "1e10", "1e125",
        ]
        .iter()
        .map(|s| n(s))
        .collect();
        let sorted = values.clone();
        values.reverse();
        values.sort();
        assert_eq!(values, sorted);
        let bytes: Vec<Vec<u8>> = sorted
            .iter()
            .map(|v| key_bytes(&AttributeValue::N(v.clone())).unwrap())
            .collect();
        for w in bytes.windows(2) {
            assert!(w[0] < w[1], "{w:?}");
        }
        for v in &sorted {
            let b = key_bytes(&AttributeValue::N(v.clone())).unwrap();
            assert_eq!(
                key_from_bytes(ValueType::N, &b),
                Some(AttributeValue::N(v.clone()))
            );
        }
    }

    #[test]
    fn the_wire_form_round_trips_and_bad_shapes_say_what_is_wrong() {
        let j = serde_json::json!({
            "s": {"S": "x"}, "n": {"N": "1.50"}, "b": {"B": "AAEC"}, "t": {"BOOL": true},
            "z": {"NULL": true}, "m": {"M": {"k": {"S": ""}}}, "l": {"L": [{"N": "1"}, {"S": "a"}]},
            "ss": {"SS": ["b", "a"]}, "ns": {"NS": ["2", "10"]}, "bs": {"BS": ["AQ=="]}
        });
        let item = item_from_json(&j).unwrap();
        assert_eq!(item["n"], AttributeValue::N(n("1.5")));
        assert_eq!(item["b"], AttributeValue::B(vec![0, 1, 2]));
        assert_eq!(item["ss"], AttributeValue::Ss(vec!["a".into(), "b".into()]));
        assert_eq!(item_from_json(&item_to_json(&item)).unwrap(), item);
        let e = AttributeValue::from_json(&serde_json::json!({"SS": ["a", "a"]})).unwrap_err();
        assert!(e.0.contains("duplicates"), "{e}");
        let e = AttributeValue::from_json(&serde_json::json!({"S": "a", "N": "1"})).unwrap_err();
        assert!(e.0.contains("more than one datatypes"), "{e}");
        let e = AttributeValue::from_json(&serde_json::json!({"NULL": false})).unwrap_err();
        assert!(e.0.contains("must have the value of true"), "{e}");
        let e = AttributeValue::from_json(&serde_json::json!({"X": 1})).unwrap_err();
        assert!(e.0.contains("unknown datatype"), "{e}");
        let e = AttributeValue::from_json(&serde_json::json!({"SS": []})).unwrap_err();
        assert!(e.0.contains("may not be empty"), "{e}");
    }

    #[test]
    fn item_size_counts_names_and_values() {
        let item =
            item_from_json(&serde_json::json!({"id": {"S": "abc"}, "n": {"N": "12345"}})).unwrap();
        assert_eq!(item_size(&item), 2 + 3 + 1 + 4);
    }
}
