//! Projection expressions: which (possibly nested) attributes to return.
//!
//! A projected nested path keeps its structure (`a.b` of `{a: {b: 1, c: 2}}` is
//! `{a: {b: 1}}`); list indexes keep those elements, compacted in index order
//! (`a[2], a[0]` of `[x, y, z]` is `[x, z]`); paths that lead nowhere are left out.
//! Overlapping or conflicting paths are refused when parsed.

use super::resolve::{Local, Resolver, check_overlaps};
use super::syntax;
use super::{ExprError, Names, Path, PathElem, Used, Values};
use crate::value::{AttributeValue, Item};
use std::collections::BTreeMap;

const KIND: &str = "ProjectionExpression";

pub fn parse_projection(
    text: &str,
    names: &Names,
    used: &mut Used,
) -> Result<Vec<Path>, ExprError> {
    let raw = syntax::parse_projection(text)?;
    let no_values = Values::new();
    let mut r = Resolver::new(KIND, names, &no_values);
    let paths: Vec<Path> = raw
        .iter()
        .map(|p| {
            let mut local = Local::default();
            let path = r.path(p, &mut local);
            r.commit(local);
            path
        })
        .collect();
    r.finish(used)?;
    let refs: Vec<&Path> = paths.iter().collect();
    check_overlaps(KIND, &refs)?;
    Ok(paths)
}

/// What to keep of a value.
#[derive(Debug)]
enum Select {
    All,
    Members(BTreeMap<String, Select>),
    Elements(BTreeMap<usize, Select>),
}

impl Select {
    /// An empty selection for what `next` steps into.
    fn for_next(next: Option<&PathElem>) -> Select {
        match next {
            None => Select::All,
            Some(PathElem::Attr(_)) => Select::Members(BTreeMap::new()),
            Some(PathElem::Index(_)) => Select::Elements(BTreeMap::new()),
        }
    }

    /// Add `rest` of a path (a path ending here selects everything).
    fn add(&mut self, rest: &[PathElem]) {
        let Some((head, tail)) = rest.split_first() else {
            *self = Select::All;
            return;
        };
        let next = tail.first();
        match (self, head) {
            (Select::Members(m), PathElem::Attr(name)) => m
                .entry(name.clone())
                .or_insert_with(|| Select::for_next(next))
                .add(tail),
            (Select::Elements(l), PathElem::Index(i)) => l
                .entry(*i)
                .or_insert_with(|| Select::for_next(next))
                .add(tail),
            // Everything is already kept, or the paths conflict (the parser refuses
            // those): keep what was selected first.
            _ => {}
        }
    }

    fn pick(&self, v: &AttributeValue) -> Option<AttributeValue> {
        match (self, v) {
            (Select::All, v) => Some(v.clone()),
            (Select::Members(sel), AttributeValue::M(m)) => {
                let out: BTreeMap<String, AttributeValue> = sel
                    .iter()
                    .filter_map(|(k, s)| Some((k.clone(), s.pick(m.get(k)?)?)))
                    .collect();
                (!out.is_empty()).then_some(AttributeValue::M(out))
            }
            (Select::Elements(sel), AttributeValue::L(l)) => {
                let out: Vec<AttributeValue> =
                    sel.iter().filter_map(|(i, s)| s.pick(l.get(*i)?)).collect();
                (!out.is_empty()).then_some(AttributeValue::L(out))
            }
            _ => None,
        }
    }
}

