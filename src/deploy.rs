//! `hostenv deploy` and `hostenv plan`: the only module that knows the order of
//! the steps.
//!
//! A run has phases. **Open**, on every host in parallel: connect, read what is
//! there, and assess what a deploy would do. `plan` stops there and reports.
//! **Apply**, batch by batch (canary first, then `rollout.batch` hosts at a
//! time, `rollout.parallel` at once): stage, switch, restart, verify, roll back
//! what fails, and append an audit line. Once the canary fails or more than
//! `rollout.maxFailed` hosts have failed, no further batch starts and the hosts
//! left are `skipped`. One host's failure never touches another.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::audit::{self, AuditLine};
use crate::catalog::Catalog;
use crate::check::prepare_deploy;
use crate::digest;
use crate::error::{Error, ErrorKind, HostError, Result};
use crate::health;
use crate::lock;
use crate::remote::{Current, Invocation, Remote};
use crate::render::systemd as grammar;
use crate::report::{
    wire_name, Action, ErrorReport, HostReport, HostStatus, KeyChanges, Report, RollbackAction,
    StepReport, Summary, UnitReport, EXIT_DIFFERENCES, EXIT_FAILED, EXIT_NEEDS_PERSON,
};
use crate::request::{Amount, Deployment, SudoMode};
use crate::resolve::HostFile;
use crate::secret::{EnvLookup, ExposeSecret, SecretString};
use crate::settings::{HostSettings, Settings};
use crate::ssh::{Connection, SshConfig};
use crate::systemd;

pub const DEFAULT_PARALLEL: u32 = 10;
pub const DEFAULT_DEADLINE_MS: u64 = 600_000;

/// What every host of one deployment shares.
struct Context<'a> {
    action: Action,
    settings: &'a Settings,
    deployment: &'a Deployment,
    ssh: &'a SshConfig,
    sudo: SudoMode,
    rollback_on_failure: bool,
    /// Keys of this service that the catalog shares with other services, unless
    /// the request allows changing them.
    guarded_keys: Vec<String>,
    deadline: Instant,
    lock: Invocation,
    lock_wait: Duration,
    /// Who holds the lock, for whoever waits for it next (no secrets).
    holder: String,
    /// `rollback --to N`: which backup goes back (1 = the newest).
    rollback_to: u32,
}

/// What the command line adds to a request: the plan digest's key, the digest
/// a deploy must find, and the request as sent (part of the digest).
#[derive(Default)]
pub struct RunOptions {
    pub plan_key: Option<SecretString>,
    pub expect_plan: Option<String>,
    pub request: serde_json::Value,
    /// `rollback --to N`.
    pub rollback_to: u32,
}

