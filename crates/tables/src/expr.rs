//! DynamoDB's expression language: condition and filter expressions, update
//! expressions, projection expressions and key condition expressions, parsed to an
//! AST and evaluated against items, refused with DynamoDB's ValidationException
//! texts (`Invalid UpdateExpression: Syntax error; token: "=", near: "a == b"`).
//!
//! # Grammar
//!
//! Tokens (`lexer`): names `[A-Za-z][A-Za-z0-9_]*` (attribute names, keywords and
//! function names; keywords are case-insensitive, function names are not), the
//! placeholders `#name` and `:value` (`[#:][A-Za-z0-9_]+`), integers `[0-9]+` and the
//! punctuation `= <> < <= > >= ( ) [ ] , . + -`. Whitespace separates tokens; any
//! other character is a token of its own, and a syntax error wherever it appears.
//!
//! ```text
//! path          ::= element ( '.' element | '[' integer ']' )*
//! element       ::= name | #name
//! operand       ::= path | :value | function | '(' operand ')'
//! function      ::= name '(' operand ( ',' operand )* ')'
//!
//! condition     ::= or                                (Condition-, Filter- and
//! or            ::= and ( OR and )*                    KeyConditionExpression)
//! and           ::= not ( AND not )*
//! not           ::= NOT not | primary
//! primary       ::= '(' condition ')'
//!                 | operand comparator operand
//!                 | operand BETWEEN operand AND operand
//!                 | operand IN '(' operand ( ',' operand )* ')'
//!                 | function                          (a boolean function)
//! comparator    ::= '=' | '<>' | '<' | '<=' | '>' | '>='
//!
//! update        ::= clause+                           (each keyword at most once)
//! clause        ::= SET set-action ( ',' set-action )*
//!                 | REMOVE path ( ',' path )*
//!                 | ADD path :value ( ',' path :value )*
//!                 | DELETE path :value ( ',' path :value )*
//! set-action    ::= path '=' set-operand ( ( '+' | '-' ) set-operand )?
//! set-operand   ::= path | :value | function          (no parentheses, no '+' inside)
//!
//! projection    ::= path ( ',' path )*
//! ```
//!
//! Precedence, tightest first: comparisons, `BETWEEN`, `IN` and functions; `NOT`;
//! `AND`; `OR`. The keywords `AND OR NOT BETWEEN IN` (in conditions) and
//! `SET REMOVE ADD DELETE` (in updates) cannot be bare attribute names.
//!
//! Functions: in conditions `attribute_exists(path)`, `attribute_not_exists(path)`,
//! `attribute_type(operand, :type)`, `begins_with(a, b)`, `contains(a, b)` (all
//! boolean) and `size(operand)` (a number); in updates `if_not_exists(path, v)` and
//! `list_append(a, b)`.
//!
//! # Processing
//!
//! Like DynamoDB, in two steps: `syntax` turns the text into a raw tree and
//! reports only syntax errors; then resolution (`resolve`, and each expression's
//! module) replaces the placeholders, checks reserved words, functions, operand
//! counts and the types of constants, and builds the AST that is evaluated. When
//! several problems are found the one DynamoDB reports first wins (redundant
//! parentheses, unknown function, misused function, reserved word, then the first
//! condition's own problem).
//!
//! - `condition`: [`Condition`] (condition and filter expressions).
//! - `update`: [`Update`]; every right-hand side sees the item as it was before.
//! - `projection`: [`parse_projection`] and [`project`].
//! - `key`: [`KeyCondition`] (a hash key equality and at most one range condition).

use crate::value::{AttributeValue, Item};
use std::collections::{BTreeSet, HashMap};
use std::fmt;

mod condition;
mod key;
mod lexer;
mod projection;
mod reserved;
mod resolve;
mod syntax;
mod update;

pub use condition::{Condition, parse_condition};
pub use key::{KeyCondition, RangeCond, parse_key_condition};
pub use projection::{parse_projection, project};
pub use update::{Update, parse_update};

/// `ExpressionAttributeNames`: `"#n"` → attribute name.
pub type Names = HashMap<String, String>;
/// `ExpressionAttributeValues`: `":v"` → value.
pub type Values = HashMap<String, AttributeValue>;

/// The longest expression DynamoDB accepts, in bytes.
pub const MAX_EXPRESSION_BYTES: usize = 4096;
/// The deepest nesting of parentheses, `NOT`s and function calls, and the most
/// elements of a document path.
pub const MAX_DEPTH: usize = 32;
/// The most operands of `IN`, the left-hand one included.
pub const MAX_IN_OPERANDS: usize = 100;

/// Which placeholders the expressions of one request used (the API layer reports
/// unused ones, as DynamoDB does).
#[derive(Debug, Default, Clone)]
pub struct Used {
    pub names: BTreeSet<String>,
    pub values: BTreeSet<String>,
}

impl Used {
    fn merge(&mut self, other: Used) {
        self.names.extend(other.names);
        self.values.extend(other.values);
    }
}

/// A document path, placeholders already resolved: `a.b[2].c` →
/// `[Attr a, Attr b, Index 2, Attr c]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Path(pub Vec<PathElem>);

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathElem {
    Attr(String),
    Index(usize),
}

impl Path {
    /// The top-level attribute name ("" for a path that does not start with one,
    /// which the parser never produces).
    pub fn top(&self) -> &str {
        match self.0.first() {
            Some(PathElem::Attr(name)) => name,
            _ => "",
        }
    }