/// The parts of `item` the paths name.
pub fn project(item: &Item, paths: &[Path]) -> Item {
    let mut top: BTreeMap<&str, Select> = BTreeMap::new();
    for path in paths {
        let Some((PathElem::Attr(name), rest)) = path.0.split_first() else {
            continue;
        };
        top.entry(name.as_str())
            .or_insert_with(|| Select::for_next(rest.first()))
            .add(rest);
    }
    top.into_iter()
        .filter_map(|(name, sel)| Some((name.to_owned(), sel.pick(item.get(name)?)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::value::{item_from_json, item_to_json};
    use serde_json::json;

    fn sample() -> Item {
        item_from_json(&json!({
            "p": {"S": "key"},
            "a": {"M": {"b": {"L": [{"N": "2"}, {"N": "4"}, {"M": {"x": {"S": "hi"}, "y": {"S": "yo"}}}]}, "c": {"N": "5"}}},
            "b": {"S": "hello"},
            "e": {"M": {}}
        }))
        .unwrap()
    }

    fn proj(text: &str) -> serde_json::Value {
        let names: Names = [
            ("#n".to_owned(), "a".to_owned()),
            ("#dot".to_owned(), "a.b".to_owned()),
        ]
        .into();
        let paths = parse_projection(text, &names, &mut Used::default()).unwrap();
        item_to_json(&project(&sample(), &paths))
    }

    #[test]
    fn nested_paths_keep_their_structure() {
        assert_eq!(
            proj("b, p"),
            json!({"b": {"S": "hello"}, "p": {"S": "key"}})
        );
        assert_eq!(proj("#n.c"), json!({"a": {"M": {"c": {"N": "5"}}}}));
        assert_eq!(
            proj("a.b[0]"),
            json!({"a": {"M": {"b": {"L": [{"N": "2"}]}}}})
        );
        assert_eq!(
            proj("a.b[2].y"),
            json!({"a": {"M": {"b": {"L": [{"M": {"y": {"S": "yo"}}}]}}}})
        );
        assert_eq!(
            proj("a.b[2], a.b[0]"),
            json!({"a": {"M": {"b": {"L": [{"N": "2"}, {"M": {"x": {"S": "hi"}, "y": {"S": "yo"}}}]}}}})
        );
        assert_eq!(
            proj("a.c, a.b[1], b"),
            json!({"a": {"M": {"b": {"L": [{"N": "4"}]}, "c": {"N": "5"}}}, "b": {"S": "hello"}})
        );
        assert_eq!(proj("e"), json!({"e": {"M": {}}}));
        // Paths that lead nowhere are left out.
        for nowhere in [
            "x",
            "a.b[3]",
            "a.x",
            "a.x.y",
            "a.b.x",
            "a[0]",
            "a.b[0].x",
            "a.b[0][0]",
            "b.c",
            "e.x",
            "#dot",
        ] {
            assert_eq!(proj(nowhere), json!({}), "{nowhere}");
        }
        assert_eq!(
            proj("a.x, a.b[0], x, a.b[3].x"),
            json!({"a": {"M": {"b": {"L": [{"N": "2"}]}}}})
        );
    }

    #[test]
    fn project_merges_overlaps_it_is_given() {
        let attr = |s: &str| PathElem::Attr(s.into());
        let paths = [
            Path(vec![attr("a"), attr("c")]),
            Path(vec![attr("a")]),
            Path(vec![attr("a"), PathElem::Index(0)]),
            Path(vec![]),
        ];
        let out = project(&sample(), &paths);
        assert_eq!(out.get("a"), sample().get("a"));
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn projection_errors() {
        let err = |t: &str| {
            parse_projection(t, &Names::new(), &mut Used::default())
                .unwrap_err()
                .message
        };
        assert_eq!(
            err("a, a.b[0]"),
            "Invalid ProjectionExpression: Two document paths overlap with each other; must remove or rewrite one of these paths; path one: [a], path two: [a, b, [0]]"
        );
        assert!(err("a.b, a[1]").contains("Two document paths conflict"));
        assert_eq!(
            err("#x"),
            "Invalid ProjectionExpression: An expression attribute name used in the document path is not defined; attribute name: #x"
        );
        assert_eq!(
            err("a, size"),
            "Invalid ProjectionExpression: Attribute name is a reserved keyword; reserved keyword: size"
        );
        assert!(err("a[:v]").contains("Syntax error"));
        assert!(err(":v").contains("Syntax error"));
        let mut used = Used::default();
        let names: Names = [
            ("#n".to_owned(), "status".to_owned()),
            ("#u".to_owned(), "u".to_owned()),
        ]
        .into();
        let paths = parse_projection("#n, a.#n", &names, &mut used).unwrap();
        assert_eq!(paths[1].to_string(), "[a, status]");
        assert_eq!(used.names.into_iter().collect::<Vec<_>>(), ["#n"]);
    }
}
