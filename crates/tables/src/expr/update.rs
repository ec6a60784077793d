//! Update expressions: resolution and application.
//!
//! Applying follows DynamoDB:
//! - every right-hand side (SET values, ADD and DELETE operands) is computed from
//!   the item as it was before the update;
//! - list indexes refer to the old list: SETs are applied first (in path order, so
//!   that several SETs past a list's end append in index order), then the REMOVEs,
//!   last index first, so that `REMOVE a[1], a[2]` removes two old elements;
//! - a SET, ADD or DELETE below a missing or non-document parent, or a REMOVE
//!   below one (unless the whole item is missing), is `The document path provided
//!   in the update expression is invalid for update`;
//! - the update applies wholly or not at all.
//!
//! Two target paths of one expression may not overlap (`a` and `a.b`) or conflict
//! (`a.b` and `a[1]`); that is refused when parsed.

use super::resolve::{Local, Resolver, check_overlaps, note};
use super::syntax::{self, RawClause, RawOperand, RawSetValue};
use super::{ExprError, Names, Path, PathElem, Used, Values};
use crate::value::{AttributeValue, Item, Number, ValueType};
use std::collections::BTreeSet;

const KIND: &str = "UpdateExpression";

/// A parsed update expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    sets: Vec<(Path, SetValue)>,
    removes: Vec<Path>,
    adds: Vec<(Path, AttributeValue)>,
    deletes: Vec<(Path, AttributeValue)>,
}

#[derive(Debug, Clone, PartialEq)]
enum SetValue {
    One(SetOperand),
    Plus(SetOperand, SetOperand),
    Minus(SetOperand, SetOperand),
}

#[derive(Debug, Clone, PartialEq)]
enum SetOperand {
    Path(Path),
    Value(AttributeValue),
    IfNotExists(Path, Box<SetOperand>),
    ListAppend(Box<SetOperand>, Box<SetOperand>),
}

pub fn parse_update(
    text: &str,
    names: &Names,
    values: &Values,
    used: &mut Used,
) -> Result<Update, ExprError> {
    let clauses = syntax::parse_update(text)?;
    let mut r = Resolver::new(KIND, names, values);
    let mut update = Update {
        sets: Vec::new(),
        removes: Vec::new(),
        adds: Vec::new(),
        deletes: Vec::new(),
    };
    // Every target path, in the order of the text, for the overlap check.
    let mut targets: Vec<Path> = Vec::new();
    for clause in &clauses {
        match clause {
            RawClause::Set(actions) => {
                for (path, value) in actions {
                    let mut local = Local::default();
                    let path = r.path(path, &mut local);
                    let value = resolve_set_value(&mut r, value, &mut local);
                    r.commit(local);
                    targets.push(path.clone());
                    update.sets.push((path, value));
                }
            }
            RawClause::Remove(paths) => {
                for path in paths {
                    let mut local = Local::default();
                    let path = r.path(path, &mut local);
                    r.commit(local);
                    targets.push(path.clone());
                    update.removes.push(path);
                }
            }
            RawClause::Add(actions) | RawClause::Delete(actions) => {
                let add = matches!(clause, RawClause::Add(_));
                for (path, placeholder) in actions {
                    let mut local = Local::default();
                    let path = r.path(path, &mut local);
                    let value = r.value(placeholder, &mut local);
                    let fits = match value.value_type() {
                        ValueType::Ss | ValueType::Ns | ValueType::Bs => true,
                        ValueType::N => add,
                        _ => false,
                    };
                    if !fits && local.undefined.is_none() {
                        note(
                            &mut local.types,
                            format!(
                                "Incorrect operand type for operator or function; operator: {}, operand type: {}",
                                if add { "ADD" } else { "DELETE" },
                                long_type_name(&value)
                            ),
                        );
                    }
                    r.commit(local);
                    targets.push(path.clone());
                    if add {
                        update.adds.push((path, value));
                    } else {
                        update.deletes.push((path, value));
                    }
                }
            }
        }
    }
    r.finish(used)?;
    let targets: Vec<&Path> = targets.iter().collect();
    check_overlaps(KIND, &targets)?;
    Ok(update)
}

