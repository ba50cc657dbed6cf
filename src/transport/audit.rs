//! The audit trail on each host: one JSON line per deploy, rollback and failed
//! attempt, appended by the host program to a root-owned mode 600 log in the
//! state directory. It names keys, units and outcomes, never a value or a hash
//! of one.

use serde_json::{json, Value};

use crate::host::MAX_AUDIT_LINE;

use crate::protocol::error::HostError;
use crate::protocol::report::{wire_name, HostReport};
use crate::protocol::request::Deployment;
use crate::protocol::time::rfc3339;
use crate::transport::remote::Remote;

/// One line of the log, already JSON; built only from names and outcomes.
pub struct AuditLine(String);

impl AuditLine {
    pub fn for_host(
        action: &str,
        host: &HostReport,
        service: &str,
        deployment: &Deployment,
        window: &[String],
    ) -> AuditLine {
        let keys_changed: Vec<&String> = host
            .keys
            .iter()
            .flat_map(|k| k.added.iter().chain(&k.changed).chain(&k.removed))
            .collect();
        let units_restarted: Vec<&String> = host
            .units
            .iter()
            .filter(|u| u.restarted)
            .map(|u| &u.unit)
            .collect();
        let audit = deployment.audit.clone().unwrap_or_default();
        let line = json!({
            "time": rfc3339(std::time::SystemTime::now()),
            "action": action,
            "result": wire_name(&host.status),
            "service": service,
            // The services switched in the same window (a Rotation), for the one who reads this later.
            "rotation": (window.len() > 1).then_some(window),
            "backupsPurged": host.backups_purged,
            "environment": deployment.environment,
            // The file was last put in place by a run of another environment.
            "previousEnvironment": host.previous_environment,
            "changed": host.changed,
            "keysChanged": keys_changed,
            "unitsRestarted": units_restarted,
            "error": host.error.as_ref().map(|e| wire_name(&e.kind)),
            "buildUrl": audit.build_url,
            "by": audit.by,
            "hostenv": env!("CARGO_PKG_VERSION"),
        });
        AuditLine(format!("{}\n", fit(line, MAX_AUDIT_LINE as usize - 1)))
    }

    pub fn text(&self) -> &str {
        &self.0
    }
}

/// The line as ASCII JSON of at most `limit` bytes: while it is longer, the
/// field that takes the most room (a long list of keys or units, a long
/// `by`) is halved, and the line says it was cut (`"truncated": true`).
fn fit(mut line: Value, limit: usize) -> String {
    loop {
        let text = ascii_json(&line);
        let Some(fields) = line.as_object_mut().filter(|_| text.len() > limit) else {
            return text;
        };
        fields.insert("truncated".into(), Value::Bool(true));
        let widest = fields
            .iter()
            .max_by_key(|(_, value)| ascii_json(value).len())
            .map(|(key, _)| key.clone())
            .unwrap_or_default();
        match fields.get_mut(&widest) {
            Some(Value::Array(items)) => items.truncate(items.len() / 2),
            Some(Value::String(text)) => {
                *text = text.chars().take(text.chars().count() / 2).collect();
            }
            Some(other) => *other = Value::Null,
            None => return text,
        }
    }
}

/// `value` as JSON of printable ASCII only: every other character inside
/// its strings as `\\uXXXX` (the host program's own escaping), which any
/// JSON reader takes back as the same text. What hostenv sends to a host's
/// lock file or log is then one line that no character can break or disguise.
pub fn ascii_json(value: &serde_json::Value) -> String {
    crate::host::printable_ascii(&value.to_string())
}

pub fn append(remote: &Remote, line: &AuditLine) -> Result<(), HostError> {
    remote
        .run(
            &crate::transport::remote::audit(remote.service),
            line.text().as_bytes(),
        )
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_ascii_and_fit_whatever_they_hold() {
        let value = json!({"by": "caf\u{e9}\u{2028}\u{1b}", "keys": ["A"]});
        let text = ascii_json(&value);
        assert_eq!(text, r#"{"by":"caf\u00e9\u2028\u001b","keys":["A"]}"#);
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), value);
        let keys: Vec<String> = (0..5000).map(|i| format!("KEY_NUMBER_{i}")).collect();
        let long = json!({"action": "deploy", "keysChanged": keys, "by": "\u{1f600}".repeat(2000)});
        let text = fit(long, 16 * 1024 - 1);
        assert!(text.len() < 16 * 1024 && text.is_ascii());
        let read: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(read["action"], "deploy");
        assert_eq!(read["truncated"], true);
        assert!(read["keysChanged"].as_array().unwrap().len() > 100);
    }
}
