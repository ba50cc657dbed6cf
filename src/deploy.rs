//! `hostenv deploy`: the only module that knows the order of the steps.
//!
//! Per host, over one SSH session: connect, read what is there and compare,
//! then (when the file differs) stage, switch, restart, verify, and roll back
//! what fails. Hosts run in parallel up to `rollout.parallel`; one host's
//! failure never touches another.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::catalog::Catalog;
use crate::check::{prepare_deploy, Prepared};
use crate::error::{Error, ErrorKind, HostError, Result};
use crate::health;
use crate::remote::{Current, Remote};
use crate::render::systemd as grammar;
use crate::report::{
    wire_name, ErrorReport, HostReport, HostStatus, KeyChanges, Report, RollbackAction, StepReport,
    Summary, UnitReport, EXIT_FAILED, EXIT_NEEDS_PERSON,
};
use crate::request::{Deployment, SudoMode};
use crate::resolve::HostFile;
use crate::secret::{EnvLookup, ExposeSecret};
use crate::settings::{HostSettings, Settings};
use crate::ssh::{Connection, SshConfig};
use crate::systemd;

pub const DEFAULT_PARALLEL: u32 = 10;
pub const DEFAULT_DEADLINE_MS: u64 = 600_000;

/// What every host of one deployment shares.
struct Plan<'a> {
    settings: &'a Settings,
    ssh: &'a SshConfig,
    sudo: SudoMode,
    rollback_on_failure: bool,
    /// Keys of this service that the catalog shares with other services, unless
    /// the request allows changing them.
    guarded_keys: Vec<String>,
    deadline: Instant,
}

pub fn deploy(
    deployment: &Deployment,
    env: &dyn EnvLookup,
    catalog: &Catalog,
    report: &mut Report,
) -> Result<()> {
    let started = Instant::now();
    let prepared = prepare_deploy(deployment, env, catalog, report)?;
    let ssh = SshConfig::from_request(deployment.ssh.as_ref(), "", env)?;
    let guarded_keys = if deployment.allow_shared_change == Some(true) {
        Vec::new()
    } else {
        prepared
            .contract
            .names()
            .filter(|key| !catalog.shares_with(key, &deployment.service).is_empty())
            .map(str::to_string)
            .collect()
    };
    let plan = Plan {
        settings: &prepared.settings,
        ssh: &ssh,
        sudo: deployment
            .ssh
            .as_ref()
            .and_then(|s| s.sudo)
            .unwrap_or(SudoMode::Auto),
        rollback_on_failure: deployment.rollback_on_failure.unwrap_or(true),
        guarded_keys,
        deadline: started
            + Duration::from_millis(deployment.deadline_ms.unwrap_or(DEFAULT_DEADLINE_MS)),
    };
    let parallel = deployment
        .rollout
        .as_ref()
        .and_then(|r| r.parallel)
        .unwrap_or(DEFAULT_PARALLEL) as usize;
    report.hosts = run_hosts(&prepared, &plan, parallel);
    report.summary = Summary::of(&report.hosts);
    match hosts_failed(&report.hosts) {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

fn run_hosts(prepared: &Prepared, plan: &Plan, parallel: usize) -> Vec<HostReport> {
    let hosts = &plan.settings.hosts;
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<HostReport>>> = Mutex::new(vec![None; hosts.len()]);
    std::thread::scope(|scope| {
        for _ in 0..parallel.clamp(1, hosts.len().max(1)) {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::SeqCst);
                let Some(host) = hosts.get(index) else { break };
                let file = &prepared.resolution.files[index];
                let report = deploy_host(host, file, plan);
                results.lock().expect("no thread panics holding it")[index] = Some(report);
            });
        }
    });
    results
        .into_inner()
        .expect("threads joined")
        .into_iter()
        .map(|r| r.expect("every host ran"))
        .collect()
}