/// The type names of ADD's and DELETE's messages.
fn long_type_name(v: &AttributeValue) -> &'static str {
    match v.value_type() {
        ValueType::S => "STRING",
        ValueType::N => "NUMBER",
        ValueType::B => "BINARY",
        ValueType::Bool => "BOOLEAN",
        ValueType::Null => "NULL",
        ValueType::M => "MAP",
        ValueType::L => "LIST",
        ValueType::Ss => "STRING SET",
        ValueType::Ns => "NUMBER SET",
        ValueType::Bs => "BINARY SET",
    }
}

fn resolve_set_value(r: &mut Resolver<'_>, raw: &RawSetValue, local: &mut Local) -> SetValue {
    let (a, b, op) = match raw {
        RawSetValue::One(op) => return SetValue::One(resolve_set_operand(r, op, local)),
        RawSetValue::Plus(a, b) => (a, b, "+"),
        RawSetValue::Minus(a, b) => (a, b, "-"),
    };
    let a = resolve_set_operand(r, a, local);
    let b = resolve_set_operand(r, b, local);
    for operand in [&a, &b] {
        if let Some(t) = static_type(operand).filter(|t| *t != ValueType::N) {
            note(&mut local.types, operand_type(op, t));
        }
    }
    if op == "+" {
        SetValue::Plus(a, b)
    } else {
        SetValue::Minus(a, b)
    }
}

fn operand_type(function: &str, t: ValueType) -> String {
    format!(
        "Incorrect operand type for operator or function; operator or function: {function}, operand type: {}",
        t.name()
    )
}

/// The type an operand is known to have before any item is seen.
fn static_type(op: &SetOperand) -> Option<ValueType> {
    match op {
        SetOperand::Value(v) => Some(v.value_type()),
        SetOperand::ListAppend(..) => Some(ValueType::L),
        SetOperand::Path(_) | SetOperand::IfNotExists(..) => None,
    }
}

fn resolve_set_operand(r: &mut Resolver<'_>, raw: &RawOperand, local: &mut Local) -> SetOperand {
    let call = match raw {
        RawOperand::Path(p) => return SetOperand::Path(r.path(p, local)),
        RawOperand::Value(v) => return SetOperand::Value(r.value(v, local)),
        // The update grammar has no parentheses around operands.
        RawOperand::Paren(inner) => return resolve_set_operand(r, inner, local),
        RawOperand::Call(call) => call,
    };
    let mut args: Vec<SetOperand> = call
        .args
        .iter()
        .map(|a| resolve_set_operand(r, a, local))
        .collect();
    let name = call.name.as_str();
    let dummy = SetOperand::Value(AttributeValue::Null);
    match name {
        "if_not_exists" | "list_append" => {}
        "attribute_exists"
        | "attribute_not_exists"
        | "attribute_type"
        | "begins_with"
        | "contains"
        | "size" => {
            note(
                &mut r.misused_function,
                format!("The function is not allowed in an update expression; function: {name}"),
            );
            return dummy;
        }
        _ => {
            note(
                &mut r.unknown_function,
                format!("Invalid function name; function: {name}"),
            );
            return dummy;
        }
    }
    if args.len() != 2 {
        note(
            &mut local.operands,
            format!(
                "Incorrect number of operands for operator or function; operator or function: {name}, number of operands: {}",
                args.len()
            ),
        );
        return dummy;
    }
    let second = args
        .pop()
        .unwrap_or(SetOperand::Value(AttributeValue::Null));
    let first = args
        .pop()
        .unwrap_or(SetOperand::Value(AttributeValue::Null));
    if name == "if_not_exists" {
        let SetOperand::Path(path) = first else {
            note(
                &mut local.types,
                "Operator or function requires a document path; operator or function: if_not_exists",
            );
            return dummy;
        };
        return SetOperand::IfNotExists(path, Box::new(second));
    }
    for operand in [&first, &second] {
        if let Some(t) = static_type(operand).filter(|t| *t != ValueType::L) {
            note(&mut local.types, operand_type(name, t));
        }
    }
    SetOperand::ListAppend(Box::new(first), Box::new(second))
}

