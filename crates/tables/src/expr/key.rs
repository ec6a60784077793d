//! Key condition expressions (Query): `hash = :v`, alone or with `AND` one range
//! condition (`= < <= > >=`, `BETWEEN`, `begins_with`), in either order.
//!
//! The text is parsed and checked as a condition first (so syntax errors, undefined
//! placeholders and reserved words read as they do everywhere), then restricted,
//! with DynamoDB's messages: `Invalid operator used in KeyConditionExpression: OR`,
//! `KeyConditionExpressions must only contain one condition per key`, …

use super::condition::{self, Cond, Operand, begins_with, order};
use super::syntax::CmpOp;
use super::{ExprError, Names, Used, Values};
use crate::value::AttributeValue;
use std::cmp::Ordering;

#[derive(Debug, Clone, PartialEq)]
pub struct KeyCondition {
    pub hash: (String, AttributeValue),
    pub range: Option<(String, RangeCond)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RangeCond {
    Eq(AttributeValue),
    Lt(AttributeValue),
    Le(AttributeValue),
    Gt(AttributeValue),
    Ge(AttributeValue),
    Between(AttributeValue, AttributeValue),
    BeginsWith(AttributeValue),
}

impl RangeCond {
    /// Whether a range key value satisfies the condition (values of another type
    /// never do).
    pub fn matches(&self, v: &AttributeValue) -> bool {
        let is = |bound: &AttributeValue, wanted: &[Ordering]| {
            order(v, bound).is_some_and(|o| wanted.contains(&o))
        };
        match self {
            RangeCond::Eq(x) => v == x,
            RangeCond::Lt(x) => is(x, &[Ordering::Less]),
            RangeCond::Le(x) => is(x, &[Ordering::Less, Ordering::Equal]),
            RangeCond::Gt(x) => is(x, &[Ordering::Greater]),
            RangeCond::Ge(x) => is(x, &[Ordering::Greater, Ordering::Equal]),
            RangeCond::Between(low, high) => {
                is(low, &[Ordering::Greater, Ordering::Equal])
                    && is(high, &[Ordering::Less, Ordering::Equal])
            }
            RangeCond::BeginsWith(prefix) => begins_with(v, prefix),
        }
    }
}

const KIND: &str = "KeyConditionExpression";

/// Parse a key condition. With two equalities (`a = :x AND b = :y`) the first is
/// taken as the hash key; [`KeyCondition::for_schema`] puts them right.
pub fn parse_key_condition(
    text: &str,
    names: &Names,
    values: &Values,
    used: &mut Used,
) -> Result<KeyCondition, ExprError> {
    let mut mine = Used::default();
    let cond = condition::parse_condition(text, KIND, names, values, &mut mine)?;
    let mut atoms = Vec::new();
    collect(&cond.root, &mut atoms)?;
    if atoms.len() > 2 {
        return Err(ExprError::new("Conditions can be of length 1 or 2 only"));
    }
    let hash_at = atoms
        .iter()
        .position(|(_, c)| matches!(c, RangeCond::Eq(_)))
        .ok_or_else(not_supported)?;
    let (hash_name, hash_cond) = atoms.remove(hash_at);
    let RangeCond::Eq(hash_value) = hash_cond else {
        return Err(not_supported());
    };
    used.merge(mine);
    Ok(KeyCondition {
        hash: (hash_name, hash_value),
        range: atoms.pop(),
    })
}

impl KeyCondition {
    /// Check the names against a key schema, swapping hash and range when the
    /// range key was given first with `=`: DynamoDB's `Query condition missed key
    /// schema element: <name>` or `Query key condition not supported`.
    pub fn for_schema(
        self,
        hash_key: &str,
        range_key: Option<&str>,
    ) -> Result<KeyCondition, ExprError> {
        let kc = match self.range {
            Some((name, RangeCond::Eq(v))) if self.hash.0 != hash_key && name == hash_key => {
                KeyCondition {
                    hash: (name, v),
                    range: Some((self.hash.0, RangeCond::Eq(self.hash.1))),
                }
            }
            range => KeyCondition {
                hash: self.hash,
                range,
            },
        };
        let missed = |name: &str| {
            ExprError::new(format!("Query condition missed key schema element: {name}"))
        };
        if kc.hash.0 != hash_key {
            return Err(match &kc.range {
                Some((name, _)) if name == hash_key => not_supported(),
                _ => missed(hash_key),
            });
        }
        if let Some((name, _)) = &kc.range {
            match range_key {
                Some(range_key) if name == range_key => {}
                Some(range_key) => return Err(missed(range_key)),
                None => return Err(not_supported()),
            }
        }
        Ok(kc)
    }
}

fn not_supported() -> ExprError {
    ExprError::new("Query key condition not supported")
}

fn bad_operator(op: &str) -> ExprError {
    ExprError::new(format!(
        "Invalid operator used in KeyConditionExpression: {op}"
    ))
}

/// The key conditions ANDed together, in order.
fn collect(cond: &Cond, out: &mut Vec<(String, RangeCond)>) -> Result<(), ExprError> {
    let (name, range) = match cond {
        Cond::And(terms) => {
            return terms.iter().try_for_each(|t| collect(t, out));
        }
        Cond::Or(_) => return Err(bad_operator("OR")),
        Cond::Not(_) => return Err(bad_operator("NOT")),
        Cond::In(..) => return Err(bad_operator("IN")),
        Cond::Cmp(CmpOp::Ne, ..) => return Err(bad_operator("<>")),
        Cond::Exists(_) => return Err(bad_operator("attribute_exists")),
        Cond::NotExists(_) => return Err(bad_operator("attribute_not_exists")),
        Cond::Type(..) => return Err(bad_operator("attribute_type")),
        Cond::Contains(..) => return Err(bad_operator("contains")),
        Cond::Cmp(op, a, b) => {
            let (at, name, mut vals) = key_operands(&[a, b])?;
            let v = vals.pop().ok_or_else(not_supported)?;
            // `:v < sk` is `sk > :v`.
            let op = match (at, op) {
                (1, CmpOp::Lt) => CmpOp::Gt,
                (1, CmpOp::Le) => CmpOp::Ge,
                (1, CmpOp::Gt) => CmpOp::Lt,
                (1, CmpOp::Ge) => CmpOp::Le,
                (_, op) => *op,
            };
            let range = match op {
                CmpOp::Lt => RangeCond::Lt(v),
                CmpOp::Le => RangeCond::Le(v),
                CmpOp::Gt => RangeCond::Gt(v),
                CmpOp::Ge => RangeCond::Ge(v),
                CmpOp::Eq => RangeCond::Eq(v),
                CmpOp::Ne => return Err(bad_operator("<>")),
            };
            (name, range)
        }
        Cond::Between(a, low, high) => {
            first_is_key(a, "BETWEEN")?;
            let (_, name, vals) = key_operands(&[a, low, high])?;
            let [low, high]: [AttributeValue; 2] = vals.try_into().map_err(|_| not_supported())?;
            (name, RangeCond::Between(low, high))
        }
        Cond::BeginsWith(a, prefix) => {
            first_is_key(a, "begins_with")?;
            let (_, name, mut vals) = key_operands(&[a, prefix])?;
            let prefix = vals.pop().ok_or_else(not_supported)?;
            (name, RangeCond::BeginsWith(prefix))
        }
    };
    if out.iter().any(|(n, _)| *n == name) {
        return Err(ExprError::new(
            "KeyConditionExpressions must only contain one condition per key",
        ));
    }
    out.push((name, range));
    Ok(())
}

fn first_is_key(op: &Operand, operator: &str) -> Result<(), ExprError> {
    match op {
        Operand::Path(_) => Ok(()),
        _ => Err(ExprError::new(format!(
            "Invalid condition in KeyConditionExpression: {operator} operator must have the key attribute as its first operand"
        ))),
    }
}

/// The one key attribute among the operands (its position and name) and the
/// constant values.
fn key_operands(ops: &[&Operand]) -> Result<(usize, String, Vec<AttributeValue>), ExprError> {
    let mut key: Option<(usize, String)> = None;
    let mut vals = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match op {
            Operand::Path(p) => {
                if key.is_some() {
                    return Err(ExprError::new(
                        "Invalid condition in KeyConditionExpression: Multiple attribute names used in one condition",
                    ));
                }
                if p.0.len() > 1 {
                    return Err(ExprError::new(
                        "KeyConditionExpressions cannot have conditions on nested attributes",
                    ));
                }
                key = Some((i, p.top().to_owned()));
            }
            Operand::Size(_) => {
                return Err(ExprError::new(
                    "KeyConditionExpressions cannot contain nested operations",
                ));
            }
            Operand::Value(v) => vals.push(v.clone()),
        }
    }
    let (at, name) = key.ok_or_else(|| {
        ExprError::new("Invalid condition in KeyConditionExpression: No key attribute specified")
    })?;
    Ok((at, name, vals))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::value::{Number, item_from_json};
    use serde_json::json;

