//! One host through a run: connect, lock, assess, then whichever of plan,
//! drift, stage, switch, restart, verify and put-back the run asks for, with
//! its report growing as it goes. Nothing here knows about other hosts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{assess, Context};
use crate::prepare::resolve::HostFile;
use crate::protocol::error::{ErrorKind, HostError};
use crate::protocol::report::{
    wire_name, Action, ErrorReport, HostReport, HostStatus, KeyChanges, RollbackAction, StepReport,
    UnitReport,
};
use crate::protocol::request::SudoMode;
use crate::render::systemd as grammar;
use crate::settings::names::Unit;
use crate::settings::secret::{ExposeSecret, SecretString};
use crate::settings::HostSettings;
use crate::transport::audit::{self, AuditLine};
use crate::transport::health;
use crate::transport::lock;
use crate::transport::provision::{self, State};
use crate::transport::remote::{self, Current, Invocation, Remote};
use crate::transport::ssh::Connection;
use crate::transport::units;

/// What the host has and what a deploy would do there, known before any write.
pub(super) struct Assessment {
    pub current: Current,
    pub current_values: Values,
    pub units: Vec<Unit>,
    pub same_file: bool,
    /// With an identical file: the units to restart anyway (`restart.force`, or
    /// started before the file was written).
    pub stale_units: Vec<Unit>,
}

/// How far a host's run has come: an assessed host always has its connection.
enum Progress {
    /// Not connected: not yet, or the connection failed.
    Closed,
    /// Connected (and locked, once `lock` succeeded).
    Connected(Connection),
    /// Connected, locked and assessed: what a deploy would change is known.
    Assessed(Connection, Assessment),
}

/// What a stage puts beside the target.
#[derive(Clone, Copy)]
pub(super) enum Staging<'f> {
    /// Bytes rendered by this run.
    Content(&'f SecretString),
    /// One of the host's own backups (1 = the newest), for `rollback`.
    Backup(u32),
}

pub(super) type Outcome = std::result::Result<HostStatus, (HostStatus, HostError)>;

/// One host through the phases, with its report as it grows.
pub(super) struct HostRun<'a> {
    pub context: &'a Context<'a>,
    pub host: &'a HostSettings,
    /// The file a deploy would write; none for a rollback.
    pub file: Option<&'a HostFile>,
    pub report: HostReport,
    progress: Progress,
    sudo: bool,
    /// The outcome is in `report`: nothing more is done on the host.
    pub finished: bool,
    /// A staged file waits beside the target.
    staged: bool,
    /// Files this run switched in on the host and has not put back: the
    /// backup that holds what was there before the run is `env.<switches>`.
    switches: u32,
    /// Whether the target existed before this run's first switch.
    had_previous: bool,
    /// Why the host was put back, once it was: kept for a recheck to restore.
    put_back_for: Option<HostError>,
    /// This run holds the host's lock.
    lock_held: bool,
    /// Steps already sent to the lock holder: the run's deadline no longer
    /// stops them (the host takes them whatever the run does next).
    sent_ahead: Vec<&'static str>,
    /// Values that must never reach a message from the host.
    redactions: Vec<SecretString>,
}