/// `hostenv deploy`, `plan` (what a deploy would do, writing nothing) or
/// `drift` (does every host hold what a deploy would write) of a Deploy request.
pub fn run(
    action: Action,
    deployment: &Deployment,
    env: &dyn EnvLookup,
    catalog: &Catalog,
    options: &RunOptions,
    report: &mut Report,
) -> Result<()> {
    let started = Instant::now();
    // A rollback puts back files the hosts already hold: it needs no contract
    // and no secrets bound, only where the hosts and files are.
    let (settings, prepared) = if action == Action::Rollback {
        report.service = Some(deployment.service.clone());
        report.environment = deployment.environment.clone();
        (Settings::from_request(deployment, "", catalog)?, None)
    } else {
        let prepared = prepare_deploy(deployment, env, catalog, report)?;
        (prepared.settings.clone(), Some(prepared))
    };
    let ssh = SshConfig::from_request(deployment.ssh.as_ref(), "", env)?;
    let rollout = Rollout::from_request(deployment, settings.hosts.len())?;
    let guarded_keys = match &prepared {
        Some(prepared) if deployment.allow_shared_change != Some(true) => prepared
            .contract
            .names()
            .filter(|key| !catalog.shares_with(key, &deployment.service).is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    };
    let context = Context {
        action,
        settings: &settings,
        deployment,
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
        lock: lock::invocation(
            &deployment.service,
            deployment.environment.as_deref(),
            if writes(action) {
                lock::Mode::Exclusive
            } else {
                lock::Mode::Shared
            },
            rollout.lock_wait,
        ),
        lock_wait: rollout.lock_wait,
        holder: holder(action, deployment),
        rollback_to: options.rollback_to.max(1),
    };
    let mut runs: Vec<HostRun> = settings
        .hosts
        .iter()
        .enumerate()
        .map(|(index, host)| {
            let file = prepared.as_ref().map(|p| &p.resolution.files[index]);
            HostRun::new(host, file, &context)
        })
        .collect();

    // Locks are taken one host at a time in sorted order, so two runs over
    // overlapping hosts cannot each hold what the other waits for.
    in_parallel(&mut runs, rollout.parallel, |run| run.connect(&context));
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_by(|a, b| runs[*a].host.name.cmp(&runs[*b].host.name));
    for index in order {
        runs[index].lock(&context);
    }
    in_parallel(&mut runs, rollout.parallel, |run| run.assess(&context));

    if let Some(key) = &options.plan_key {
        let digest = plan_digest(key, &options.request, &runs);
        match (action, &options.expect_plan) {
            (Action::Plan, _) => report.plan_digest = digest,
            (_, Some(expected)) if digest.as_ref() != Some(expected) => {
                for run in runs.iter_mut().filter(|run| !run.finished) {
                    run.finish(Err((
                        HostStatus::Failed,
                        HostError::new(
                            ErrorKind::PlanMismatch,
                            format!(
                                "`{}`: the request or a host changed since the plan was made; nothing was touched, run `plan` again",
                                run.host.name
                            ),
                        ),
                    )));
                }
            }
            _ => {}
        }
    }
    match action {
        Action::Plan => in_parallel(&mut runs, rollout.parallel, |run| run.plan(&context)),
        Action::Drift => in_parallel(&mut runs, rollout.parallel, |run| run.drift()),
        _ => apply_in_batches(&mut runs, &rollout, &context),
    }

    report.hosts = runs.into_iter().map(HostRun::into_report).collect();
    report.summary = Summary::of(&report.hosts);
    match hosts_failed(action, &report.hosts) {
        Some(error) => Err(error),
        None if report.summary.planned > 0 || report.summary.drifted > 0 => {
            report.ok = false;
            report.exit_code = EXIT_DIFFERENCES;
            Ok(())
        }
        None => Ok(()),
    }
}

/// Whether an action changes hosts (and so takes exclusive locks).
fn writes(action: Action) -> bool {
    !matches!(action, Action::Plan | Action::Drift)
}

/// The digest over every host, or None when a host could not be read.
fn plan_digest(
    key: &SecretString,
    request: &serde_json::Value,
    runs: &[HostRun],
) -> Option<String> {
    let states: Option<Vec<digest::HostState>> = runs
        .iter()
        .map(|run| {
            let assessment = run.assessment.as_ref().filter(|_| !run.finished)?;
            Some(digest::HostState {
                host: &run.host.name,
                rendered: &run.file?.text,
                current: &assessment.current,
            })
        })
        .collect();
    states.map(|states| digest::compute(key, request, &states))
}

/// The lock file's note on who holds it: action, build, user, start time.
fn holder(action: Action, deployment: &Deployment) -> String {
    let audit = deployment.audit.clone().unwrap_or_default();
    serde_json::json!({
        "action": wire_name(&action),
        "buildUrl": audit.build_url,
        "by": audit.by,
        "since": crate::audit::rfc3339(std::time::SystemTime::now()),
    })
    .to_string()
}

/// How the hosts are taken: canary, batch size, failures tolerated, parallelism.
struct Rollout {
    parallel: usize,
    canary: usize,
    batch: usize,
    max_failed: usize,
    lock_wait: Duration,
}

impl Rollout {
    fn from_request(deployment: &Deployment, hosts: usize) -> Result<Rollout> {
        let rollout = deployment.rollout.clone().unwrap_or_default();
        let canary = rollout.canary.unwrap_or(0) as usize;
        if canary > hosts {
            return Err(Error::invalid(
                ErrorKind::InvalidSetting,
                "/rollout/canary",
                format!("there are only {hosts} hosts"),
            ));
        }
        let batch = match &rollout.batch {
            Some(amount) => hosts_in(amount, hosts, "/rollout/batch")?.max(1),
            None => hosts.max(1),
        };
        let max_failed = match &rollout.max_failed {
            Some(amount) => hosts_in(amount, hosts, "/rollout/maxFailed")?,
            None => 0,
        };
        Ok(Rollout {
            parallel: rollout.parallel.unwrap_or(DEFAULT_PARALLEL).max(1) as usize,
            canary,
            batch,
            max_failed,
            lock_wait: Duration::from_millis(rollout.lock_wait_ms.unwrap_or(lock::DEFAULT_WAIT_MS)),
        })
    }

    /// Index ranges, in request order: the canary hosts, then batches.
    fn batches(&self, hosts: usize) -> Vec<std::ops::Range<usize>> {
        let mut batches = Vec::new();
        if self.canary > 0 {
            batches.push(0..self.canary);
        }
        let mut start = self.canary;
        while start < hosts {
            let end = (start + self.batch).min(hosts);
            batches.push(start..end);
            start = end;
        }
        batches
    }
}

/// A count, or `"N%"` of the hosts rounded up (at least 1).
fn hosts_in(amount: &Amount, hosts: usize, field: &str) -> Result<usize> {
    match amount {
        Amount::Count(count) => Ok(*count as usize),
        Amount::Percent(text) => {
            let percent = text
                .strip_suffix('%')
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| (1..=100).contains(n))
                .ok_or_else(|| {
                    Error::invalid(
                        ErrorKind::InvalidSetting,
                        field,
                        "must be a whole number of hosts or a percentage from `1%` to `100%`",
                    )
                })?;
            Ok((hosts * percent).div_ceil(100).max(1))
        }
    }
}

