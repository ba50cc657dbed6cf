//! `deploy`, `plan`, `drift` and `rollback` of Deploy and Rotation requests:
//! the only module that knows the order of the steps.
//!
//! A run has phases. **Open**, on every host of every deployment: connect in
//! parallel, try every host's lock at once without waiting and, only if another
//! run holds one, let go of all and take them one at a time in sorted order (so
//! two runs over overlapping hosts cannot each hold what the other waits for),
//! then read what is there and assess what a deploy would do. `plan` and `drift`
//! stop there and report; `backups` reads each host's backups and lists them
//! against its current file. **Apply** differs by kind:
//! - a Deploy goes batch by batch (canary first, then `rollout.batch` hosts at
//!   a time, `rollout.parallel` at once); one host's failure never touches
//!   another, and once the canary fails or more than `rollout.maxFailed` hosts
//!   have failed, the hosts left are `skipped`;
//! - a Rotation is one window over all its deployments (window.rs): every host
//!   either ends with the new file or is put back.

mod assess;
mod backups;
pub mod digest;
mod host;
mod shared;
mod window;

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::prepare::rotation::{prepare_rotation, rotation_rules};
use crate::prepare::{prepare_deploy, Prepared};
use crate::settings::catalog::Catalog;

use crate::protocol::error::{ErrorKind, HostError, Result};
use crate::protocol::exit::Exit;
use crate::protocol::report::{
    wire_name, Action, ContractReport, DeploymentReport, ErrorReport, HostReport, HostStatus,
    Report, Summary,
};
use crate::protocol::request::{Deployment, Rotation, SudoMode};
use crate::settings::rollout::Rollout;
use crate::settings::secret::{EnvLookup, SecretString};
use crate::settings::ssh::SshConfig;
use crate::settings::{RunSettings, Settings};
use crate::transport::lock;
use crate::transport::remote::Invocation;
use host::HostRun;

pub const DEFAULT_DEADLINE_MS: u64 = 600_000;

/// What the command line adds to a request: the plan digest's key, the digest
/// a deploy must find, and the request as sent (part of the digest).
#[derive(Default)]
pub struct RunOptions {
    pub plan_key: Option<SecretString>,
    pub expect_plan: Option<String>,
    pub request: serde_json::Value,
    /// `rollback --to N`.
    pub rollback_to: u32,
    /// `check --ssh-unbound`: the SSH credentials' variables are not set in this run.
    pub ssh_unbound: bool,
}

/// One deployment made ready: what every host of it shares.
struct Context<'a> {
    action: Action,
    deployment: &'a Deployment,
    settings: Settings,
    /// Contract and rendered files; none for a rollback, which needs no secrets.
    prepared: Option<Prepared>,
    ssh: SshConfig,
    rollout: Rollout,
    sudo: SudoMode,
    rollback_on_failure: bool,
    /// Keys this run may not change, each with the services outside the run
    /// that read it too (the catalog's shared keys), unless the request allows it.
    guarded_keys: Vec<(String, String)>,
    /// `purgeBackupsOf`: keys whose old values no backup may keep after a success.
    purge_keys: Vec<String>,
    deadline: Instant,
    lock: Invocation,
    lock_wait: Duration,
    /// The host program to install where a root login finds it missing or outdated.
    host_program: crate::transport::provision::LocalProgram,
    /// Who holds the lock, for whoever waits for it next (no secrets):
    /// the holder line's text.
    holder: String,
    /// `rollback --to N`: which backup goes back (1 = the newest).
    rollback_to: u32,
    /// Every service of the run, for the audit trail.
    window_services: Vec<String>,
    /// The deployment's place in the request (0 for a Deploy).
    index: usize,
    /// The file of each host in the first batch goes with its lock step
    /// (`HostRun::stage_with_lock`): a Deploy's hosts, which stage nothing
    /// else; never within a Rotation's window, which stages interim files
    /// too, nor for a reviewed plan.
    stage_with_lock: bool,
}