    fn values() -> Values {
        item_from_json(&json!({
            ":p": {"S": "user1"}, ":a": {"N": "1"}, ":b": {"N": "5"}, ":s": {"S": "ab"},
            ":x": {"S": "b"}, ":y": {"S": "a"}, ":t": {"S": "S"}
        }))
        .unwrap()
        .into_iter()
        .collect()
    }

    fn parse(text: &str) -> Result<KeyCondition, ExprError> {
        let names: Names = [("#pk".to_owned(), "pk".to_owned())].into();
        parse_key_condition(text, &names, &values(), &mut Used::default())
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().message
    }

    fn n(s: &str) -> AttributeValue {
        AttributeValue::N(Number::parse(s).unwrap())
    }

    fn s(x: &str) -> AttributeValue {
        AttributeValue::S(x.into())
    }

    #[test]
    fn accepted_forms() {
        let hash = ("pk".to_owned(), s("user1"));
        assert_eq!(
            parse("pk = :p").unwrap(),
            KeyCondition {
                hash: hash.clone(),
                range: None
            }
        );
        for (text, range) in [
            ("#pk = :p AND sk = :a", RangeCond::Eq(n("1"))),
            ("pk = :p and sk < :a", RangeCond::Lt(n("1"))),
            ("pk = :p AND sk <= :a", RangeCond::Le(n("1"))),
            ("sk > :a AND pk = :p", RangeCond::Gt(n("1"))),
            ("(pk = :p) AND (sk >= :a)", RangeCond::Ge(n("1"))),
            (":a > sk AND :p = pk", RangeCond::Lt(n("1"))),
            (
                "pk = :p AND sk BETWEEN :a AND :b",
                RangeCond::Between(n("1"), n("5")),
            ),
            (
                "pk = :p AND begins_with(sk, :s)",
                RangeCond::BeginsWith(s("ab")),
            ),
        ] {
            assert_eq!(
                parse(text).unwrap(),
                KeyCondition {
                    hash: hash.clone(),
                    range: Some(("sk".into(), range))
                },
                "{text}"
            );
        }
        let mut used = Used::default();
        let names: Names = [("#pk".to_owned(), "pk".to_owned())].into();
        parse_key_condition("#pk = :p AND sk > :a", &names, &values(), &mut used).unwrap();
        assert_eq!(used.names.len(), 1);
        assert_eq!(used.values.len(), 2);
    }

