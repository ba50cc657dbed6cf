//! The grammar of systemd's `EnvironmentFile=` (systemd.exec(5)), on every
//! systemd from v219 (RHEL 7) to v262 (the newest booted by the tests; a
//! newer one is read as v262 reads).
//!
//! The grammar changed over those versions (systemd's `env-file.c`, before
//! v240 `fileio.c`): inside `"..."` a backslash escaped anything up to v240,
//! only `\"` in v241-v246, and `\"`, `\\`, `` \` ``, `\$` from v247, and a
//! backslash before a line break removed both (LF and CR up to v246, LF only
//! from v247); inside `'...'` a backslash escaped as well up to v240; control
//! characters other than TAB (and, from v239, LF) made systemd drop the
//! assignment up to v247 (Debian 11's 247.3 keeps them; hostenv stays on the
//! safe side); a comment ending in `\` swallowed the next line up to v253.
//! An unquoted `\X` reads as `X` on every version, and `$` and backtick are
//! never expanded. The tests boot v247, v252, v257 and v262 and compare what
//! their services receive with these readers.
//!
//! So the writer spells each value in the one way every version reads alike:
//! the part before its first backslash inside double quotes (only `"`
//! escaped, as `\"`), the rest unquoted with every character that could end
//! or trim it (`\`, space, TAB, quotes, `#`, `;`) backslash-escaped. A newline
//! or CR after a backslash has no such spelling; with `target.systemdMin` 241
//! to 246 such a value goes in single quotes, which hold every character as
//! it is from v241; with 247 or later the writer quotes everything the v247
//! way instead, which spells it. A value some version drops is written all
//! the same and refused per host, once the host's version is known (or up
//! front with `target.systemdMin`).
//!
//! The reader is a separate character-level state machine following systemd's
//! own parser, parameterized by grammar generation, so a writer bug shows up
//! as a round-trip mismatch instead of a wrong file.

use super::Assignment;

/// Longest `KEY=VALUE` a process can receive: MAX_ARG_STRLEN (32 pages) less the NUL.
pub const MAX_ASSIGNMENT_BYTES: usize = 131_071;
/// The oldest systemd hostenv writes for (RHEL 7) and the newest whose reader it models.
pub const OLDEST: u32 = 219;
pub const NEWEST: u32 = 262;

/// Linux's bound on a process's arguments and environment together: a
/// quarter of its stack limit, 2 MiB under systemd's default 8 MiB
/// (`LimitSTACK=`). A service whose file holds more fails to start on every
/// generation (measured on v247, v257 and v262: 2,000,094 bytes of values
/// started, 2,100,099 did not); the rest is room for the unit's own
/// `Environment=`, systemd's variables and the command line.
pub const MAX_ENVIRONMENT_BYTES: u64 = (2 << 20) - (64 << 10);

/// What `assignments` take of a process's environment: each `KEY=VALUE`,
/// its NUL and the pointer to it.
pub fn environment_bytes<'a>(assignments: impl IntoIterator<Item = (&'a str, &'a str)>) -> u64 {
    assignments
        .into_iter()
        .map(|(key, value)| key.len() as u64 + 1 + value.len() as u64 + 1 + 8)
        .sum()
}

/// The largest environment file systemd `version` reads, in bytes (a larger
/// one fails the unit's start). v247 read exactly 4 MiB and refused one byte
/// more when booted here, v257 and v262 read more than 4 MiB (their limit is
/// 64 MiB); v248's is 4 MiB less a byte and v219's 2 MiB, read from their
/// code. v220-v246 were never booted: hostenv holds them to v219's.
pub fn max_file_bytes(version: u32) -> u64 {
    match version {
        ..=246 => 2 << 20,
        247 => 4 << 20,
        248 => (4 << 20) - 1,
        _ => (64 << 20) - 1,
    }
}
/// From this version on, a fully double-quoted value spells every character.
const QUOTES_SPELL_ALL: u32 = 247;
/// From this version on, single quotes hold every character as it is.
const SINGLE_QUOTES_LITERAL: u32 = 241;

const HEADER: &str =
    "# Managed by hostenv: edits on this host are overwritten by the next deploy.\n";