/// The run's error when any host did not end deployed or unchanged.
fn hosts_failed(hosts: &[HostReport]) -> Option<Error> {
    let bad: Vec<&HostReport> = hosts
        .iter()
        .filter(|h| !matches!(h.status, HostStatus::Deployed | HostStatus::Unchanged))
        .collect();
    if bad.is_empty() {
        return None;
    }
    let needs_person = bad
        .iter()
        .any(|h| matches!(h.status, HostStatus::RollbackFailed | HostStatus::Unknown));
    let listed: Vec<String> = bad
        .iter()
        .map(|h| {
            let kind = h
                .error
                .as_ref()
                .map(|e| wire_name(&e.kind))
                .unwrap_or_default();
            format!("`{}` ({kind}, {})", h.host, status_words(h.status))
        })
        .collect();
    let mut message = format!(
        "{} of {} hosts failed: {}",
        bad.len(),
        hosts.len(),
        listed.join(", ")
    );
    if needs_person {
        message.push_str("; a host is in an unknown state and needs a person");
    }
    Some(Error::HostsFailed {
        message,
        exit_code: if needs_person {
            EXIT_NEEDS_PERSON
        } else {
            EXIT_FAILED
        },
    })
}

fn status_words(status: HostStatus) -> &'static str {
    match status {
        HostStatus::RolledBack => "rolled back",
        HostStatus::RollbackFailed => "rollback failed",
        HostStatus::Unhealthy => "left unhealthy",
        HostStatus::Unknown => "state unknown",
        HostStatus::Skipped => "skipped",
        _ => "nothing changed",
    }
}

/// Records steps as they finish and prints a progress line for each.
struct Steps<'a> {
    host: &'a str,
    report: HostReport,
    deadline: Instant,
}

impl Steps<'_> {
    fn check_deadline(&self, name: &str) -> Result<(), HostError> {
        if Instant::now() > self.deadline {
            return Err(HostError::new(
                ErrorKind::DeadlineExceeded,
                format!(
                    "`{}`: the run's deadline passed before the `{name}` step",
                    self.host
                ),
            ));
        }
        Ok(())
    }

    fn run<T>(
        &mut self,
        name: &str,
        step: impl FnOnce() -> Result<T, HostError>,
    ) -> Result<T, HostError> {
        self.check_deadline(name)?;
        let started = Instant::now();
        let result = step();
        self.record(name, result.is_ok(), started.elapsed().as_millis() as u64);
        result
    }

    fn record(&mut self, name: &str, ok: bool, ms: u64) {
        eprintln!(
            "hostenv deploy: {}: {name} {} ({ms} ms)",
            self.host,
            if ok { "ok" } else { "failed" }
        );
        self.report.steps.push(StepReport {
            name: name.to_string(),
            ok,
            ms,
        });
    }

    fn finish(mut self, status: HostStatus, error: Option<HostError>) -> HostReport {
        self.report.status = status;
        self.report.error = error.map(|e| ErrorReport {
            kind: e.kind,
            message: e.message,
            field: None,
        });
        self.report
    }
}

fn deploy_host(host: &HostSettings, file: &HostFile, plan: &Plan) -> HostReport {
    let mut steps = Steps {
        host: &host.name,
        report: HostReport::new(&host.name, HostStatus::Failed),
        deadline: plan.deadline,
    };
    let connection = match steps.run("connect", || Connection::open(host, plan.ssh)) {
        Ok(connection) => connection,
        Err(error) => return steps.finish(HostStatus::Failed, Some(error)),
    };
    let sudo = match plan.sudo {
        SudoMode::Always => true,
        SudoMode::Never => false,
        SudoMode::Auto => host.user != "root",
    };
    let remote = Remote {
        connection: &connection,
        host: &host.name,
        sudo,
    };
    match converge(&remote, host, file, plan, &mut steps) {
        Ok(status) => steps.finish(status, None),
        Err((status, error)) => steps.finish(status, Some(error)),
    }
}

type HostOutcome = std::result::Result<HostStatus, (HostStatus, HostError)>;

