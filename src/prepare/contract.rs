//! The `.env.example` contract: the keys a service expects, in file order.
//!
//! The grammar is what such files hold in practice: comments, blank lines, an
//! optional `export`, and placeholder values that may be quoted (and then may
//! span lines). Only the key names matter; placeholders are never used.
//! Comments may state rules (`# hostenv: ...`, rules.rs), which name only
//! keys of the contract.

use std::path::Path;

use super::rules::{self, Ruled};
use crate::protocol::error::{Error, Result};
use crate::settings::names::is_valid_key_name;

/// Contracts are small; a larger file is almost certainly the wrong file.
const MAX_CONTRACT_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContractKey {
    pub name: String,
    pub line: usize,
    /// The placeholder as written (quotes included, lines joined), for `lint`.
    pub placeholder: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contract {
    /// The path as the request gave it.
    pub path: String,
    pub keys: Vec<ContractKey>,
    /// The rules its comments state, in file order.
    pub rules: Vec<Ruled>,
}

impl Contract {
    pub fn has(&self, name: &str) -> bool {
        self.keys.iter().any(|key| key.name == name)
    }

    /// Where `name` stands in the contract; keys it lacks sort last.
    pub fn position(&self, name: &str) -> usize {
        self.keys
            .iter()
            .position(|key| key.name == name)
            .unwrap_or(usize::MAX)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|key| key.name.as_str())
    }

    /// Whether a rule decides when `name` needs a value (one of a group, or
    /// required when another key has some value), so that a request need
    /// not list it in `optional`.
    pub fn ruled(&self, name: &str) -> bool {
        self.rules.iter().any(|r| r.rule.governs(name))
    }
}

pub fn load(path: &str) -> Result<Contract> {
    let unreadable = |reason: String| Error::ContractUnreadable {
        path: path.to_string(),
        reason,
    };
    let metadata = std::fs::metadata(Path::new(path)).map_err(|e| {
        // A relative path is read from where hostenv runs, which a pipeline
        // author cannot always see: say where that was.
        match std::env::current_dir() {
            Ok(dir) if Path::new(path).is_relative() => unreadable(format!(
                "{e} (resolved against the working directory `{}`)",
                dir.display()
            )),
            _ => unreadable(e.to_string()),
        }
    })?;
    if metadata.is_dir() {
        return Err(unreadable("it is a directory".into()));
    }
    if !metadata.is_file() {
        return Err(unreadable("it is not a regular file".into()));
    }
    if metadata.len() > MAX_CONTRACT_BYTES {
        return Err(unreadable(format!(
            "it is larger than {MAX_CONTRACT_BYTES} bytes"
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| unreadable(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|_| unreadable("it is not UTF-8".into()))?;
    parse(path, &text)
}

pub fn parse(path: &str, text: &str) -> Result<Contract> {
    let invalid = |line: usize, reason: String| Error::ContractInvalid {
        path: path.to_string(),
        line,
        reason,
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut keys: Vec<ContractKey> = Vec::new();
    let mut rules: Vec<Ruled> = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        let number = index + 1;
        let line = lines[index].trim();
        index += 1;
        if let Some(rule) = rules::on_line(line) {
            let rule = rule.map_err(|reason| invalid(number, reason))?;
            rules.push(Ruled { rule, line: number });
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let assignment = strip_export(line);
        let Some((name, placeholder)) = assignment.split_once('=') else {
            return Err(invalid(number, "no `=` on this line".into()));
        };
        let name = name.trim_end();
        if !is_valid_key_name(name) {
            return Err(invalid(
                number,
                format!("`{name}` is not a valid variable name (letters, digits, `_`; not starting with a digit)"),
            ));
        }
        if let Some(first) = keys.iter().find(|key| key.name == name) {
            return Err(invalid(
                number,
                format!("duplicate key `{name}` (first at line {})", first.line),
            ));
        }
        let mut text = placeholder.trim().to_string();
        let mut open = open_quote(placeholder.trim_start());
        while let Some(quote) = open {
            let Some(next) = lines.get(index) else {
                return Err(invalid(
                    number,
                    format!("the quoted value of `{name}` is never closed"),
                ));
            };
            index += 1;
            text.push('\n');
            text.push_str(next);
            open = continue_quote(next, quote);
        }
        keys.push(ContractKey {
            name: name.to_string(),
            line: number,
            placeholder: text,
        });
    }
    for ruled in &rules {
        if let Some(unknown) = ruled
            .rule
            .keys()
            .into_iter()
            .find(|key| !keys.iter().any(|k| k.name == *key))
        {
            return Err(invalid(
                ruled.line,
                format!("the rule names `{unknown}`, which is not a key of this contract"),
            ));
        }
    }
    Ok(Contract {
        path: path.to_string(),
        keys,
        rules,
    })
}

fn strip_export(line: &str) -> &str {
    match line.strip_prefix("export") {
        Some(rest) if rest.starts_with([' ', '\t']) => rest.trim_start(),
        _ => line,
    }
}

/// The quote still open at the end of a placeholder's first line, if any.
fn open_quote(placeholder: &str) -> Option<char> {
    let quote = placeholder
        .chars()
        .next()
        .filter(|c| *c == '"' || *c == '\'')?;
    continue_quote(&placeholder[1..], quote)
}

/// Scans a piece of quoted text; returns the quote if it is still open at the end.
fn continue_quote(text: &str, quote: char) -> Option<char> {
    let mut escaped = false;
    for c in text.chars() {
        if escaped {
            escaped = false;
        } else if c == '\\' && quote == '"' {
            escaped = true;
        } else if c == quote {
            return None;
        }
    }
    Some(quote)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Vec<String> {
        parse("c", text)
            .unwrap()
            .keys
            .into_iter()
            .map(|k| k.name)
            .collect()
    }

    fn error(text: &str) -> String {
        parse(".env.example", text).unwrap_err().to_string()
    }

    #[test]
    fn reads_comments_blank_lines_export_and_quoted_placeholders() {
        let text = "# Backend\n\nJWT_SECRET=change-me\nexport MONGODB_URI=\"mongodb://localhost\"\n  LOG_LEVEL = info # trailing\nTLS_CA='-----BEGIN\nstill the placeholder\n'\nEMPTY=\n";
        assert_eq!(
            names(text),
            ["JWT_SECRET", "MONGODB_URI", "LOG_LEVEL", "TLS_CA", "EMPTY"]
        );
    }

    #[test]
    fn a_variable_called_export_is_a_key() {
        assert_eq!(names("export=1\nexported=2\n"), ["export", "exported"]);
    }

    #[test]
    fn errors_name_file_and_line() {
        assert_eq!(
            error("A=1\nB=2\nA=3\n"),
            "contract `.env.example` line 3: duplicate key `A` (first at line 1)"
        );
        assert_eq!(
            error("A=1\nJUST TEXT\n"),
            "contract `.env.example` line 2: no `=` on this line"
        );
        assert!(
            error("1ABC=x\n").starts_with("contract `.env.example` line 1: `1ABC` is not a valid")
        );
        assert!(error("A-B=x\n").contains("`A-B` is not a valid"));
        assert_eq!(
            error("A=\"open\nB=2\n"),
            "contract `.env.example` line 1: the quoted value of `A` is never closed"
        );
    }

    #[test]
    fn escaped_quote_does_not_close_a_double_quoted_placeholder() {
        assert_eq!(names("A=\"x\\\"\ny\"\nB=1\n"), ["A", "B"]);
    }
}
