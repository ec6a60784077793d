//! The recursive-descent parser: expression text → raw tree, placeholders still
//! unresolved. It reports syntax errors only, the way DynamoDB does:
//! `Syntax error; token: "<tok>", near: "<previous token … next token>"`, the token
//! being `<EOF>` at the end of the text. Everything else is checked on the raw tree
//! afterwards (see [`super::resolve`]).

use super::lexer::{Kind, Token, tokenize};
use super::{ExprError, MAX_DEPTH, MAX_EXPRESSION_BYTES};

#[derive(Debug, Clone, PartialEq)]
pub(super) enum RawElem {
    /// A bare attribute name.
    Name(String),
    /// `#name`.
    NameRef(String),
    Index(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct RawPath(pub Vec<RawElem>);

#[derive(Debug, Clone, PartialEq)]
pub(super) enum RawOperand {
    Path(RawPath),
    /// `:value`.
    Value(String),
    Call(RawCall),
    /// `( operand )` (conditions only).
    Paren(Box<RawOperand>),
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct RawCall {
    pub name: String,
    pub args: Vec<RawOperand>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "<>",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }

    fn from_symbol(s: &str) -> Option<CmpOp> {
        Some(match s {
            "=" => CmpOp::Eq,
            "<>" => CmpOp::Ne,
            "<" => CmpOp::Lt,
            "<=" => CmpOp::Le,
            ">" => CmpOp::Gt,
            ">=" => CmpOp::Ge,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum RawCond {
    Cmp(CmpOp, RawOperand, RawOperand),
    Between(RawOperand, RawOperand, RawOperand),
    In(RawOperand, Vec<RawOperand>),
    /// A function used as a condition (`attribute_exists(a)`).
    Call(RawCall),
    And(Vec<RawCond>),
    Or(Vec<RawCond>),
    Not(Box<RawCond>),
    /// `( condition )`, kept to detect redundant parentheses.
    Group(Box<RawCond>),
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum RawSetValue {
    One(RawOperand),
    Plus(RawOperand, RawOperand),
    Minus(RawOperand, RawOperand),
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum RawClause {
    Set(Vec<(RawPath, RawSetValue)>),
    Remove(Vec<RawPath>),
    /// `(path, ":value")`.
    Add(Vec<(RawPath, String)>),
    Delete(Vec<(RawPath, String)>),
}

const CONDITION_KEYWORDS: &[&str] = &["AND", "BETWEEN", "IN", "NOT", "OR"];
const UPDATE_KEYWORDS: &[&str] = &["SET", "REMOVE", "ADD", "DELETE"];

/// The checks every expression gets before it is parsed: its size, then emptiness.
fn check_text(text: &str, kind: &str) -> Result<(), ExprError> {
    if text.len() > MAX_EXPRESSION_BYTES {
        // As captured from DynamoDB: only conditions and filters add the size.
        let size = match kind {
            "ConditionExpression" | "FilterExpression" => {
                format!(" expression size: {}", text.len())
            }
            _ => String::new(),
        };
        return Err(ExprError::invalid(
            kind,
            format_args!("Expression size has exceeded the maximum allowed size;{size}"),
        ));
    }
    if text.trim().is_empty() {
        return Err(ExprError::invalid(kind, "The expression can not be empty;"));
    }
    Ok(())
}

pub(super) fn parse_condition(text: &str, kind: &str) -> Result<RawCond, ExprError> {
    let mut p = Parser::new(text, kind, CONDITION_KEYWORDS)?;
    let cond = p.or()?;
    p.expect_end()?;
    Ok(cond)
}

pub(super) fn parse_update(text: &str) -> Result<Vec<RawClause>, ExprError> {
    let mut p = Parser::new(text, "UpdateExpression", UPDATE_KEYWORDS)?;
    let mut clauses = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    while let Some(t) = p.peek() {
        let Some(keyword) = UPDATE_KEYWORDS.iter().find(|k| t.is_keyword(k)) else {
            return Err(p.error());
        };
        if seen.contains(keyword) {
            return Err(ExprError::invalid(
                p.kind,
                format_args!(
                    "The \"{keyword}\" section can only be used once in an update expression;"
                ),
            ));
        }
        seen.push(keyword);
        p.bump();
        clauses.push(match *keyword {
            "SET" => RawClause::Set(p.list(Parser::set_action)?),
            "REMOVE" => RawClause::Remove(p.list(Parser::path)?),
            "ADD" => RawClause::Add(p.list(Parser::value_action)?),
            _ => RawClause::Delete(p.list(Parser::value_action)?),
        });
    }
    Ok(clauses)
}

pub(super) fn parse_projection(text: &str) -> Result<Vec<RawPath>, ExprError> {
    let mut p = Parser::new(text, "ProjectionExpression", &[])?;
    let paths = p.list(Parser::path)?;
    p.expect_end()?;
    Ok(paths)
}

struct Parser<'a> {
    text: &'a str,
    toks: Vec<Token<'a>>,
    pos: usize,
    kind: &'a str,
    /// Current nesting of parentheses, `NOT`s and calls.
    depth: usize,
    /// Words that are keywords here and so never attribute names.
    keywords: &'static [&'static str],
}

impl<'a> Parser<'a> {
    fn new(
        text: &'a str,
        kind: &'a str,
        keywords: &'static [&'static str],
    ) -> Result<Parser<'a>, ExprError> {
        check_text(text, kind)?;
        Ok(Parser {
            text,
            toks: tokenize(text),
            pos: 0,
            kind,
            depth: 0,
            keywords,
        })
    }

    fn peek(&self) -> Option<Token<'a>> {
        self.toks.get(self.pos).copied()
    }

    fn peek_next(&self) -> Option<Token<'a>> {
        self.toks.get(self.pos + 1).copied()
    }

    fn bump(&mut self) {
        self.pos += 1;
    }

    fn at_punct(&self, p: &str) -> bool {
        self.peek().is_some_and(|t| t.is(Kind::Punct, p))
    }

    fn at_keyword(&self, keyword: &str) -> bool {
        self.peek().is_some_and(|t| t.is_keyword(keyword))
    }

    fn is_keyword(&self, t: &Token<'_>) -> bool {
        self.keywords.iter().any(|k| t.is_keyword(k))
    }

    /// A syntax error at the current token: the token, and the text from the
    /// previous token's start to the next token's end.
    fn error(&self) -> ExprError {
        let i = self.pos;
        let token = self.toks.get(i).map_or("<EOF>", |t| t.text);
        let start = match i.checked_sub(1).and_then(|j| self.toks.get(j)) {
            Some(prev) => prev.start,
            None => self.toks.get(i).map_or(0, |t| t.start),
        };
        let end = match self.toks.get(i) {
            Some(_) => self.toks.get(i + 1).map_or(self.text.len(), Token::end),
            None => self.text.len(),
        };
        let near = self.text.get(start..end).unwrap_or(self.text);
        ExprError::invalid(
            self.kind,
            format_args!("Syntax error; token: \"{token}\", near: \"{near}\""),
        )
    }

    fn expect_punct(&mut self, p: &str) -> Result<(), ExprError> {
        if self.at_punct(p) {
            self.bump();
            Ok(())
        } else {
            Err(self.error())
        }
    }

    fn expect_end(&self) -> Result<(), ExprError> {
        if self.pos < self.toks.len() {
            Err(self.error())
        } else {
            Ok(())
        }
    }

    fn enter(&mut self) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ExprError::invalid(
                self.kind,
                format_args!(
                    "The expression is nested too deeply; nesting levels: {}, maximum: {MAX_DEPTH}",
                    self.depth
                ),
            ));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    /// `item ( ',' item )*`
    fn list<T>(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<T, ExprError>,
    ) -> Result<Vec<T>, ExprError> {
        let mut out = vec![item(self)?];
        while self.at_punct(",") {
            self.bump();
            out.push(item(self)?);
        }
        Ok(out)
    }

    // ----- paths and operands -----

    fn path(&mut self) -> Result<RawPath, ExprError> {
        let mut elems = vec![self.element()?];
        loop {
            if self.at_punct(".") {
                self.bump();
                elems.push(self.element()?);
            } else if self.at_punct("[") {
                self.bump();
                let index = self
                    .peek()
                    .filter(|t| t.kind == Kind::Int)
                    .and_then(|t| t.text.parse::<usize>().ok());
                let Some(index) = index else {
                    return Err(self.error());
                };
                self.bump();
                self.expect_punct("]")?;
                elems.push(RawElem::Index(index));
            } else {
                return Ok(RawPath(elems));
            }
        }
    }

    fn element(&mut self) -> Result<RawElem, ExprError> {
        let elem = match self.peek() {
            Some(t) if t.kind == Kind::Name && !self.is_keyword(&t) => {
                RawElem::Name(t.text.to_owned())
            }
            Some(t) if t.kind == Kind::NameRef => RawElem::NameRef(t.text.to_owned()),
            _ => return Err(self.error()),
        };
        self.bump();
        Ok(elem)
    }

    fn at_call(&self) -> bool {
        self.peek()
            .is_some_and(|t| t.kind == Kind::Name && !self.is_keyword(&t))
            && self.peek_next().is_some_and(|t| t.is(Kind::Punct, "("))
    }

    /// An operand; `parens` allows `( operand )` (conditions, not updates).
    fn operand(&mut self, parens: bool) -> Result<RawOperand, ExprError> {
        let Some(t) = self.peek() else {
            return Err(self.error());
        };
        if t.kind == Kind::ValueRef {
            self.bump();
            return Ok(RawOperand::Value(t.text.to_owned()));
        }
        if parens && t.is(Kind::Punct, "(") {
            self.enter()?;
            self.bump();
            let inner = self.operand(parens)?;
            self.expect_punct(")")?;
            self.leave();
            return Ok(RawOperand::Paren(Box::new(inner)));
        }
        if self.at_call() {
            return Ok(RawOperand::Call(self.call(parens)?));
        }
        Ok(RawOperand::Path(self.path()?))
    }

    /// `name ( operand ( , operand )* )`, the caller having seen `name (`.
    fn call(&mut self, parens: bool) -> Result<RawCall, ExprError> {
        let name = self.peek().map(|t| t.text.to_owned()).unwrap_or_default();
        self.bump();
        self.expect_punct("(")?;
        self.enter()?;
        let args = self.list(|p| p.operand(parens))?;
        self.expect_punct(")")?;
        self.leave();
        Ok(RawCall { name, args })
    }

    // ----- conditions -----

    fn or(&mut self) -> Result<RawCond, ExprError> {
        let first = self.and()?;
        if !self.at_keyword("OR") {
            return Ok(first);
        }
        let mut terms = vec![first];
        while self.at_keyword("OR") {
            self.bump();
            terms.push(self.and()?);
        }
        Ok(RawCond::Or(terms))
    }

    fn and(&mut self) -> Result<RawCond, ExprError> {
        let first = self.not()?;
        if !self.at_keyword("AND") {
            return Ok(first);
        }
        let mut terms = vec![first];
        while self.at_keyword("AND") {
            self.bump();
            terms.push(self.not()?);
        }
        Ok(RawCond::And(terms))
    }

    fn not(&mut self) -> Result<RawCond, ExprError> {
        if !self.at_keyword("NOT") {
            return self.primary();
        }
        self.bump();
        self.enter()?;
        let inner = self.not()?;
        self.leave();
        Ok(RawCond::Not(Box::new(inner)))
    }

    fn at_comparison(&self) -> bool {
        self.peek().is_some_and(|t| {
            (t.kind == Kind::Punct && CmpOp::from_symbol(t.text).is_some())
                || t.is_keyword("BETWEEN")
                || t.is_keyword("IN")
        })
    }

    fn primary(&mut self) -> Result<RawCond, ExprError> {
        if self.at_punct("(") {
            // `(a) = :v` (a parenthesised operand) or `(a = :v)` (a group): look
            // ahead for an operand followed by a comparison. Operands contain no
            // conditions, so the look-ahead is linear.
            let (pos, depth) = (self.pos, self.depth);
            let operand_first = self.operand(true).is_ok() && self.at_comparison();
            (self.pos, self.depth) = (pos, depth);
            if !operand_first {
                self.enter()?;
                self.bump();
                let inner = self.or()?;
                self.expect_punct(")")?;
                self.leave();
                return Ok(RawCond::Group(Box::new(inner)));
            }
        } else if self.at_call() {
            let call = self.call(true)?;
            if !self.at_comparison() {
                return Ok(RawCond::Call(call));
            }
            return self.comparison(RawOperand::Call(call));
        }
        let left = self.operand(true)?;
        self.comparison(left)
    }

    /// What follows the left operand of a comparison, `BETWEEN` or `IN`.
    fn comparison(&mut self, left: RawOperand) -> Result<RawCond, ExprError> {
        if let Some(op) = self
            .peek()
            .filter(|t| t.kind == Kind::Punct)
            .and_then(|t| CmpOp::from_symbol(t.text))
        {
            self.bump();
            let right = self.operand(true)?;
            return Ok(RawCond::Cmp(op, left, right));
        }
        if self.at_keyword("BETWEEN") {
            self.bump();
            let low = self.operand(true)?;
            if !self.at_keyword("AND") {
                return Err(self.error());
            }
            self.bump();
            let high = self.operand(true)?;
            return Ok(RawCond::Between(left, low, high));
        }
        if self.at_keyword("IN") {
            self.bump();
            self.expect_punct("(")?;
            let list = self.list(|p| p.operand(true))?;
            self.expect_punct(")")?;
            return Ok(RawCond::In(left, list));
        }
        Err(self.error())
    }

    // ----- updates -----

    fn set_action(&mut self) -> Result<(RawPath, RawSetValue), ExprError> {
        let path = self.path()?;
        self.expect_punct("=")?;
        let first = self.operand(false)?;
        let value = if self.at_punct("+") {
            self.bump();
            RawSetValue::Plus(first, self.operand(false)?)
        } else if self.at_punct("-") {
            self.bump();
            RawSetValue::Minus(first, self.operand(false)?)
        } else {
            RawSetValue::One(first)
        };
        Ok((path, value))
    }

    /// `path :value` (ADD and DELETE).
    fn value_action(&mut self) -> Result<(RawPath, String), ExprError> {
        let path = self.path()?;
        match self.peek() {
            Some(t) if t.kind == Kind::ValueRef => {
                self.bump();
                Ok((path, t.text.to_owned()))
            }
            _ => Err(self.error()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn name(s: &str) -> RawElem {
        RawElem::Name(s.into())
    }

    fn path(s: &str) -> RawOperand {
        RawOperand::Path(RawPath(vec![name(s)]))
    }

    fn value(s: &str) -> RawOperand {
        RawOperand::Value(s.into())
    }

    fn cond_err(text: &str) -> String {
        parse_condition(text, "ConditionExpression")
            .unwrap_err()
            .message
    }

    #[test]
    fn precedence_is_comparison_then_not_then_and_then_or() {
        let eq = |a: &str, v: &str| RawCond::Cmp(CmpOp::Eq, path(a), value(v));
        assert_eq!(
            parse_condition("a = :x OR b = :y AND c = :z", "C").unwrap(),
            RawCond::Or(vec![
                eq("a", ":x"),
                RawCond::And(vec![eq("b", ":y"), eq("c", ":z")])
            ])
        );
        assert_eq!(
            parse_condition("NOT a = :x and b = :y", "C").unwrap(),
            RawCond::And(vec![RawCond::Not(Box::new(eq("a", ":x"))), eq("b", ":y")])
        );
        assert_eq!(
            parse_condition("(a = :x or b = :y) AND c = :z", "C").unwrap(),
            RawCond::And(vec![
                RawCond::Group(Box::new(RawCond::Or(vec![eq("a", ":x"), eq("b", ":y")]))),
                eq("c", ":z")
            ])
        );
        // BETWEEN's AND belongs to BETWEEN.
        assert_eq!(
            parse_condition("a BETWEEN :x AND :y AND b = :z", "C").unwrap(),
            RawCond::And(vec![
                RawCond::Between(path("a"), value(":x"), value(":y")),
                eq("b", ":z")
            ])
        );
    }

    #[test]
    fn operands_paths_calls_and_parentheses() {
        assert_eq!(
            parse_condition("#a.b[3][0].#c <> :v", "C").unwrap(),
            RawCond::Cmp(
                CmpOp::Ne,
                RawOperand::Path(RawPath(vec![
                    RawElem::NameRef("#a".into()),
                    name("b"),
                    RawElem::Index(3),
                    RawElem::Index(0),
                    RawElem::NameRef("#c".into()),
                ])),
                value(":v")
            )
        );
        let size_a = RawOperand::Call(RawCall {
            name: "size".into(),
            args: vec![path("a")],
        });
        assert_eq!(
            parse_condition("size(a) >= :n", "C").unwrap(),
            RawCond::Cmp(CmpOp::Ge, size_a, value(":n"))
        );
        assert_eq!(
            parse_condition("(a) = :v", "C").unwrap(),
            RawCond::Cmp(
                CmpOp::Eq,
                RawOperand::Paren(Box::new(path("a"))),
                value(":v")
            )
        );
        assert_eq!(
            parse_condition("attribute_exists(a)", "C").unwrap(),
            RawCond::Call(RawCall {
                name: "attribute_exists".into(),
                args: vec![path("a")]
            })
        );
        assert_eq!(
            parse_condition("a in (:x, b)", "C").unwrap(),
            RawCond::In(path("a"), vec![value(":x"), path("b")])
        );
    }

    #[test]
    fn syntax_errors_name_the_token_and_what_is_near_it() {
        assert_eq!(
            cond_err("a = AND b"),
            r#"Invalid ConditionExpression: Syntax error; token: "AND", near: "= AND b""#
        );
        assert_eq!(
            cond_err("a-b"),
            r#"Invalid ConditionExpression: Syntax error; token: "-", near: "a-b""#
        );
        assert_eq!(
            cond_err("attribute_exists(x) AND NOT #flag"),
            r##"Invalid ConditionExpression: Syntax error; token: "<EOF>", near: "#flag""##
        );
        assert_eq!(
            cond_err("a = "),
            r#"Invalid ConditionExpression: Syntax error; token: "<EOF>", near: "= ""#
        );
        assert_eq!(
            cond_err("f()"),
            r#"Invalid ConditionExpression: Syntax error; token: ")", near: "()""#
        );
        assert_eq!(
            cond_err("a == b"),
            r#"Invalid ConditionExpression: Syntax error; token: "=", near: "== b""#
        );
        assert_eq!(
            cond_err("!a = b"),
            r#"Invalid ConditionExpression: Syntax error; token: "!", near: "!a""#
        );
        assert!(cond_err("a IN ()").contains(r#"token: ")""#));
        assert!(cond_err("size(a)[0] > b").contains(r#"token: "[""#));
        assert!(cond_err("a[:i] = b").contains(r#"token: ":i""#));
        assert!(cond_err("a[99999999999999999999999] = b").contains("Syntax error"));
        assert!(cond_err("a").contains(r#"token: "<EOF>", near: "a""#));
        assert!(cond_err("in = :v").contains(r#"token: "in""#));
        assert!(cond_err("a BETWEEN :x OR :y").contains(r#"token: "OR""#));
        assert!(cond_err("a = :v b = :w").contains(r#"token: "b""#));
    }

    #[test]
    fn size_emptiness_and_depth_are_limited() {
        assert_eq!(
            cond_err("  "),
            "Invalid ConditionExpression: The expression can not be empty;"
        );
        let long = format!("a = :v{}", " ".repeat(MAX_EXPRESSION_BYTES - 6));
        assert!(parse_condition(&long, "ConditionExpression").is_ok());
        let long = format!("{long} ");
        assert_eq!(
            cond_err(&long),
            "Invalid ConditionExpression: Expression size has exceeded the maximum allowed size; expression size: 4097"
        );
        assert_eq!(
            parse_update(&format!("SET {long}")).unwrap_err().message,
            "Invalid UpdateExpression: Expression size has exceeded the maximum allowed size;"
        );
        let deep = |n: usize| format!("{}a = :v{}", "(".repeat(n), ")".repeat(n));
        assert!(parse_condition(&deep(MAX_DEPTH), "C").is_ok());
        assert!(cond_err(&deep(MAX_DEPTH + 1)).contains("nested too deeply"));
        let nots = format!("{}a = :v", "NOT ".repeat(MAX_DEPTH + 1));
        assert!(cond_err(&nots).contains("nested too deeply"));
        let calls = format!(
            "{}a{} = :v",
            "size(".repeat(MAX_DEPTH + 1),
            ")".repeat(MAX_DEPTH + 1)
        );
        assert!(cond_err(&calls).contains("nested too deeply"));
    }

    #[test]
    fn update_clauses_in_any_order_each_once() {
        let clauses = parse_update(
            "remove a, b[1] SET c = :v + d, e = list_append(f, :l) ADD g :n DELETE h :s",
        )
        .unwrap();
        assert_eq!(clauses.len(), 4);
        assert!(matches!(&clauses[0], RawClause::Remove(p) if p.len() == 2));
        assert!(
            matches!(&clauses[1], RawClause::Set(a) if a.len() == 2 && matches!(a[0].1, RawSetValue::Plus(..)))
        );
        assert!(matches!(&clauses[2], RawClause::Add(a) if a[0].1 == ":n"));
        assert!(matches!(&clauses[3], RawClause::Delete(_)));
        let err = |t: &str| parse_update(t).unwrap_err().message;
        assert_eq!(
            err("SET a = :v SET b = :w"),
            r#"Invalid UpdateExpression: The "SET" section can only be used once in an update expression;"#
        );
        assert!(err("SET a = :a REMOVE b set c = :c").contains(r#"The "SET" section"#));
        assert_eq!(
            err("SET a = :a + :b + :c"),
            r#"Invalid UpdateExpression: Syntax error; token: "+", near: ":b + :c""#
        );
        assert_eq!(
            err("SET"),
            r#"Invalid UpdateExpression: Syntax error; token: "<EOF>", near: "SET""#
        );
        assert_eq!(
            err("SET _123 = :val1"),
            r#"Invalid UpdateExpression: Syntax error; token: "_", near: "SET _123""#
        );
        assert_eq!(
            err("SET numx / :v"),
            r#"Invalid UpdateExpression: Syntax error; token: "/", near: "numx / :v""#
        );
        assert!(err("HELLO b = :v").contains(r#"token: "HELLO""#));
        assert!(err("SET :a = :b").contains(r#"token: ":a""#));
        assert!(err("SET c = if_not_exists(c, :a + :b)").contains(r#"token: "+""#));
        assert!(err("SET a = (b)").contains(r#"token: "(""#));
        assert!(err("ADD a b").contains(r#"token: "b""#));
        assert!(err("SET a = :v, ").contains("<EOF>"));
        assert!(err("SET a = remove").contains(r#"token: "remove""#));
    }

    #[test]
    fn projections_are_comma_separated_paths() {
        assert_eq!(parse_projection(" a , b.c[1] ").unwrap().len(), 2);
        let err = |t: &str| parse_projection(t).unwrap_err().message;
        assert_eq!(
            err("a,"),
            r#"Invalid ProjectionExpression: Syntax error; token: "<EOF>", near: ",""#
        );
        assert_eq!(
            err("a b"),
            r#"Invalid ProjectionExpression: Syntax error; token: "b", near: "a b""#
        );
        assert!(err(",a").contains(r#"token: ",""#));
        assert!(err("a,,b").contains(r#"token: ",""#));
        assert_eq!(
            err(""),
            "Invalid ProjectionExpression: The expression can not be empty;"
        );
    }
}