fn converge(
    remote: &Remote,
    host: &HostSettings,
    file: &HostFile,
    plan: &Plan,
    steps: &mut Steps,
) -> HostOutcome {
    let target = &plan.settings.target;
    let failed = |error: HostError| (HostStatus::Failed, error);
    let current = steps
        .run("read", || remote.read_current(target))
        .map_err(failed)?;
    let current_values = parse_current(&current);
    let secrets: Vec<String> = file
        .values
        .iter()
        .map(|(_, v)| v.expose_secret().to_string())
        .chain(current_values.values().cloned())
        .collect();
    let redact = |text: &str| redact(text, &secrets);
    steps.report.keys = Some(key_changes(&current_values, file));
    if let Some(key) = plan.guarded_keys.iter().find(|key| {
        let new = file
            .values
            .iter()
            .find(|(k, _)| k == *key)
            .map(|(_, v)| v.expose_secret());
        matches!((current_values.get(*key), new), (Some(old), Some(new)) if old != new)
    }) {
        return Err(failed(HostError::new(
            ErrorKind::SharedKeyChange,
            format!(
                "`{}`: the new file changes `{key}`, which other services share; rotate it with a Rotation request, or set `allowSharedChange: true`",
                host.name
            ),
        )));
    }
    let units = steps
        .run("units", || {
            systemd::units_on_host(
                remote,
                &plan.settings.restart.units,
                host.instances.as_deref(),
            )
        })
        .map_err(failed)?;
    steps.report.units = units
        .iter()
        .map(|u| UnitReport {
            unit: u.clone(),
            restarted: false,
        })
        .collect();

    let same_file = current
        .content
        .as_ref()
        .is_some_and(|c| c.expose_secret() == file.text.expose_secret())
        && current.uid == current.want_uid
        && current.gid == current.want_gid
        && current.mode == target.mode;
    if same_file {
        let to_restart = if plan.settings.restart.force {
            units.clone()
        } else {
            // A previous run may have switched the file and died before restarting.
            let mut stale = Vec::new();
            for unit in &units {
                let started = steps
                    .run("started-at", || systemd::started_at(remote, unit))
                    .map_err(failed)?;
                if started.is_none_or(|at| at < current.mtime) {
                    stale.push(unit.clone());
                }
            }
            stale
        };
        if to_restart.is_empty() {
            return Ok(HostStatus::Unchanged);
        }
        restart_and_verify(remote, host, &to_restart, &units, plan, steps, &redact)
            .map_err(failed)?;
        return Ok(HostStatus::Unchanged);
    }

    steps
        .run("stage", || remote.stage(target, &file.text))
        .map_err(failed)?;
    let had_previous = match steps.run("switch", || remote.switch(target)) {
        Ok(had_previous) => had_previous,
        Err(error) => {
            remote.discard(target);
            return Err(failed(error));
        }
    };
    steps.report.changed = true;
    let error = match restart_and_verify(remote, host, &units, &units, plan, steps, &redact) {
        Ok(()) => return Ok(HostStatus::Deployed),
        Err(error) => error,
    };
    if error.kind == ErrorKind::ConnectionLost {
        return Err((HostStatus::Unknown, error));
    }
    if !plan.rollback_on_failure {
        return Err((HostStatus::Unhealthy, error));
    }
    let rolled_back = steps.run("rollback", || remote.restore(target, had_previous));
    if let Err(rollback_error) = rolled_back {
        return Err((HostStatus::RollbackFailed, combine(&error, &rollback_error)));
    }
    steps.report.changed = false;
    steps.report.rollback = Some(if had_previous {
        RollbackAction::RestoredPrevious
    } else {
        RollbackAction::RemovedNewFile
    });
    if !had_previous {
        return Err((HostStatus::RolledBack, error));
    }
    for unit in &units {
        systemd::reset_failed(remote, unit);
    }
    match restart_and_verify(remote, host, &units, &units, plan, steps, &redact) {
        Ok(()) => Err((HostStatus::RolledBack, error)),
        Err(again) if again.kind == ErrorKind::ConnectionLost => {
            Err((HostStatus::Unknown, combine(&error, &again)))
        }
        Err(again) => Err((HostStatus::RollbackFailed, combine(&error, &again))),
    }
}