/// One generation of the grammar: the versions from `since` on read a file alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Generation {
    /// v219-v238: `\X` -> `X` inside quotes, `\`+newline removed; control characters but TAB dropped.
    V219,
    /// v239-v240: `\X` -> `X` inside quotes; control characters but TAB and LF dropped.
    V239,
    /// v241-v246: inside quotes only `\"` -> `"`, any other `\X` kept as it is.
    V241,
    /// v247: `\"`, `\\`, `` \` ``, `\$` unescaped inside quotes; still drops control characters.
    V247,
    /// v248-v253: nothing dropped.
    V248,
    /// v254 and later: a comment ending in `\` no longer swallows the next line.
    V254,
}

impl Generation {
    pub const ALL: [Generation; 6] = [
        Generation::V219,
        Generation::V239,
        Generation::V241,
        Generation::V247,
        Generation::V248,
        Generation::V254,
    ];

    pub fn since(self) -> u32 {
        match self {
            Generation::V219 => 219,
            Generation::V239 => 239,
            Generation::V241 => 241,
            Generation::V247 => 247,
            Generation::V248 => 248,
            Generation::V254 => 254,
        }
    }

    /// The generation a systemd version reads with (versions before v219 as v219's).
    pub fn of(version: u32) -> Generation {
        Generation::ALL
            .into_iter()
            .rev()
            .find(|g| g.since() <= version)
            .unwrap_or(Generation::V219)
    }

    /// Every generation a host of version `min` or later may read with.
    pub fn from(min: u32) -> impl Iterator<Item = Generation> {
        let first = Generation::of(min);
        Generation::ALL.into_iter().filter(move |g| *g >= first)
    }

    /// What `\c` inside double quotes reads as: one character, the two as
    /// they are, or nothing (an escaped line break removed: LF and CR up to
    /// v246, LF only from v247).
    fn quoted_escape(self, c: char) -> Escaped {
        match self {
            _ if self < Generation::V247 && is_newline(c) => Escaped::Nothing,
            Generation::V219 | Generation::V239 => Escaped::Char,
            Generation::V241 if c == '"' => Escaped::Char,
            Generation::V241 => Escaped::Both,
            _ if matches!(c, '"' | '\\' | '`' | '$') => Escaped::Char,
            _ if c == '\n' => Escaped::Nothing,
            _ => Escaped::Both,
        }
    }

    /// Why this generation drops an assignment with `value`, if it does.
    pub fn drops(self, value: &str) -> Option<&'static str> {
        let control = |allowed: &[char]| {
            value
                .chars()
                .any(|c| (c < ' ' || c == '\u{7f}') && !allowed.contains(&c))
        };
        match self {
            Generation::V219 if value.contains('\n') => Some("a newline"),
            Generation::V219 if control(&['\t']) => Some("a control character"),
            Generation::V239 | Generation::V241 | Generation::V247 if control(&['\t', '\n']) => {
                Some("a control character other than TAB and newline")
            }
            _ => None,
        }
    }

    /// Up to v240 a backslash escapes inside single quotes too (`'a\'b'` reads
    /// `a'b`, an escaped line break is removed); from v241 single quotes
    /// hold every character as it is.
    fn single_quotes_escape(self) -> bool {
        self < Generation::V241
    }

    /// Up to v253 a backslash at the end of a comment continues it on the next line.
    fn comments_continue(self) -> bool {
        self < Generation::V254
    }
}

enum Escaped {
    Char,
    Both,
    Nothing,
}

/// Why a value cannot be written faithfully.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unfit {
    /// systemd reads the file as C strings: a NUL ends the value.
    Nul,
    /// The assignment would not fit in a process's environment.
    TooLong { bytes: usize },
    /// A Unicode noncharacter: systemd's UTF-8 check fails the whole file.
    Noncharacter,
    /// A newline or CR after a backslash: no spelling reads alike before v241.
    NoSpelling,
    /// systemd `version` drops the assignment; `kept_from` on keep it.
    Dropped {
        what: &'static str,
        version: u32,
        kept_from: u32,
    },
}

