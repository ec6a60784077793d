//! Condition and filter expressions: resolution of the raw tree and evaluation.
//!
//! Evaluation follows DynamoDB: a missing attribute, or operands of different types,
//! make a comparison false (never an error) — except `<>`, which is true whenever `=`
//! is not; ordering (`< <= > >= BETWEEN`) is defined on S (UTF-8 bytes), N
//! (numerically) and B (bytes) only. Constants of a type that cannot work (`a < :list`,
//! `begins_with(a, :number)`) are refused when the expression is parsed.

use super::resolve::{Local, Resolver, note};
use super::syntax::{self, CmpOp, RawCall, RawCond, RawOperand};
use super::{ExprError, MAX_IN_OPERANDS, Names, Path, Used, Values, type_name};
use crate::value::{AttributeValue, Item, Number, ValueType};
use std::borrow::Cow;
use std::cmp::Ordering;

/// A parsed condition or filter expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub(super) root: Cond,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Operand {
    Path(Path),
    Value(AttributeValue),
    Size(Box<Operand>),
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Cond {
    Cmp(CmpOp, Operand, Operand),
    Between(Operand, Operand, Operand),
    In(Operand, Vec<Operand>),
    Exists(Path),
    NotExists(Path),
    Type(Operand, ValueType),
    BeginsWith(Operand, Operand),
    Contains(Operand, Operand),
    And(Vec<Cond>),
    Or(Vec<Cond>),
    Not(Box<Cond>),
}

/// Parse a condition (`kind` is "ConditionExpression" or "FilterExpression", and
/// names the expression in messages).
pub fn parse_condition(
    text: &str,
    kind: &str,
    names: &Names,
    values: &Values,
    used: &mut Used,
) -> Result<Condition, ExprError> {
    let raw = syntax::parse_condition(text, kind)?;
    let mut r = Resolver::new(kind, names, values);
    let root = resolve_cond(&mut r, &raw);
    r.finish(used)?;
    Ok(Condition { root })
}

impl Condition {
    /// Whether `item` satisfies the condition (an absent item is an empty one).
    pub fn eval(&self, item: &Item) -> Result<bool, ExprError> {
        Ok(self.root.eval(item))
    }
}

const CONDITION_FUNCTIONS: &[&str] = &[
    "attribute_exists",
    "attribute_not_exists",
    "attribute_type",
    "begins_with",
    "contains",
];
const UPDATE_FUNCTIONS: &[&str] = &["if_not_exists", "list_append"];
const TYPE_NAMES: &str = "{B,NULL,SS,BOOL,L,BS,N,NS,S,M}";

/// A placeholder for a part that failed to resolve (the result is discarded).
fn dummy() -> Cond {
    Cond::And(Vec::new())
}

fn resolve_cond(r: &mut Resolver<'_>, raw: &RawCond) -> Cond {
    match raw {
        RawCond::Group(inner) => {
            if matches!(**inner, RawCond::Group(_)) {
                note(&mut r.parens, "The expression has redundant parentheses;");
            }
            resolve_cond(r, inner)
        }
        RawCond::And(terms) => Cond::And(terms.iter().map(|t| resolve_cond(r, t)).collect()),
        RawCond::Or(terms) => Cond::Or(terms.iter().map(|t| resolve_cond(r, t)).collect()),
        RawCond::Not(inner) => Cond::Not(Box::new(resolve_cond(r, inner))),
        RawCond::Cmp(op, a, b) => {
            let mut local = Local::default();
            let a = resolve_operand(r, a, &mut local);
            let b = resolve_operand(r, b, &mut local);
            check_distinct(op.symbol(), &a, &b, &mut local);
            if !matches!(op, CmpOp::Eq | CmpOp::Ne) {
                check_orderable(op.symbol(), &[&a, &b], &mut local);
            }
            r.commit(local);
            Cond::Cmp(*op, a, b)
        }
        RawCond::Between(a, low, high) => {
            let mut local = Local::default();
            let a = resolve_operand(r, a, &mut local);
            let low = resolve_operand(r, low, &mut local);
            let high = resolve_operand(r, high, &mut local);
            check_orderable("BETWEEN", &[&a, &low, &high], &mut local);
            if let (Operand::Value(lo), Operand::Value(hi)) = (&low, &high) {
                check_bounds(lo, hi, &mut local);
            }
            r.commit(local);
            Cond::Between(a, low, high)
        }
        RawCond::In(a, list) => {
            let mut local = Local::default();
            let a = resolve_operand(r, a, &mut local);
            let list: Vec<Operand> = list
                .iter()
                .map(|o| resolve_operand(r, o, &mut local))
                .collect();
            if list.len() + 1 > MAX_IN_OPERANDS {
                note(
                    &mut local.operands,
                    format!(
                        "The IN operator is provided with too many operands; number of operands: {}",
                        list.len() + 1
                    ),
                );
            }
            r.commit(local);
            Cond::In(a, list)
        }
        RawCond::Call(call) => resolve_condition_call(r, call),
    }
}