fn apply_in_batches(runs: &mut [HostRun], rollout: &Rollout, context: &Context) {
    let mut failed = 0;
    let mut stop: Option<String> = None;
    for (index, range) in rollout.batches(runs.len()).into_iter().enumerate() {
        let batch = &mut runs[range];
        if let Some(reason) = &stop {
            for run in batch.iter_mut() {
                run.skip(reason);
            }
            continue;
        }
        in_parallel(batch, rollout.parallel, |run| {
            run.apply(context);
            run.audit(context);
        });
        let failures = batch.iter().filter(|run| run.failed()).count();
        failed += failures;
        if index == 0 && rollout.canary > 0 && failures > 0 {
            stop = Some("not attempted: the canary failed".into());
        } else if failed > rollout.max_failed {
            stop = Some(format!(
                "not attempted: {failed} hosts failed, more than `rollout.maxFailed` ({}) allows",
                rollout.max_failed
            ));
        }
    }
}

/// Runs `work` on every item, at most `parallel` at once.
fn in_parallel<T: Send>(items: &mut [T], parallel: usize, work: impl Fn(&mut T) + Sync) {
    let queue = Mutex::new(items.iter_mut());
    let workers = parallel.clamp(1, queue.lock().expect("fresh").len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let next = queue.lock().expect("no worker panics holding it").next();
                match next {
                    Some(item) => work(item),
                    None => break,
                }
            });
        }
    });
}

