//! The invariants that the fuzz targets (`fuzz/`) and the corpus replay in the
//! tests check, kept here so that both run exactly the same code. Each takes
//! any bytes and panics only when hostenv is wrong.

use crate::prepare::contract;
use crate::protocol::error::Error;
use crate::protocol::exit::Exit;
use crate::protocol::intake;
use crate::render::{dotenv, systemd};
use crate::settings::secret::ExposeSecret;

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
            // Every rule names keys of the contract only, on a line of the text.
            for ruled in &parsed.rules {
                assert!(
                    ruled.line >= 1 && ruled.line <= lines,
                    "rule line {}",
                    ruled.line
                );
                for key in ruled.rule.keys() {
                    assert!(parsed.has(key), "a rule names {key:?}");
                }
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

    // With `target.systemdMin`: the spellings of v241 (single quotes) and
    // v247 (double quotes), read back exactly by every generation from there.
    for min in [241, 247] {
        let accepted: Vec<(&str, &str)> = values
            .iter()
            .filter(|(key, value)| systemd::check_for(key, value, Some(min)).is_ok())
            .map(|(key, value)| (key.as_str(), *value))
            .collect();
        let rendered = systemd::render_for(accepted.iter().copied(), Some(min));
        for generation in systemd::Generation::from(min) {
            let parsed = systemd::parse_as(&rendered, generation);
            let read: Vec<(&str, &str)> = parsed
                .assignments
                .iter()
                .map(|a| (a.key.as_str(), a.value.as_str()))
                .collect();
            assert_eq!(
                read, accepted,
                "systemd v{min} spelling read as {generation:?}"
            );
        }
    }

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

/// The lock holder's reader and request check (`host::channel`,
/// `HostConfig::admits`). The first byte of `data` says how to cut the rest
/// into the pieces reads deliver, and whether the holder still waits for its
/// lock (then it takes one request at most). For any bytes, cut anywhere,
/// the requests framed are exactly those a whole-stream reading finds before
/// the first byte that does not fit, the channel is broken exactly when that
/// reading finds one, and nothing after it is framed. Every framed request
/// the configuration admits stays within it.
pub fn lock_channel(data: &[u8]) {
    use crate::host::channel::{Framed, Reader};
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let waiting = mode & 0x80 != 0;
    let piece = usize::from(mode & 0x7f) + 1;
    let (expected, breaks) = whole_stream_requests(stream, waiting.then_some(1));
    let mut reader = Reader::new();
    if waiting {
        reader.limit_requests(Some(1));
    }
    let mut framed = Vec::new();
    let mut broke = false;
    for chunk in stream.chunks(piece) {
        assert!(!broke || reader.broken().is_some());
        let fed = reader.feed(chunk);
        assert!(
            !broke || fed.framed.is_empty(),
            "framed after the channel broke"
        );
        framed.extend(fed.framed);
        broke |= fed.broken.is_some();
    }
    let requests: Vec<WholeRequest> = framed
        .iter()
        .filter_map(|f| match f {
            Framed::Request(r) => Some((r.seq, r.words.clone(), r.input.clone(), r.after_success)),
            Framed::Holder(_) => None,
        })
        .collect();
    assert_eq!(requests, expected, "framed requests");
    assert_eq!(broke, breaks, "where the channel ends");
    for (_, words, _, _) in &requests {
        admitted_steps_stay_within(words);
    }
}

/// A request as the whole-stream reading sees it: number, words, input, `&`.
type WholeRequest = (u64, Vec<String>, Vec<u8>, bool);

/// The channel's grammar read over the whole stream at once, written apart
/// from `host::channel` so that each checks the other: the requests before
/// the first byte that does not fit, and whether there is one (a stream that
/// stops partway through a frame has none).
fn whole_stream_requests(stream: &[u8], may_start: Option<usize>) -> (Vec<WholeRequest>, bool) {
    use crate::host::channel::{MAX_HOLDER_LINE, MAX_INPUT, MAX_SECONDS, MAX_STEP_LINE};
    // A line of printable ASCII from `at` of at most `max` bytes: Ok(Some(end))
    // at its LF, Ok(None) when the stream stops first, Err when it breaks.
    let line = |at: usize, max: usize| -> Result<Option<usize>, ()> {
        for (offset, byte) in stream[at..].iter().enumerate() {
            match byte {
                b'\n' => return Ok(Some(at + offset)),
                0x20..=0x7e if offset < max => {}
                _ => return Err(()),
            }
        }
        Ok(None)
    };
    let decimal = |text: &[u8], max: u64| -> Option<u64> {
        let plain = !text.is_empty()
            && text.iter().all(u8::is_ascii_digit)
            && (text == b"0" || text[0] != b'0');
        let value: u64 = std::str::from_utf8(text)
            .ok()?
            .parse()
            .ok()
            .filter(|_| plain)?;
        (value <= max).then_some(value)
    };
    let mut found = Vec::new();
    let holder_end = match line(0, MAX_HOLDER_LINE) {
        Err(()) => return (found, true),
        Ok(None) => return (found, false),
        Ok(Some(end)) => end,
    };
    let holder = &stream[..holder_end];
    let holder_fits = holder.strip_prefix(b"hold ").is_some_and(|rest| {
        rest.iter()
            .position(|b| *b == b' ')
            .is_some_and(|space| decimal(&rest[..space], MAX_SECONDS).is_some_and(|s| s > 0))
    });
    if !holder_fits {
        return (found, true);
    }
    let mut at = holder_end + 1;
    let mut seq = 1u64;
    let mut may_start = may_start.unwrap_or(usize::MAX);
    while at < stream.len() {
        let after_success = match stream[at] {
            b'h' => {
                at += 1;
                continue;
            }
            b'x' => false,
            b'&' => true,
            _ => return (found, true),
        };
        if may_start == 0 {
            return (found, true);
        }
        may_start -= 1;
        let words_end = match line(at + 1, MAX_STEP_LINE) {
            Err(()) => return (found, true),
            Ok(None) => return (found, false),
            Ok(Some(end)) => end,
        };
        let text = String::from_utf8_lossy(&stream[at + 1..words_end]).into_owned();
        let mut fields = text.split(' ');
        let numbered = fields.next().and_then(|n| decimal(n.as_bytes(), u64::MAX)) == Some(seq);
        let words: Vec<String> = fields.map(str::to_string).collect();
        if !numbered || words.is_empty() || words.iter().any(String::is_empty) {
            return (found, true);
        }
        // The length: digits only, at most seven of them, then LF.
        let digits_at = words_end + 1;
        let digits = stream[digits_at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits > 7 {
            return (found, true);
        }
        let Some(&after) = stream.get(digits_at + digits) else {
            return (found, false);
        };
        if after != b'\n' {
            return (found, true);
        }
        let Some(length) = decimal(&stream[digits_at..digits_at + digits], MAX_INPUT) else {
            return (found, true);
        };
        let input_at = digits_at + digits + 1;
        let Some(input) = stream.get(input_at..input_at + length as usize) else {
            return (found, false);
        };
        found.push((seq, words, input.to_vec(), after_success));
        seq += 1;
        at = input_at + length as usize;
    }
    (found, false)
}

/// A framed request that parses as a step and that a configuration admits
/// names only what the configuration holds: its units, the instances root
/// allows (one listed, or letters, digits and `_` after `sock`), backups
/// within its count.
fn admitted_steps_stay_within(words: &[String]) {
    use crate::host::config::HostConfig;
    use crate::host::Step;
    let config = HostConfig::parse(
        "path /opt/voxcore/.env\nowner voxcore\ngroup voxcore\nmode 0600\nbackups 5\n\
         state-dir /var/lib/hostenv/voxcore\nunit voxcore@.service\nunit voxcore-sidecar.service\n\
         instance voxcore@1.service\ninstance voxcore@sock*.service\nrestart-timeout 60\n",
    )
    .expect("the sample configuration");
    let Ok((step, _)) = crate::host::parse(words) else {
        return;
    };
    if config.admits(&step).is_err() {
        return;
    }
    match &step {
        Step::Restage(n) => assert!((1..=5).contains(n), "{words:?}"),
        Step::Restore(n) => assert!(*n <= 5, "{words:?}"),
        Step::Restart(unit) | Step::ResetFailed(unit) => {
            let sock = unit
                .strip_prefix("voxcore@sock")
                .and_then(|rest| rest.strip_suffix(".service"))
                .is_some_and(|star| {
                    !star.is_empty() && star.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                });
            assert!(
                sock || unit == "voxcore@1.service" || unit == "voxcore-sidecar.service",
                "{words:?}"
            );
        }
        _ => {}
    }
}

/// What a host answers, as the agent reads it (the lock step's description,
/// the holder's answers, a file read back, the backups listing): any bytes
/// give a value or an error, never a panic, and nothing read holds more than
/// the bytes themselves. A host's root chooses every one of these bytes.
pub fn host_answers(data: &[u8]) {
    use crate::transport::remote::{parse_backups, parse_current};
    use crate::transport::ssh::lock_channel::{description_end, lock_answer, Heard};
    if let Some((Some(text), end)) = description_end(data) {
        // Read lossily: one replacement character per byte at most.
        assert!(end <= data.len() && text.chars().count() <= data.len());
    }
    for seq in [0, 1, u64::MAX] {
        if let Heard::Answer((_, out, err)) = lock_answer(data, seq) {
            assert!(out.end <= data.len() && err.end <= data.len() && out.end <= err.start);
        }
    }
    if let Some(current) = parse_current(data) {
        let held = current
            .content
            .as_ref()
            .map_or(0, |c| c.expose_secret().len());
        assert!(held <= data.len());
    }
    if let Some(backups) = parse_backups(data) {
        let held: usize = backups
            .iter()
            .map(|b| b.content.expose_secret().len())
            .sum();
        assert!(held <= data.len());
    }
}