fn resolve_operand(r: &mut Resolver<'_>, raw: &RawOperand, local: &mut Local) -> Operand {
    match raw {
        RawOperand::Path(p) => Operand::Path(r.path(p, local)),
        RawOperand::Value(v) => Operand::Value(r.value(v, local)),
        RawOperand::Paren(inner) => {
            if matches!(**inner, RawOperand::Paren(_)) {
                note(&mut r.parens, "The expression has redundant parentheses;");
            }
            resolve_operand(r, inner, local)
        }
        RawOperand::Call(call) => {
            let args: Vec<Operand> = call
                .args
                .iter()
                .map(|a| resolve_operand(r, a, local))
                .collect();
            let name = call.name.as_str();
            if name == "size" {
                if let [arg] = args.as_slice() {
                    if let Some(t) = static_type(arg)
                        .filter(|t| matches!(t, ValueType::N | ValueType::Bool | ValueType::Null))
                    {
                        note(&mut local.types, operand_type("size", t.name()));
                    }
                } else {
                    note(&mut local.operands, operand_count("size", args.len()));
                }
                return Operand::Size(Box::new(
                    args.into_iter()
                        .next()
                        .unwrap_or(Operand::Value(AttributeValue::Null)),
                ));
            }
            misplaced_function(r, name, false);
            Operand::Value(AttributeValue::Null)
        }
    }
}

/// A function where it cannot be: a boolean one as an operand (`as_condition`
/// false), `size` as a condition, an update function, or an unknown one.
fn misplaced_function(r: &mut Resolver<'_>, name: &str, as_condition: bool) {
    if CONDITION_FUNCTIONS.contains(&name) || (as_condition && name == "size") {
        note(
            &mut r.misused_function,
            format!(
                "The function is not allowed to be used this way in an expression; function: {name}"
            ),
        );
    } else if UPDATE_FUNCTIONS.contains(&name) {
        note(
            &mut r.misused_function,
            format!("The function is not allowed in a condition expression; function: {name}"),
        );
    } else {
        note(
            &mut r.unknown_function,
            format!("Invalid function name; function: {name}"),
        );
    }
}