impl Unfit {
    pub fn describe(&self) -> String {
        match self {
            Unfit::Nul => "the value holds a NUL character, which an environment cannot carry".into(),
            Unfit::TooLong { bytes } => format!(
                "KEY=VALUE is {bytes} bytes; a process environment entry holds at most {MAX_ASSIGNMENT_BYTES}"
            ),
            Unfit::Noncharacter => "the value holds a Unicode noncharacter (U+FDD0-U+FDEF, or U+xFFFE/U+xFFFF), which makes systemd refuse the whole file".into(),
            Unfit::NoSpelling => format!(
                "the value has a newline or CR after a backslash, which systemd before v{SINGLE_QUOTES_LITERAL} cannot read back; set `target.systemdMin` to {SINGLE_QUOTES_LITERAL} if every host runs v{SINGLE_QUOTES_LITERAL} or later"
            ),
            Unfit::Dropped { what, version, kept_from } => format!(
                "systemd v{version} drops a value holding {what} (v{kept_from} and later keep it)"
            ),
        }
    }
}

/// Checks that `key=value` can be written and read back exactly by every
/// systemd from `min` (the request's `target.systemdMin`) on; without one, by
/// every version that keeps it (what a host's own version drops is refused on
/// that host: [`dropped_on`]).
pub fn check_for(key: &str, value: &str, min: Option<u32>) -> Result<(), Unfit> {
    if value.contains('\0') {
        return Err(Unfit::Nul);
    }
    let bytes = key.len() + 1 + value.len();
    if bytes > MAX_ASSIGNMENT_BYTES {
        return Err(Unfit::TooLong { bytes });
    }
    if value.chars().any(is_noncharacter) {
        return Err(Unfit::Noncharacter);
    }
    if min.unwrap_or(OLDEST) < SINGLE_QUOTES_LITERAL && !universal_spelling(value) {
        return Err(Unfit::NoSpelling);
    }
    match min {
        Some(version) => dropped_on(value, version).map_or(Ok(()), Err),
        None => Ok(()),
    }
}

/// [`check_for`] without a stated minimum version.
pub fn check(key: &str, value: &str) -> Result<(), Unfit> {
    check_for(key, value, None)
}

/// Whether a host running systemd `version` drops `value`, and why.
pub fn dropped_on(value: &str, version: u32) -> Option<Unfit> {
    let what = Generation::of(version).drops(value)?;
    let kept_from = Generation::ALL
        .into_iter()
        .find(|g| g.drops(value).is_none())
        .map_or(NEWEST, Generation::since);
    Some(Unfit::Dropped {
        what,
        version,
        kept_from,
    })
}

/// U+FDD0-U+FDEF and the last two code points of every plane.
fn is_noncharacter(c: char) -> bool {
    let code = c as u32;
    (0xFDD0..=0xFDEF).contains(&code) || code & 0xFFFE == 0xFFFE
}

/// Whether the value reads alike on every version when spelled universally:
/// no newline or CR after its first backslash.
fn universal_spelling(value: &str) -> bool {
    match value.find('\\') {
        Some(at) => !value[at..].contains(['\n', '\r']),
        None => true,
    }
}

/// Renders assignments in the given order for hosts of systemd `min` or later
/// (`target.systemdMin`; every version from v219 without one). Callers check
/// each with [`check_for`] first.
pub fn render_for<'a>(
    assignments: impl IntoIterator<Item = (&'a str, &'a str)>,
    min: Option<u32>,
) -> String {
    let quote_all = min.is_some_and(|m| m >= QUOTES_SPELL_ALL);
    let single_quotes_literal = min.is_some_and(|m| m >= SINGLE_QUOTES_LITERAL);
    let mut out = String::from(HEADER);
    for (key, value) in assignments {
        out.push_str(key);
        out.push('=');
        if quote_all {
            quoted_v247(&mut out, value);
        } else if single_quotes_literal && !universal_spelling(value) {
            single_quoted(&mut out, value);
        } else {
            universal(&mut out, value);
        }
        out.push('\n');
    }
    out
}

/// [`render_for`] for every version from v219.
pub fn render<'a>(assignments: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    render_for(assignments, None)
}