/// The run's error when any host did not end as it should.
fn hosts_failed(action: Action, hosts: &[HostReport]) -> Option<Error> {
    let bad: Vec<&HostReport> = hosts
        .iter()
        .filter(|h| !succeeded(action, h.status))
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

/// Whether a host ended as `action` means it to. For `rollback`, putting the
/// backup back is the success.
fn succeeded(action: Action, status: HostStatus) -> bool {
    match status {
        HostStatus::Deployed
        | HostStatus::Unchanged
        | HostStatus::Planned
        | HostStatus::InSync
        | HostStatus::Drifted => true,
        HostStatus::RolledBack => action == Action::Rollback,
        _ => false,
    }
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

/// What the host has and what a deploy would do there, known before any write.
struct Assessment {
    current: Current,
    current_values: BTreeMap<String, String>,
    units: Vec<String>,
    same_file: bool,
    /// With an identical file: the units to restart anyway (`restart.force`, or
    /// started before the file was written).
    stale_units: Vec<String>,
}

/// One host through the phases, with its report as it grows.
struct HostRun<'a> {
    host: &'a HostSettings,
    /// The file a deploy would write; none for a rollback.
    file: Option<&'a HostFile>,
    report: HostReport,
    action: Action,
    deadline: Instant,
    connection: Option<Connection>,
    sudo: bool,
    assessment: Option<Assessment>,
    finished: bool,
}

type Outcome = std::result::Result<HostStatus, (HostStatus, HostError)>;

impl<'a> HostRun<'a> {
    fn new(host: &'a HostSettings, file: Option<&'a HostFile>, context: &Context) -> HostRun<'a> {
        HostRun {
            host,
            file,
            report: HostReport::new(&host.name, HostStatus::Failed),
            action: context.action,
            deadline: context.deadline,
            connection: None,
            sudo: match context.sudo {
                SudoMode::Always => true,
                SudoMode::Never => false,
                SudoMode::Auto => host.user != "root",
            },
            assessment: None,
            finished: false,
        }
    }

    /// The action's name in progress lines and the audit log.
    fn label(&self) -> &'static str {
        match self.action {
            Action::Plan => "plan",
            Action::Drift => "drift",
            Action::Rollback => "rollback",
            _ => "deploy",
        }
    }

    fn remote(&self) -> Option<Remote<'_>> {
        self.connection.as_ref().map(|connection| Remote {
            connection,
            host: &self.host.name,
            sudo: self.sudo,
        })
    }

    fn check_deadline(&self, name: &str) -> Result<(), HostError> {
        if Instant::now() > self.deadline {
            return Err(HostError::new(
                ErrorKind::DeadlineExceeded,
                format!(
                    "`{}`: the run's deadline passed before the `{name}` step",
                    self.host.name
                ),
            ));
        }
        Ok(())
    }

    fn record(&mut self, name: &str, ok: bool, ms: u64) {
        eprintln!(
            "hostenv {}: {}: {name} {} ({ms} ms)",
            self.label(),
            self.host.name,
            if ok { "ok" } else { "failed" }
        );
        self.report.steps.push(StepReport {
            name: name.to_string(),
            ok,
            ms,
        });
    }

    /// Runs one step on the host's remote side, timing and recording it.
    fn step<T>(
        &mut self,
        name: &str,
        work: impl FnOnce(&Remote) -> Result<T, HostError>,
    ) -> Result<T, HostError> {
        self.check_deadline(name)?;
        let started = Instant::now();
        let result = match self.remote() {
            Some(remote) => work(&remote),
            None => Err(HostError::new(
                ErrorKind::ConnectionLost,
                format!("`{}`: not connected", self.host.name),
            )),
        };
        self.record(name, result.is_ok(), started.elapsed().as_millis() as u64);
        result
    }

    fn finish(&mut self, outcome: Outcome) {
        let (status, error) = match outcome {
            Ok(status) => (status, None),
            Err((status, error)) => (status, Some(error)),
        };
        self.report.status = status;
        self.report.error = error.map(|e| ErrorReport {
            kind: e.kind,
            message: e.message,
            field: None,
        });
        self.finished = true;
    }

    fn failed(&self) -> bool {
        !succeeded(self.action, self.report.status)
    }

    fn skip(&mut self, reason: &str) {
        self.report.changed = false;
        self.finish(Err((
            HostStatus::Skipped,
            HostError::new(ErrorKind::NotAttempted, reason),
        )));
    }

    fn into_report(self) -> HostReport {
        self.report
    }

    /// Connects; a failure finishes the host as `failed`.
    fn connect(&mut self, context: &Context) {
        if let Err(error) = self.check_deadline("connect") {
            return self.finish(Err((HostStatus::Failed, error)));
        }
        let started = Instant::now();
        let connection = Connection::open(self.host, context.ssh);
        self.record(
            "connect",
            connection.is_ok(),
            started.elapsed().as_millis() as u64,
        );
        match connection {
            Ok(connection) => self.connection = Some(connection),
            Err(error) => self.finish(Err((HostStatus::Failed, error))),
        }
    }

    /// Takes the host lock for the rest of the run.
    fn lock(&mut self, context: &Context) {
        if self.finished {
            return;
        }
        let result = self.step("lock", |remote| {
            lock::acquire(remote, &context.lock, &context.holder, context.lock_wait)
        });
        if let Err(error) = result {
            self.finish(Err((HostStatus::Failed, error)));
        }
    }

    /// Reads the current file and assesses what a deploy would do; a failure
    /// finishes the host as `failed`.
    fn assess(&mut self, context: &Context) {
        if self.finished {
            return;
        }
        if let Err(error) = self.try_assess(context) {
            self.finish(Err((HostStatus::Failed, error)));
        }
    }

    fn try_assess(&mut self, context: &Context) -> Result<(), HostError> {
        let target = &context.settings.target;
        let current = self.step("read", |remote| remote.read_current(target))?;
        let current_values = parse_current(&current);
        self.report.keys = self.file.map(|file| key_changes(&current_values, file));
        let guarded: &[String] = if context.action == Action::Drift {
            &[]
        } else {
            &context.guarded_keys
        };
        let new_values: &[(String, SecretString)] = self.file.map_or(&[], |f| &f.values);
        if let Some(key) = guarded.iter().find(|key| {
            let new = new_values
                .iter()
                .find(|(k, _)| k == *key)
                .map(|(_, v)| v.expose_secret());
            matches!((current_values.get(*key), new), (Some(old), Some(new)) if old != new)
        }) {
            return Err(HostError::new(
                ErrorKind::SharedKeyChange,
                format!(
                    "`{}`: the new file changes `{key}`, which other services share; rotate it with a Rotation request, or set `allowSharedChange: true`",
                    self.host.name
                ),
            ));
        }
        let units = self.step("units", |remote| {
            systemd::units_on_host(
                remote,
                &context.settings.restart.units,
                self.host.instances.as_deref(),
            )
        })?;
        self.report.units = units
            .iter()
            .map(|u| UnitReport {
                unit: u.clone(),
                restarted: false,
                will_restart: false,
            })
            .collect();
        // A rollback always puts a backup in place, whatever is there now.
        let same_file = self.file.is_some_and(|file| {
            current
                .content
                .as_ref()
                .is_some_and(|c| c.expose_secret() == file.text.expose_secret())
        }) && current.uid == current.want_uid
            && current.gid == current.want_gid
            && current.mode == target.mode;
        let mut stale_units = Vec::new();
        if same_file {
            for unit in &units {
                let started =
                    self.step("started-at", |remote| systemd::started_at(remote, unit))?;
                // A previous run may have switched the file and died before restarting.
                if context.settings.restart.force || started.is_none_or(|at| at < current.mtime) {
                    stale_units.push(unit.clone());
                }
            }
        }
        self.assessment = Some(Assessment {
            current,
            current_values,
            units,
            same_file,
            stale_units,
        });
        Ok(())
    }

    /// `plan`: report what a deploy would do, from the assessment alone.
    fn plan(&mut self, _context: &Context) {
        if self.finished {
            return;
        }
        let Some(assessment) = &self.assessment else {
            return;
        };
        let restarting: &[String] = if assessment.same_file {
            &assessment.stale_units
        } else {
            &assessment.units
        };
        for unit in &mut self.report.units {
            unit.will_restart = restarting.contains(&unit.unit);
        }
        let status = if assessment.same_file && restarting.is_empty() {
            HostStatus::Unchanged
        } else {
            HostStatus::Planned
        };
        self.finish(Ok(status));
    }

    /// `drift`: the host holds exactly the file (bytes, owner, mode) a deploy would write, or not.
    fn drift(&mut self) {
        if self.finished {
            return;
        }
        let Some(assessment) = &self.assessment else {
            return;
        };
        let status = if assessment.same_file {
            HostStatus::InSync
        } else {
            HostStatus::Drifted
        };
        self.finish(Ok(status));
    }

    /// Stage, switch, restart, verify, roll back what fails.
    fn apply(&mut self, context: &Context) {
        if self.finished {
            return;
        }
        let mut outcome = self.converge(context);
        if context.action == Action::Rollback {
            // For `rollback`, putting the backup back is the success, and a
            // rollback undone (the file from before it restored) is a failure.
            outcome = match outcome {
                Ok(HostStatus::Deployed) => Ok(HostStatus::RolledBack),
                Err((HostStatus::RolledBack, error)) => Err((HostStatus::Failed, error)),
                other => other,
            };
        }
        self.finish(outcome);
    }

    fn converge(&mut self, context: &Context) -> Outcome {
        let failed = |error: HostError| (HostStatus::Failed, error);
        let target = &context.settings.target;
        let assessment = self.assessment.take().expect("opened");
        let secrets: Vec<String> = self
            .file
            .map_or(&[][..], |f| &f.values)
            .iter()
            .map(|(_, v)| v.expose_secret().to_string())
            .chain(assessment.current_values.values().cloned())
            .collect();
        let redact = |text: &str| redact(text, &secrets);
        let units = assessment.units.clone();

        if assessment.same_file {
            if !assessment.stale_units.is_empty() {
                self.restart_and_verify(context, &assessment.stale_units, &redact)
                    .map_err(failed)?;
            }
            return Ok(HostStatus::Unchanged);
        }

        let file = self.file;
        self.step("stage", |remote| match file {
            Some(file) => remote.stage(target, &file.text),
            None => remote.stage_backup(target, context.rollback_to),
        })
        .map_err(failed)?;
        let had_previous = match self.step("switch", |remote| remote.switch(target)) {
            Ok(had_previous) => had_previous,
            Err(error) => {
                if let Some(remote) = self.remote() {
                    remote.discard(target);
                }
                return Err(failed(error));
            }
        };
        self.report.changed = true;
        let error = match self.restart_and_verify(context, &units, &redact) {
            Ok(()) => return Ok(HostStatus::Deployed),
            Err(error) => error,
        };
        if error.kind == ErrorKind::ConnectionLost {
            return Err((HostStatus::Unknown, error));
        }
        if !context.rollback_on_failure {
            return Err((HostStatus::Unhealthy, error));
        }
        if let Err(rollback_error) =
            self.step("rollback", |remote| remote.restore(target, had_previous))
        {
            return Err((HostStatus::RollbackFailed, combine(&error, &rollback_error)));
        }
        self.report.changed = false;
        self.report.rollback = Some(if had_previous {
            RollbackAction::RestoredPrevious
        } else {
            RollbackAction::RemovedNewFile
        });
        if !had_previous {
            return Err((HostStatus::RolledBack, error));
        }
        if let Some(remote) = self.remote() {
            for unit in &units {
                systemd::reset_failed(&remote, unit);
            }
        }
        match self.restart_and_verify(context, &units, &redact) {
            Ok(()) => Err((HostStatus::RolledBack, error)),
            Err(again) if again.kind == ErrorKind::ConnectionLost => {
                Err((HostStatus::Unknown, combine(&error, &again)))
            }
            Err(again) => Err((HostStatus::RollbackFailed, combine(&error, &again))),
        }
    }

    /// Restarts units one at a time. After each instance of a template, the
    /// checks with `{instance}` run for it before the next restarts, so a host
    /// never loses all its workers at once; the other checks run at the end.
    fn restart_and_verify(
        &mut self,
        context: &Context,
        units: &[String],
        redact: &dyn Fn(&str) -> String,
    ) -> Result<(), HostError> {
        let timeout = Duration::from_millis(context.settings.restart.timeout_ms);
        for unit in units {
            self.step("restart", |remote| {
                systemd::restart(remote, unit, timeout, redact)
            })?;
            if let Some(entry) = self.report.units.iter_mut().find(|u| &u.unit == unit) {
                entry.restarted = true;
            }
            if let Some(instance) = instance_of(unit) {
                for check in context
                    .settings
                    .verify
                    .iter()
                    .filter(|c| c.url.contains("{instance}"))
                {
                    self.verify(
                        &health::expand(&check.url, &self.host.name, Some(instance)),
                        check,
                    )?;
                }
            }
        }
        for check in context
            .settings
            .verify
            .iter()
            .filter(|c| !c.url.contains("{instance}"))
        {
            self.verify(&health::expand(&check.url, &self.host.name, None), check)?;
        }
        Ok(())
    }

    fn verify(
        &mut self,
        url: &str,
        check: &crate::settings::VerifySettings,
    ) -> Result<(), HostError> {
        self.check_deadline("verify")?;
        let connection = self.connection.as_ref();
        let label = self.host.name.as_str();
        let through_ssh = |url: &str, timeout: Duration| -> std::result::Result<u16, String> {
            let (host, port, path) = health::split_url(url).ok_or("not an http URL")?;
            let connection = connection.ok_or("not connected")?;
            connection.http_get(label, &host, port, &path, timeout)
        };
        let probe: &health::Probe = if check.via_ssh {
            &through_ssh
        } else {
            &health::direct
        };
        let report = health::verify(url, check, probe, &|| {
            if let Some(connection) = connection {
                connection.beat();
            }
        });
        self.record("verify", report.ok, report.ms);
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
        self.report.checks.push(report);
        match failure {
            Some(failure) => Err(failure),
            None => Ok(()),
        }
    }

    /// Appends this attempt to the host's audit log, when the host was reached.
    fn audit(&mut self, context: &Context) {
        if self.connection.is_none() || self.report.steps.iter().all(|s| s.name == "connect") {
            return;
        }
        let line = AuditLine::for_host(
            self.label(),
            &self.report,
            &context.settings.service,
            context.deployment,
        );
        let state_dir = context.settings.target.state_dir.clone();
        let _ = self.step("audit", |remote| audit::append(remote, &state_dir, &line));
    }
}

