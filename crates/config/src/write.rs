//! Writing a config back as TOML ([`Config::to_toml`]), in the syntax the parser
//! reads: durations as "500ms", TTLs as seconds, secrets as their `*_file` / `*_env`
//! references (the config never holds a secret itself).

use crate::Config;
use serde::Deserialize;

impl Config {
    /// This config as TOML text that [`Config::parse`] reads back as the same config
    /// (`source` aside: it is where a file was read from, not a key). Keys whose value
    /// is their default are left out, so the text says only what was chosen.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        let wanted = Config {
            source: Default::default(),
            ..self.clone()
        };
        let full = toml::Value::try_from(&wanted)?;
        toml::to_string(&leave_out_defaults(full, &wanted))
    }
}

/// One step from a value to a value inside it: a table's key, or an array's element.
#[derive(Clone)]
enum Step {
    Key(String),
    Index(usize),
}

/// `value` without every key that, left out, reads as the same config (a default).
/// Keys are tried deepest first, so a table whose keys all went is tried as a whole
/// after them.
fn leave_out_defaults(value: toml::Value, wanted: &Config) -> toml::Value {
    let mut paths = Vec::new();
    key_paths(&value, &mut Vec::new(), &mut paths);
    let mut value = value;
    for path in paths.iter().rev() {
        let mut trial = value.clone();
        if remove_at(&mut trial, path)
            && Config::deserialize(trial.clone()).is_ok_and(|c| c == *wanted)
        {
            value = trial;
        }
    }
    value
}

/// The path of every key under `value`, parents before their children. The tables
/// in an array (`[[dns.records]]`) are descended into, never removed themselves.
fn key_paths(value: &toml::Value, at: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                at.push(Step::Key(k.clone()));
                out.push(at.clone());
                key_paths(v, at, out);
                at.pop();
            }
        }
        toml::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                at.push(Step::Index(i));
                key_paths(v, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

/// Remove the key at the end of `path`; false if there is none.
fn remove_at(value: &mut toml::Value, path: &[Step]) -> bool {
    match path {
        [] => false,
        [Step::Key(k)] => value.as_table_mut().is_some_and(|t| t.remove(k).is_some()),
        [Step::Index(_)] => false,
        [step, rest @ ..] => {
            let next = match (step, value) {
                (Step::Key(k), toml::Value::Table(t)) => t.get_mut(k),
                (Step::Index(i), toml::Value::Array(a)) => a.get_mut(*i),
                _ => None,
            };
            next.is_some_and(|v| remove_at(v, rest))
        }
    }
}