fn resolve_condition_call(r: &mut Resolver<'_>, call: &RawCall) -> Cond {
    let name = call.name.as_str();
    if !CONDITION_FUNCTIONS.contains(&name) {
        misplaced_function(r, name, true);
        return dummy();
    }
    let mut local = Local::default();
    let args: Vec<Operand> = call
        .args
        .iter()
        .map(|a| resolve_operand(r, a, &mut local))
        .collect();
    let want = if name.starts_with("attribute_") && name != "attribute_type" {
        1
    } else {
        2
    };
    let cond = match args.as_slice() {
        [arg] if want == 1 => match arg {
            Operand::Path(p) if name == "attribute_exists" => Cond::Exists(p.clone()),
            Operand::Path(p) => Cond::NotExists(p.clone()),
            _ => {
                note(
                    &mut local.types,
                    format!(
                        "Operator or function requires a document path; operator or function: {name}"
                    ),
                );
                dummy()
            }
        },
        [a, b] if want == 2 => {
            check_distinct(name, a, b, &mut local);
            match name {
                "attribute_type" => match b {
                    Operand::Value(AttributeValue::S(t)) => match ValueType::parse(t) {
                        Some(t) => Cond::Type(a.clone(), t),
                        None => {
                            note(
                                &mut local.types,
                                format!(
                                    "Invalid attribute type name found; type: {t}, valid types: {TYPE_NAMES}"
                                ),
                            );
                            dummy()
                        }
                    },
                    other => {
                        let shown = static_type(other)
                            .map_or("{NS,SS,L,BS,N,M,B,BOOL,NULL,S}", ValueType::name);
                        note(&mut local.types, operand_type(name, shown));
                        dummy()
                    }
                },
                "begins_with" => {
                    for t in [a, b].into_iter().filter_map(static_type) {
                        if !matches!(t, ValueType::S | ValueType::B) {
                            note(&mut local.types, operand_type(name, t.name()));
                        }
                    }
                    Cond::BeginsWith(a.clone(), b.clone())
                }
                _ => Cond::Contains(a.clone(), b.clone()),
            }
        }
        _ => {
            note(&mut local.operands, operand_count(name, args.len()));
            dummy()
        }
    };
    r.commit(local);
    cond
}

fn operand_count(function: &str, n: usize) -> String {
    format!(
        "Incorrect number of operands for operator or function; operator or function: {function}, number of operands: {n}"
    )
}

fn operand_type(function: &str, t: &str) -> String {
    format!(
        "Incorrect operand type for operator or function; operator or function: {function}, operand type: {t}"
    )
}

/// The type an operand is known to have before any item is seen.
fn static_type(op: &Operand) -> Option<ValueType> {
    match op {
        Operand::Value(v) => Some(v.value_type()),
        Operand::Size(_) => Some(ValueType::N),
        Operand::Path(_) => None,
    }
}

/// `a = a`, `contains(a, a)`: DynamoDB refuses the same path on both sides.
fn check_distinct(operator: &str, a: &Operand, b: &Operand, local: &mut Local) {
    if let (Operand::Path(x), Operand::Path(y)) = (a, b)
        && x == y
    {
        note(
            &mut local.distinct,
            format!(
                "The first operand must be distinct from the remaining operands for this operator or function; operator: {operator}, first operand: {x}"
            ),
        );
    }
}

fn check_orderable(operator: &str, operands: &[&Operand], local: &mut Local) {
    for t in operands.iter().filter_map(|o| static_type(o)) {
        if !matches!(t, ValueType::S | ValueType::N | ValueType::B) {
            note(&mut local.types, operand_type(operator, t.name()));
        }
    }
}

