//! The invariants that the fuzz targets (`fuzz/`) and the corpus replay in the
//! tests check, kept here so that both run exactly the same code. Each takes
//! any bytes and panics only when hostenv is wrong.

use crate::prepare::contract;
use crate::protocol::error::Error;
use crate::protocol::exit::Exit;
use crate::protocol::intake;
use crate::render::{dotenv, systemd};

/// The request reader: any bytes are a typed request or a rejection (exit 2)
/// whose message never repeats a string value of the document.
pub fn request(data: &[u8]) {
    let error = match intake::parse_request(data) {
        Ok(_) => return,
        Err(error) => error,
    };
    assert_eq!(error.exit(), Exit::Rejected, "{error}");
    let message = error.to_string();
    let Ok(document) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    // The envelope is named back on purpose (`unsupported apiVersion `x``),
    // and a value that is part of it is then in the message too.
    let mut body = document.clone();
    let mut named = Vec::new();
    if let Some(map) = body.as_object_mut() {
        for field in ["apiVersion", "kind"] {
            if let Some(envelope) = map.remove(field) {
                named.extend(string_values(&envelope));
            }
        }
    }
    named.extend(key_names(&body));
    for value in string_values(&body) {
        // Short strings are also words, and a value spelled inside a key is
        // part of a name the message may point at (`/env/JWT_SECRET`).
        if value.len() < 12
            || named.iter().any(|name| name.contains(value.as_str()))
            || !message.contains(value.as_str())
        {
            continue;
        }
        // A value may spell the message's own words: it is quoted only if
        // the same document with that value disguised is rejected without them.
        let disguised = replace_string(&document, &value, &disguise(&value));
        let again = intake::parse_request(disguised.to_string().as_bytes())
            .err()
            .map(|error| error.to_string());
        assert!(
            again.is_some_and(|again| again.contains(value.as_str())),
            "the rejection quotes a value: {message}"
        );
    }
}

/// The same shape of text (letters, digits, punctuation where they were) with
/// other characters, so that what was valid in a field stays valid.
fn disguise(value: &str) -> String {
    let swap = |lower, upper, digit| {
        value
            .chars()
            .map(|c| match c {
                c if c.is_lowercase() => lower,
                c if c.is_uppercase() => upper,
                c if c.is_numeric() => digit,
                c => c,
            })
            .collect::<String>()
    };
    let disguised = swap('q', 'Q', '7');
    if disguised == value {
        swap('z', 'Z', '8')
    } else {
        disguised
    }
}

/// The document with every string value `from` (not keys) made `to`.
fn replace_string(value: &serde_json::Value, from: &str, to: &str) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) if s == from => Value::String(to.to_string()),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| replace_string(item, from, to))
                .collect(),
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), replace_string(v, from, to)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn key_names(value: &serde_json::Value) -> Vec<String> {
    match value {
        serde_json::Value::Array(items) => items.iter().flat_map(key_names).collect(),
        serde_json::Value::Object(map) => map
            .iter()
            .flat_map(|(k, v)| std::iter::once(k.clone()).chain(key_names(v)))
            .collect(),
        _ => Vec::new(),
    }
}

fn string_values(value: &serde_json::Value) -> Vec<String> {
    match value {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(items) => items.iter().flat_map(string_values).collect(),
        serde_json::Value::Object(map) => map.values().flat_map(string_values).collect(),
        _ => Vec::new(),
    }
}

/// The contract parser: any text is a contract of unique, valid names in line
/// order, or an error naming a line of the text.
pub fn contract(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.lines().count().max(1);
    match contract::parse("fuzz.env.example", text) {
        Ok(parsed) => {
            let mut last = 0;
            for (index, key) in parsed.keys.iter().enumerate() {
                assert!(
                    crate::settings::names::is_valid_key_name(&key.name),
                    "{:?}",
                    key.name
                );
                assert!(key.line > last && key.line <= lines, "line {}", key.line);
                last = key.line;
                assert!(
                    !parsed.keys[..index].iter().any(|k| k.name == key.name),
                    "duplicate {:?}",
                    key.name
                );
            }
        }
        Err(Error::ContractInvalid { line, .. }) => {
            assert!(line >= 1 && line <= lines, "line {line} of {lines}")
        }
        Err(other) => panic!("the parser failed another way: {other}"),
    }
}

/// Both writers against their independent readers: the data, split into
/// values at U+001E, is written under keys `K0`, `K1`...; every value the
/// writer accepts reads back exactly, and the writer refuses the rest.
pub fn render_round_trip(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let values: Vec<(String, &str)> = text
        .split('\u{1e}')
        .enumerate()
        .map(|(index, value)| (format!("K{index}"), value))
        .collect();

    let accepted: Vec<(&str, &str)> = values
        .iter()
        .filter(|(key, value)| systemd::check(key, value).is_ok())
        .map(|(key, value)| (key.as_str(), *value))
        .collect();
    let rendered = systemd::render(accepted.iter().copied());
    let parsed = systemd::parse(&rendered);
    assert!(parsed.lines_without_assignment.is_empty(), "{rendered:?}");
    let read: Vec<(&str, &str)> = parsed
        .assignments
        .iter()
        .map(|a| (a.key.as_str(), a.value.as_str()))
        .collect();
    assert_eq!(read, accepted, "systemd grammar");

    let quotable: Vec<(&str, &str)> = values
        .iter()
        .filter(|(_, value)| dotenv::quote(value).is_ok())
        .map(|(key, value)| (key.as_str(), *value))
        .collect();
    let rendered = dotenv::render(quotable.iter().copied()).expect("every value was quotable");
    // A value with `$NAME` in it is escaped; the reader refuses only unescaped expansions.
    let read = dotenv::parse(&rendered).expect("the writer escapes every `$`");
    let read: Vec<(&str, &str)> = read
        .iter()
        .map(|a| (a.key.as_str(), a.value.as_str()))
        .collect();
    assert_eq!(read, quotable, "dotenv grammar");
}