/// What every deployment of one run shares.
struct RunInputs<'r> {
    action: Action,
    env: &'r dyn EnvLookup,
    catalog: &'r Catalog,
    options: &'r RunOptions,
    started: Instant,
    /// Every service of the run, in request order.
    services: Vec<String>,
    /// A Rotation: its deployments go in one window.
    window: bool,
}

impl<'r> RunInputs<'r> {
    fn new(
        action: Action,
        (env, catalog, options): (&'r dyn EnvLookup, &'r Catalog, &'r RunOptions),
        started: Instant,
        services: Vec<String>,
        window: bool,
    ) -> RunInputs<'r> {
        RunInputs {
            action,
            env,
            catalog,
            options,
            started,
            services,
            window,
        }
    }
}

impl<'a> Context<'a> {
    /// Deployment `index` of the run (at `at` in the request), with what
    /// `prepare` found for it (none for a rollback).
    fn new(
        run: &RunInputs,
        index: usize,
        deployment: &'a Deployment,
        at: &str,
        prepared: Option<Prepared>,
    ) -> Result<Context<'a>> {
        let RunInputs {
            action,
            env,
            catalog,
            options,
            started,
            ..
        } = *run;
        let RunSettings {
            settings,
            ssh,
            rollout,
        } = RunSettings::derive(
            deployment,
            at,
            prepared.as_ref().map(|p| p.settings.clone()),
            catalog,
            env,
        )?;
        // The keys this run may not change on its own: those the catalog
        // shares with a service outside the run, with those services named.
        let guard = |key: &str| {
            let others: Vec<String> = catalog
                .shares_with(key, &deployment.service)
                .into_iter()
                .filter(|service| !run.services.iter().any(|s| s == service))
                .map(|service| format!("`{service}`"))
                .collect();
            (!others.is_empty()).then(|| (key.to_string(), others.join(" and ")))
        };
        let guarded_keys = match &prepared {
            _ if deployment.allow_shared_change == Some(true) => Vec::new(),
            Some(prepared) => prepared.contract.names().filter_map(guard).collect(),
            // A rollback binds no secrets: every key the catalog shares is guarded.
            None if action == Action::Rollback => {
                catalog.shared.keys().filter_map(|key| guard(key)).collect()
            }
            None => Vec::new(),
        };
        let purge_keys = deployment.purge_backups_of.clone();
        Ok(Context {
            action,
            deployment,
            ssh,
            rollout: rollout.clone(),
            sudo: deployment
                .ssh
                .as_ref()
                .and_then(|s| s.sudo)
                .unwrap_or(SudoMode::Auto),
            rollback_on_failure: deployment.rollback_on_failure.unwrap_or(true),
            guarded_keys,
            purge_keys,
            deadline: started
                + Duration::from_millis(deployment.deadline_ms.unwrap_or(DEFAULT_DEADLINE_MS)),
            lock: lock::invocation(
                &settings.service,
                settings.environment.as_ref(),
                if writes(action) {
                    lock::Mode::Exclusive
                } else {
                    lock::Mode::Shared
                },
            ),
            lock_wait: rollout.lock_wait,
            host_program: crate::transport::provision::LocalProgram::locate(env),
            holder: holder(action, deployment),
            rollback_to: options.rollback_to.max(1),
            window_services: run.services.clone(),
            index,
            // A reviewed plan's run touches no host before its plan is compared.
            stage_with_lock: action == Action::Deploy
                && !run.window
                && options.expect_plan.is_none(),
            settings,
            prepared,
        })
    }

    /// Part of a Rotation: host names in messages carry the service.
    fn in_rotation(&self) -> bool {
        self.window_services.len() > 1
    }

    fn contract_report(&self) -> ContractReport {
        match &self.prepared {
            Some(prepared) => prepared.contract_report(),
            None => ContractReport {
                path: self.deployment.contract.clone(),
                keys: Vec::new(),
            },
        }
    }

    /// One run per host, in request order.
    fn host_runs(&'a self) -> Vec<HostRun<'a>> {
        let hosts = &self.settings.hosts;
        let first_batch = self
            .rollout
            .batches(hosts.len())
            .into_iter()
            .next()
            .unwrap_or_default();
        hosts
            .iter()
            .enumerate()
            .map(|(index, host)| {
                let file = self.prepared.as_ref().map(|p| &p.resolution.files[index]);
                HostRun::new(self, host, file, first_batch.contains(&index))
            })
            .collect()
    }
}