/// `AttributeValue: {N:10}`, as DynamoDB shows BETWEEN's bounds.
fn show(v: &AttributeValue) -> String {
    let inner = match v
        .to_json()
        .as_object()
        .and_then(|o| o.values().next().cloned())
    {
        Some(serde_json::Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => String::new(),
    };
    format!("AttributeValue: {{{}:{inner}}}", type_name(v))
}

fn check_bounds(low: &AttributeValue, high: &AttributeValue, local: &mut Local) {
    let problem = if low.value_type() != high.value_type() {
        "The BETWEEN operator requires same data type for lower and upper bounds"
    } else if order(low, high) == Some(Ordering::Greater) {
        "The BETWEEN operator requires upper bound to be greater than or equal to lower bound"
    } else {
        return;
    };
    note(
        &mut local.types,
        format!(
            "{problem}; lower bound operand: {}, upper bound operand: {}",
            show(low),
            show(high)
        ),
    );
}

/// DynamoDB's order, defined between two S, two N or two B values only.
pub(super) fn order(a: &AttributeValue, b: &AttributeValue) -> Option<Ordering> {
    match (a, b) {
        (AttributeValue::S(x), AttributeValue::S(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (AttributeValue::N(x), AttributeValue::N(y)) => Some(x.cmp(y)),
        (AttributeValue::B(x), AttributeValue::B(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// `begins_with` on two S or two B values.
pub(super) fn begins_with(a: &AttributeValue, prefix: &AttributeValue) -> bool {
    match (a, prefix) {
        (AttributeValue::S(x), AttributeValue::S(p)) => x.starts_with(p.as_str()),
        (AttributeValue::B(x), AttributeValue::B(p)) => x.starts_with(p),
        _ => false,
    }
}

fn contains(haystack: &AttributeValue, needle: &AttributeValue) -> bool {
    match (haystack, needle) {
        (AttributeValue::S(x), AttributeValue::S(y)) => x.contains(y.as_str()),
        (AttributeValue::B(x), AttributeValue::B(y)) => {
            y.is_empty() || x.windows(y.len()).any(|w| w == y.as_slice())
        }
        (AttributeValue::Ss(set), AttributeValue::S(y)) => set.binary_search(y).is_ok(),
        (AttributeValue::Ns(set), AttributeValue::N(y)) => set.binary_search(y).is_ok(),
        (AttributeValue::Bs(set), AttributeValue::B(y)) => set.binary_search(y).is_ok(),
        (AttributeValue::L(list), y) => list.contains(y),
        _ => false,
    }
}

/// `size()`: a string's length in UTF-16 code units (what DynamoDB counts), a
/// binary's in bytes, a set's, list's or map's element count; nothing for other types.
fn size(v: &AttributeValue) -> Option<usize> {
    Some(match v {
        AttributeValue::S(s) => s.encode_utf16().count(),
        AttributeValue::B(b) => b.len(),
        AttributeValue::Ss(s) => s.len(),
        AttributeValue::Ns(s) => s.len(),
        AttributeValue::Bs(s) => s.len(),
        AttributeValue::L(l) => l.len(),
        AttributeValue::M(m) => m.len(),
        AttributeValue::N(_) | AttributeValue::Bool(_) | AttributeValue::Null => return None,
    })
}

impl Operand {
    fn eval<'a>(&'a self, item: &'a Item) -> Option<Cow<'a, AttributeValue>> {
        match self {
            Operand::Path(p) => p.get(item).map(Cow::Borrowed),
            Operand::Value(v) => Some(Cow::Borrowed(v)),
            Operand::Size(inner) => {
                let n = size(inner.eval(item)?.as_ref())?;
                let n = i64::try_from(n).ok()?;
                Some(Cow::Owned(AttributeValue::N(Number::from_i64(n))))
            }
        }
    }
}

fn compare(op: CmpOp, a: Option<&AttributeValue>, b: Option<&AttributeValue>) -> bool {
    let (Some(a), Some(b)) = (a, b) else {
        return op == CmpOp::Ne;
    };
    match op {
        CmpOp::Eq => a == b,
        CmpOp::Ne => a != b,
        CmpOp::Lt => order(a, b) == Some(Ordering::Less),
        CmpOp::Le => matches!(order(a, b), Some(Ordering::Less | Ordering::Equal)),
        CmpOp::Gt => order(a, b) == Some(Ordering::Greater),
        CmpOp::Ge => matches!(order(a, b), Some(Ordering::Greater | Ordering::Equal)),
    }
}

impl Cond {
    fn eval(&self, item: &Item) -> bool {
        match self {
            Cond::Cmp(op, a, b) => compare(*op, a.eval(item).as_deref(), b.eval(item).as_deref()),
            Cond::Between(a, low, high) => match (a.eval(item), low.eval(item), high.eval(item)) {
                (Some(a), Some(low), Some(high)) => {
                    compare(CmpOp::Ge, Some(&a), Some(&low))
                        && compare(CmpOp::Le, Some(&a), Some(&high))
                }
                _ => false,
            },
            Cond::In(a, list) => a
                .eval(item)
                .is_some_and(|a| list.iter().any(|o| o.eval(item).is_some_and(|v| *v == *a))),
            Cond::Exists(p) => p.get(item).is_some(),
            Cond::NotExists(p) => p.get(item).is_none(),
            Cond::Type(a, t) => a.eval(item).is_some_and(|v| v.value_type() == *t),
            Cond::BeginsWith(a, b) => match (a.eval(item), b.eval(item)) {
                (Some(a), Some(b)) => begins_with(&a, &b),
                _ => false,
            },
            Cond::Contains(a, b) => match (a.eval(item), b.eval(item)) {
                (Some(a), Some(b)) => contains(&a, &b),
                _ => false,
            },
            Cond::And(terms) => terms.iter().all(|t| t.eval(item)),
            Cond::Or(terms) => terms.iter().any(|t| t.eval(item)),
            Cond::Not(inner) => !inner.eval(item),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::value::item_from_json;
    use serde_json::json;

    fn item(j: serde_json::Value) -> Item {
        item_from_json(&j).unwrap()
    }

    fn values(j: serde_json::Value) -> Values {
        item(j).into_iter().collect()
    }

    fn names(pairs: &[(&str, &str)]) -> Names {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn parse(text: &str, vals: &Values) -> Result<Condition, ExprError> {
        parse_condition(
            text,
            "ConditionExpression",
            &Names::new(),
            vals,
            &mut Used::default(),
        )
    }

    fn err(text: &str, vals: serde_json::Value) -> String {
        parse(text, &values(vals)).unwrap_err().message
    }

    /// Evaluate `text` against `it` with the values `vals`.
    fn check(text: &str, vals: &serde_json::Value, it: &Item) -> bool {
        parse(text, &values(vals.clone()))
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .eval(it)
            .unwrap()
    }

    fn sample() -> Item {
        item(json!({
            "s": {"S": "hello"}, "s2": {"S": "help"}, "n": {"N": "10"}, "n2": {"N": "9.5"},
            "b": {"B": "AQID"}, "t": {"BOOL": true}, "z": {"NULL": true},
            "ss": {"SS": ["a", "b"]}, "ns": {"NS": ["1", "2"]}, "bs": {"BS": ["AQ=="]},
            "l": {"L": [{"N": "1"}, {"S": "x"}, {"SS": ["q"]}]},
            "m": {"M": {"k": {"S": "v"}, "deep": {"L": [{"M": {"x": {"N": "7"}}}]}}},
            "u": {"S": "é𝄞"}, "e": {"S": ""}
        }))
    }

    #[test]
    fn precedence_and_or_not_and_parentheses() {
        let it = item(json!({"a": {"N": "1"}, "b": {"N": "2"}, "c": {"N": "3"}}));
        let v = json!({":one": {"N": "1"}, ":no": {"N": "0"}});
        // a = 1 (true), b = 0 and c = 0 (false): OR binds looser than AND.
        assert!(check("a = :one OR b = :no AND c = :no", &v, &it));
        assert!(!check("(a = :one OR b = :no) AND c = :no", &v, &it));
        assert!(!check("b = :no AND c = :no OR b = :no", &v, &it));
        // NOT binds tighter than AND and OR.
        assert!(!check("NOT a = :one AND b = :no", &v, &it));
        assert!(check("NOT (b = :no AND c = :no)", &v, &it));
        assert!(check("not not a = :one", &v, &it));
        assert!(check("NOT a = :no or a = :no", &v, &it));
        // Keywords in any case; a parenthesised operand.
        assert!(check("a = :one aNd (b) > :one", &v, &it));
    }

    #[test]
    fn comparisons_across_types_and_missing_attributes() {
        let it = sample();
        let v = json!({
            ":hello": {"S": "hello"}, ":hf": {"S": "hf"}, ":ten": {"N": "10.0"}, ":nine": {"N": "9"},
            ":b": {"B": "AQID"}, ":b2": {"B": "AQIE"}, ":t": {"BOOL": true}, ":z": {"NULL": true},
            ":ss": {"SS": ["b", "a"]}, ":ns": {"NS": ["2", "1"]}, ":l": {"L": [{"N": "1"}, {"S": "x"}, {"SS": ["q"]}]},
            ":m": {"M": {"k": {"S": "v"}, "deep": {"L": [{"M": {"x": {"N": "7"}}}]}}}, ":s10": {"S": "10"}
        });
        for yes in [
            "s = :hello",
            "n = :ten",
            "b = :b",
            "t = :t",
            "z = :z",
            "ss = :ss",
            "ns = :ns",
            "l = :l",
            "m = :m",
            "s < :hf",
            "s2 > s",
            "n > :nine",
            "n2 < n",
            "n >= :ten",
            "n <= :ten",
            "b < :b2",
            "b <= :b",
            "s <> :hf",
            "n <> :s10",
            "nope <> :ten",
            "nope <> zz",
            "n BETWEEN :nine AND :ten",
            "s BETWEEN s AND s2",
            "n IN (:hello, :ten)",
            "m.k = l[1] OR m.deep[0].x < n2",
        ] {
            assert!(check(yes, &v, &it), "{yes}");
        }
        for no in [
            "s = :hf",
            "n = :s10",
            "n < :s10",
            "n > :s10",
            "t = :z",
            "nope = :ten",
            "nope = zz",
            "nope < :ten",
            ":ten > nope",
            "nope <= zz",
            "s BETWEEN :ten AND :ten",
            "nope BETWEEN :nine AND :ten",
            "n IN (:nine, :s10)",
            "nope IN (:ten)",
            "l < :ten",
            "m >= :ten",
            "n BETWEEN n2 AND :nine",
        ] {
            assert!(!check(no, &v, &it), "{no}");
        }
    }

    #[test]
    fn functions_on_every_type() {
        let it = sample();
        let v = json!({
            ":hel": {"S": "hel"}, ":ell": {"S": "ell"}, ":b01": {"B": "AQI="}, ":b23": {"B": "AgM="},
            ":a": {"S": "a"}, ":one": {"N": "1"}, ":x": {"S": "x"}, ":q": {"SS": ["q"]},
            ":bs1": {"B": "AQ=="}, ":five": {"N": "5"}, ":three": {"N": "3"}, ":two": {"N": "2"},
            ":zero": {"N": "0"}, ":empty": {"S": ""}
        });
        for yes in [
            "attribute_exists(s)",
            "attribute_exists (m.deep[0].x)",
            "attribute_not_exists(nope)",
            "attribute_not_exists(m.deep[1])",
            "attribute_not_exists(s.x)",
            "begins_with(s, :hel)",
            "begins_with(b, :b01)",
            "begins_with(s, :empty)",
            "begins_with(:hel, :empty)",
            "contains(s, :ell)",
            "contains(b, :b23)",
            "contains(ss, :a)",
            "contains(ns, :one)",
            "contains(bs, :bs1)",
            "contains(l, :x)",
            "contains(l, :one)",
            "contains(l, :q)",
            "size(s) = :five",
            "size(u) = :three",
            "size(e) = :zero",
            "size(b) = :three",
            "size(ss) = :two",
            "size(ns) = :two",
            "size(l) = :three",
            "size(m) = :two",
            "size(m.deep) = :one",
            "size(:hel) = :three",
            "size(s) > size(s2)",
            "size(nope) <> :one",
        ] {
            assert!(check(yes, &v, &it), "{yes}");
        }
        for no in [
            "attribute_exists(nope)",
            "attribute_exists(l[3])",
            "attribute_not_exists(l[0])",
            "begins_with(s, :ell)",
            "begins_with(n, :hel)",
            "begins_with(b, :hel)",
            "begins_with(nope, :hel)",
            "contains(s, :x)",
            "contains(ss, :x)",
            "contains(ns, :a)",
            "contains(l, :a)",
            "contains(n, :one)",
            "contains(nope, :a)",
            "contains(m, :x)",
            "size(n) = :two",
            "size(t) = :one",
            "size(z) = :one",
            "size(nope) = :zero",
            "size(s) = :hel",
        ] {
            assert!(!check(no, &v, &it), "{no}");
        }
        let types = [
            ("s", "S"),
            ("n", "N"),
            ("b", "B"),
            ("t", "BOOL"),
            ("z", "NULL"),
            ("m", "M"),
            ("l", "L"),
            ("ss", "SS"),
            ("ns", "NS"),
            ("bs", "BS"),
        ];
        for (attr, t) in types {
            for (_, other) in types {
                let vals = json!({":t": {"S": other}});
                let text = format!("attribute_type({attr}, :t)");
                assert_eq!(check(&text, &vals, &it), t == other, "{text} {other}");
            }
        }
        assert!(check(
            "attribute_type(:t, :t)",
            &json!({":t": {"S": "S"}}),
            &it
        ));
        assert!(!check(
            "attribute_type(nope, :t)",
            &json!({":t": {"S": "S"}}),
            &it
        ));
    }

    #[test]
    fn functions_are_checked_when_parsed() {
        let s = json!({":s": {"S": "S"}, ":n": {"N": "1"}, ":l": {"L": []}, ":dog": {"S": "DOG"}});
        assert_eq!(
            err("attribute_type(a, :dog)", s.clone()),
            "Invalid ConditionExpression: Invalid attribute type name found; type: DOG, valid types: {B,NULL,SS,BOOL,L,BS,N,NS,S,M}"
        );
        assert_eq!(
            err("attribute_type(a, :n)", s.clone()),
            "Invalid ConditionExpression: Incorrect operand type for operator or function; operator or function: attribute_type, operand type: N"
        );
        assert!(
            err("attribute_type(a, b)", s.clone()).contains("operator or function: attribute_type")
        );
        assert_eq!(
            err("begins_with(a, :n)", s.clone()),
            "Invalid ConditionExpression: Incorrect operand type for operator or function; operator or function: begins_with, operand type: N"
        );
        assert_eq!(
            err("a < :l", s.clone()),
            "Invalid ConditionExpression: Incorrect operand type for operator or function; operator or function: <, operand type: L"
        );
        assert!(err(":l >= a", s.clone()).contains("operator or function: >=, operand type: L"));
        assert!(
            err("a BETWEEN :l AND :n", s.clone())
                .contains("operator or function: BETWEEN, operand type: L")
        );
        assert_eq!(
            err("size(:n) > a", s.clone()),
            "Invalid ConditionExpression: Incorrect operand type for operator or function; operator or function: size, operand type: N"
        );
        assert_eq!(
            err("attribute_exists(:n)", s.clone()),
            "Invalid ConditionExpression: Operator or function requires a document path; operator or function: attribute_exists"
        );
        assert_eq!(
            err("attribute_exists(a, b)", s.clone()),
            "Invalid ConditionExpression: Incorrect number of operands for operator or function; operator or function: attribute_exists, number of operands: 2"
        );
        assert!(
            err("size(a, a) = :n", s.clone())
                .contains("operator or function: size, number of operands: 2")
        );
        assert!(
            err("contains(a)", s.clone())
                .contains("operator or function: contains, number of operands: 1")
        );
        assert_eq!(
            err("contains(a, a)", s.clone()),
            "Invalid ConditionExpression: The first operand must be distinct from the remaining operands for this operator or function; operator: contains, first operand: [a]"
        );
        assert!(
            err("a.b[1] = a.b[1]", s.clone()).contains("operator: =, first operand: [a, b, [1]]")
        );
        assert_eq!(
            err("size(a)", s.clone()),
            "Invalid ConditionExpression: The function is not allowed to be used this way in an expression; function: size"
        );
        assert!(err("attribute_exists(a) < :n", s.clone()).contains("function: attribute_exists"));
        assert_eq!(
            err("if_not_exists(a, a) = :n", s.clone()),
            "Invalid ConditionExpression: The function is not allowed in a condition expression; function: if_not_exists"
        );
        assert_eq!(
            err("foo(a) = :n", s.clone()),
            "Invalid ConditionExpression: Invalid function name; function: foo"
        );
        // Function names are case-sensitive.
        assert!(err("SIZE(a) = :n", s.clone()).contains("Invalid function name; function: SIZE"));
        assert!(
            err("Attribute_Exists(a)", s)
                .contains("Invalid function name; function: Attribute_Exists")
        );
    }

    #[test]
    fn between_and_in_are_checked_when_parsed() {
        let v = json!({":a": {"S": "a"}, ":b": {"S": "b"}, ":one": {"N": "1"}});
        assert_eq!(
            err("x BETWEEN :one AND :a", v.clone()),
            "Invalid ConditionExpression: The BETWEEN operator requires same data type for lower and upper bounds; lower bound operand: AttributeValue: {N:1}, upper bound operand: AttributeValue: {S:a}"
        );
        assert_eq!(
            err("x BETWEEN :b AND :a", v.clone()),
            "Invalid ConditionExpression: The BETWEEN operator requires upper bound to be greater than or equal to lower bound; lower bound operand: AttributeValue: {S:b}, upper bound operand: AttributeValue: {S:a}"
        );
        let mut many = serde_json::Map::new();
        for i in 0..MAX_IN_OPERANDS {
            many.insert(format!(":v{i}"), json!({"N": i.to_string()}));
        }
        let list = |n: usize| {
            (0..n)
                .map(|i| format!(":v{i}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let ok = parse(
            &format!("x IN ({})", list(MAX_IN_OPERANDS - 1)),
            &values(json!(many.clone())),
        );
        assert!(ok.is_ok());
        let e = err(&format!("x IN ({})", list(MAX_IN_OPERANDS)), json!(many));
        assert_eq!(
            e,
            "Invalid ConditionExpression: The IN operator is provided with too many operands; number of operands: 101"
        );
    }

    #[test]
    fn placeholders_reserved_words_and_parentheses() {
        let vals = values(json!({":v": {"N": "1"}, ":unused": {"N": "2"}}));
        let ns = names(&[("#a", "status"), ("#b", "and"), ("#c", "x.y")]);
        let mut used = Used::default();
        let c = parse_condition(
            "#a = :v AND attribute_exists(#b.#c)",
            "FilterExpression",
            &ns,
            &vals,
            &mut used,
        )
        .unwrap();
        assert_eq!(used.names.iter().collect::<Vec<_>>(), ["#a", "#b", "#c"]);
        assert_eq!(used.values.iter().collect::<Vec<_>>(), [":v"]);
        let it = item(json!({"status": {"N": "1"}, "and": {"M": {"x.y": {"NULL": true}}}}));
        assert!(c.eval(&it).unwrap());
        assert!(!c.eval(&Item::new()).unwrap());

        let e = |t: &str| {
            parse_condition(t, "FilterExpression", &ns, &vals, &mut Used::default())
                .unwrap_err()
                .message
        };
        assert_eq!(
            e("#x = :v"),
            "Invalid FilterExpression: An expression attribute name used in the document path is not defined; attribute name: #x"
        );
        assert_eq!(
            e("a = :w"),
            "Invalid FilterExpression: An expression attribute value used in expression is not defined; attribute value: :w"
        );
        assert_eq!(
            e("status = :v"),
            "Invalid FilterExpression: Attribute name is a reserved keyword; reserved keyword: status"
        );
        assert!(e("a.Name = :v").contains("reserved keyword: Name"));
        assert_eq!(
            e("((a = :v))"),
            "Invalid FilterExpression: The expression has redundant parentheses;"
        );
        assert!(e("((a)) = :v").contains("redundant parentheses"));
        assert!(e("(a = :v) AND ((b = :v))").contains("redundant parentheses"));
        assert!(
            parse_condition(
                "((a = :v) AND (b = :v))",
                "F",
                &ns,
                &vals,
                &mut Used::default()
            )
            .is_ok()
        );
        // DynamoDB's order: redundant parentheses, unknown function, misused
        // function, reserved word, then the first condition's own problem.
        assert!(e("#x = :v AND status = :v").contains("reserved keyword"));
        assert!(e("foo(a) AND status = :v").contains("Invalid function name"));
        assert!(e("status = :v AND ((a = :v))").contains("redundant parentheses"));
        assert!(e("#x = :w AND a = :nope").contains("attribute name: #x"));
        assert!(e("contains(a, a) AND b = :nope").contains("must be distinct"));
        // A syntax error anywhere comes before all of these.
        assert!(e("status = :nope AND").contains("Syntax error"));
        let deep = format!("a{} = :v", ".b".repeat(32));
        assert!(e(&deep).contains("too many nesting levels"));
    }
}