/// The part before the first backslash in double quotes, the rest unquoted
/// and escaped.
fn universal(out: &mut String, value: &str) {
    let (quoted, rest) = value.split_at(value.find('\\').unwrap_or(value.len()));
    out.push('"');
    for c in quoted.chars() {
        if c == '"' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    for c in rest.chars() {
        if matches!(c, '\\' | ' ' | '\t' | '"' | '\'' | '#' | ';') {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Everything in single quotes, which hold every character as it is from
/// v241 on; a `'` itself closes them, stands in double quotes and reopens
/// them (`'it'"'"'s'`): for a newline or CR after a backslash on v241-v246.
fn single_quoted(out: &mut String, value: &str) {
    out.push('\'');
    for c in value.chars() {
        if c == '\'' {
            out.push_str("'\"'\"'");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
}

/// Everything in double quotes with `"`, `\`, `` ` `` and `$` escaped (v247 and later).
fn quoted_v247(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        if matches!(c, '"' | '\\' | '`' | '$') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    PreKey,
    Key,
    PreValue,
    Value,
    ValueEscape,
    SingleQuote,
    SingleQuoteEscape,
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
/// systemd ignores because they have no `=` are reported by line number, and
/// assignments it drops for their value are set apart.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub assignments: Vec<Assignment>,
    pub lines_without_assignment: Vec<usize>,
    pub dropped: Vec<Assignment>,
}

/// What the newest generation reads (v254 and later): the grammar hostenv
/// reads a CI's whole `envFile` and the hosts' current files in.
pub fn parse(text: &str) -> Parsed {
    parse_as(text, Generation::V254)
}

/// What systemd of `generation` reads from `text`.
pub fn parse_as(text: &str, generation: Generation) -> Parsed {
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
                } else if c == '\\' && generation.single_quotes_escape() {
                    state = State::SingleQuoteEscape;
                } else {
                    value.push(c);
                }
            }
            State::SingleQuoteEscape => {
                state = State::SingleQuote;
                if !is_newline(c) {
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
                match generation.quoted_escape(c) {
                    Escaped::Char => value.push(c),
                    Escaped::Both => {
                        value.push('\\');
                        value.push(c);
                    }
                    Escaped::Nothing => {}
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
                state = if is_newline(c) && !generation.comments_continue() {
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
        | State::SingleQuoteEscape
        | State::DoubleQuote
        | State::DoubleQuoteEscape => push(&mut key, &mut value, key_trim, start_line),
        State::Key => parsed.lines_without_assignment.push(start_line),
        State::PreKey | State::Comment | State::CommentEscape => {}
    }
    let (kept, dropped) = std::mem::take(&mut parsed.assignments)
        .into_iter()
        .partition(|a| generation.drops(&a.value).is_none());
    parsed.assignments = kept;
    parsed.dropped = dropped;
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

    fn read_as(text: &str, generation: Generation) -> Vec<(String, String)> {
        parse_as(text, generation)
            .assignments
            .into_iter()
            .map(|a| (a.key, a.value))
            .collect()
    }

    const AWKWARD: &[&str] = &[
        "",
        " lead",
        "trail ",
        "\ttab\t",
        "q\"uote",
        "sq'uote",
        "back\\slash",
        "\\",
        "\\ lead space after a backslash",
        "a\\ \t#;'\"b ",
        "$HOME",
        "${X}",
        "`cmd`",
        "#hash",
        ";semi",
        "a=b",
        "line1\nline2\n",
        "line\nthen \\ a backslash",
        "\r\n",
        "\u{1}ctl",
        "ünïcødé ✓ 𝄞",
    ];

    #[test]
    fn one_spelling_reads_back_alike_on_every_generation() {
        let entries: Vec<(String, String)> = AWKWARD
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("K{i}"), v.to_string()))
            .collect();
        for (key, value) in &entries {
            assert_eq!(check(key, value), Ok(()), "{value:?}");
        }
        let text = render(entries.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        for generation in Generation::ALL {
            let kept: Vec<(String, String)> = entries
                .iter()
                .filter(|(_, v)| generation.drops(v).is_none())
                .cloned()
                .collect();
            assert_eq!(read_as(&text, generation), kept, "{generation:?}");
        }
        // What each generation drops: newlines before v239, other control characters before v248.
        assert_eq!(parse_as(&text, Generation::V219).dropped.len(), 4);
        assert_eq!(parse_as(&text, Generation::V239).dropped.len(), 2);
        assert_eq!(parse_as(&text, Generation::V248).dropped.len(), 0);
    }

    #[test]
    fn a_newline_after_a_backslash_needs_v241() {
        // Single quotes spell it on v241-v246, double quotes from v247; a CR
        // is a control character as well: kept from v248.
        for (value, min) in [
            ("\\\n", 241),
            ("a\\b\nc'd \"e\" $f", 241),
            ("'\\\n'", 246),
            ("a\\b\nc", 247),
            ("\\\r", 248),
        ] {
            assert_eq!(check("K", value), Err(Unfit::NoSpelling), "{value:?}");
            assert_eq!(check_for("K", value, Some(min)), Ok(()));
            let text = render_for([("K", value)], Some(min));
            for generation in Generation::from(min) {
                assert_eq!(read_as(&text, generation), [pair("K", value)]);
            }
            // The universal spelling would lose it: why it is refused below v241.
            let universal = render([("K", value)]);
            assert_ne!(read_as(&universal, Generation::V254), [pair("K", value)]);
        }
    }

    #[test]
    fn the_generations_read_quoted_backslashes_as_their_systemd_did() {
        // A: escapes in double quotes; B and C: a backslash before LF and
        // before CR in double quotes; D: a backslash in single quotes.
        let text = "A=\"x\\\\y\\$z\\q\\\"\"\nB=\"l\\\nm\"\nC=\"l\\\rm\"\nD='a\\'b'\n";
        let row = |g| read_as(text, g);
        let old_single = pair("D", "a'b");
        assert_eq!(
            row(Generation::V219),
            [
                pair("A", "x\\y$zq\""),
                pair("B", "lm"),
                pair("C", "lm"),
                old_single.clone()
            ]
        );
        assert_eq!(
            row(Generation::V239),
            [
                pair("A", "x\\y$zq\""),
                pair("B", "lm"),
                pair("C", "lm"),
                old_single
            ]
        );
        let new_single = pair("D", "a\\b'");
        assert_eq!(
            row(Generation::V241),
            [
                pair("A", "x\\\\y\\$z\\q\""),
                pair("B", "lm"),
                pair("C", "lm"),
                new_single.clone()
            ]
        );
        // v247 drops C, whose value holds a CR; v248 keeps it, backslash and all.
        assert_eq!(
            row(Generation::V247),
            [
                pair("A", "x\\y$z\\q\""),
                pair("B", "lm"),
                new_single.clone()
            ]
        );
        assert_eq!(
            row(Generation::V248),
            [
                pair("A", "x\\y$z\\q\""),
                pair("B", "lm"),
                pair("C", "l\\\rm"),
                new_single
            ]
        );
        // A comment ending in a backslash swallowed the next line up to v253.
        let comment = "# note \\\nA=1\nB=2\n";
        assert_eq!(read_as(comment, Generation::V248), [pair("B", "2")]);
        assert_eq!(
            read_as(comment, Generation::V254),
            [pair("A", "1"), pair("B", "2")]
        );
    }

    #[test]
    fn noncharacters_and_dropped_values_are_named() {
        for value in ["\u{FDD0}", "a\u{FFFE}", "\u{10FFFF}", "\u{1FFFE}"] {
            assert_eq!(check("K", value), Err(Unfit::Noncharacter), "{value:?}");
        }
        assert_eq!(check("K", "\u{FDCF}\u{FFFD}"), Ok(()));
        assert_eq!(
            dropped_on("a\nb", 219),
            Some(Unfit::Dropped {
                what: "a newline",
                version: 219,
                kept_from: 239
            })
        );
        assert_eq!(dropped_on("a\nb", 239), None);
        assert!(matches!(
            dropped_on("a\rb", 246),
            Some(Unfit::Dropped { kept_from: 248, .. })
        ));
        assert_eq!(
            check_for("K", "a\nb", Some(230)).unwrap_err().describe(),
            "systemd v230 drops a value holding a newline (v239 and later keep it)"
        );
        assert_eq!(Generation::of(245), Generation::V241);
        assert_eq!(Generation::of(260), Generation::V254);
        assert_eq!(Generation::from(240).collect::<Vec<_>>().len(), 5);
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