fn combine(first: &HostError, then: &HostError) -> HostError {
    HostError::new(
        first.kind,
        format!(
            "{}; then the rollback failed: {}",
            first.message, then.message
        ),
    )
}

/// Restarts `to_restart` one at a time and runs every check; instance checks
/// run for each instance of a templated unit.
fn restart_and_verify(
    remote: &Remote,
    host: &HostSettings,
    to_restart: &[String],
    units: &[String],
    plan: &Plan,
    steps: &mut Steps,
    redact: &dyn Fn(&str) -> String,
) -> Result<(), HostError> {
    let timeout = Duration::from_millis(plan.settings.restart.timeout_ms);
    for unit in to_restart {
        steps.run("restart", || {
            systemd::restart(remote, unit, timeout, redact)
        })?;
        if let Some(entry) = steps.report.units.iter_mut().find(|u| &u.unit == unit) {
            entry.restarted = true;
        }
    }
    let instances: Vec<&str> = units
        .iter()
        .filter_map(|u| {
            u.split_once('@')
                .and_then(|(_, rest)| rest.rsplit_once('.'))
                .map(|(i, _)| i)
        })
        .filter(|i| !i.is_empty())
        .collect();
    for check in &plan.settings.verify {
        let urls: Vec<String> = if check.url.contains("{instance}") {
            instances
                .iter()
                .map(|i| health::expand(&check.url, &host.name, Some(i)))
                .collect()
        } else {
            vec![health::expand(&check.url, &host.name, None)]
        };
        for url in urls {
            steps.check_deadline("verify")?;
            let report = health::verify(&url, check);
            steps.record("verify", report.ok, report.ms);
            let failure = (!report.ok).then(|| {
                let what = match (report.last_status, &report.last_error) {
                    (Some(status), _) => format!("answered {status}"),
                    (None, Some(error)) => error.clone(),
                    (None, None) => "did not answer".into(),
                };
                HostError::new(
                    ErrorKind::HealthCheckFailed,
                    format!(
                        "`{url}` {what} after {} attempts in {} ms (wanted {} in a row of {})",
                        report.attempts, report.ms, check.consecutive, check.expect_status
                    ),
                )
            });
            steps.report.checks.push(report);
            if let Some(failure) = failure {
                return Err(failure);
            }
        }
    }
    Ok(())
}

/// The host's current file as systemd would read it; values are secrets.
fn parse_current(current: &Current) -> BTreeMap<String, String> {
    current
        .content
        .as_ref()
        .map(|content| {
            grammar::parse(content.expose_secret())
                .assignments
                .into_iter()
                .map(|a| (a.key, a.value))
                .collect()
        })
        .unwrap_or_default()
}

fn key_changes(current: &BTreeMap<String, String>, file: &HostFile) -> KeyChanges {
    let mut changes = KeyChanges::default();
    for (key, value) in &file.values {
        match current.get(key) {
            None => changes.added.push(key.clone()),
            Some(old) if old != value.expose_secret() => changes.changed.push(key.clone()),
            Some(_) => changes.unchanged += 1,
        }
    }
    changes.removed = current
        .keys()
        .filter(|key| !file.values.iter().any(|(k, _)| k == *key))
        .cloned()
        .collect();
    changes
}

/// Replaces every occurrence of a secret in a message from a host.
fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for secret in secrets.iter().filter(|s| s.len() >= 3) {
        out = out.replace(secret.as_str(), "[redacted]");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_removes_every_secret() {
        let secrets = vec!["hunter2".to_string(), "ab".to_string()];
        assert_eq!(redact("pw hunter2 ab", &secrets), "pw [redacted] ab");
    }
}