    #[test]
    fn refused_forms_say_why() {
        for (text, message) in [
            (
                "pk = :p OR sk = :a",
                "Invalid operator used in KeyConditionExpression: OR",
            ),
            (
                "NOT pk = :p",
                "Invalid operator used in KeyConditionExpression: NOT",
            ),
            (
                "pk IN (:p, :a)",
                "Invalid operator used in KeyConditionExpression: IN",
            ),
            (
                "pk <> :p",
                "Invalid operator used in KeyConditionExpression: <>",
            ),
            (
                "pk = :p AND attribute_exists(sk)",
                "Invalid operator used in KeyConditionExpression: attribute_exists",
            ),
            (
                "attribute_not_exists(pk)",
                "Invalid operator used in KeyConditionExpression: attribute_not_exists",
            ),
            (
                "pk = :p AND contains(sk, :a)",
                "Invalid operator used in KeyConditionExpression: contains",
            ),
            (
                "attribute_type(pk, :t)",
                "Invalid operator used in KeyConditionExpression: attribute_type",
            ),
            (
                "pk = :p AND pk = :a",
                "KeyConditionExpressions must only contain one condition per key",
            ),
            (
                "pk = :p AND sk > :a AND sk < :b",
                "KeyConditionExpressions must only contain one condition per key",
            ),
            (
                "pk = :p AND sk > :a AND c = :b",
                "Conditions can be of length 1 or 2 only",
            ),
            (
                "pk = sk",
                "Invalid condition in KeyConditionExpression: Multiple attribute names used in one condition",
            ),
            (
                ":p = :a",
                "Invalid condition in KeyConditionExpression: No key attribute specified",
            ),
            (
                "pk.x = :p",
                "KeyConditionExpressions cannot have conditions on nested attributes",
            ),
            (
                "pk[0] = :p",
                "KeyConditionExpressions cannot have conditions on nested attributes",
            ),
            (
                "size(pk) = :a",
                "KeyConditionExpressions cannot contain nested operations",
            ),
            (
                ":a BETWEEN sk AND :b",
                "Invalid condition in KeyConditionExpression: BETWEEN operator must have the key attribute as its first operand",
            ),
            (
                "begins_with(:s, sk)",
                "Invalid condition in KeyConditionExpression: begins_with operator must have the key attribute as its first operand",
            ),
            ("sk > :a", "Query key condition not supported"),
            ("pk > :p AND sk < :a", "Query key condition not supported"),
        ] {
            assert_eq!(err(text), message, "{text}");
        }
        // General checks come first and carry the prefix.
        assert!(err("pk = :p AND").starts_with("Invalid KeyConditionExpression: Syntax error"));
        assert!(err("pk = :nope").contains("attribute value: :nope"));
        assert!(err("((pk = :p))").contains("redundant parentheses"));
        assert!(err("pk = :p AND sk BETWEEN :x AND :y").starts_with(
            "Invalid KeyConditionExpression: The BETWEEN operator requires upper bound"
        ));
        assert_eq!(
            err(""),
            "Invalid KeyConditionExpression: The expression can not be empty;"
        );
    }