/// `deploy`, `plan`, `drift` or `rollback` of a Deploy request.
pub fn run(
    action: Action,
    deployment: &Deployment,
    env: &dyn EnvLookup,
    catalog: &Catalog,
    options: &RunOptions,
    report: &mut Report,
) -> Result<()> {
    let started = Instant::now();
    report.service = Some(deployment.service.clone());
    report.environment = deployment.environment.clone();
    let prepared = match action {
        Action::Rollback | Action::Backups | Action::HostInstall => None,
        _ => Some(prepare_deploy(deployment, env, catalog, report)?),
    };
    let services = vec![deployment.service.clone()];
    let inputs = RunInputs::new(action, (env, catalog, options), started, services, false);
    let context = Context::new(&inputs, 0, deployment, "", prepared)?;
    let mut runs = context.host_runs();
    open(
        &mut runs,
        context.rollout.parallel,
        (catalog, options),
        report,
    );
    match action {
        Action::Plan => in_parallel(&mut runs, context.rollout.parallel, HostRun::plan),
        Action::Drift => in_parallel(&mut runs, context.rollout.parallel, HostRun::drift),
        Action::Backups => list_backups(&mut runs, context.rollout.parallel)?,
        Action::HostInstall => {}
        Action::Rollback => {
            if !refused_without_backup(&mut runs, context.rollback_to) {
                apply_in_batches(&mut runs, &context.rollout);
            }
        }
        _ => apply_in_batches(&mut runs, &context.rollout),
    }
    let hosts = finished(runs);
    let failed = hosts_failed(&hosts);
    report.hosts = hosts.into_iter().map(|host| host.report).collect();
    report.summary = Summary::of(&report.hosts);
    conclude(report, failed, false);
    Ok(())
}

/// `deploy`, `plan`, `drift` or `rollback` of a Rotation: every deployment in one window.
pub fn run_rotation(
    action: Action,
    rotation: &Rotation,
    env: &dyn EnvLookup,
    catalog: &Catalog,
    options: &RunOptions,
    report: &mut Report,
) -> Result<()> {
    let started = Instant::now();
    let prepared: Vec<Option<Prepared>> = match action {
        Action::HostInstall | Action::Backups => {
            rotation.deployments.iter().map(|_| None).collect()
        }
        Action::Rollback => {
            rotation_rules(rotation)?;
            rotation.deployments.iter().map(|_| None).collect()
        }
        _ => prepare_rotation(rotation, env, catalog, report)?
            .into_iter()
            .map(Some)
            .collect(),
    };
    let services = rotation
        .deployments
        .iter()
        .map(|d| d.service.clone())
        .collect();
    let inputs = RunInputs::new(action, (env, catalog, options), started, services, true);
    let mut contexts = Vec::new();
    for (index, (deployment, prepared)) in rotation.deployments.iter().zip(prepared).enumerate() {
        let at = format!("/deployments/{index}");
        contexts.push(Context::new(&inputs, index, deployment, &at, prepared)?);
    }
    let overlap = window::Overlap::from_request(rotation, &contexts)?;
    let run_key = shared::RunKey::new()?;
    let mut runs: Vec<HostRun> = contexts.iter().flat_map(Context::host_runs).collect();
    let parallel = widest(&contexts);
    open(&mut runs, parallel, (catalog, options), report);
    let mut differences = false;
    match action {
        Action::Plan => in_parallel(&mut runs, parallel, HostRun::plan),
        Action::Drift => {
            in_parallel(&mut runs, parallel, HostRun::drift);
            let holdings = shared::holdings_now(&runs, &rotation.shared);
            let reports = shared::reports(&rotation.shared, &runs, &holdings, &run_key);
            differences = reports.iter().any(|r| !r.identical);
            report.shared = Some(reports);
        }
        Action::Backups => list_backups(&mut runs, parallel)?,
        Action::HostInstall => {}
        _ => {
            if let Some(reports) = window::apply(
                &mut runs,
                &contexts,
                &overlap,
                &rotation.shared,
                &run_key,
                parallel,
            ) {
                report.shared = Some(reports);
            }
        }
    }
    let hosts = finished(runs);
    let failed = hosts_failed(&hosts);
    let mut deployments: Vec<DeploymentReport> = contexts
        .iter()
        .map(|context| DeploymentReport {
            service: context.settings.service.to_string(),
            contract: context.contract_report(),
            hosts: Vec::new(),
            summary: Summary::default(),
        })
        .collect();
    for host in hosts {
        deployments[host.deployment].hosts.push(host.report);
    }
    let mut summary = Summary::default();
    for deployment in &mut deployments {
        deployment.summary = Summary::of(&deployment.hosts);
        summary.add(&deployment.summary);
    }
    report.deployments = Some(deployments);
    report.summary = summary;
    conclude(report, failed, differences);
    Ok(())
}

