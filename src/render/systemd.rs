//! The grammar of systemd's `EnvironmentFile=` (systemd.exec(5)).
//!
//! The writer double-quotes every value and backslash-escapes the four
//! characters that are special inside double quotes (`"`, `\`, `` ` ``, `$`);
//! everything else, newlines and tabs included, stands as it is. The reader is a
//! separate character-level state machine following systemd's own parser, so a
//! writer bug shows up as a round-trip mismatch instead of a wrong file.

use super::Assignment;

/// Longest `KEY=VALUE` a process can receive: MAX_ARG_STRLEN (32 pages) less the NUL.
pub const MAX_ASSIGNMENT_BYTES: usize = 131_071;

const HEADER: &str =
    "# Managed by hostenv: edits on this host are overwritten by the next deploy.\n";

/// Why a value cannot be written faithfully.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unfit {
    /// systemd reads the file as C strings: a NUL ends the value.
    Nul,
    /// The assignment would not fit in a process's environment.
    TooLong { bytes: usize },
}

impl Unfit {
    pub fn describe(&self) -> String {
        match self {
            Unfit::Nul => "the value holds a NUL character, which an environment cannot carry".into(),
            Unfit::TooLong { bytes } => format!(
                "KEY=VALUE is {bytes} bytes; a process environment entry holds at most {MAX_ASSIGNMENT_BYTES}"
            ),
        }
    }
}

/// Checks that `key=value` can be written and read back exactly.
pub fn check(key: &str, value: &str) -> Result<(), Unfit> {
    if value.contains('\0') {
        return Err(Unfit::Nul);
    }
    let bytes = key.len() + 1 + value.len();
    if bytes > MAX_ASSIGNMENT_BYTES {
        return Err(Unfit::TooLong { bytes });
    }
    Ok(())
}

/// Renders assignments in the given order. Callers check each with [`check`] first.
pub fn render<'a>(assignments: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::from(HEADER);
    for (key, value) in assignments {
        out.push_str(key);
        out.push_str("=\"");
        for c in value.chars() {
            if matches!(c, '"' | '\\' | '`' | '$') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push_str("\"\n");
    }
    out
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    PreKey,
    Key,
    PreValue,
    Value,
    ValueEscape,
    SingleQuote,
    DoubleQuote,
    DoubleQuoteEscape,
    Comment,
    CommentEscape,
}

fn is_newline(c: char) -> bool {
    c == '\n' || c == '\r'
}

fn is_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// What systemd would load from `text`, in file order; a later duplicate wins in
/// systemd, so duplicates are kept here for the caller to judge. Lines that
/// systemd ignores because they have no `=` are reported by line number.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub assignments: Vec<Assignment>,
    pub lines_without_assignment: Vec<usize>,
}

