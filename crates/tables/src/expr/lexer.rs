//! The tokens of the expression language (see the grammar in [`super`]).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// `[A-Za-z][A-Za-z0-9_]*`: an attribute name, a keyword or a function name.
    Name,
    /// `#[A-Za-z0-9_]+`: an expression attribute name.
    NameRef,
    /// `:[A-Za-z0-9_]+`: an expression attribute value.
    ValueRef,
    /// `[0-9]+`: a list index.
    Int,
    /// `= <> < <= > >= ( ) [ ] , . + -`
    Punct,
    /// Any other character (a lone `#` or `:` included): always a syntax error.
    Other,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Token<'a> {
    pub kind: Kind,
    pub text: &'a str,
    /// Byte offset in the expression.
    pub start: usize,
}

impl Token<'_> {
    pub fn end(&self) -> usize {
        self.start + self.text.len()
    }

    pub fn is(&self, kind: Kind, text: &str) -> bool {
        self.kind == kind && self.text == text
    }

    /// A name spelling `keyword` in any case.
    pub fn is_keyword(&self, keyword: &str) -> bool {
        self.kind == Kind::Name && self.text.eq_ignore_ascii_case(keyword)
    }
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Split `text` into tokens; never fails (unknown characters become `Other`).
pub(super) fn tokenize(text: &str) -> Vec<Token<'_>> {
    let bytes = text.as_bytes();
    let word_end = |from: usize| {
        let mut j = from;
        while bytes.get(j).is_some_and(|b| is_word_byte(*b)) {
            j += 1;
        }
        j
    };
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            i += 1;
            continue;
        }
        let next = bytes.get(i + 1).copied();
        let (kind, end) = match b {
            b'A'..=b'Z' | b'a'..=b'z' => (Kind::Name, word_end(i + 1)),
            b'0'..=b'9' => {
                let mut j = i + 1;
                while bytes.get(j).is_some_and(u8::is_ascii_digit) {
                    j += 1;
                }
                (Kind::Int, j)
            }
            b'#' | b':' => match word_end(i + 1) {
                j if j > i + 1 && b == b'#' => (Kind::NameRef, j),
                j if j > i + 1 => (Kind::ValueRef, j),
                _ => (Kind::Other, i + 1),
            },
            b'<' if matches!(next, Some(b'=' | b'>')) => (Kind::Punct, i + 2),
            b'>' if next == Some(b'=') => (Kind::Punct, i + 2),
            b'=' | b'<' | b'>' | b'(' | b')' | b'[' | b']' | b',' | b'.' | b'+' | b'-' => {
                (Kind::Punct, i + 1)
            }
            _ => {
                // One whole character (i is always on a character boundary).
                let len = text
                    .get(i..)
                    .and_then(|rest| rest.chars().next())
                    .map_or(1, char::len_utf8);
                (Kind::Other, i + len)
            }
        };
        let Some(token_text) = text.get(i..end) else {
            break;
        };
        out.push(Token {
            kind,
            text: token_text,
            start: i,
        });
        i = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<(Kind, &str)> {
        tokenize(text).iter().map(|t| (t.kind, t.text)).collect()
    }

    #[test]
    fn tokens_follow_dynamodbs_lexical_rules() {
        use Kind::*;
        assert_eq!(
            kinds("SET a.b[12] = :v1+#n_2"),
            vec![
                (Name, "SET"),
                (Name, "a"),
                (Punct, "."),
                (Name, "b"),
                (Punct, "["),
                (Int, "12"),
                (Punct, "]"),
                (Punct, "="),
                (ValueRef, ":v1"),
                (Punct, "+"),
                (NameRef, "#n_2"),
            ]
        );
        assert_eq!(
            kinds("a<>b<=c>=d<e>f"),
            vec![
                (Name, "a"),
                (Punct, "<>"),
                (Name, "b"),
                (Punct, "<="),
                (Name, "c"),
                (Punct, ">="),
                (Name, "d"),
                (Punct, "<"),
                (Name, "e"),
                (Punct, ">"),
                (Name, "f"),
            ]
        );
        // Names cannot start with "_" or a digit; "#" and ":" need a word after them.
        assert_eq!(kinds("_123"), vec![(Other, "_"), (Int, "123")]);
        assert_eq!(kinds("123a"), vec![(Int, "123"), (Name, "a")]);
        assert_eq!(kinds("# :"), vec![(Other, "#"), (Other, ":")]);
        assert_eq!(kinds("#123 :_"), vec![(NameRef, "#123"), (ValueRef, ":_")]);
        assert_eq!(
            kinds("hi-there"),
            vec![(Name, "hi"), (Punct, "-"), (Name, "there")]
        );
        assert_eq!(kinds("é!"), vec![(Other, "é"), (Other, "!")]);
        assert_eq!(kinds(" \t\r\n"), vec![]);
        let t = tokenize("  ab  ");
        assert_eq!((t[0].start, t[0].end()), (2, 4));
    }
}