/// Connects, locks and assesses every host, `parallel` at once, then checks `--expect-plan`.
fn open(
    runs: &mut [HostRun],
    parallel: usize,
    (catalog, options): (&Catalog, &RunOptions),
    report: &mut Report,
) {
    in_parallel(runs, parallel, HostRun::connect);
    if runs
        .first()
        .is_some_and(|run| run.context().action == Action::HostInstall)
    {
        return;
    }
    // Every lock at once, without waiting: one round trip however many hosts.
    // Only when another run holds one does this run let go of all it took and
    // wait for them in sorted order, so overlapping runs never deadlock.
    let contended = std::sync::atomic::AtomicBool::new(false);
    in_parallel(runs, parallel, |run| {
        if run.try_lock() {
            contended.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    if contended.into_inner() {
        in_parallel(runs, parallel, HostRun::release_lock);
        let mut order: Vec<usize> = (0..runs.len()).collect();
        order.sort_by(|a, b| {
            let key = |run: &HostRun| {
                (
                    run.host().name.clone(),
                    run.context().settings.service.clone(),
                )
            };
            key(&runs[*a]).cmp(&key(&runs[*b]))
        });
        for index in order {
            in_parallel_keeping_locks(runs, index..index + 1, 1, HostRun::lock);
        }
    }
    in_parallel(runs, parallel, HostRun::assess);

    let Some(key) = &options.plan_key else {
        return;
    };
    let action = runs.first().map(|run| run.context().action);
    let digest = plan_digest(key, (&options.request, catalog), runs);
    match (action, &options.expect_plan) {
        (Some(Action::Plan), _) => report.plan_digest = digest,
        (_, Some(expected)) if digest.as_ref() != Some(expected) => {
            for run in runs.iter_mut().filter(|run| !run.decided()) {
                let message = format!(
                    "`{}`: the request or a host changed since the plan was made; nothing was touched, run `plan` again",
                    run.host().name
                );
                run.finish(Err((
                    HostStatus::Failed,
                    HostError::new(ErrorKind::PlanMismatch, message),
                )));
            }
        }
        _ => {}
    }
}

/// Records the run's outcome: the hosts that failed, or exit 4 with what differs: hosts a deploy would
/// change (`plan`), hosts that drifted or shared keys that disagree (`drift`).
fn conclude(report: &mut Report, failed: Option<HostsFailed>, shared_differ: bool) {
    if let Some(failed) = failed {
        report.set_outcome(
            failed.exit,
            Some(ErrorReport {
                kind: ErrorKind::HostsFailed,
                message: failed.message,
                field: None,
            }),
        );
        return;
    }
    let hosts = report.summary.hosts;
    let (planned, drifted) = (report.summary.planned, report.summary.drifted);
    let difference = if planned > 0 {
        Some((
            ErrorKind::ChangesPending,
            format!("a deploy would change {planned} of {hosts} hosts"),
        ))
    } else if drifted > 0 || shared_differ {
        let mut message = format!("{drifted} of {hosts} hosts differ from the request");
        if shared_differ {
            message.push_str("; a shared key does not hold one value on every host");
        }
        Some((ErrorKind::DriftFound, message))
    } else {
        None
    };
    if let Some((kind, message)) = difference {
        report.set_outcome(
            Exit::Differences,
            Some(ErrorReport {
                kind,
                message,
                field: None,
            }),
        );
    }
}

/// How many hosts a run takes on at once: the most any of its deployments allows.
fn widest(contexts: &[Context]) -> usize {
    contexts
        .iter()
        .map(|c| c.rollout.parallel)
        .max()
        .unwrap_or(1)
}

/// Whether an action changes target files (and so takes exclusive locks).
fn writes(action: Action) -> bool {
    !matches!(action, Action::Plan | Action::Drift | Action::Backups)
}

/// `backups`: every host's backups against its current file, with value
/// fingerprints keyed for this run alone.
fn list_backups(runs: &mut [HostRun], parallel: usize) -> Result<()> {
    let run_key = shared::RunKey::new()?;
    in_parallel(runs, parallel, |run| run.list_backups(&run_key));
    Ok(())
}

/// The digest over every host, or None when a host could not be read.
fn plan_digest(
    key: &SecretString,
    (request, catalog): (&serde_json::Value, &Catalog),
    runs: &[HostRun],
) -> Option<String> {
    let names: Vec<String> = runs.iter().map(HostRun::name).collect();
    let states: Option<Vec<digest::HostState>> = runs
        .iter()
        .zip(&names)
        .map(|(run, name)| {
            let assessment = run.assessment().filter(|_| !run.decided())?;
            Some(digest::HostState {
                host: name,
                rendered: &run.file()?.text,
                current: &assessment.current,
            })
        })
        .collect();
    states.map(|states| digest::compute(key, (request, &catalog.digest), &states))
}

/// The lock file's note on who holds it: action, build, user, start time.
fn holder(action: Action, deployment: &Deployment) -> String {
    lock::holder_text(
        wire_name(&action),
        &deployment.audit.clone().unwrap_or_default(),
        &crate::protocol::time::rfc3339(std::time::SystemTime::now()),
    )
}

/// A rollback puts the same backup back on every host or on none: when a
/// host does not have backup `n` (`noBackup`, found when it was assessed),
/// every other host is skipped before anything is written. True when so.
fn refused_without_backup(runs: &mut [HostRun], n: u32) -> bool {
    let no_backup = wire_name(&ErrorKind::NoBackup);
    let Some(lacking) = runs
        .iter()
        .find(|run| run.error_kind() == no_backup)
        .map(HostRun::name)
    else {
        return false;
    };
    let reason = format!(
        "not attempted: `{lacking}` has no backup {n}, and a rollback puts back one backup on every host or none (`hostenv backups` lists what each host keeps)"
    );
    for run in runs.iter_mut().filter(|run| !run.decided()) {
        run.skip(&reason);
    }
    true
}

fn apply_in_batches(runs: &mut [HostRun], rollout: &Rollout) {
    let mut failed = 0;
    let mut stop: Option<String> = None;
    for (index, range) in rollout.batches(runs.len()).into_iter().enumerate() {
        if let Some(reason) = &stop {
            for run in &mut runs[range] {
                run.skip(reason);
            }
            continue;
        }
        in_parallel_keeping_locks(runs, range.clone(), rollout.parallel, |run| {
            run.apply();
            run.audit();
        });
        let failures = runs[range].iter().filter(|run| run.failed()).count();
        failed += failures;
        stop = rollout.stop_after(index, failures, failed);
    }
}

/// Runs `work` on `runs[range]`, at most `parallel` at once, while one more
/// thread keeps every other host's lock alive: a host waiting for its batch,
/// for a worker within its batch, for its turn in the sorted retry or the
/// window's next phase, or done with its own work while the others finish,
/// hears from the run as often as a host at work does, so no slow host
/// elsewhere costs it its lock (the holder lets go after 30 s of silence).
fn in_parallel_keeping_locks<'a>(
    runs: &mut [HostRun<'a>],
    range: std::ops::Range<usize>,
    parallel: usize,
    work: impl Fn(&mut HostRun<'a>) + Sync,
) {
    let (before, rest) = runs.split_at_mut(range.start);
    let (batch, after) = rest.split_at_mut(range.len());
    let workers = parallel.clamp(1, batch.len().max(1));
    let waiting: Mutex<VecDeque<&mut HostRun<'a>>> = Mutex::new(batch.iter_mut().collect());
    let finished: Mutex<Vec<&mut HostRun<'a>>> = Mutex::new(Vec::new());
    let (done, stop) = std::sync::mpsc::channel::<()>();
    let (queued, over) = (&waiting, &finished);
    std::thread::scope(|scope| {
        scope.spawn(move || loop {
            for run in before.iter_mut().chain(after.iter_mut()) {
                run.beat();
            }
            for run in lock(queued).iter().chain(lock(over).iter()) {
                run.beat();
            }
            // Each beat is sent only when due; look again soon, stop at once.
            if !matches!(
                stop.recv_timeout(Duration::from_millis(250)),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout)
            ) {
                break;
            }
        });
        let working: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| loop {
                    let Some(run) = lock(&waiting).pop_front() else {
                        break;
                    };
                    contain(&mut *run, &work);
                    lock(&finished).push(run);
                })
            })
            .collect();
        for worker in working {
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
        drop(done);
    });
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().expect("no worker panics holding it")
}

/// Runs `work` on every item, at most `parallel` at once.
/// A host's work that panics (a bug) is contained there: the host ends
/// `unknown`, and every other host's run, the result, the JUnit file and a
/// Rotation's joint put-back go on.
fn in_parallel<T: Send + Contained>(
    items: &mut [T],
    parallel: usize,
    work: impl Fn(&mut T) + Sync,
) {
    let queue = Mutex::new(items.iter_mut());
    let workers = parallel.clamp(1, queue.lock().expect("fresh").len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let next = queue.lock().expect("no worker panics holding it").next();
                match next {
                    Some(item) => contain(item, &work),
                    None => break,
                }
            });
        }
    });
}

