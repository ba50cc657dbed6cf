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
// When the unit's main process started, for comparison with its file's mtime
// (a unit restarted in the second its file was written must still count as
// started after it). Three readings, one line:
// - the wall-clock start, `--timestamp=us+utc` where systemctl takes it
//   (v248); an older one refuses it, and v247 takes it but prints whole
//   seconds, like the fallback (in UTC, as TZ asks; no `--value`, v230);
// - the monotonic start, in microseconds on every version;
// - the host program's `clock`: realtime and monotonic now, read together.
const STARTED_AT: &str = r#"t=$(systemctl show -p ExecMainStartTimestamp --timestamp=us+utc -- "$1" 2>/dev/null) || t=$(TZ=UTC systemctl show -p ExecMainStartTimestamp -- "$1"); t=${t#*=}; if [ -n "$t" ]; then t=$(date -u -d "$t" +%s%6N); else t=-; fi; m=$(systemctl show -p ExecMainStartTimestampMonotonic -- "$1"); m=${m#*=}; c=$(/usr/local/sbin/hostenv-host clock 2>/dev/null) || c='- -'; echo "$t ${m:--} $c""#;

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
    Ok(start_from_readings(&String::from_utf8_lossy(
        &output.stdout,
    )))
}

/// The start in wall-clock microseconds from STARTED_AT's line: the
/// monotonic start carried to wall-clock time by the host's clocks, but never
/// later than the wall-clock reading allows (the end of its second when
/// systemctl printed whole seconds: a clock stepped forward since the start
/// must not make a stale unit look fresh). Without a monotonic reading, the
/// wall-clock one as printed: whole seconds read as their start, so a unit
/// started in the second its file was written is restarted, the safe side.
fn start_from_readings(line: &str) -> Option<i64> {
    let number = |word: Option<&str>| word.and_then(|w| w.parse::<i64>().ok());
    let mut words = line.split_whitespace();
    let wall = number(words.next())?;
    let monotonic_start = number(words.next()).filter(|m| *m > 0);
    let (realtime_now, monotonic_now) = (number(words.next()), number(words.next()));
    let carried = monotonic_start
        .zip(realtime_now.zip(monotonic_now))
        .and_then(|(start, (realtime, monotonic))| {
            realtime.checked_sub(monotonic.checked_sub(start)?)
        });
    match carried {
        Some(carried) => {
            let latest = if wall % 1_000_000 == 0 {
                wall.saturating_add(999_999)
            } else {
                wall
            };
            Some(carried.min(latest))
        }
        None => Some(wall),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = 1_000_000;

    #[test]
    fn whole_seconds_are_refined_by_the_monotonic_start() {
        // systemd 247: the wall clock in whole seconds; the unit started
        // 0.4 s into second 1000, 2.1 s ago by the monotonic clock.
        let line = format!(
            "{} {} {} {}",
            1000 * SECOND,
            50 * SECOND,
            1002 * SECOND + 500_000,
            52 * SECOND + 100_000
        );
        assert_eq!(start_from_readings(&line), Some(1000 * SECOND + 400_000));
    }

    #[test]
    fn a_clock_stepped_forward_cannot_move_the_start_past_its_second() {
        let line = format!(
            "{} {} {} {}",
            1000 * SECOND,
            50 * SECOND,
            1010 * SECOND,
            51 * SECOND
        );
        assert_eq!(start_from_readings(&line), Some(1000 * SECOND + 999_999));
        // Printed to the microsecond (v248+), that is the bound itself.
        let line = format!(
            "{} {} {} {}",
            1000 * SECOND + 7,
            50 * SECOND,
            1010 * SECOND,
            51 * SECOND
        );
        assert_eq!(start_from_readings(&line), Some(1000 * SECOND + 7));
    }

    #[test]
    fn without_a_monotonic_reading_the_wall_clock_one_stands() {
        assert_eq!(
            start_from_readings(&format!("{} 0 - -", 1000 * SECOND)),
            Some(1000 * SECOND)
        );
        assert_eq!(
            start_from_readings(&format!("{} 5 - -", 1000 * SECOND)),
            Some(1000 * SECOND)
        );
        assert_eq!(start_from_readings("- 0 17 18"), None);
        assert_eq!(start_from_readings(""), None);
        // Numbers a host chose cannot overflow.
        let line = format!("{} {} {} {}", SECOND, i64::MIN, i64::MAX, i64::MAX);
        assert_eq!(start_from_readings(&line), Some(SECOND));
    }

    #[test]
    fn the_query_asks_the_installed_host_program() {
        assert!(STARTED_AT.contains(&format!("{} clock", crate::host::PROGRAM)));
    }
}
