//! Secret values and where they come from. A secret is held in a `SecretString`
//! from the moment it is read; only the renderer exposes it, to write the file.

use std::ffi::OsString;
use std::io::Read;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
pub use secrecy::{ExposeSecret, SecretString};

use crate::protocol::report::KeyStatus;

/// The largest secret file accepted (PROTOCOL.md).
pub const MAX_SECRET_FILE_BYTES: u64 = 1024 * 1024;

/// Where environment variables are looked up; the process environment in
/// production, a map in unit tests.
pub trait EnvLookup {
    fn get(&self, name: &str) -> Option<OsString>;

    /// Names of every variable set, for checks such as "is any `VITE_*` set".
    fn names(&self) -> Vec<String>;

    /// Whether secrets are read here at all: a names-only check
    /// (`check --secrets-unbound`) binds none and reads none.
    fn binds_secrets(&self) -> bool {
        true
    }
}

/// An environment in which no secret is bound: every other variable reads
/// through, and a secret source is named, never read.
pub struct NamesOnly<'a>(pub &'a dyn EnvLookup);

impl EnvLookup for NamesOnly<'_> {
    fn get(&self, name: &str) -> Option<OsString> {
        self.0.get(name)
    }

    fn names(&self) -> Vec<String> {
        self.0.names()
    }

    fn binds_secrets(&self) -> bool {
        false
    }
}

/// The real process environment.
pub struct ProcessEnv;

impl EnvLookup for ProcessEnv {
    fn get(&self, name: &str) -> Option<OsString> {
        std::env::var_os(name)
    }

    fn names(&self) -> Vec<String> {
        std::env::vars_os()
            .filter_map(|(name, _)| name.into_string().ok())
            .collect()
    }
}

impl EnvLookup for std::collections::BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<OsString> {
        std::collections::BTreeMap::get(self, name).map(OsString::from)
    }

    fn names(&self) -> Vec<String> {
        self.keys().cloned().collect()
    }
}

/// Why a value could not be had: a key status and words that never quote the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub status: KeyStatus,
    pub message: String,
}

impl Problem {
    pub fn new(status: KeyStatus, message: impl Into<String>) -> Problem {
        Problem {
            status,
            message: message.into(),
        }
    }
}

/// The value of `secretEnv`, optionally base64-decoded.
pub fn from_env(env: &dyn EnvLookup, name: &str, base64: bool) -> Result<SecretString, Problem> {
    let raw = env.get(name).ok_or_else(|| {
        Problem::new(
            KeyStatus::Unset,
            format!("environment variable `{name}` is not set"),
        )
    })?;
    let text = raw.into_string().map_err(|_| {
        Problem::new(
            KeyStatus::Unrepresentable,
            format!("environment variable `{name}` is not valid UTF-8"),
        )
    })?;
    let text = SecretString::from(text);
    if text.expose_secret().is_empty() {
        return Err(Problem::new(
            KeyStatus::Empty,
            format!("environment variable `{name}` is empty"),
        ));
    }
    if !base64 {
        return Ok(text);
    }
    let decoded = decode_base64(text.expose_secret()).ok_or_else(|| {
        Problem::new(
            KeyStatus::BadBase64,
            format!("environment variable `{name}` is not valid base64"),
        )
    })?;
    let decoded = String::from_utf8(decoded).map_err(|_| {
        Problem::new(
            KeyStatus::Unrepresentable,
            format!("environment variable `{name}` decodes to bytes that are not UTF-8"),
        )
    })?;
    if decoded.is_empty() {
        return Err(Problem::new(
            KeyStatus::Empty,
            format!("environment variable `{name}` decodes to an empty value"),
        ));
    }
    Ok(SecretString::from(decoded))
}

/// Standard alphabet, padding optional, whitespace ignored (PROTOCOL.md).
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let engine = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    engine.decode(compact.as_bytes()).ok()
}

/// The path held by the `secretFileEnv` variable `name`.
pub fn file_path_from_env(env: &dyn EnvLookup, name: &str) -> Result<OsString, Problem> {
    let path = env.get(name).ok_or_else(|| {
        Problem::new(
            KeyStatus::Unset,
            format!("environment variable `{name}` (a file path) is not set"),
        )
    })?;
    if path.is_empty() {
        return Err(Problem::new(
            KeyStatus::Empty,
            format!("environment variable `{name}` (a file path) is empty"),
        ));
    }
    Ok(path)
}

/// The content of the file named by the `secretFileEnv` variable `name`: a regular
/// file of at most 1 MiB, UTF-8 without NUL, one trailing newline dropped.
pub fn from_file_env(env: &dyn EnvLookup, name: &str) -> Result<SecretString, Problem> {
    let path = file_path_from_env(env, name)?;
    let mut content = read_secret_file(&path, name)?;
    if content.ends_with("\r\n") {
        content.truncate(content.len() - 2);
    } else if content.ends_with('\n') {
        content.truncate(content.len() - 1);
    }
    if content.is_empty() {
        return Err(Problem::new(
            KeyStatus::Empty,
            format!("the file named by `{name}` is empty"),
        ));
    }
    Ok(SecretString::from(content))
}

/// Reads a secret file whole, checking the rules; `name` is the variable that named it.
pub fn read_secret_file(path: &OsString, name: &str) -> Result<String, Problem> {
    let unreadable = |why: String| {
        Problem::new(
            KeyStatus::Unreadable,
            format!("the file named by `{name}` {why}"),
        )
    };
    let metadata =
        std::fs::metadata(path).map_err(|e| unreadable(format!("cannot be read: {}", e.kind())))?;
    if !metadata.is_file() {
        return Err(unreadable("is not a regular file".into()));
    }
    if metadata.len() > MAX_SECRET_FILE_BYTES {
        return Err(unreadable(format!(
            "is larger than {MAX_SECRET_FILE_BYTES} bytes"
        )));
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_SECRET_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| unreadable(format!("cannot be read: {}", e.kind())))?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(unreadable(format!(
            "is larger than {MAX_SECRET_FILE_BYTES} bytes"
        )));
    }
    if bytes.contains(&0) {
        return Err(unreadable("holds a NUL byte".into()));
    }
    String::from_utf8(bytes).map_err(|_| unreadable("is not UTF-8".into()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// An environment of `pairs`, for tests here and in the settings that read one.
    pub(crate) fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn base64_accepts_missing_padding_and_whitespace() {
        assert_eq!(decode_base64("aGVs\nbG8").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert!(decode_base64("not base64!").is_none());
    }

    #[test]
    fn unset_and_empty_are_different_problems() {
        let vars = env(&[("EMPTY", ""), ("SET", "x"), ("B64", "%%%")]);
        assert_eq!(
            from_env(&vars, "NOPE", false).unwrap_err().status,
            KeyStatus::Unset
        );
        assert_eq!(
            from_env(&vars, "EMPTY", false).unwrap_err().status,
            KeyStatus::Empty
        );
        assert_eq!(from_env(&vars, "SET", false).unwrap().expose_secret(), "x");
        assert_eq!(
            from_env(&vars, "B64", true).unwrap_err().status,
            KeyStatus::BadBase64
        );
    }
}