// ----- applying -----

fn invalid_path() -> ExprError {
    ExprError::new("The document path provided in the update expression is invalid for update")
}

fn missing_attribute() -> ExprError {
    ExprError::new("The provided expression refers to an attribute that does not exist in the item")
}

fn wrong_type() -> ExprError {
    ExprError::new("An operand in the update expression has an incorrect data type")
}

impl SetOperand {
    fn eval(&self, old: &Item) -> Result<AttributeValue, ExprError> {
        match self {
            SetOperand::Path(p) => p.get(old).cloned().ok_or_else(missing_attribute),
            SetOperand::Value(v) => Ok(v.clone()),
            SetOperand::IfNotExists(p, default) => match p.get(old) {
                Some(v) => Ok(v.clone()),
                None => default.eval(old),
            },
            SetOperand::ListAppend(a, b) => match (a.eval(old)?, b.eval(old)?) {
                (AttributeValue::L(mut x), AttributeValue::L(y)) => {
                    x.extend(y);
                    Ok(AttributeValue::L(x))
                }
                _ => Err(wrong_type()),
            },
        }
    }
}

fn number(v: AttributeValue) -> Result<Number, ExprError> {
    match v {
        AttributeValue::N(n) => Ok(n),
        _ => Err(wrong_type()),
    }
}

impl SetValue {
    fn eval(&self, old: &Item) -> Result<AttributeValue, ExprError> {
        let (a, b, minus) = match self {
            SetValue::One(op) => return op.eval(old),
            SetValue::Plus(a, b) => (a, b, false),
            SetValue::Minus(a, b) => (a, b, true),
        };
        let a = number(a.eval(old)?)?;
        let b = number(b.eval(old)?)?;
        let sum = if minus { a.sub(&b) } else { a.add(&b) };
        sum.map(AttributeValue::N).map_err(|e| ExprError::new(e.0))
    }
}

/// Whether `path` is there in `item`; an error if its parent is missing or is not
/// the document (map or list) the last element needs.
fn locate(item: &Item, path: &Path) -> Result<bool, ExprError> {
    match path.0.split_last() {
        Some((PathElem::Attr(name), [])) => Ok(item.contains_key(name)),
        Some((last, parent)) if !parent.is_empty() => {
            match (Path(parent.to_vec()).get(item), last) {
                (Some(AttributeValue::M(m)), PathElem::Attr(name)) => Ok(m.contains_key(name)),
                (Some(AttributeValue::L(l)), PathElem::Index(i)) => Ok(*i < l.len()),
                _ => Err(invalid_path()),
            }
        }
        _ => Err(invalid_path()),
    }
}

