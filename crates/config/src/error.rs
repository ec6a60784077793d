//! Config errors that say what is wrong and where: file, line, column and key.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the position is unknown (for example: a missing table).
    pub line: usize,
    pub column: usize,
    /// Dotted key path, e.g. `regions.b.agent_addr`; empty for syntax errors.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": key `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one file (validation collects them all, not just the first).
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Errors reading a config file before it can be parsed at all.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(#[from] ConfigErrors),
}

/// 1-based line and column of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(before.chars().count(), |nl| {
        before[nl + 1..].chars().count()
    }) + 1;
    (line, col)
}

/// Collects semantic problems, each located by its key path in the source document.
pub struct Validator<'a> {
    file: &'a Path,
    text: &'a str,
    doc: Option<toml_edit::Document<&'a str>>,
    pub(crate) errors: Vec<ConfigError>,
}

impl<'a> Validator<'a> {
    pub(crate) fn new(file: &'a Path, text: &'a str) -> Self {
        Self {
            file,
            text,
            doc: toml_edit::Document::parse(text).ok(),
            errors: Vec::new(),
        }
    }

    /// Report a problem at `path`: dotted keys with `[n]` for array elements, e.g.
    /// `regions.a.services[0].command`. The position is the value's (or, failing that,
    /// the nearest enclosing table's) place in the file.
    pub fn error(&mut self, path: &str, message: impl Into<String>) {
        let offset = self.locate(path);
        let (line, column) = offset.map_or((0, 0), |o| line_col(self.text, o));
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            key: path.to_owned(),
            message: message.into(),
        });
    }

    fn locate(&self, path: &str) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let mut cur = Cursor::Item(doc.as_item());
        let mut best = None;
        for seg in parse_path(path) {
            let next = match (seg, cur) {
                (Seg::Key(k), Cursor::Item(item)) => item.as_table_like().and_then(|t| {
                    t.get_key_value(&k)
                        .map(|(key, value)| (key.span(), Cursor::Item(value)))
                }),
                (Seg::Key(k), Cursor::Table(t)) => t
                    .get_key_value(&k)
                    .map(|(key, value)| (key.span(), Cursor::Item(value))),
                (Seg::Index(i), Cursor::Item(toml_edit::Item::ArrayOfTables(a))) => {
                    a.get(i).map(|t| (t.span(), Cursor::Table(t)))
                }
                (
                    Seg::Index(i),
                    Cursor::Item(toml_edit::Item::Value(toml_edit::Value::Array(a))),
                ) => a.get(i).map(|v| (v.span(), Cursor::Leaf)),
                _ => None,
            };
            match next {
                Some((span, c)) => {
                    // Prefer the key's own position: that is where a person looks.
                    if let Some(span) = span {
                        best = Some(span.start);
                    }
                    cur = c;
                }
                None => break,
            }
        }
        best
    }
}

#[derive(Clone, Copy)]
enum Cursor<'d> {
    Item(&'d toml_edit::Item),
    Table(&'d toml_edit::Table),
    Leaf,
}

enum Seg {
    Key(String),
    Index(usize),
}

fn parse_path(path: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            let (key, idx) = rest.split_at(open);
            if !key.is_empty() {
                out.push(Seg::Key(key.to_owned()));
            }
            rest = idx;
            while let Some(stripped) = rest.strip_prefix('[') {
                let Some(close) = stripped.find(']') else {
                    break;
                };
                if let Ok(n) = stripped[..close].parse() {
                    out.push(Seg::Index(n));
                }
                rest = &stripped[close + 1..];
            }
        } else if !rest.is_empty() {
            out.push(Seg::Key(rest.to_owned()));
        }
    }
    out
}
