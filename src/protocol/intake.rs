//! From bytes to a typed request: size limit, JSON, envelope, schema, types.
//! Each stage has its own error kind, and none of them quotes a value.

use std::io::Read;
use std::path::Path;

use serde_json::Value;

use crate::protocol::error::{Error, ErrorKind, Result};
use crate::protocol::request::{Kind, Request, API_VERSION, MAX_REQUEST_BYTES};
use crate::protocol::schema;

/// Reads the request from `path`, or stdin when there is none, refusing more than 1 MiB.
pub fn read_request(path: Option<&Path>) -> Result<Vec<u8>> {
    let from = path.map_or_else(|| "stdin".to_string(), |p| format!("`{}`", p.display()));
    let unreadable = |error: std::io::Error| Error::RequestUnreadable {
        from: from.clone(),
        reason: error.to_string(),
    };
    let mut bytes = Vec::new();
    match path {
        Some(path) => {
            if path.is_dir() {
                return Err(Error::RequestUnreadable {
                    from,
                    reason: "it is a directory".into(),
                });
            }
            std::fs::File::open(path)
                .map_err(unreadable)?
                .take(MAX_REQUEST_BYTES + 1)
                .read_to_end(&mut bytes)
                .map_err(unreadable)?
        }
        None => std::io::stdin()
            .lock()
            .take(MAX_REQUEST_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(unreadable)?,
    };
    if bytes.len() as u64 > MAX_REQUEST_BYTES {
        return Err(Error::RequestTooLarge {
            size: bytes.len() as u64,
            limit: MAX_REQUEST_BYTES,
        });
    }
    Ok(bytes)
}

/// Parses and validates a request.
pub fn parse_request(bytes: &[u8]) -> Result<Request> {
    if bytes.len() as u64 > MAX_REQUEST_BYTES {
        return Err(Error::RequestTooLarge {
            size: bytes.len() as u64,
            limit: MAX_REQUEST_BYTES,
        });
    }
    let document: Value = serde_json::from_slice(bytes).map_err(json_error)?;
    let Value::Object(mut body) = document else {
        return Err(Error::invalid(
            ErrorKind::InvalidRequest,
            "",
            "the request must be a JSON object",
        ));
    };
    check_api_version(body.remove("apiVersion"))?;
    let kind = check_kind(body.remove("kind"))?;
    let body = Value::Object(body);
    schema::validate_body(kind, &body)?;
    let typed = match kind {
        Kind::Deploy => serde_json::from_value(body).map(|d| Request::Deploy(Box::new(d))),
        Kind::Rotation => serde_json::from_value(body).map(Request::Rotation),
        Kind::BuildEnv => serde_json::from_value(body).map(Request::BuildEnv),
    };
    // The schema is generated from these types, so a failure here is a bug;
    // serde's message may quote a value, so it is not passed on.
    typed.map_err(|_| {
        Error::invalid(
            ErrorKind::InvalidRequest,
            "",
            "the request matches the schema but not hostenv's types",
        )
    })
}

fn json_error(error: serde_json::Error) -> Error {
    let reason = match error.classify() {
        serde_json::error::Category::Eof => "unexpected end of input",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "invalid data",
        serde_json::error::Category::Io => "read error",
    };
    Error::InvalidJson {
        reason,
        line: error.line(),
        column: error.column(),
    }
}

/// Quotes a found envelope value only when it is short and plain, so a
/// secret pasted into the wrong field is not echoed.
fn echo(value: &Value) -> String {
    match value.as_str() {
        Some(text)
            if text.len() <= 40
                && text
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "./-_".contains(c)) =>
        {
            format!("`{text}`")
        }
        Some(_) => "a string that is not a version".into(),
        None => "a value that is not a string".into(),
    }
}

fn check_api_version(found: Option<Value>) -> Result<()> {
    match found {
        Some(Value::String(version)) if version == API_VERSION => Ok(()),
        found => Err(Error::UnsupportedApiVersion {
            found: found.as_ref().map(echo),
        }),
    }
}

fn check_kind(found: Option<Value>) -> Result<Kind> {
    if let Some(kind) = found
        .as_ref()
        .and_then(Value::as_str)
        .and_then(Kind::from_name)
    {
        return Ok(kind);
    }
    Err(Error::UnknownKind {
        found: found.as_ref().map(echo),
    })
}