/// The document holding `path`'s last element, for writing.
fn parent_mut<'a>(item: &'a mut Item, path: &[PathElem]) -> Option<&'a mut AttributeValue> {
    let (PathElem::Attr(first), rest) = path.split_first()? else {
        return None;
    };
    let mut cur = item.get_mut(first)?;
    for elem in rest {
        cur = match (cur, elem) {
            (AttributeValue::M(m), PathElem::Attr(name)) => m.get_mut(name)?,
            (AttributeValue::L(l), PathElem::Index(i)) => l.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Write `value` at `path`: a list index past the end appends.
fn set_path(item: &mut Item, path: &Path, value: AttributeValue) -> Result<(), ExprError> {
    let Some((last, parent)) = path.0.split_last() else {
        return Err(invalid_path());
    };
    if parent.is_empty() {
        let PathElem::Attr(name) = last else {
            return Err(invalid_path());
        };
        item.insert(name.clone(), value);
        return Ok(());
    }
    match (parent_mut(item, parent), last) {
        (Some(AttributeValue::M(m)), PathElem::Attr(name)) => {
            m.insert(name.clone(), value);
        }
        (Some(AttributeValue::L(l)), PathElem::Index(i)) => match l.get_mut(*i) {
            Some(slot) => *slot = value,
            None => l.push(value),
        },
        _ => return Err(invalid_path()),
    }
    Ok(())
}

fn remove_path(item: &mut Item, path: &Path) {
    let Some((last, parent)) = path.0.split_last() else {
        return;
    };
    if parent.is_empty() {
        if let PathElem::Attr(name) = last {
            item.remove(name);
        }
        return;
    }
    match (parent_mut(item, parent), last) {
        (Some(AttributeValue::M(m)), PathElem::Attr(name)) => {
            m.remove(name);
        }
        (Some(AttributeValue::L(l)), PathElem::Index(i)) if *i < l.len() => {
            l.remove(*i);
        }
        _ => {}
    }
}

fn union<T: Ord + Clone>(a: &[T], b: &[T]) -> Vec<T> {
    let mut out: Vec<T> = a.iter().chain(b).cloned().collect();
    out.sort();
    out.dedup();
    out
}

fn difference<T: Ord + Clone>(a: &[T], b: &[T]) -> Vec<T> {
    a.iter()
        .filter(|x| b.binary_search(x).is_err())
        .cloned()
        .collect()
}

/// ADD: numbers add up, sets unite; a missing attribute takes the value.
fn add(current: Option<&AttributeValue>, v: &AttributeValue) -> Result<AttributeValue, ExprError> {
    use AttributeValue::*;
    Ok(match (current, v) {
        (None, v) => v.clone(),
        (Some(N(a)), N(b)) => N(a.add(b).map_err(|e| ExprError::new(e.0))?),
        (Some(Ss(a)), Ss(b)) => Ss(union(a, b)),
        (Some(Ns(a)), Ns(b)) => Ns(union(a, b)),
        (Some(Bs(a)), Bs(b)) => Bs(union(a, b)),
        _ => return Err(wrong_type()),
    })
}

/// DELETE: the set minus the given elements (`None`: nothing is left).
fn delete(
    current: &AttributeValue,
    v: &AttributeValue,
) -> Result<Option<AttributeValue>, ExprError> {
    use AttributeValue::*;
    let left = match (current, v) {
        (Ss(a), Ss(b)) => Ss(difference(a, b)),
        (Ns(a), Ns(b)) => Ns(difference(a, b)),
        (Bs(a), Bs(b)) => Bs(difference(a, b)),
        _ => return Err(wrong_type()),
    };
    let empty = match &left {
        Ss(s) => s.is_empty(),
        Ns(s) => s.is_empty(),
        Bs(s) => s.is_empty(),
        _ => false,
    };
    Ok((!empty).then_some(left))
}

impl Update {
    /// Apply the update to `item` (an absent item is an empty one); on an error the
    /// item is left as it was.
    pub fn apply(&self, item: &mut Item) -> Result<(), ExprError> {
        let old: &Item = item;
        let mut writes: Vec<(&Path, AttributeValue)> = Vec::new();
        let mut removals: Vec<&Path> = Vec::new();
        for (path, value) in &self.sets {
            writes.push((path, value.eval(old)?));
        }
        for path in &self.removes {
            match locate(old, path) {
                Ok(true) => removals.push(path),
                Ok(false) => {}
                // DynamoDB ignores a REMOVE below a missing parent when the whole
                // item is missing.
                Err(_) if old.is_empty() => {}
                Err(e) => return Err(e),
            }
        }
        for (path, value) in &self.adds {
            locate(old, path)?;
            writes.push((path, add(path.get(old), value)?));
        }
        for (path, value) in &self.deletes {
            locate(old, path)?;
            if let Some(current) = path.get(old) {
                match delete(current, value)? {
                    Some(left) => writes.push((path, left)),
                    None => removals.push(path),
                }
            }
        }
        let mut new = old.clone();
        writes.sort_by(|a, b| a.0.cmp(b.0));
        for (path, value) in writes {
            set_path(&mut new, path, value)?;
        }
        removals.sort();
        for path in removals.into_iter().rev() {
            remove_path(&mut new, path);
        }
        *item = new;
        Ok(())
    }

    /// The top-level attribute names it sets, removes, adds to or deletes from.
    pub fn top_level_names(&self) -> BTreeSet<String> {
        self.sets
            .iter()
            .map(|(p, _)| p)
            .chain(&self.removes)
            .chain(self.adds.iter().map(|(p, _)| p))
            .chain(self.deletes.iter().map(|(p, _)| p))
            .map(|p| p.top().to_owned())
            .collect()
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

    fn values() -> Values {
        item(json!({
            ":one": {"N": "1"}, ":two": {"N": "2"}, ":half": {"N": "0.5"}, ":s": {"S": "x"},
            ":t": {"S": "y"}, ":l": {"L": [{"N": "3"}]}, ":l2": {"L": [{"S": "z"}]},
            ":ss": {"SS": ["b", "c"]}, ":ss2": {"SS": ["a", "b"]}, ":ns": {"NS": ["1", "5"]},
            ":bs": {"BS": ["AQ=="]}, ":m": {"M": {"k": {"N": "1"}}}, ":empty": {"L": []},
            ":big": {"N": "9E+125"}
        }))
        .into_iter()
        .collect()
    }

    fn parse(text: &str) -> Result<Update, ExprError> {
        let names: Names = [
            ("#n".to_owned(), "name".to_owned()),
            ("#a".to_owned(), "a".to_owned()),
        ]
        .into();
        parse_update(text, &names, &values(), &mut Used::default())
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().message
    }

    /// Apply `text` to `before`, returning the result (or the error message).
    fn run(text: &str, before: serde_json::Value) -> Result<Item, String> {
        let update = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let mut it = item(before);
        match update.apply(&mut it) {
            Ok(()) => Ok(it),
            Err(e) => Err(e.message),
        }
    }

    fn ok(text: &str, before: serde_json::Value) -> serde_json::Value {
        crate::value::item_to_json(&run(text, before).unwrap_or_else(|e| panic!("{text}: {e}")))
    }

    #[test]
    fn set_values_arithmetic_and_functions() {
        let before = json!({"n": {"N": "10"}, "l": {"L": [{"N": "1"}]}, "s": {"S": "old"}});
        assert_eq!(
            ok(
                "SET a = :s, b = n + :half, c = :two - n, d = n - n, #n = s",
                before.clone()
            ),
            json!({"n": {"N": "10"}, "l": {"L": [{"N": "1"}]}, "s": {"S": "old"}, "a": {"S": "x"},
                   "b": {"N": "10.5"}, "c": {"N": "-8"}, "d": {"N": "0"}, "name": {"S": "old"}})
        );
        assert_eq!(
            ok(
                "SET l = list_append(l, :l), m = list_append(:l2, l)",
                before.clone()
            )["l"],
            json!({"L": [{"N": "1"}, {"N": "3"}]})
        );
        assert_eq!(
            ok("SET m = list_append(:l2, l)", before.clone())["m"],
            json!({"L": [{"S": "z"}, {"N": "1"}]})
        );
        let r = ok(
            "SET n = if_not_exists(n, :one), x = if_not_exists(x, :one) + :two, y = list_append(if_not_exists(y, :empty), :l)",
            before.clone(),
        );
        assert_eq!(r["n"], json!({"N": "10"}));
        assert_eq!(r["x"], json!({"N": "3"}));
        assert_eq!(r["y"], json!({"L": [{"N": "3"}]}));
        assert_eq!(ok("sEt n = n", before.clone()), before);
        // The exact decimal arithmetic, and its limits.
        assert_eq!(
            ok("SET z = :half + :half", json!({}))["z"],
            json!({"N": "1"})
        );
        assert!(
            run("SET z = :big + :big", json!({}))
                .unwrap_err()
                .contains("Number overflow")
        );
    }

    #[test]
    fn right_hand_sides_see_the_old_item() {
        let before = json!({"a": {"N": "1"}, "b": {"N": "2"}});
        // A swap works because both values are read first.
        let r = ok("SET a = b, b = a", before.clone());
        assert_eq!(
            (r["a"].clone(), r["b"].clone()),
            (json!({"N": "2"}), json!({"N": "1"}))
        );
        let r = ok("REMOVE a SET c = a", before.clone());
        assert_eq!(r, json!({"b": {"N": "2"}, "c": {"N": "1"}}));
        // "SET x = :v, y = x" does not see the new x.
        assert_eq!(
            run("SET x = :one, y = x", before.clone()).unwrap_err(),
            "The provided expression refers to an attribute that does not exist in the item"
        );
        let r = ok("SET a = a + :one ADD b :one", before);
        assert_eq!(
            (r["a"].clone(), r["b"].clone()),
            (json!({"N": "2"}), json!({"N": "3"}))
        );
    }

    #[test]
    fn missing_attributes_and_wrong_types_at_apply_time() {
        let before = json!({"s": {"S": "x"}, "n": {"N": "1"}, "l": {"L": []}});
        let missing =
            "The provided expression refers to an attribute that does not exist in the item";
        let wrong = "An operand in the update expression has an incorrect data type";
        for (text, message) in [
            ("SET a = nope", missing),
            ("SET a = nope + :one", missing),
            ("SET a = :one - nope", missing),
            ("SET a = list_append(nope, :l)", missing),
            ("SET a = list_append(:l, nope)", missing),
            ("SET a = s + :one", wrong),
            ("SET a = :one - l", wrong),
            ("SET a = list_append(s, :l)", wrong),
            ("SET a = list_append(:l, n)", wrong),
            ("ADD s :one", wrong),
            ("ADD n :ss", wrong),
            ("ADD l :ss", wrong),
            ("DELETE s :ss", wrong),
            ("DELETE n :ns", wrong),
        ] {
            assert_eq!(run(text, before.clone()).unwrap_err(), message, "{text}");
        }
        // An error leaves the item untouched.
        let update = parse("SET a = :one, b = nope").unwrap();
        let mut it = item(before.clone());
        assert!(update.apply(&mut it).is_err());
        assert_eq!(it, item(before));
    }

    #[test]
    fn operand_types_of_constants_are_checked_when_parsed() {
        assert_eq!(
            err("SET a = :s + :one"),
            "Invalid UpdateExpression: Incorrect operand type for operator or function; operator or function: +, operand type: S"
        );
        assert!(err("SET a = n - :l").contains("operator or function: -, operand type: L"));
        assert!(
            err("SET a = list_append(:l, :l) + :one")
                .contains("operator or function: +, operand type: L")
        );
        assert_eq!(
            err("SET a = list_append(:l, :s)"),
            "Invalid UpdateExpression: Incorrect operand type for operator or function; operator or function: list_append, operand type: S"
        );
        assert_eq!(
            err("ADD a :s"),
            "Invalid UpdateExpression: Incorrect operand type for operator or function; operator: ADD, operand type: STRING"
        );
        assert!(err("ADD a :l").contains("operator: ADD, operand type: LIST"));
        assert!(err("ADD a :m").contains("operator: ADD, operand type: MAP"));
        assert_eq!(
            err("DELETE a :one"),
            "Invalid UpdateExpression: Incorrect operand type for operator or function; operator: DELETE, operand type: NUMBER"
        );
        assert!(err("DELETE a :s").contains("operator: DELETE, operand type: STRING"));
        assert_eq!(
            err("SET a = list_append(:l)"),
            "Invalid UpdateExpression: Incorrect number of operands for operator or function; operator or function: list_append, number of operands: 1"
        );
        assert!(
            err("SET a = if_not_exists(a, :s, :s)")
                .contains("operator or function: if_not_exists, number of operands: 3")
        );
        assert_eq!(
            err("SET a = if_not_exists(:s, :s)"),
            "Invalid UpdateExpression: Operator or function requires a document path; operator or function: if_not_exists"
        );
        assert_eq!(
            err("SET a = f(b, c)"),
            "Invalid UpdateExpression: Invalid function name; function: f"
        );
        assert!(
            err("SET a = LIST_APPEND(:l, :l)")
                .contains("Invalid function name; function: LIST_APPEND")
        );
        assert_eq!(
            err("SET a = size(b)"),
            "Invalid UpdateExpression: The function is not allowed in an update expression; function: size"
        );
        assert_eq!(
            err("SET a = :nope"),
            "Invalid UpdateExpression: An expression attribute value used in expression is not defined; attribute value: :nope"
        );
        assert_eq!(
            err("ADD #x :one"),
            "Invalid UpdateExpression: An expression attribute name used in the document path is not defined; attribute name: #x"
        );
        assert!(err("ADD a :nope").contains("attribute value: :nope"));
        assert_eq!(
            err("SET a.status = :one"),
            "Invalid UpdateExpression: Attribute name is a reserved keyword; reserved keyword: status"
        );
        assert_eq!(
            err("REMOVE "),
            r#"Invalid UpdateExpression: Syntax error; token: "<EOF>", near: "REMOVE ""#
        );
        assert_eq!(
            err(""),
            "Invalid UpdateExpression: The expression can not be empty;"
        );
    }

    #[test]
    fn overlapping_paths_are_refused() {
        assert_eq!(
            err("SET a = :one REMOVE a"),
            "Invalid UpdateExpression: Two document paths overlap with each other; must remove or rewrite one of these paths; path one: [a], path two: [a]"
        );
        assert_eq!(
            err("SET a = :one, a.b = :two"),
            "Invalid UpdateExpression: Two document paths overlap with each other; must remove or rewrite one of these paths; path one: [a], path two: [a, b]"
        );
        for text in [
            "SET #a = :one, a = :two",
            "REMOVE a SET a = :one",
            "SET a[1] = :one, a[1][1] = :two",
            "ADD a :one DELETE a :ss",
            "SET a.b.c = :one REMOVE a.b",
        ] {
            assert!(err(text).contains("overlap"), "{text}");
        }
        assert!(err("SET a.b = :one, a[1] = :two").contains("Two document paths conflict"));
        assert!(
            parse("SET a.b = :one, a.c = :two REMOVE a.d, b ADD c.d :one DELETE c.e :ss").is_ok()
        );
    }

    #[test]
    fn nested_paths_and_list_indexes() {
        let before = json!({"a": {"M": {"b": {"N": "3"}, "c": {"L": [{"S": "hi"}, {"M": {"x": {"L": [{"N": "3"}, {"N": "5"}]}}}]}}},
                            "l": {"L": [{"S": "one"}, {"S": "two"}, {"S": "three"}]}});
        let r = ok(
            "SET a.c[1].x[1] = :one, a.d = :two, l[1] = :s",
            before.clone(),
        );
        assert_eq!(
            r["a"]["M"]["c"]["L"][1]["M"]["x"]["L"][1],
            json!({"N": "1"})
        );
        assert_eq!(r["a"]["M"]["d"], json!({"N": "2"}));
        assert_eq!(r["l"]["L"][1], json!({"S": "x"}));
        // SET past the end appends, in index order.
        let r = ok("SET l[84] = :one, l[37] = :two, l[17] = :s", before.clone());
        assert_eq!(
            r["l"],
            json!({"L": [{"S": "one"}, {"S": "two"}, {"S": "three"}, {"S": "x"}, {"N": "2"}, {"N": "1"}]})
        );
        let invalid = "The document path provided in the update expression is invalid for update";
        for text in [
            "SET nope.x = :one",
            "SET l.x = :one",
            "SET a.b.c = :one",
            "SET a[0] = :one",
            "SET nope[0] = :one",
            "SET l[7].x = :one",
            "REMOVE nope.x",
            "REMOVE l.x",
            "REMOVE a[0]",
            "ADD nope.n :one",
            "DELETE a.b[0] :ss",
        ] {
            assert_eq!(run(text, before.clone()).unwrap_err(), invalid, "{text}");
        }
        // ...but below a missing item, REMOVE is silently ignored.
        assert_eq!(run("REMOVE x.y", json!({})).unwrap(), Item::new());
        assert_eq!(run("REMOVE x[0]", json!({})).unwrap(), Item::new());
        // A REMOVE of a missing leaf is no error.
        assert_eq!(ok("REMOVE a.zz, l[7], zz", before.clone()), before);
        let r = ok("ADD a.n :two, a.b :one", before);
        assert_eq!(
            (r["a"]["M"]["n"].clone(), r["a"]["M"]["b"].clone()),
            (json!({"N": "2"}), json!({"N": "4"}))
        );
    }

    #[test]
    fn remove_shifts_list_elements_and_uses_old_indexes() {
        let list = |xs: &[i64]| json!({"L": xs.iter().map(|x| json!({"N": x.to_string()})).collect::<Vec<_>>()});
        let before = json!({"a": list(&[2, 3, 4, 5, 6, 7])});
        assert_eq!(
            ok("REMOVE a[1], a[2]", before.clone())["a"],
            list(&[2, 5, 6, 7])
        );
        assert_eq!(
            ok("REMOVE a[2], a[1]", before.clone())["a"],
            list(&[2, 5, 6, 7])
        );
        assert_eq!(
            ok("REMOVE a[1] SET a[3] = :one", before.clone())["a"],
            list(&[2, 4, 1, 6, 7])
        );
        assert_eq!(
            ok("SET a[3] = :one REMOVE a[1]", before.clone())["a"],
            list(&[2, 4, 1, 6, 7])
        );
        // An index past the old end is not removed even if a SET appended there.
        assert_eq!(
            ok("SET a[9] = :one REMOVE a[6]", before.clone())["a"],
            list(&[2, 3, 4, 5, 6, 7, 1])
        );
        assert_eq!(
            ok("REMOVE a[0]", json!({"a": list(&[1])}))["a"],
            json!({"L": []})
        );
        assert_eq!(
            ok("REMOVE m.k", json!({"m": {"M": {"k": {"N": "1"}}}}))["m"],
            json!({"M": {}})
        );
    }

    #[test]
    fn add_and_delete_on_numbers_and_sets() {
        let before = json!({"n": {"N": "5"}, "ss": {"SS": ["a", "b"]}, "ns": {"NS": ["1", "2"]}, "bs": {"BS": ["AQ==", "Ag=="]}});
        let r = ok(
            "ADD n :half, ss :ss, ns :ns, bs :bs, fresh :one, freshset :ss2",
            before.clone(),
        );
        assert_eq!(r["n"], json!({"N": "5.5"}));
        assert_eq!(r["ss"], json!({"SS": ["a", "b", "c"]}));
        assert_eq!(r["ns"], json!({"NS": ["1", "2", "5"]}));
        assert_eq!(r["bs"], json!({"BS": ["AQ==", "Ag=="]}));
        assert_eq!(r["fresh"], json!({"N": "1"}));
        assert_eq!(r["freshset"], json!({"SS": ["a", "b"]}));
        let r = ok("DELETE ss :ss, ns :ns, nothing :ss", before.clone());
        assert_eq!(r["ss"], json!({"SS": ["a"]}));
        assert_eq!(r["ns"], json!({"NS": ["2"]}));
        assert!(r.get("nothing").is_none());
        // Emptying a set removes the attribute.
        let r = ok("DELETE ss :ss2, bs :bs", before.clone());
        assert!(r.get("ss").is_none());
        assert_eq!(r["bs"], json!({"BS": ["Ag=="]}));
        let r = ok(
            "DELETE ss :ss2 ADD ns :ns",
            json!({"ss": {"SS": ["b", "a"]}}),
        );
        assert_eq!(r, json!({"ns": {"NS": ["1", "5"]}}));
    }

    #[test]
    fn top_level_names_cover_every_clause() {
        let u = parse("SET a.b = :one, #n = :s REMOVE c[0] ADD d :one DELETE e :ss").unwrap();
        assert_eq!(
            u.top_level_names().into_iter().collect::<Vec<_>>(),
            ["a", "c", "d", "e", "name"]
        );
        let mut used = Used::default();
        let names: Names = [
            ("#n".to_owned(), "name".to_owned()),
            ("#x".to_owned(), "x".to_owned()),
        ]
        .into();
        parse_update(
            "SET #n = if_not_exists(#n, :one) ADD c :two",
            &names,
            &values(),
            &mut used,
        )
        .unwrap();
        assert_eq!(used.names.into_iter().collect::<Vec<_>>(), ["#n"]);
        assert_eq!(
            used.values.into_iter().collect::<Vec<_>>(),
            [":one", ":two"]
        );
    }
}