impl<'a> HostRun<'a> {
    pub fn new(
        context: &'a Context<'a>,
        host: &'a HostSettings,
        file: Option<&'a HostFile>,
    ) -> HostRun<'a> {
        HostRun {
            context,
            host,
            file,
            report: HostReport::new(&host.name, HostStatus::Failed),
            progress: Progress::Closed,
            sudo: match context.sudo {
                SudoMode::Always => true,
                SudoMode::Never => false,
                SudoMode::Auto => host.user != "root",
            },
            finished: false,
            staged: false,
            switches: 0,
            had_previous: false,
            put_back_for: None,
            lock_held: false,
            sent_ahead: Vec::new(),
            redactions: file
                .map_or(&[][..], |f| &f.values)
                .iter()
                .map(|(_, v)| v.clone())
                .collect(),
        }
    }

    /// The action's name in progress lines and the audit log.
    pub fn label(&self) -> &'static str {
        match self.context.action {
            Action::Plan => "plan",
            Action::Drift => "drift",
            Action::Rollback => "rollback",
            Action::HostInstall => "host-install",
            _ => "deploy",
        }
    }

    /// `host` for a Deploy, `service host` within a Rotation.
    pub fn name(&self) -> String {
        if self.context.in_rotation() {
            format!("{} {}", self.context.settings.service, self.host.name)
        } else {
            self.host.name.to_string()
        }
    }

    fn connection(&self) -> Option<&Connection> {
        match &self.progress {
            Progress::Closed => None,
            Progress::Connected(connection) | Progress::Assessed(connection, _) => Some(connection),
        }
    }

    /// What the host has and a deploy would do there, once assessed.
    pub fn assessment(&self) -> Option<&Assessment> {
        match &self.progress {
            Progress::Assessed(_, assessment) => Some(assessment),
            _ => None,
        }
    }

    /// The assessment of a host the run goes on changing: every host that is
    /// not finished has one (`assess` finishes a host it cannot assess).
    fn assessed(&self) -> Result<&Assessment, (HostStatus, HostError)> {
        self.assessment().ok_or_else(|| {
            let message = format!("`{}`: not assessed before a change", self.host.name);
            (
                HostStatus::Failed,
                HostError::new(ErrorKind::Internal, message),
            )
        })
    }

    fn remote(&self) -> Option<Remote<'_>> {
        self.connection().map(|connection| Remote {
            connection,
            host: &self.host.name,
            sudo: self.sudo,
            service: &self.context.settings.service,
            target: &self.context.settings.target,
        })
    }

    fn check_deadline(&self, name: &str) -> Result<(), HostError> {
        if Instant::now() > self.context.deadline {
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
            self.name(),
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
        #[cfg(feature = "fault-injection")]
        crate::fault::pause_before(&self.host.name, name);
        if self.sent_ahead.first() == Some(&name) {
            self.sent_ahead.remove(0);
        } else {
            self.check_deadline(name)?;
        }
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

    pub fn finish(&mut self, outcome: Outcome) {
        // For `rollback`, putting the backup back is the success, and a
        // rollback undone (the file from before it restored) is a failure.
        let outcome = match (self.context.action, outcome) {
            (Action::Rollback, Ok(HostStatus::Deployed)) => Ok(HostStatus::Restored),
            (Action::Rollback, Err((HostStatus::RolledBack, error))) => {
                Err((HostStatus::Failed, error))
            }
            (_, outcome) => outcome,
        };
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

    /// The wire name of the host's error kind, or "" without an error.
    pub fn error_kind(&self) -> &'static str {
        self.report
            .error
            .as_ref()
            .map_or("", |e| wire_name(&e.kind))
    }

    pub fn failed(&self) -> bool {
        !super::succeeded(self.report.status)
    }

    /// Whether this run has a file of its own in place on the host.
    pub fn switched(&self) -> bool {
        self.switches > 0
    }

    pub fn skip(&mut self, reason: &str) {
        // Its file may have gone with the lock: it does not stay.
        self.discard_staged();
        self.report.changed = false;
        self.finish(Err((
            HostStatus::Skipped,
            HostError::new(ErrorKind::NotAttempted, reason),
        )));
    }

    pub fn into_report(self) -> HostReport {
        self.report
    }

    /// Connects; a failure finishes the host as `failed`.
    pub fn connect(&mut self) {
        if let Err(error) = self.check_deadline("connect") {
            return self.finish(Err((HostStatus::Failed, error)));
        }
        let started = Instant::now();
        let connection = Connection::open(self.host, &self.context.ssh);
        self.record(
            "connect",
            connection.is_ok(),
            started.elapsed().as_millis() as u64,
        );
        match connection {
            Ok(connection) => self.progress = Progress::Connected(connection),
            Err(error) => return self.finish(Err((HostStatus::Failed, error))),
        }
        // The host program describes itself in its answer to the lock step
        // (`take_lock`); `host-install` asks it outright.
        if self.context.action == Action::HostInstall {
            self.install_program();
        }
    }

    /// The host program must be this version, configured as the request needs.
    /// Logged in as root, hostenv installs or updates it; otherwise the host
    /// fails naming what to run.
    fn ensure_program(&mut self) {
        let (expected, state) = match self.inspect_program() {
            Ok(found) => found,
            Err(error) => return self.finish(Err((HostStatus::Failed, error))),
        };
        if state == State::Ready {
            return;
        }
        if self.host.user != "root" {
            let service = &self.context.settings.service;
            let error = provision::not_ready(&self.host.name, service, &state);
            return self.finish(Err((HostStatus::Failed, error)));
        }
        if let Err(error) = self.install(&expected) {
            self.finish(Err((HostStatus::Failed, error)));
        }
    }

    /// `host-install`: puts this version of the host program and the
    /// service's configuration on the host, unless they are there already.
    fn install_program(&mut self) {
        let outcome = self
            .inspect_program()
            .and_then(|(expected, state)| match state {
                State::Ready => Ok(HostStatus::Unchanged),
                _ => self.install(&expected).map(|()| HostStatus::Deployed),
            });
        self.report.changed = outcome == Ok(HostStatus::Deployed);
        self.finish(outcome.map_err(|error| (HostStatus::Failed, error)));
    }

    /// The configuration the request needs on this host, and how the host compares.
    fn inspect_program(&mut self) -> Result<(String, State), HostError> {
        let settings = &self.context.settings;
        let expected = provision::expected_config(settings).render(&settings.service);
        let state = self.step("program", |remote| provision::inspect(remote, &expected))?;
        Ok((expected, state))
    }

    fn install(&mut self, expected: &str) -> Result<(), HostError> {
        let context = self.context;
        let program = context.host_program.bytes().map_err(|problem| {
            HostError::new(
                ErrorKind::HostProgramMissing,
                format!(
                    "`{}`: cannot install the host program: {problem}",
                    self.host.name
                ),
            )
        })?;
        self.step("install", |remote| {
            provision::install(remote, program, expected)
        })?;
        match self.step("program", |remote| provision::inspect(remote, expected))? {
            State::Ready => Ok(()),
            state => Err(provision::not_ready(
                &self.host.name,
                &context.settings.service,
                &state,
            )),
        }
    }

    /// Tries the host lock without waiting: true when another run holds it
    /// (the run then lets go of every lock and waits in order, `mod.rs`).
    pub fn try_lock(&mut self) -> bool {
        if self.finished {
            return false;
        }
        self.take_lock(Duration::ZERO) == Taken::Contended
    }

    /// Lets go of a lock this run took, so that runs can take them in order;
    /// a file staged with it goes first.
    pub fn release_lock(&mut self) {
        if self.lock_held {
            self.discard_staged_unanswered();
            if let Some(connection) = self.connection() {
                connection.release_lock();
            }
            self.lock_held = false;
        }
    }

    /// The run's file, when the lock step can carry it: a Deploy's host
    /// gets it staged the moment its lock is taken, which saves the stage
    /// its round trip. Not a large file (the lock's answer, the current file,
    /// comes back while it is still being sent), and never when a test
    /// stops the run before its stage.
    fn stage_with_lock(&self) -> Option<&'a SecretString> {
        let file = self.file?;
        let small = file.text.expose_secret().len() <= STAGE_WITH_LOCK_AT_MOST;
        #[cfg(feature = "fault-injection")]
        if ["stage", "mid-upload"]
            .iter()
            .any(|step| crate::fault::pauses_before(&self.host.name, step))
        {
            return None;
        }
        (self.context.stage_with_lock && small).then_some(&file.text)
    }

    /// Asks the holder to remove a staged file, without waiting for its
    /// answer: the next step's answer comes after it (the audit line, at the
    /// end), or the lock is let go right after and the holder still takes it.
    fn discard_staged_unanswered(&mut self) {
        if !self.staged {
            return;
        }
        if let Some(remote) = self.remote() {
            remote.discard_unanswered();
        }
        self.staged = false;
    }

    /// Takes the host lock for the rest of the run, waiting up to `rollout.lockWaitMs`.
    pub fn lock(&mut self) {
        if self.finished {
            return;
        }
        let wait = self.context.lock_wait;
        self.take_lock(wait);
    }

    /// Takes the lock, waiting up to `wait`. The lock step first says what
    /// the host program is; one that is not this version and configuration
    /// (or not there: the step fails) is looked at with `describe`, installed
    /// by a root login, and the lock taken once more. A failure finishes the
    /// host, but for contention when `wait` is zero.
    fn take_lock(&mut self, wait: Duration) -> Taken {
        let context = self.context;
        let settings = &context.settings;
        let expected = provision::expected_config(settings).render(&settings.service);
        let mut last_error = None;
        for attempt in 0..2 {
            let started = Instant::now();
            let Some(remote) = self.remote() else {
                return Taken::Failed;
            };
            let stage = self.stage_with_lock();
            let first: Vec<(Invocation, &[u8])> = stage
                .map(|text| {
                    (
                        remote::stage(remote.service),
                        text.expose_secret().as_bytes(),
                    )
                })
                .into_iter()
                .collect();
            let result = lock::acquire(&remote, &context.lock, &context.holder, wait, &first);
            let ms = started.elapsed().as_millis() as u64;
            let (description, outcome) = match result {
                Ok(answer) => answer,
                Err(error) => {
                    self.record("lock", false, ms);
                    self.finish(Err((HostStatus::Failed, error)));
                    return Taken::Failed;
                }
            };
            let ready = description.as_deref().is_some_and(|text| {
                provision::state_of(text, "", &settings.service, &expected) == State::Ready
            });
            match outcome {
                Ok(()) => {
                    self.record("lock", true, ms);
                    self.lock_held = true;
                    if stage.is_some() {
                        // Even a holder of another version may have staged it.
                        self.staged = true;
                    }
                    if ready {
                        if stage.is_some() {
                            self.sent_ahead = vec!["stage"];
                        }
                        return Taken::Held;
                    }
                    self.release_lock();
                }
                Err(error) if error.kind == ErrorKind::Locked && wait.is_zero() => {
                    self.record("lock-try", false, ms);
                    return Taken::Contended;
                }
                Err(error) if ready || error.kind == ErrorKind::Locked => {
                    self.record("lock", false, ms);
                    self.finish(Err((HostStatus::Failed, error)));
                    return Taken::Failed;
                }
                // The step failed and said nothing of the program: it may
                // be missing or old, which `describe` tells.
                Err(error) => {
                    self.record("lock", false, ms);
                    last_error = Some(error);
                }
            }
            if attempt == 0 {
                self.ensure_program();
                if self.finished {
                    return Taken::Failed;
                }
            }
        }
        let error = last_error.unwrap_or_else(|| {
            HostError::new(
                ErrorKind::HostProgramMismatch,
                format!(
                    "`{}`: `{}` does not describe itself as this hostenv needs, even after it was checked",
                    self.host.name,
                    crate::host::PROGRAM
                ),
            )
        });
        self.finish(Err((HostStatus::Failed, error)));
        Taken::Failed
    }

    /// Reads the current file and assesses what a deploy would do; a failure
    /// finishes the host as `failed`.
    pub fn assess(&mut self) {
        if self.finished {
            return;
        }
        if let Err(error) = self.try_assess() {
            self.finish(Err((HostStatus::Failed, error)));
        }
    }

    fn try_assess(&mut self) -> Result<(), HostError> {
        let context = self.context;
        let target = &context.settings.target;
        let current = self.step("read", |remote| remote.read_current())?;
        self.report.systemd_version = current.systemd;
        if context.action != Action::Drift {
            self.check_systemd(current.systemd)?;
        }
        let current_values = parse_values(current.content.as_ref());
        self.redactions.extend(current_values.values().cloned());
        self.report.keys = self.file.map(|file| key_changes(&current_values, file));
        if context.action != Action::Drift {
            if let Some((key, others)) = context
                .guarded_keys
                .iter()
                .find(|(key, _)| self.changes_value_of(&current_values, key))
            {
                return Err(HostError::new(
                    ErrorKind::SharedKeyChange,
                    format!(
                        "`{}`: the new file changes `{key}`, which {others} also read; rotate it with a Rotation request that includes them, or set `allowSharedChange: true`",
                        self.host.name,
                    ),
                ));
            }
        }
        let units = self.step("units", |remote| {
            units::units_on_host(
                remote,
                &context.settings.restart.units,
                self.host.instances.as_deref(),
            )
        })?;
        self.report.units = units
            .iter()
            .map(|u| UnitReport {
                unit: u.to_string(),
                restarted: false,
                will_restart: false,
            })
            .collect();
        // A rollback always puts a backup in place, whatever is there now.
        let same_file = self
            .file
            .is_some_and(|file| assess::holds_the_file(&current, &file.text, target.mode));
        let mut stale_units = Vec::new();
        if same_file {
            for unit in &units {
                let started = self.step("started-at", |remote| units::started_at(remote, unit))?;
                if assess::restart_anyway(started, current.mtime, context.settings.restart.force) {
                    stale_units.push(unit.clone());
                }
            }
        }
        let assessment = Assessment {
            current,
            current_values,
            units,
            same_file,
            stale_units,
        };
        // Reading the host took its connection: an assessed host keeps it.
        self.progress = match std::mem::replace(&mut self.progress, Progress::Closed) {
            Progress::Connected(connection) | Progress::Assessed(connection, _) => {
                Progress::Assessed(connection, assessment)
            }
            Progress::Closed => Progress::Closed,
        };
        Ok(())
    }

    /// The host's systemd must be at least `target.systemdMin` and keep every
    /// value of the new file (what a version drops, it drops silently).
    fn check_systemd(&self, version: Option<u32>) -> Result<(), HostError> {
        let Some(version) = version else {
            return Ok(());
        };
        let unsupported = |why: String| {
            Err(HostError::new(
                ErrorKind::SystemdUnsupported,
                format!("`{}`: {why}; nothing was written", self.host.name),
            ))
        };
        if let Some(min) = self.context.settings.target.systemd_min {
            if version < min {
                return unsupported(format!(
                    "it runs systemd v{version}, older than `target.systemdMin` ({min})"
                ));
            }
        }
        for (key, value) in self.file.map_or(&[][..], |f| &f.values) {
            if let Some(unfit) = grammar::dropped_on(value.expose_secret(), version) {
                return unsupported(format!("`{key}`: {}", unfit.describe()));
            }
        }
        Ok(())
    }

    /// Whether the new file holds another value for `key` than the host does now.
    fn changes_value_of(&self, current: &Values, key: &str) -> bool {
        assess::changes_value(current.get(key), self.value_of(key))
    }

    /// The value this run would write for `key`.
    pub fn value_of(&self, key: &str) -> Option<&str> {
        value_in(self.file, key)
    }

    /// Whether a deploy has anything to do here: a file to switch or units to restart.
    pub fn has_work(&self) -> bool {
        self.assessment()
            .is_some_and(|a| !a.same_file || !a.stale_units.is_empty())
    }

    /// `plan`: report what a deploy would do, from the assessment alone.
    pub fn plan(&mut self) {
        if self.finished {
            return;
        }
        let Progress::Assessed(_, assessment) = &self.progress else {
            return;
        };
        let restarting: &[Unit] = if assessment.same_file {
            &assessment.stale_units
        } else {
            &assessment.units
        };
        for unit in &mut self.report.units {
            unit.will_restart = restarting.iter().any(|u| u.as_str() == unit.unit);
        }
        let status = if self.has_work() {
            HostStatus::Planned
        } else {
            HostStatus::Unchanged
        };
        self.finish(Ok(status));
    }

    /// `drift`: the host holds exactly the file (bytes, owner, mode) a deploy would write, or not.
    pub fn drift(&mut self) {
        if self.finished {
            return;
        }
        let Some(assessment) = self.assessment() else {
            return;
        };
        let status = if assessment.same_file {
            HostStatus::InSync
        } else {
            HostStatus::Drifted
        };
        self.finish(Ok(status));
    }

    /// A Deploy's host on its own: stage, switch, restart, verify, put back what fails.
    pub fn apply(&mut self) {
        if self.finished {
            return;
        }
        // Staged with the lock, the file's answer is on its way already.
        let staged_with_lock = self.sent_ahead.first() == Some(&"stage");
        if !staged_with_lock {
            self.send_changes_ahead(true);
        }
        let outcome = self.stage_next(None).and_then(|()| {
            if staged_with_lock {
                self.send_changes_ahead(false);
            }
            self.switch_and_verify()
        });
        self.sent_ahead.clear();
        self.finish(outcome);
    }

    /// A changed host's stage (unless it went with the lock), switch and
    /// first restart always follow each other: sent together they cost one
    /// round trip, not three. The host skips the rest once one fails, as
    /// the run would.
    fn send_changes_ahead(&mut self, with_stage: bool) {
        let (Some(assessment), Some(file), Some(remote)) =
            (self.assessment(), self.file, self.remote())
        else {
            return;
        };
        // Past the deadline, the stage step says so and nothing is sent.
        if assessment.same_file || self.check_deadline("stage").is_err() {
            return;
        }
        let service = remote.service;
        let mut chain = vec![(remote::switch(service), &[][..])];
        if with_stage {
            chain.insert(
                0,
                (remote::stage(service), file.text.expose_secret().as_bytes()),
            );
        }
        if let Some(first) = assessment.units.first() {
            chain.push((units::restart_invocation(service, first), &[]));
        }
        // A test that stops the run before a step must find it not yet taken.
        #[cfg(feature = "fault-injection")]
        if let Some(at) = chain
            .iter()
            .position(|(step, _)| crate::fault::pauses_before(&self.host.name, step.step))
        {
            chain.truncate(at);
        }
        if remote.send_ahead(&chain) {
            self.sent_ahead
                .extend(chain.iter().map(|(step, _)| step.step));
        }
    }

    /// Stages what the host gets next: `content` when given, else the run's
    /// file (or, for `rollback`, the chosen backup). Nothing is staged when the
    /// host already holds the file.
    pub fn stage_next(
        &mut self,
        content: Option<&SecretString>,
    ) -> Result<(), (HostStatus, HostError)> {
        let assessment = self.assessed()?;
        if content.is_none() && assessment.same_file {
            // A run that lost its host after staging left its file behind
            // (or this run staged its file with the lock).
            if assessment.current.leftover_staged {
                let _ = self.step("discard", |remote| {
                    remote.discard_unanswered();
                    Ok(())
                });
                self.staged = false;
            }
            // Its answer comes before the audit's.
            self.discard_staged_unanswered();
            return Ok(());
        }
        let staging = match (content, self.file) {
            (Some(content), _) => Staging::Content(content),
            (None, Some(file)) => Staging::Content(&file.text),
            (None, None) => Staging::Backup(self.context.rollback_to),
        };
        self.step("stage", |remote| match staging {
            Staging::Content(text) => remote.stage(text),
            Staging::Backup(n) => remote.stage_backup(n),
        })
        .map_err(|error| (HostStatus::Failed, error))?;
        self.staged = true;
        Ok(())
    }

    /// Removes a staged file that will not be switched in.
    pub fn discard_staged(&mut self) {
        if self.staged {
            if let Some(remote) = self.remote() {
                remote.discard();
            }
            self.staged = false;
        }
    }

    /// Switches the staged file in (if any), restarts and verifies; a failure
    /// puts back what was there before the run (unless `rollbackOnFailure` is off).
    pub fn switch_and_verify(&mut self) -> Outcome {
        let assessment = self.assessed()?;
        if !self.staged {
            // The host holds the file already; restart what started before it.
            let stale = assessment.stale_units.clone();
            if !stale.is_empty() {
                self.restart_and_verify(&stale)
                    .map_err(|error| (HostStatus::Failed, error))?;
            }
            return Ok(HostStatus::Unchanged);
        }
        let units = assessment.units.clone();
        let had_previous = match self.step("switch", |remote| remote.switch()) {
            Ok(had_previous) => had_previous,
            Err(error) => {
                self.discard_staged();
                return Err((HostStatus::Failed, error));
            }
        };
        self.staged = false;
        if self.switches == 0 {
            self.had_previous = had_previous;
        }
        self.switches += 1;
        self.report.changed = true;
        match self.restart_and_verify(&units) {
            Ok(()) => Ok(HostStatus::Deployed),
            Err(error) if error.kind == ErrorKind::ConnectionLost => {
                Err((HostStatus::Unknown, error))
            }
            Err(error) if !self.context.rollback_on_failure => Err((HostStatus::Unhealthy, error)),
            // A Rotation's window puts every switched host back, this one
            // included, in the order that lets each one's checks pass.
            Err(error) if self.context.in_rotation() => Err((HostStatus::Failed, error)),
            Err(error) => self.put_back(error),
        }
    }

    /// Puts back the file the host had before this run (or removes the run's
    /// file when there was none), then restarts and verifies again. `cause`
    /// is why; the outcome is `rolledBack` unless the putting back fails.
    pub fn put_back(&mut self, cause: HostError) -> Outcome {
        self.put_back_for = Some(cause.clone());
        let backup = if self.had_previous { self.switches } else { 0 };
        if let Err(error) = self.step("rollback", |remote| remote.restore(backup)) {
            return Err((HostStatus::RollbackFailed, combine(&cause, &error)));
        }
        self.switches = 0;
        self.report.changed = false;
        self.report.rollback = Some(if self.had_previous {
            RollbackAction::RestoredPrevious
        } else {
            RollbackAction::RemovedNewFile
        });
        if !self.had_previous {
            return Err((HostStatus::RolledBack, cause));
        }
        let units = match self.assessed() {
            Ok(assessment) => assessment.units.clone(),
            Err((_, error)) => return Err((HostStatus::RollbackFailed, combine(&cause, &error))),
        };
        if let Some(remote) = self.remote() {
            for unit in &units {
                units::reset_failed(&remote, unit);
            }
        }
        match self.restart_and_verify(&units) {
            Ok(()) => Err((HostStatus::RolledBack, cause)),
            Err(again) if again.kind == ErrorKind::ConnectionLost => {
                Err((HostStatus::Unknown, combine(&cause, &again)))
            }
            Err(again) => Err((HostStatus::RollbackFailed, combine(&cause, &again))),
        }
    }

    /// Restarts units one at a time. After each instance of a template, the
    /// checks with `{instance}` run for it before the next restarts, so a host
    /// never loses all its workers at once; the other checks run at the end.
    fn restart_and_verify(&mut self, units: &[Unit]) -> Result<(), HostError> {
        let settings = &self.context.settings;
        let timeout = Duration::from_millis(settings.restart.timeout_ms);
        let redactions = std::mem::take(&mut self.redactions);
        let redact = |text: &str| redact(text, &redactions);
        let mut result = Ok(());
        for unit in units {
            result = self.step("restart", |remote| {
                units::restart(remote, unit, timeout, &redact)
            });
            if result.is_err() {
                break;
            }
            if let Some(entry) = self
                .report
                .units
                .iter_mut()
                .find(|u| u.unit == unit.as_str())
            {
                entry.restarted = true;
            }
            result = self.instance_checks(unit);
            if result.is_err() {
                break;
            }
        }
        self.redactions = redactions;
        result?;
        self.host_checks()
    }

    /// The checks with `{instance}`, for `unit` when it is a template's instance.
    fn instance_checks(&mut self, unit: &Unit) -> Result<(), HostError> {
        let Some(instance) = unit.instance_name() else {
            return Ok(());
        };
        let settings = &self.context.settings;
        for check in settings
            .verify
            .iter()
            .filter(|c| c.url.contains("{instance}"))
        {
            self.verify(
                &health::expand(&check.url, &self.host.name, Some(instance)),
                check,
            )?;
        }
        Ok(())
    }

    /// The checks without `{instance}`: the host as a whole.
    fn host_checks(&mut self) -> Result<(), HostError> {
        let settings = &self.context.settings;
        for check in settings
            .verify
            .iter()
            .filter(|c| !c.url.contains("{instance}"))
        {
            self.verify(&health::expand(&check.url, &self.host.name, None), check)?;
        }
        Ok(())
    }

    /// After a window put every host back: a host whose checks failed right
    /// after its own put-back (another host was not back yet) is checked
    /// again; it is `rollbackFailed` only if it is still unhealthy.
    pub fn recheck(&mut self) {
        let restored = self.switches == 0 && self.report.rollback.is_some();
        if self.report.status != HostStatus::RollbackFailed || !restored {
            return;
        }
        let Some(cause) = self.put_back_for.clone() else {
            return;
        };
        let units = self
            .assessment()
            .map(|a| a.units.clone())
            .unwrap_or_default();
        let healthy = units
            .iter()
            .try_for_each(|unit| self.instance_checks(unit))
            .and_then(|()| self.host_checks());
        if healthy.is_ok() {
            self.finish(Err((HostStatus::RolledBack, cause)));
        }
    }

    fn verify(
        &mut self,
        url: &str,
        check: &crate::settings::VerifySettings,
    ) -> Result<(), HostError> {
        #[cfg(feature = "fault-injection")]
        crate::fault::pause_before(&self.host.name, "verify");
        self.check_deadline("verify")?;
        let connection = self.connection();
        let through_ssh = |url: &str, timeout: Duration| -> std::result::Result<u16, String> {
            let (host, port, path) = health::split_url(url).ok_or("not an http URL")?;
            let connection = connection.ok_or("not connected")?;
            connection.http_get(&host, port, &path, timeout)
        };
        let direct = health::Direct::new(Duration::from_millis(check.timeout_ms));
        let from_here = |url: &str, timeout: Duration| direct.get(url, timeout);
        let probe: &health::Probe = if check.via_ssh {
            &through_ssh
        } else {
            &from_here
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

    /// Reads the file back after a deploy: the values the host now holds.
    pub fn read_back(&mut self) -> Result<Values, HostError> {
        let current = self.step("read-back", |remote| remote.read_current())?;
        Ok(parse_values(current.content.as_ref()))
    }

    /// After a successful deploy: removes every backup that still holds
    /// another value than the new file for one of `purgeBackupsOf`, so a
    /// leaked secret does not live on in a backup.
    fn purge_backups(&mut self) -> Result<(), HostError> {
        let keys = &self.context.purge_keys;
        if keys.is_empty() {
            return Ok(());
        }
        // An overlap rotation's interim file keeps the old value as `<KEY>_PREVIOUS`.
        let file = self.file;
        let new: Vec<(String, Option<&str>)> = keys
            .iter()
            .flat_map(|key| {
                let value = value_in(file, key);
                [(key.clone(), value), (format!("{key}_PREVIOUS"), value)]
            })
            .collect();
        let backups = self.step("read-backups", |remote| remote.read_backups())?;
        let stale: Vec<u32> = backups
            .iter()
            .filter(|(_, content)| {
                let values = parse_values(Some(content));
                new.iter().any(|(key, value)| {
                    values
                        .get(key.as_str())
                        .is_some_and(|old| Some(old.expose_secret()) != *value)
                })
            })
            .map(|(n, _)| *n)
            .collect();
        if !stale.is_empty() {
            self.step("purge", |remote| remote.purge(&stale))?;
        }
        self.report.backups_purged = Some(stale.len() as u32);
        Ok(())
    }

    /// `purgeBackupsOf` once a deploy left the host deployed or unchanged. A
    /// failure becomes the host's error; its new file stays in place.
    pub fn purge_after_success(&mut self) {
        let in_place = matches!(
            self.report.status,
            HostStatus::Deployed | HostStatus::Unchanged
        );
        if self.context.action != Action::Deploy || !in_place {
            return;
        }
        if let Err(error) = self.purge_backups() {
            self.report.error = Some(ErrorReport {
                kind: ErrorKind::PurgeFailed,
                message: format!(
                    "{}; the new file is in place but old values may remain in backups",
                    error.message
                ),
                field: None,
            });
        }
    }

    /// Appends this attempt to the host's audit log, when the host was reached.
    pub fn audit(&mut self) {
        if self.connection().is_none() || self.report.steps.iter().all(|s| s.name == "connect") {
            return;
        }
        // Nothing of this run stays staged; the audit's answer confirms it.
        self.discard_staged_unanswered();
        let context = self.context;
        let line = AuditLine::for_host(
            self.label(),
            &self.report,
            &context.settings.service,
            context.deployment,
            &context.window_services,
        );
        let _ = self.step("audit", |remote| audit::append(remote, &line));
    }
}

/// The largest file a Deploy stages with its lock step (`stage_with_lock`):
/// far below what an SSH channel's window holds in flight.
const STAGE_WITH_LOCK_AT_MOST: usize = 64 * 1024;

/// How taking a lock went.
#[derive(Debug, PartialEq, Eq)]
enum Taken {
    Held,
    /// Another run holds it (only when not waiting).
    Contended,
    /// The host is finished with the reason.
    Failed,
}

fn value_in<'f>(file: Option<&'f HostFile>, key: &str) -> Option<&'f str> {
    file?
        .values
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.expose_secret())
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