    /// The value at this path in `item`, if there is one.
    pub fn get<'a>(&self, item: &'a Item) -> Option<&'a AttributeValue> {
        let (PathElem::Attr(first), rest) = self.0.split_first()? else {
            return None;
        };
        rest.iter()
            .try_fold(item.get(first)?, |value, elem| child(value, elem))
    }
}

/// One step down a document: a map's member or a list's element.
fn child<'a>(value: &'a AttributeValue, elem: &PathElem) -> Option<&'a AttributeValue> {
    match (value, elem) {
        (AttributeValue::M(m), PathElem::Attr(name)) => m.get(name),
        (AttributeValue::L(l), PathElem::Index(i)) => l.get(*i),
        _ => None,
    }
}

/// DynamoDB's form in messages: `[a, b, [2], c]`.
impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, elem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match elem {
                PathElem::Attr(name) => f.write_str(name)?,
                PathElem::Index(n) => write!(f, "[{n}]")?,
            }
        }
        f.write_str("]")
    }
}

/// DynamoDB's ValidationException text, e.g.
/// `Invalid ConditionExpression: Syntax error; token: "AND", near: "= AND b"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExprError {
    pub message: String,
}

impl ExprError {
    /// A message as it is (the errors of applying an update have no prefix).
    fn new(message: impl Into<String>) -> ExprError {
        ExprError {
            message: message.into(),
        }
    }

    /// `Invalid <kind>: <message>`.
    fn invalid(kind: &str, message: impl fmt::Display) -> ExprError {
        ExprError::new(format!("Invalid {kind}: {message}"))
    }
}

/// DynamoDB's short type name (`S`, `BOOL`, `SS`, …), as condition messages show it.
fn type_name(v: &AttributeValue) -> &'static str {
    v.value_type().name()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::value::item_from_json;

    #[test]
    fn paths_read_nested_values_and_print_like_dynamodb() {
        let item = item_from_json(&serde_json::json!({
            "a": {"M": {"b": {"L": [{"N": "1"}, {"M": {"c": {"S": "x"}}}]}}}
        }))
        .unwrap();
        let attr = |s: &str| PathElem::Attr(s.into());
        let p = Path(vec![attr("a"), attr("b"), PathElem::Index(1), attr("c")]);
        assert_eq!(p.get(&item), Some(&AttributeValue::S("x".into())));
        assert_eq!(p.top(), "a");
        assert_eq!(p.to_string(), "[a, b, [1], c]");
        for missing in [
            Path(vec![attr("a"), attr("b"), PathElem::Index(2)]),
            Path(vec![attr("a"), PathElem::Index(0)]),
            Path(vec![attr("a"), attr("b"), attr("c")]),
            Path(vec![attr("z")]),
            Path(vec![PathElem::Index(0)]),
            Path(vec![]),
        ] {
            assert_eq!(missing.get(&item), None, "{missing}");
        }
        assert_eq!(Path(vec![]).top(), "");
    }

    /// Arbitrary token soup never panics any parser, evaluator or applier.
    #[test]
    fn no_input_panics() {
        use crate::value::item_from_json;
        const PIECES: &[&str] = &[
            "a",
            "b",
            "#n",
            "#x",
            ":v",
            ":l",
            ":s",
            ":nope",
            "(",
            ")",
            "[",
            "]",
            "0",
            "7",
            ",",
            ".",
            "=",
            "<>",
            "<",
            ">=",
            "AND",
            "or",
            "NOT",
            "BETWEEN",
            "IN",
            "SET",
            "REMOVE",
            "ADD",
            "DELETE",
            "size",
            "if_not_exists",
            "list_append",
            "contains",
            "begins_with",
            "attribute_type",
            "attribute_exists",
            "+",
            "-",
            "é",
            "#",
            ":",
            "_",
            " ",
            "status",
        ];
        let names: Names = [("#n".to_owned(), "a".to_owned())].into();
        let values: Values = item_from_json(&serde_json::json!({
            ":v": {"N": "1"}, ":l": {"L": [{"S": "x"}]}, ":s": {"SS": ["x"]}
        }))
        .unwrap()
        .into_iter()
        .collect();
        let item = item_from_json(&serde_json::json!({
            "a": {"L": [{"N": "1"}, {"M": {"b": {"S": "x"}}}]}, "b": {"SS": ["x", "y"]}
        }))
        .unwrap();
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            usize::try_from(seed % n as u64).unwrap()
        };
        let mut parsed = 0;
        for _ in 0..3000 {
            let len = 1 + next(12);
            let text: Vec<&str> = (0..len).map(|_| PIECES[next(PIECES.len())]).collect();
            let text = text.join(if next(2) == 0 { " " } else { "" });
            let used = &mut Used::default();
            if let Ok(c) = parse_condition(&text, "ConditionExpression", &names, &values, used) {
                c.eval(&item).unwrap();
                parsed += 1;
            }
            if let Ok(u) = parse_update(&text, &names, &values, used) {
                let mut it = item.clone();
                let _ = u.apply(&mut it);
                let _ = u.apply(&mut Item::new());
                parsed += 1;
            }
            if let Ok(p) = parse_projection(&text, &names, used) {
                let _ = project(&item, &p);
                parsed += 1;
            }
            if let Ok(k) = parse_key_condition(&text, &names, &values, used) {
                if let Some((_, r)) = &k.range {
                    let _ = r.matches(&AttributeValue::S("x".into()));
                }
                let _ = k.for_schema("a", Some("b"));
                parsed += 1;
            }
        }
        assert!(parsed > 50, "the soup should sometimes parse ({parsed})");
    }
}