    #[test]
    fn schema_fitting_swaps_and_checks_names() {
        let kc = parse("sk = :a AND pk = :p").unwrap();
        assert_eq!(kc.hash.0, "sk");
        let fitted = kc.clone().for_schema("pk", Some("sk")).unwrap();
        assert_eq!(fitted.hash, ("pk".to_owned(), s("user1")));
        assert_eq!(fitted.range, Some(("sk".to_owned(), RangeCond::Eq(n("1")))));
        assert!(
            parse("pk = :p")
                .unwrap()
                .for_schema("pk", Some("sk"))
                .is_ok()
        );
        assert_eq!(
            parse("x = :p")
                .unwrap()
                .for_schema("pk", Some("sk"))
                .unwrap_err()
                .message,
            "Query condition missed key schema element: pk"
        );
        assert_eq!(
            parse("pk = :p AND oth > :a")
                .unwrap()
                .for_schema("pk", Some("sk"))
                .unwrap_err()
                .message,
            "Query condition missed key schema element: sk"
        );
        assert_eq!(
            parse("pk = :p AND sk > :a")
                .unwrap()
                .for_schema("pk", None)
                .unwrap_err()
                .message,
            "Query key condition not supported"
        );
        assert_eq!(
            parse("sk = :a AND pk > :p")
                .unwrap()
                .for_schema("pk", Some("sk"))
                .unwrap_err()
                .message,
            "Query key condition not supported"
        );
    }

    #[test]
    fn range_conditions_match_by_type_and_order() {
        let cases = [
            (
                RangeCond::Eq(n("5")),
                vec![n("5"), n("5.0")],
                vec![n("4"), s("5")],
            ),
            (
                RangeCond::Lt(n("5")),
                vec![n("4.99"), n("-10")],
                vec![n("5"), n("6"), s("1")],
            ),
            (RangeCond::Le(n("5")), vec![n("5"), n("1")], vec![n("5.01")]),
            (
                RangeCond::Gt(s("b")),
                vec![s("ba"), s("c")],
                vec![s("b"), s("a"), n("9")],
            ),
            (
                RangeCond::Ge(s("b")),
                vec![s("b"), s("z")],
                vec![s("a"), s("B")],
            ),
            (
                RangeCond::Between(n("1"), n("3")),
                vec![n("1"), n("2.5"), n("3")],
                vec![n("0.9"), n("3.1"), s("2")],
            ),
            (
                RangeCond::BeginsWith(s("ab")),
                vec![s("ab"), s("abc")],
                vec![s("a"), s("xab"), n("1")],
            ),
            (
                RangeCond::BeginsWith(AttributeValue::B(vec![1])),
                vec![AttributeValue::B(vec![1, 2])],
                vec![AttributeValue::B(vec![2, 1])],
            ),
            (
                RangeCond::Lt(AttributeValue::B(vec![1, 2])),
                vec![AttributeValue::B(vec![1]), AttributeValue::B(vec![0, 9])],
                vec![AttributeValue::B(vec![1, 2])],
            ),
        ];
        for (cond, yes, no) in cases {
            for v in yes {
                assert!(cond.matches(&v), "{cond:?} {v:?}");
            }
            for v in no {
                assert!(!cond.matches(&v), "{cond:?} {v:?}");
            }
        }
        // Strings order by UTF-8 bytes: "é" (0xC3…) sorts after "z".
        assert!(RangeCond::Gt(s("z")).matches(&s("é")));
    }
}