/// A file's values by key, as read from a host: secrets from the moment they are parsed.
pub(super) type Values = BTreeMap<String, SecretString>;

/// A file's assignments as systemd would read them.
pub(super) fn parse_values(content: Option<&SecretString>) -> Values {
    content
        .map(|content| {
            grammar::parse(content.expose_secret())
                .assignments
                .into_iter()
                .map(|a| (a.key, SecretString::from(a.value)))
                .collect()
        })
        .unwrap_or_default()
}

fn key_changes(current: &Values, file: &HostFile) -> KeyChanges {
    let mut changes = KeyChanges::default();
    for (key, value) in &file.values {
        match current.get(key) {
            None => changes.added.push(key.clone()),
            Some(old) if old.expose_secret() != value.expose_secret() => {
                changes.changed.push(key.clone())
            }
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
fn redact(text: &str, secrets: &[SecretString]) -> String {
    let mut out = text.to_string();
    for secret in secrets
        .iter()
        .map(|s| s.expose_secret())
        .filter(|s| s.len() >= 3)
    {
        out = out.replace(secret, "[redacted]");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_removes_every_secret() {
        let secrets = vec![SecretString::from("hunter2"), SecretString::from("ab")];
        assert_eq!(redact("pw hunter2 ab", &secrets), "pw [redacted] ab");
    }
}