/// Runs `work` on one host's item, turning a panic into that host's outcome.
fn contain<T: Contained>(item: &mut T, work: impl Fn(&mut T)) {
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&mut *item)));
    if caught.is_err() {
        item.after_panic();
    }
}

/// What a host's item becomes when its work panicked.
trait Contained {
    fn after_panic(&mut self);
}

impl Contained for HostRun<'_> {
    fn after_panic(&mut self) {
        self.stopped_by_a_bug();
    }
}

impl<T: Contained, U> Contained for (&mut T, U) {
    fn after_panic(&mut self) {
        self.0.after_panic();
    }
}

/// The run's error when any host did not end as it should.
/// Hosts that did not end as the action means them to: an outcome of the
/// run, which the result reports, not an error that stopped it.
struct HostsFailed {
    message: String,
    exit: Exit,
}

/// A host's report once its run is over, with the name messages give it.
struct Finished {
    name: String,
    deployment: usize,
    report: HostReport,
}

fn finished(runs: Vec<HostRun>) -> Vec<Finished> {
    runs.into_iter()
        .map(|run| Finished {
            name: run.name(),
            deployment: run.context().index,
            report: run.into_report(),
        })
        .collect()
}

fn hosts_failed(hosts: &[Finished]) -> Option<HostsFailed> {
    let bad: Vec<&Finished> = hosts
        .iter()
        .filter(|host| !succeeded(host.report.status) || host.report.error.is_some())
        .collect();
    if bad.is_empty() {
        return None;
    }
    let needs_person = bad.iter().any(|host| {
        matches!(
            host.report.status,
            HostStatus::RollbackFailed | HostStatus::Unknown
        )
    });
    let listed: Vec<String> = bad
        .iter()
        .map(|host| {
            let kind = host
                .report
                .error
                .as_ref()
                .map_or("", |e| wire_name(&e.kind));
            format!(
                "`{}` ({kind}, {})",
                host.name,
                status_words(host.report.status)
            )
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
    Some(HostsFailed {
        message,
        exit: if needs_person {
            Exit::NeedsPerson
        } else {
            Exit::Failed
        },
    })
}

/// Whether a host ended as its action means it to.
fn succeeded(status: HostStatus) -> bool {
    matches!(
        status,
        HostStatus::Deployed
            | HostStatus::Unchanged
            | HostStatus::Planned
            | HostStatus::InSync
            | HostStatus::Drifted
            | HostStatus::Listed
            | HostStatus::Restored
    )
}

fn status_words(status: HostStatus) -> &'static str {
    match status {
        HostStatus::RolledBack => "rolled back",
        HostStatus::RollbackFailed => "rollback failed",
        HostStatus::Unhealthy => "left unhealthy",
        HostStatus::Unknown => "state unknown",
        HostStatus::Skipped => "skipped",
        HostStatus::Deployed | HostStatus::Unchanged | HostStatus::Restored => "file in place",
        _ => "nothing changed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::report::{ErrorReport, HostReport};

    /// The exit code and error kind of a run whose hosts ended so (a
    /// failing status carries its error, as every run's does).
    fn outcome(statuses: &[HostStatus], shared_differ: bool) -> (i32, Option<ErrorKind>) {
        let hosts: Vec<Finished> = statuses
            .iter()
            .enumerate()
            .map(|(index, status)| {
                let mut report = HostReport::new(&format!("h{index}"), *status);
                if !succeeded(*status) {
                    report.error = Some(ErrorReport {
                        kind: ErrorKind::RemoteCommandFailed,
                        message: "failed".into(),
                        field: None,
                    });
                }
                Finished {
                    name: format!("h{index}"),
                    deployment: 0,
                    report,
                }
            })
            .collect();
        let failed = hosts_failed(&hosts);
        let mut report = Report::new(Action::Deploy);
        report.hosts = hosts.into_iter().map(|host| host.report).collect();
        report.summary = Summary::of(&report.hosts);
        conclude(&mut report, failed, shared_differ);
        (report.exit_code, report.error.map(|error| error.kind))
    }

    /// Hosts that end differently: a host that needs a person (3) comes
    /// before a failed host (1), which comes before differences (4); docs/protocol.md says so.
    #[test]
    fn mixed_outcomes_exit_with_the_most_urgent() {
        use HostStatus::*;
        let failed = Some(ErrorKind::HostsFailed);
        for (statuses, shared_differ, expected) in [
            (&[Deployed, Unchanged][..], false, (0, None)),
            (&[Deployed, Failed], false, (1, failed)),
            (&[RolledBack, Skipped], false, (1, failed)),
            (&[Deployed, Unknown], false, (3, failed)),
            (&[RollbackFailed, Deployed], false, (3, failed)),
            (
                &[Planned, InSync],
                false,
                (4, Some(ErrorKind::ChangesPending)),
            ),
            (&[Drifted, InSync], false, (4, Some(ErrorKind::DriftFound))),
            (&[InSync, InSync], true, (4, Some(ErrorKind::DriftFound))),
            (&[Planned, Failed], false, (1, failed)),
            (&[Drifted, Failed], true, (1, failed)),
            (&[Planned, Unknown], false, (3, failed)),
            (&[Drifted, Failed, Unknown], false, (3, failed)),
            (&[Failed, Unknown, RolledBack], false, (3, failed)),
        ] {
            assert_eq!(
                outcome(statuses, shared_differ),
                expected,
                "{statuses:?} shared_differ={shared_differ}"
            );
        }
    }
}
