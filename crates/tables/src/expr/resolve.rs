//! Resolution of a raw tree: placeholders replaced, reserved words and limits
//! checked, problems collected and reported in DynamoDB's order.
//!
//! DynamoDB finishes parsing before it validates, and when an expression has
//! several problems it reports, in this order: redundant parentheses, an unknown
//! function, a misused function, a reserved word, and then the first problem of the
//! first condition (or update action) that has one, where a condition's own problems
//! rank: an undefined placeholder, a wrong number of operands, identical operands,
//! a wrong operand type. [`Resolver`] collects the first of each and [`Resolver::finish`]
//! picks.

use super::reserved::is_reserved;
use super::syntax::{RawElem, RawPath};
use super::{ExprError, MAX_DEPTH, Names, Path, PathElem, Used, Values};
use crate::value::AttributeValue;

/// The problems of one condition or update action.
#[derive(Debug, Default)]
pub(super) struct Local {
    pub undefined: Option<String>,
    pub operands: Option<String>,
    pub distinct: Option<String>,
    pub types: Option<String>,
}

impl Local {
    fn first(self) -> Option<String> {
        self.undefined
            .or(self.operands)
            .or(self.distinct)
            .or(self.types)
    }
}

/// Set `slot` to `message` unless it already holds an earlier problem.
pub(super) fn note(slot: &mut Option<String>, message: impl Into<String>) {
    if slot.is_none() {
        *slot = Some(message.into());
    }
}

pub(super) struct Resolver<'a> {
    pub kind: &'a str,
    names: &'a Names,
    values: &'a Values,
    used: Used,
    pub parens: Option<String>,
    pub unknown_function: Option<String>,
    pub misused_function: Option<String>,
    reserved: Option<String>,
    local: Option<String>,
}

impl<'a> Resolver<'a> {
    pub fn new(kind: &'a str, names: &'a Names, values: &'a Values) -> Resolver<'a> {
        Resolver {
            kind,
            names,
            values,
            used: Used::default(),
            parens: None,
            unknown_function: None,
            misused_function: None,
            reserved: None,
            local: None,
        }
    }

    /// Record the problems of one condition or action (the first one counts).
    pub fn commit(&mut self, local: Local) {
        if self.local.is_none() {
            self.local = local.first();
        }
    }

    /// The problem DynamoDB would report, or the placeholders used.
    pub fn finish(self, used: &mut Used) -> Result<(), ExprError> {
        let problem = self
            .parens
            .or(self.unknown_function)
            .or(self.misused_function)
            .or(self.reserved)
            .or(self.local);
        match problem {
            Some(message) => Err(ExprError::invalid(self.kind, message)),
            None => {
                used.merge(self.used);
                Ok(())
            }
        }
    }

    pub fn path(&mut self, raw: &RawPath, local: &mut Local) -> Path {
        let mut out = Vec::with_capacity(raw.0.len());
        for elem in &raw.0 {
            out.push(match elem {
                RawElem::Name(name) => {
                    if is_reserved(name) {
                        note(
                            &mut self.reserved,
                            format!("Attribute name is a reserved keyword; reserved keyword: {name}"),
                        );
                    }
                    PathElem::Attr(name.clone())
                }
                RawElem::NameRef(placeholder) => match self.names.get(placeholder) {
                    Some(name) => {
                        self.used.names.insert(placeholder.clone());
                        PathElem::Attr(name.clone())
                    }
                    None => {
                        note(
                            &mut local.undefined,
                            format!(
                                "An expression attribute name used in the document path is not defined; attribute name: {placeholder}"
                            ),
                        );
                        PathElem::Attr(String::new())
                    }
                },
                RawElem::Index(i) => PathElem::Index(*i),
            });
        }
        if out.len() > MAX_DEPTH {
            note(
                &mut local.types,
                format!(
                    "The document path has too many nesting levels; nesting levels: {}, maximum: {MAX_DEPTH}",
                    out.len()
                ),
            );
        }
        Path(out)
    }

    /// The value of `:placeholder` (NULL, with a problem noted, if it is undefined).
    pub fn value(&mut self, placeholder: &str, local: &mut Local) -> AttributeValue {
        match self.values.get(placeholder) {
            Some(v) => {
                self.used.values.insert(placeholder.to_owned());
                v.clone()
            }
            None => {
                note(
                    &mut local.undefined,
                    format!(
                        "An expression attribute value used in expression is not defined; attribute value: {placeholder}"
                    ),
                );
                AttributeValue::Null
            }
        }
    }
}

/// DynamoDB refuses two paths of one expression (update targets, projected paths)
/// when one contains the other ("overlap") or when they part ways with a name on one
/// side and an index on the other ("conflict": `a.b` and `a[1]`).
pub(super) fn check_overlaps(kind: &str, paths: &[&Path]) -> Result<(), ExprError> {
    for (j, later) in paths.iter().enumerate() {
        for earlier in paths.iter().take(j) {
            let common = earlier
                .0
                .iter()
                .zip(&later.0)
                .take_while(|(a, b)| a == b)
                .count();
            let problem = if common == earlier.0.len() || common == later.0.len() {
                "overlap"
            } else {
                match (earlier.0.get(common), later.0.get(common)) {
                    (Some(PathElem::Attr(_)), Some(PathElem::Index(_)))
                    | (Some(PathElem::Index(_)), Some(PathElem::Attr(_))) => "conflict",
                    _ => continue,
                }
            };
            return Err(ExprError::invalid(
                kind,
                format_args!(
                    "Two document paths {problem} with each other; must remove or rewrite one of these paths; path one: {earlier}, path two: {later}"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(elems: &[&str]) -> Path {
        Path(
            elems
                .iter()
                .map(|e| match e.parse::<usize>() {
                    Ok(i) => PathElem::Index(i),
                    Err(_) => PathElem::Attr((*e).to_owned()),
                })
                .collect(),
        )
    }

    #[test]
    fn overlapping_and_conflicting_paths_are_refused() {
        let check = |a: &[&str], b: &[&str]| check_overlaps("X", &[&path(a), &path(b)]);
        for (a, b) in [
            (&["a"][..], &["a"][..]),
            (&["a"], &["a", "b"]),
            (&["a", "b", "c"], &["a", "b"]),
            (&["a", "1"], &["a", "1", "1"]),
        ] {
            let e = check(a, b).unwrap_err().message;
            assert!(
                e.contains("Two document paths overlap with each other"),
                "{e}"
            );
        }
        assert_eq!(
            check(&["a"], &["a", "b"]).unwrap_err().message,
            "Invalid X: Two document paths overlap with each other; must remove or rewrite one of these paths; path one: [a], path two: [a, b]"
        );
        assert_eq!(
            check(&["a", "b"], &["a", "1"]).unwrap_err().message,
            "Invalid X: Two document paths conflict with each other; must remove or rewrite one of these paths; path one: [a, b], path two: [a, [1]]"
        );
        for (a, b) in [
            (&["a"][..], &["b"][..]),
            (&["a", "b"], &["a", "c"]),
            (&["a", "1"], &["a", "2"]),
            (&["a", "b"], &["a", "c", "2"]),
        ] {
            assert!(check(a, b).is_ok(), "{a:?} {b:?}");
        }
    }
}