pub fn parse(text: &str) -> Parsed {
    let mut parsed = Parsed::default();
    let mut state = State::PreKey;
    let mut line = 1;
    let mut start_line = 1;
    let mut key = String::new();
    let mut value = String::new();
    // Length of `key` / `value` before their trailing run of whitespace.
    let mut key_trim: Option<usize> = None;
    let mut value_trim: Option<usize> = None;

    let mut push = |key: &mut String, value: &mut String, key_trim: Option<usize>, at: usize| {
        if let Some(len) = key_trim {
            key.truncate(len);
        }
        parsed.assignments.push(Assignment {
            key: std::mem::take(key),
            value: std::mem::take(value),
            line: at,
        });
    };

    for c in text.chars() {
        match state {
            State::PreKey => {
                if c == '#' || c == ';' {
                    state = State::Comment;
                } else if !is_whitespace(c) {
                    state = State::Key;
                    start_line = line;
                    key_trim = None;
                    key.push(c);
                }
            }
            State::Key => {
                if is_newline(c) {
                    parsed.lines_without_assignment.push(start_line);
                    state = State::PreKey;
                    key.clear();
                } else if c == '=' {
                    state = State::PreValue;
                    value_trim = None;
                } else {
                    if !is_whitespace(c) {
                        key_trim = None;
                    } else if key_trim.is_none() {
                        key_trim = Some(key.len());
                    }
                    key.push(c);
                }
            }
            State::PreValue => {
                if is_newline(c) {
                    state = State::PreKey;
                    push(&mut key, &mut value, key_trim, start_line);
                } else if c == '\'' {
                    state = State::SingleQuote;
                } else if c == '"' {
                    state = State::DoubleQuote;
                } else if c == '\\' {
                    state = State::ValueEscape;
                } else if !is_whitespace(c) {
                    state = State::Value;
                    value.push(c);
                }
            }
            State::Value => {
                if is_newline(c) {
                    state = State::PreKey;
                    if let Some(len) = value_trim {
                        value.truncate(len);
                    }
                    push(&mut key, &mut value, key_trim, start_line);
                } else if c == '\\' {
                    state = State::ValueEscape;
                    value_trim = None;
                } else {
                    if !is_whitespace(c) {
                        value_trim = None;
                    } else if value_trim.is_none() {
                        value_trim = Some(value.len());
                    }
                    value.push(c);
                }
            }
            State::ValueEscape => {
                state = State::Value;
                if !is_newline(c) {
                    value.push(c);
                }
            }
            State::SingleQuote => {
                if c == '\'' {
                    state = State::PreValue;
                } else {
                    value.push(c);
                }
            }
            State::DoubleQuote => {
                if c == '"' {
                    state = State::PreValue;
                } else if c == '\\' {
                    state = State::DoubleQuoteEscape;
                } else {
                    value.push(c);
                }
            }
            State::DoubleQuoteEscape => {
                state = State::DoubleQuote;
                if matches!(c, '"' | '\\' | '`' | '$') {
                    value.push(c);
                } else if c != '\n' {
                    value.push('\\');
                    value.push(c);
                }
            }
            State::Comment => {
                if c == '\\' {
                    state = State::CommentEscape;
                } else if is_newline(c) {
                    state = State::PreKey;
                }
            }
            State::CommentEscape => {
                state = if is_newline(c) {
                    State::PreKey
                } else {
                    State::Comment
                };
            }
        }
        if c == '\n' {
            line += 1;
        }
    }
    match state {
        State::Value => {
            if let Some(len) = value_trim {
                value.truncate(len);
            }
            push(&mut key, &mut value, key_trim, start_line);
        }
        State::PreValue
        | State::ValueEscape
        | State::SingleQuote
        | State::DoubleQuote
        | State::DoubleQuoteEscape => push(&mut key, &mut value, key_trim, start_line),
        State::Key => parsed.lines_without_assignment.push(start_line),
        State::PreKey | State::Comment | State::CommentEscape => {}
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(text: &str) -> Vec<(String, String)> {
        parse(text)
            .assignments
            .into_iter()
            .map(|a| (a.key, a.value))
            .collect()
    }

    fn pair(key: &str, value: &str) -> (String, String) {
        (key.to_string(), value.to_string())
    }

    #[test]
    fn reads_systemd_grammar() {
        let text = "# comment\n; also comment\n  A = plain value  \nB='single $HOME \\n'\nC=\"double \\\"q\\\" \\$x \\n\"\nD=a\\\n  b\nE=\nF\nG=\"multi\nline\"\n";
        assert_eq!(
            pairs(text),
            [
                pair("A", "plain value"),
                pair("B", "single $HOME \\n"),
                pair("C", "double \"q\" $x \\n"),
                pair("D", "a  b"),
                pair("E", ""),
                pair("G", "multi\nline"),
            ]
        );
        assert_eq!(parse(text).lines_without_assignment, [9]);
    }

    #[test]
    fn round_trips_awkward_values() {
        let values = [
            "",
            " lead",
            "trail ",
            "\ttab\t",
            "q\"uote",
            "sq'uote",
            "back\\slash",
            "\\",
            "$HOME",
            "${X}",
            "`cmd`",
            "#hash",
            ";semi",
            "a=b",
            "line1\nline2\n",
            "\r\n",
            "ünïcødé ✓",
            "\\\n",
        ];
        let entries: Vec<(String, String)> = values
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("K{i}"), v.to_string()))
            .collect();
        let text = render(entries.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(pairs(&text), entries);
    }

    #[test]
    fn refuses_nul_and_oversized_assignments() {
        assert_eq!(check("K", "a\0b"), Err(Unfit::Nul));
        let max = "x".repeat(MAX_ASSIGNMENT_BYTES - 2);
        assert_eq!(check("K", &max), Ok(()));
        assert_eq!(
            check("KK", &max),
            Err(Unfit::TooLong {
                bytes: MAX_ASSIGNMENT_BYTES + 1
            })
        );
    }
}