fn instance_of(unit: &str) -> Option<&str> {
    unit.split_once('@')
        .and_then(|(_, rest)| rest.rsplit_once('.'))
        .map(|(instance, _)| instance)
        .filter(|instance| !instance.is_empty())
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

    #[test]
    fn batches_put_the_canary_alone_first() {
        let rollout = Rollout {
            parallel: 4,
            canary: 1,
            batch: 3,
            max_failed: 0,
            lock_wait: Duration::from_secs(1),
        };
        assert_eq!(rollout.batches(8), vec![0..1, 1..4, 4..7, 7..8]);
        let no_canary = Rollout {
            canary: 0,
            ..rollout
        };
        assert_eq!(no_canary.batches(3), vec![0..3]);
    }

    #[test]
    fn percentages_round_up_to_at_least_one_host() {
        let percent = |p: &str, hosts| hosts_in(&Amount::Percent(p.into()), hosts, "/f").unwrap();
        assert_eq!(percent("25%", 10), 3);
        assert_eq!(percent("1%", 3), 1);
        assert_eq!(percent("100%", 7), 7);
        assert!(hosts_in(&Amount::Percent("0%".into()), 3, "/f").is_err());
        assert!(hosts_in(&Amount::Percent("x%".into()), 3, "/f").is_err());
    }
}
