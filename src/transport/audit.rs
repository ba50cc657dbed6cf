//! The audit trail on each host: one JSON line per deploy, rollback and failed
//! attempt, appended by the host program to a root-owned mode 600 log in the
//! state directory. It names keys, units and outcomes, never a value or a hash
//! of one.

use serde_json::json;

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
            "changed": host.changed,
            "keysChanged": keys_changed,
            "unitsRestarted": units_restarted,
            "error": host.error.as_ref().map(|e| wire_name(&e.kind)),
            "buildUrl": audit.build_url,
            "by": audit.by,
            "hostenv": env!("CARGO_PKG_VERSION"),
        });
        AuditLine(format!("{line}\n"))
    }

    pub fn text(&self) -> &str {
        &self.0
    }
}

pub fn append(remote: &Remote, line: &AuditLine) -> Result<(), HostError> {
    remote
        .run(
            &crate::transport::remote::audit(remote.service),
            line.text().as_bytes(),
        )
        .map(|_| ())
}
