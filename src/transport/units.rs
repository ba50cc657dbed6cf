//! Units on a host: which ones to restart (templates expand to their
//! instances), restarting them within a bound, and telling a start-limit hit
//! from any other failure. Unit and instance names are validated in
//! settings.rs before they reach a command line.

use std::time::Duration;

use crate::protocol::error::{ErrorKind, HostError};
use crate::settings::names::{ServiceName, Unit};
use crate::transport::remote::{Invocation, Query, Remote};

// Queries, run without sudo.
const INSTANCES: &str = r#"systemctl list-units --all --plain --no-legend --no-pager -- "$1""#;
// In microseconds where systemctl can print them (`--timestamp=`, v248): a
// unit restarted within the same second as its file was written must still
// count as started after it. An older systemctl refuses the option and prints
// whole seconds (in UTC, as TZ asks), read as the start of that second, so a
// unit started in the second its file was written is restarted: the safe side.
// No `--value` (v230): `NAME=` is cut off here.
const STARTED_AT: &str = r#"t=$(systemctl show -p ExecMainStartTimestamp --timestamp=us+utc -- "$1" 2>/dev/null) || t=$(TZ=UTC systemctl show -p ExecMainStartTimestamp -- "$1"); t=${t#*=}; if [ -n "$t" ]; then date -u -d "$t" +%s%6N; fi"#;

/// The host program's restart: bounded by the configuration's restart timeout,
/// and answering `result=start-limit-hit` (systemd's verdict) when it fails.
pub fn restart_invocation(service: &ServiceName, unit: &Unit) -> Invocation {
    Invocation::new("restart", &[service, unit.as_str()])
}

pub fn reset_failed_invocation(service: &ServiceName, unit: &Unit) -> Invocation {
    Invocation::new("reset-failed", &[service, unit.as_str()])
}

/// The restart timeout in whole seconds, as the host's configuration records it.
pub fn timeout_seconds(timeout: Duration) -> u64 {
    timeout.as_secs().max(1)
}

/// The units to restart on a host: plain units as they are, a template
/// (`name@.service`) as the given instances, or else the loaded instances
/// that are active, activating or failed.
pub fn units_on_host(
    remote: &Remote,
    units: &[Unit],
    instances: Option<&[String]>,
) -> Result<Vec<Unit>, HostError> {
    let mut out = Vec::new();
    for unit in units {
        let Some(pattern) = unit.instances_pattern() else {
            out.push(unit.clone());
            continue;
        };
        let found: Vec<Unit> = match instances {
            // Instance names were checked with the settings.
            Some(instances) => instances
                .iter()
                .filter_map(|instance| unit.instance(instance))
                .collect(),
            None => {
                let output = remote.query(&Query::new("units", INSTANCES, &[&pattern]))?;
                String::from_utf8_lossy(&output.stdout)
                    .lines()
                    .filter_map(|line| {
                        let fields: Vec<&str> = line.split_whitespace().collect();
                        match fields.as_slice() {
                            [name, "loaded", "active" | "activating" | "failed", ..] => {
                                Some(Unit::parse(name).ok_or_else(|| {
                                    HostError::new(
                                        ErrorKind::RemoteCommandFailed,
                                        format!(
                                            "`{}`: systemd lists `{name}`, which is not a unit name hostenv restarts",
                                            remote.host
                                        ),
                                    )
                                }))
                            }
                            _ => None,
                        }
                    })
                    .collect::<Result<_, _>>()?
            }
        };
        if found.is_empty() {
            return Err(HostError::new(
                ErrorKind::NoInstances,
                format!("`{}`: `{unit}` has no instances to restart", remote.host),
            ));
        }
        out.extend(found);
    }
    Ok(out)
}

/// `systemctl restart`, bounded by `timeout`; the unit's own words on failure,
/// with any secret redacted by the caller's `redact`.
pub fn restart(
    remote: &Remote,
    unit: &Unit,
    timeout: Duration,
    redact: &dyn Fn(&str) -> String,
) -> Result<(), HostError> {
    let output = remote.output(
        &restart_invocation(remote.service, unit),
        &[],
        Some(timeout + Duration::from_secs(10)),
    )?;
    if output.status == 0 {
        return Ok(());
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    if stdout.lines().any(|line| line == "result=start-limit-hit") {
        return Err(HostError::new(
            ErrorKind::StartLimitHit,
            format!(
                "`{}`: `{unit}` hit systemd's start limit (too many starts in a short time)",
                remote.host
            ),
        ));
    }
    match remote.check("restart", output) {
        Err(error) if error.kind == ErrorKind::SudoRefused => Err(error),
        Err(error) => Err(HostError::new(
            ErrorKind::RestartFailed,
            redact(&format!("`{unit}` did not restart: {}", error.message)),
        )),
        Ok(_) => Ok(()),
    }
}

/// Clears a failed state (and the start-limit counter) before a rollback restart.
pub fn reset_failed(remote: &Remote, unit: &Unit) {
    let _ = remote.run(&reset_failed_invocation(remote.service, unit), &[]);
}

/// When the unit's main process last started, in microseconds since the epoch.
pub fn started_at(remote: &Remote, unit: &Unit) -> Result<Option<i64>, HostError> {
    let output = remote.query(&Query::new("started-at", STARTED_AT, &[unit.as_str()]))?;
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text.trim().parse().ok())
}
