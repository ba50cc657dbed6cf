//! One host through a run: connect, lock, assess, then whichever of plan,
//! drift, stage, switch, restart, verify and put-back the run asks for, with
//! its report growing as it goes. Nothing here knows about other hosts.
//!
//! The types keep the order: only a host that is connected and assessed, and
//! whose outcome is not yet final, can be changed (`HostRun::open` gives its
//! `OpenHost`, the only holder of the change steps), and a host's outcome is
//! final once (`HostRun::finish`). Within a Rotation's window a host's result
//! is provisional until the window ends (`hold`, then `settle`), because the
//! window may still put the host back or check it again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::shared::RunKey;
use super::{assess, backups, Context};
use crate::prepare::resolve::HostFile;
use crate::protocol::error::{ErrorKind, HostError};
use crate::protocol::report::{
    wire_name, Action, ErrorReport, HostReport, HostStatus, ReadBack, RollbackAction, StepReport,
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

impl Progress {
    fn connection(&self) -> Option<&Connection> {
        match self {
            Progress::Closed => None,
            Progress::Connected(connection) | Progress::Assessed(connection, _) => Some(connection),
        }
    }
}

/// Where a host's outcome stands.
enum Standing {
    /// Nothing is decided yet.
    Undecided,
    /// Within a Rotation's window: the result so far, which the window may
    /// still change (put the host back, check it again).
    Provisional(Outcome),
    /// Decided, and written to the report: nothing more is done on the host.
    Final(Outcome),
}

impl Standing {
    /// The result so far, provisional or final.
    fn result(&self) -> Option<&Outcome> {
        match self {
            Standing::Undecided => None,
            Standing::Provisional(outcome) | Standing::Final(outcome) => Some(outcome),
        }
    }

    fn provisional(&self) -> Option<&Outcome> {
        match self {
            Standing::Provisional(outcome) => Some(outcome),
            _ => None,
        }
    }

    fn is_final(&self) -> bool {
        matches!(self, Standing::Final(_))
    }

    /// Records a provisional result; false, and nothing changes, once final.
    fn hold(&mut self, outcome: Outcome) -> bool {
        if self.is_final() {
            return false;
        }
        *self = Standing::Provisional(outcome);
        true
    }

    /// Makes `outcome` the final one, returning it; None, and nothing
    /// changes, when there is a final outcome already.
    fn finish(&mut self, outcome: Outcome) -> Option<&Outcome> {
        if self.is_final() {
            return None;
        }
        *self = Standing::Final(outcome);
        self.result()
    }
}

/// What a stage puts beside the target.
#[derive(Clone, Copy)]
pub(super) enum Staging<'f> {
    /// Bytes rendered by this run.
    Content(&'f SecretString),
    /// One of the host's own backups (1 = the newest), for `rollback`.
    Backup(u32),
}

/// A host's result: its status, with the error that led there. A host may
/// also end in a good status with an error (its new file is in place but
/// `purgeBackupsOf` failed).
pub(super) type Outcome = std::result::Result<HostStatus, (HostStatus, HostError)>;

fn status_of(outcome: &Outcome) -> HostStatus {
    match outcome {
        Ok(status) | Err((status, _)) => *status,
    }
}

/// One host through the phases, with its report as it grows.
pub(super) struct HostRun<'a> {
    progress: Progress,
    standing: Standing,
    /// This run holds the host's lock.
    lock_held: bool,
    run: Ledger<'a>,
}

/// What a host's run knows and has recorded so far, whatever its progress.
struct Ledger<'a> {
    context: &'a Context<'a>,
    host: &'a HostSettings,
    /// The file a deploy would write; none for a rollback.
    file: Option<&'a HostFile>,
    report: HostReport,
    sudo: bool,
    /// A staged file waits beside the target.
    staged: bool,
    /// Files this run switched in on the host and has not put back: the
    /// backup that holds what was there before the run is `env.<switches>`.
    switches: u32,
    /// Whether the target existed before this run's first switch.
    had_previous: bool,
    /// Why the host was put back, once it was: kept for a recheck to restore.
    put_back_for: Option<HostError>,
    /// Steps already sent to the lock holder: the run's deadline no longer
    /// stops them (the host takes them whatever the run does next).
    sent_ahead: Vec<&'static str>,
    /// The file goes with the lock step: a Deploy's host in the run's first
    /// batch. A host of a later batch is only locked and read until its
    /// batch starts, so a canary that stops the run leaves it untouched.
    stage_with_lock: bool,
    /// Values that must never reach a message from the host.
    redactions: Vec<SecretString>,
    /// The host's work panicked: its outcome is final, whatever comes after.
    stopped: bool,
}

/// A host the run may change: connected and assessed (which only follows
/// its lock), its outcome not yet final. The change steps live here, so none
/// can reach a host without its connection and assessment.
pub(super) struct OpenHost<'r, 'a> {
    connection: &'r Connection,
    assessment: &'r Assessment,
    run: &'r mut Ledger<'a>,
}

impl<'a> Ledger<'a> {
    /// The action's name in progress lines and the audit log.
    fn label(&self) -> &'static str {
        match self.context.action {
            Action::Plan => "plan",
            Action::Drift => "drift",
            Action::Backups => "backups",
            Action::Rollback => "rollback",
            Action::HostInstall => "host-install",
            _ => "deploy",
        }
    }

    /// `host` for a Deploy, `service host` within a Rotation.
    fn name(&self) -> String {
        if self.context.in_rotation() {
            format!("{} {}", self.context.settings.service, self.host.name)
        } else {
            self.host.name.to_string()
        }
    }

    fn remote<'c>(&'c self, connection: &'c Connection) -> Remote<'c> {
        Remote {
            connection,
            host: &self.host.name,
            sudo: self.sudo,
            service: &self.context.settings.service,
            target: &self.context.settings.target,
        }
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
        connection: Option<&Connection>,
        name: &str,
        work: impl FnOnce(&Remote) -> Result<T, HostError>,
    ) -> Result<T, HostError> {
        #[cfg(feature = "fault-injection")]
        crate::fault::pause_before(&self.host.name, name);
        #[cfg(feature = "fault-injection")]
        crate::fault::panic_before(&self.host.name, name);
        if self.sent_ahead.first() == Some(&name) {
            self.sent_ahead.remove(0);
        } else {
            self.check_deadline(name)?;
        }
        let started = Instant::now();
        let result = match connection {
            Some(connection) => work(&self.remote(connection)),
            None => Err(HostError::new(
                ErrorKind::ConnectionLost,
                format!("`{}`: not connected", self.host.name),
            )),
        };
        self.record(name, result.is_ok(), started.elapsed().as_millis() as u64);
        result
    }

    /// For `rollback`, putting the backup back is the success, and a
    /// rollback undone (the file from before it restored) is a failure.
    fn as_action(&self, outcome: Outcome) -> Outcome {
        match (self.context.action, outcome) {
            (Action::Rollback, Ok(HostStatus::Deployed)) => Ok(HostStatus::Restored),
            (Action::Rollback, Err((HostStatus::RolledBack, error))) => {
                Err((HostStatus::Failed, error))
            }
            (_, outcome) => outcome,
        }
    }

    /// Removes a staged file that will not be switched in, the way `how`
    /// says: `Remote::discard` waits for the host's answer;
    /// `Remote::discard_unanswered` does not, because the next step's answer
    /// comes after it (the audit line, at the end), or the lock is let go
    /// right after and the holder still takes it.
    fn discard_staged(&mut self, connection: Option<&Connection>, how: impl FnOnce(&Remote)) {
        if self.staged {
            if let Some(connection) = connection {
                how(&self.remote(connection));
            }
            self.staged = false;
        }
    }
}

impl<'a> HostRun<'a> {
    pub fn new(
        context: &'a Context<'a>,
        host: &'a HostSettings,
        file: Option<&'a HostFile>,
        in_first_batch: bool,
    ) -> HostRun<'a> {
        HostRun {
            progress: Progress::Closed,
            standing: Standing::Undecided,
            lock_held: false,
            run: Ledger {
                context,
                host,
                file,
                report: HostReport::new(&host.name, HostStatus::Failed),
                sudo: match context.sudo {
                    SudoMode::Always => true,
                    SudoMode::Never => false,
                    SudoMode::Auto => host.user != "root",
                },
                staged: false,
                switches: 0,
                had_previous: false,
                put_back_for: None,
                sent_ahead: Vec::new(),
                stage_with_lock: context.stage_with_lock && in_first_batch,
                stopped: false,
                redactions: file
                    .map_or(&[][..], |f| &f.values)
                    .iter()
                    .map(|(_, v)| v.clone())
                    .collect(),
            },
        }
    }

    pub fn context(&self) -> &'a Context<'a> {
        self.run.context
    }

    pub fn host(&self) -> &'a HostSettings {
        self.run.host
    }

    /// The file a deploy would write; none for a rollback.
    pub fn file(&self) -> Option<&'a HostFile> {
        self.run.file
    }

    /// `host` for a Deploy, `service host` within a Rotation.
    pub fn name(&self) -> String {
        self.run.name()
    }

    /// What the host has and a deploy would do there, once assessed.
    pub fn assessment(&self) -> Option<&Assessment> {
        match &self.progress {
            Progress::Assessed(_, assessment) => Some(assessment),
            _ => None,
        }
    }

    /// The host, when the run may still change it.
    pub fn open(&mut self) -> Option<OpenHost<'_, 'a>> {
        match (&self.progress, &self.standing) {
            (_, Standing::Final(_)) => None,
            (Progress::Assessed(connection, assessment), _) => Some(OpenHost {
                connection,
                assessment,
                run: &mut self.run,
            }),
            _ => None,
        }
    }

    /// The host's result so far, provisional or final.
    pub fn result(&self) -> Option<&Outcome> {
        self.standing.result()
    }

    /// Whether the host has a result (the run does nothing more with it,
    /// unless a Rotation's window puts it back).
    pub fn decided(&self) -> bool {
        self.result().is_some()
    }

    fn is_final(&self) -> bool {
        self.standing.is_final()
    }

    /// The host's outcome, once and for all: written to its report here and
    /// nowhere else. The flow never finishes a host twice (a test build
    /// stops if it does); a second outcome would be dropped.
    pub fn finish(&mut self, outcome: Outcome) {
        debug_assert!(
            !self.is_final() || self.run.stopped,
            "`{}` finished twice",
            self.name()
        );
        let outcome = self.confirm_after_lost_channel(outcome);
        let outcome = self.run.as_action(outcome);
        let Some(outcome) = self.standing.finish(outcome) else {
            return;
        };
        let report = &mut self.run.report;
        let (status, error) = match outcome {
            Ok(status) => (*status, None),
            Err((status, error)) => (*status, Some(error)),
        };
        report.status = status;
        report.error = error.map(|error| ErrorReport {
            kind: error.kind,
            message: error.message.clone(),
            field: None,
        });
    }

    /// A host whose lock's channel failed partway, once the run held its
    /// lock and read it, is `failed` ("nothing changed") only when a new
    /// connection reads the target back as the host held it before the run;
    /// else it is `unknown`. One exception: the host could not be read again
    /// and the run never asked it for a change (no switch, no put-back), so
    /// none can have happened. The read-back goes into the report.
    fn confirm_after_lost_channel(&mut self, outcome: Outcome) -> Outcome {
        let lost = matches!(&outcome, Err((HostStatus::Failed, error)) if error.kind == ErrorKind::ConnectionLost);
        if !lost || !self.lock_held || self.assessment().is_none() {
            return outcome;
        }
        let asked_for_a_change = self
            .progress
            .connection()
            .is_some_and(Connection::asked_for_a_change);
        let found = self.read_back_anew();
        self.run.report.read_back = Some(found);
        match (found, outcome) {
            (ReadBack::AsBefore, outcome) => outcome,
            (ReadBack::NotRead, outcome) if !asked_for_a_change => outcome,
            (found, Err((_, error))) => {
                let said = match found {
                    ReadBack::NewFile => "the new file is in place, its units not confirmed",
                    ReadBack::Other => {
                        "the target is neither the file from before the run nor the new one"
                    }
                    _ => "it could not be read again after a change was asked for",
                };
                let message = format!("{}; read back over a new connection: {said}", error.message);
                Err((HostStatus::Unknown, HostError::new(error.kind, message)))
            }
            (_, outcome) => outcome,
        }
    }

    /// Drops the failed connection (its lock holder lets go), connects anew,
    /// takes the lock again and reads the target: what it holds against
    /// what it held before the run. The new connection then serves the rest
    /// of the host's run (its audit line, removing a file left staged).
    fn read_back_anew(&mut self) -> ReadBack {
        let Progress::Assessed(failed, assessment) =
            std::mem::replace(&mut self.progress, Progress::Closed)
        else {
            return ReadBack::NotRead;
        };
        drop(failed);
        self.lock_held = false;
        let context = self.run.context;
        let started = Instant::now();
        let connection = Connection::open(self.run.host, &context.ssh);
        self.run.record(
            "reconnect",
            connection.is_ok(),
            started.elapsed().as_millis() as u64,
        );
        let Ok(connection) = connection else {
            return ReadBack::NotRead;
        };
        self.progress = Progress::Connected(connection);
        // The old holder lets go once it sees its channel close, after the
        // step it may still be running.
        let wait = context.lock_wait.max(Duration::from_secs(
            context.settings.restart.timeout_ms.div_ceil(1000),
        ));
        let read = self.step("read-back", |remote| {
            let holder = lock::holder_line(wait + Duration::from_secs(60), &context.holder)?;
            let (_, held) = lock::acquire(remote, &context.lock, &holder, wait, &[])?;
            held?;
            remote.read_current()
        });
        let Some(connection) = self.progress_connection_taken() else {
            return ReadBack::NotRead;
        };
        let found = match read {
            Ok(now) => {
                self.lock_held = true;
                self.run.staged = now.leftover_staged;
                assess::read_back(
                    &assessment.current,
                    &now,
                    self.run.file.map(|file| &file.text),
                    context.settings.target.mode,
                )
            }
            Err(_) => ReadBack::NotRead,
        };
        self.progress = Progress::Assessed(connection, assessment);
        found
    }

    /// Takes the connection out of a `Connected` progress.
    fn progress_connection_taken(&mut self) -> Option<Connection> {
        match std::mem::replace(&mut self.progress, Progress::Closed) {
            Progress::Connected(connection) | Progress::Assessed(connection, _) => Some(connection),
            Progress::Closed => None,
        }
    }

    /// A result within a Rotation's window, which the window may still change.
    pub fn hold(&mut self, outcome: Outcome) {
        let held = self.standing.hold(outcome);
        debug_assert!(
            held || self.run.stopped,
            "`{}` held after it finished",
            self.name()
        );
    }

    /// The host's work panicked (a bug): what the host holds is not known,
    /// and nothing more is done on it. Every other host goes on.
    pub fn stopped_by_a_bug(&mut self) {
        self.run.stopped = true;
        self.run.staged = false;
        if self.is_final() {
            return;
        }
        let message = format!(
            "`{}`: hostenv stopped on this host with an internal error (a bug: please report it with this result); what the host holds now is not known",
            self.name()
        );
        self.finish(Err((
            HostStatus::Unknown,
            HostError::new(ErrorKind::Internal, message),
        )));
    }

    /// The window is over: a provisional result becomes the outcome.
    pub fn settle(&mut self) {
        if let Some(outcome) = self.standing.provisional().cloned() {
            self.finish(outcome);
        }
    }

    /// The wire name of the host's error kind, or "" without an error.
    pub fn error_kind(&self) -> &'static str {
        match self.result() {
            Some(Err((_, error))) => wire_name(&error.kind),
            _ => "",
        }
    }

    /// Whether the host's result so far is not what its action means it to be.
    pub fn failed(&self) -> bool {
        self.result()
            .is_some_and(|outcome| !super::succeeded(status_of(outcome)))
    }

    /// Whether this run has a file of its own in place on the host.
    pub fn switched(&self) -> bool {
        self.run.switches > 0
    }

    /// The host is not changed, for `reason`; a host already finished keeps its outcome.
    pub fn skip(&mut self, reason: &str) {
        if self.is_final() {
            return;
        }
        // Its file may have gone with the lock: it does not stay.
        self.discard_staged();
        self.run.report.changed = false;
        self.finish(Err((
            HostStatus::Skipped,
            HostError::new(ErrorKind::NotAttempted, reason),
        )));
    }

    /// The host's report; a host the run left without an outcome says so.
    pub fn into_report(mut self) -> HostReport {
        self.settle();
        if !self.is_final() {
            let message = format!("`{}`: the run ended without an outcome", self.name());
            self.finish(Err((
                HostStatus::Failed,
                HostError::new(ErrorKind::Internal, message),
            )));
        }
        self.run.report.make_plain();
        self.run.report
    }

    /// Connects; a failure finishes the host as `failed`.
    pub fn connect(&mut self) {
        if let Err(error) = self.run.check_deadline("connect") {
            return self.finish(Err((HostStatus::Failed, error)));
        }
        let started = Instant::now();
        let connection = Connection::open(self.run.host, &self.run.context.ssh);
        self.run.record(
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
        if self.run.context.action == Action::HostInstall {
            self.install_program();
        }
    }

    /// Runs one step on the host's remote side, timing and recording it.
    fn step<T>(
        &mut self,
        name: &str,
        work: impl FnOnce(&Remote) -> Result<T, HostError>,
    ) -> Result<T, HostError> {
        self.run.step(self.progress.connection(), name, work)
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
        let host = self.run.host;
        if host.user != "root" {
            let service = &self.run.context.settings.service;
            let error = provision::not_ready(&host.name, service, &state);
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
        self.run.report.changed = outcome == Ok(HostStatus::Deployed);
        self.finish(outcome.map_err(|error| (HostStatus::Failed, error)));
    }

    /// The configuration the request needs on this host, and how the host compares.
    fn inspect_program(&mut self) -> Result<(String, State), HostError> {
        let settings = &self.run.context.settings;
        let expected = provision::expected_config(settings).render(&settings.service);
        let state = self.step("program", |remote| provision::inspect(remote, &expected))?;
        Ok((expected, state))
    }

    fn install(&mut self, expected: &str) -> Result<(), HostError> {
        let context = self.run.context;
        let host = self.run.host;
        let program = context.host_program.program().map_err(|problem| {
            HostError::new(
                problem.kind,
                format!(
                    "`{}`: cannot install the host program: {}",
                    host.name, problem.message
                ),
            )
        })?;
        self.step("install", |remote| {
            provision::install(remote, program, expected)
        })?;
        match self.step("program", |remote| provision::inspect(remote, expected))? {
            State::Ready => Ok(()),
            state => Err(provision::not_ready(
                &host.name,
                &context.settings.service,
                &state,
            )),
        }
    }

    /// Tries the host lock without waiting: true when another run holds it
    /// (the run then lets go of every lock and waits in order, `mod.rs`).
    pub fn try_lock(&mut self) -> bool {
        if self.decided() {
            return false;
        }
        self.take_lock(Duration::ZERO) == Taken::Contended
    }

    /// Keeps the host's lock alive while the run is busy elsewhere (a beat
    /// goes only when one is due).
    pub fn beat(&self) {
        if let Some(connection) = self.progress.connection() {
            connection.beat();
        }
    }

    /// Lets go of a lock this run took, so that runs can take them in order;
    /// a file staged with it goes first.
    pub fn release_lock(&mut self) {
        if self.lock_held {
            let connection = self.progress.connection();
            self.run
                .discard_staged(connection, |remote| remote.discard_unanswered());
            if let Some(connection) = connection {
                connection.release_lock();
            }
            self.lock_held = false;
        }
    }

    /// The run's file, when the lock step can carry it: a host of a Deploy's
    /// first batch gets it staged the moment its lock is taken, which saves
    /// the stage its round trip. Not a large file (the lock's answer, the current file,
    /// comes back while it is still being sent), and never when a test
    /// stops the run before its stage.
    fn stage_with_lock(&self) -> Option<&'a SecretString> {
        let file = self.run.file?;
        let small = file.text.expose_secret().len() <= STAGE_WITH_LOCK_AT_MOST;
        #[cfg(feature = "fault-injection")]
        if ["stage", "mid-upload"]
            .iter()
            .any(|step| crate::fault::pauses_before(&self.run.host.name, step))
        {
            return None;
        }
        (self.run.stage_with_lock && small).then_some(&file.text)
    }

    /// Takes the host lock for the rest of the run, waiting up to `rollout.lockWaitMs`.
    pub fn lock(&mut self) {
        if self.decided() {
            return;
        }
        let wait = self.run.context.lock_wait;
        self.take_lock(wait);
    }

    /// Takes the lock, waiting up to `wait`. The lock step first says what
    /// the host program is; one that is not this version and configuration
    /// (or not there: the step fails) is looked at with `describe`, installed
    /// by a root login, and the lock taken once more. A failure finishes the
    /// host, but for contention when `wait` is zero.
    fn take_lock(&mut self, wait: Duration) -> Taken {
        let context = self.run.context;
        let settings = &context.settings;
        let expected = provision::expected_config(settings).render(&settings.service);
        let mut last_error = None;
        for attempt in 0..2 {
            let started = Instant::now();
            let Some(connection) = self.progress.connection() else {
                return Taken::Failed;
            };
            let remote = self.run.remote(connection);
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
            let remaining = context.deadline.saturating_duration_since(Instant::now());
            let result = lock::holder_line(remaining, &context.holder)
                .and_then(|holder| lock::acquire(&remote, &context.lock, &holder, wait, &first));
            let ms = started.elapsed().as_millis() as u64;
            let (description, outcome) = match result {
                Ok(answer) => answer,
                Err(error) => {
                    self.run.record("lock", false, ms);
                    self.finish(Err((HostStatus::Failed, error)));
                    return Taken::Failed;
                }
            };
            let ready = description.as_deref().is_some_and(|text| {
                provision::state_of(text, "", &settings.service, &expected) == State::Ready
            });
            match outcome {
                Ok(()) => {
                    self.run.record("lock", true, ms);
                    self.lock_held = true;
                    if stage.is_some() {
                        // Even a holder of another version may have staged it.
                        self.run.staged = true;
                    }
                    if ready {
                        if stage.is_some() {
                            self.run.sent_ahead = vec!["stage"];
                        }
                        return Taken::Held;
                    }
                    self.release_lock();
                }
                Err(error) if error.kind == ErrorKind::Locked && wait.is_zero() => {
                    self.run.record("lock-try", false, ms);
                    return Taken::Contended;
                }
                Err(error) if ready || error.kind == ErrorKind::Locked => {
                    self.run.record("lock", false, ms);
                    self.finish(Err((HostStatus::Failed, error)));
                    return Taken::Failed;
                }
                // The step failed and said nothing of the program: it may
                // be missing or old, which `describe` tells.
                Err(error) => {
                    self.run.record("lock", false, ms);
                    last_error = Some(error);
                }
            }
            if attempt == 0 {
                self.ensure_program();
                if self.decided() {
                    return Taken::Failed;
                }
            }
        }
        let error = last_error.unwrap_or_else(|| {
            HostError::new(
                ErrorKind::HostProgramMismatch,
                format!(
                    "`{}`: `{}` does not describe itself as this hostenv needs, even after it was checked",
                    self.run.host.name,
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
        if self.decided() {
            return;
        }
        match self.try_assess() {
            Ok(assessment) => {
                // Reading the host took its connection: an assessed host keeps it.
                self.progress = match std::mem::replace(&mut self.progress, Progress::Closed) {
                    Progress::Connected(connection) | Progress::Assessed(connection, _) => {
                        Progress::Assessed(connection, assessment)
                    }
                    Progress::Closed => Progress::Closed,
                };
            }
            Err(error) => self.finish(Err((HostStatus::Failed, error))),
        }
    }

    fn try_assess(&mut self) -> Result<Assessment, HostError> {
        let context = self.run.context;
        let host = self.run.host;
        let file = self.run.file;
        let target = &context.settings.target;
        let current = self.step("read", |remote| remote.read_current())?;
        self.run.report.systemd_version = current.systemd;
        let environment = lock::environment_name(context.settings.environment.as_ref());
        self.run.report.previous_environment =
            current.written_by.clone().filter(|by| by != environment);
        if !matches!(context.action, Action::Drift | Action::Backups) {
            self.check_systemd(current.systemd)?;
        }
        let current_values = parse_values(current.content.as_ref());
        self.run.redactions.extend(current_values.values().cloned());
        if context.action == Action::Backups {
            // A listing needs the current file and the backups, nothing of the units.
            return Ok(Assessment {
                current,
                current_values,
                units: Vec::new(),
                same_file: false,
                stale_units: Vec::new(),
            });
        }
        self.run.report.keys = file.map(|file| assess::key_changes(&current_values, &file.values));
        if context.action == Action::Rollback {
            self.check_rollback_target(&current_values)?;
        }
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
                        host.name,
                    ),
                ));
            }
        }
        let units = self.step("units", |remote| {
            units::units_on_host(
                remote,
                &context.settings.restart.units,
                host.instances.as_deref(),
            )
        })?;
        self.run.report.units = units
            .iter()
            .map(|u| UnitReport {
                unit: u.to_string(),
                restarted: false,
                will_restart: false,
            })
            .collect();
        // A rollback always puts a backup in place, whatever is there now.
        let same_file =
            file.is_some_and(|file| assess::holds_the_file(&current, &file.text, target.mode));
        let mut stale_units = Vec::new();
        if same_file {
            for unit in &units {
                let started = self.step("started-at", |remote| units::started_at(remote, unit))?;
                if assess::restart_anyway(started, current.mtime, context.settings.restart.force) {
                    stale_units.push(unit.clone());
                }
            }
        }
        Ok(Assessment {
            current,
            current_values,
            units,
            same_file,
            stale_units,
        })
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
                format!("`{}`: {why}; nothing was written", self.run.host.name),
            ))
        };
        if let Some(min) = self.run.context.settings.target.systemd_min {
            if version < min {
                return unsupported(format!(
                    "it runs systemd v{version}, older than `target.systemdMin` ({min})"
                ));
            }
        }
        for (key, value) in self.run.file.map_or(&[][..], |f| &f.values) {
            if let Some(unfit) = grammar::dropped_on(value.expose_secret(), version) {
                return unsupported(format!("`{key}`: {}", unfit.describe()));
            }
        }
        Ok(())
    }

    /// Whether the new file holds another value for `key` than the host does now.
    /// A rollback's backup must be there, and must not change on its own a
    /// key another service shares (a deploy's `sharedKeyChange`): both are
    /// found before anything is written.
    fn check_rollback_target(&mut self, current: &Values) -> Result<(), HostError> {
        let context = self.run.context;
        let host = self.run.host;
        let n = context.rollback_to;
        let backups = self.step("read-backups", |remote| remote.read_backups())?;
        let Some(backup) = backups.iter().find(|backup| backup.number == n) else {
            return Err(HostError::new(
                ErrorKind::NoBackup,
                format!(
                    "`{}`: there is no backup {n} of `{}` to put back (the host keeps {}); nothing was touched",
                    host.name,
                    context.settings.target.path,
                    backups.len()
                ),
            ));
        };
        let restored = parse_values(Some(&backup.content));
        self.run.redactions.extend(restored.values().cloned());
        let changed = context.guarded_keys.iter().find(|(key, _)| {
            assess::changes_value(
                current.get(key.as_str()),
                restored.get(key.as_str()).map(|v| v.expose_secret()),
            )
        });
        match changed {
            Some((key, others)) => Err(HostError::new(
                ErrorKind::SharedKeyChange,
                format!(
                    "`{}`: backup {n} holds another `{key}` than the current file, and {others} also read it: \
                     roll back the rotation as one (`hostenv rollback` of a Rotation request with every service \
                     that shares it), or set `allowSharedChange: true`",
                    host.name,
                ),
            )),
            None => Ok(()),
        }
    }

    fn changes_value_of(&self, current: &Values, key: &str) -> bool {
        assess::changes_value(current.get(key), self.value_of(key))
    }

    /// The value this run would write for `key`.
    pub fn value_of(&self, key: &str) -> Option<&str> {
        value_in(self.run.file, key)
    }

    /// Whether a deploy has anything to do here: a file to switch or units to restart.
    pub fn has_work(&self) -> bool {
        self.assessment()
            .is_some_and(|a| !a.same_file || !a.stale_units.is_empty())
    }

    /// `plan`: report what a deploy would do, from the assessment alone.
    pub fn plan(&mut self) {
        if self.decided() {
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
        for unit in &mut self.run.report.units {
            unit.will_restart = restarting.iter().any(|u| u.as_str() == unit.unit);
        }
        let status = if self.has_work() {
            HostStatus::Planned
        } else {
            HostStatus::Unchanged
        };
        self.finish(Ok(status));
    }

    /// `backups`: every backup the host keeps, against its current file.
    pub fn list_backups(&mut self, run_key: &RunKey) {
        if self.decided() {
            return;
        }
        if let Some(mut host) = self.open() {
            let outcome = host.list_backups(run_key);
            self.finish(outcome);
        }
    }

    /// `drift`: the host holds exactly the file (bytes, owner, mode) a deploy would write, or not.
    pub fn drift(&mut self) {
        if self.decided() {
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

    /// A Deploy's host on its own: stage, switch, restart, verify, put back
    /// what fails, and purge old values from backups once it is in place.
    pub fn apply(&mut self) {
        if self.decided() {
            return;
        }
        let Some(mut host) = self.open() else {
            return;
        };
        let outcome = host.apply();
        let outcome = host.purge_if_in_place(outcome);
        self.finish(outcome);
    }

    /// `purgeBackupsOf` for a window's host whose new file is in place.
    pub fn purge_after_success(&mut self) {
        let Some(outcome) = self.standing.provisional().cloned() else {
            return;
        };
        if let Some(mut host) = self.open() {
            let outcome = host.purge_if_in_place(outcome);
            self.hold(outcome);
        }
    }

    /// Removes a staged file that will not be switched in.
    pub fn discard_staged(&mut self) {
        self.run
            .discard_staged(self.progress.connection(), |remote| remote.discard());
    }

    /// Reads the file back after a switch: the values the host now holds.
    pub fn read_back(&mut self) -> Option<Values> {
        self.open()?.read_back().ok()
    }

    /// After a window put every host back: a host whose checks failed right
    /// after its own put-back (another host was not back yet) is checked
    /// again; it is `rolledBack` after all if it is healthy now.
    pub fn recheck(&mut self) {
        let restored = self.run.switches == 0 && self.run.report.rollback.is_some();
        let put_back_unhealthy = matches!(
            self.standing.provisional(),
            Some(Err((HostStatus::RollbackFailed, _)))
        );
        if !restored || !put_back_unhealthy {
            return;
        }
        let Some(cause) = self.run.put_back_for.clone() else {
            return;
        };
        let healthy = self.open().is_some_and(|mut host| host.healthy_again());
        if healthy {
            self.hold(Err((HostStatus::RolledBack, cause)));
        }
    }

    /// Appends this attempt to the host's audit log, when the host was reached.
    pub fn audit(&mut self) {
        let reached = self.run.report.steps.iter().any(|s| s.name != "connect");
        let Some(connection) = self.progress.connection().filter(|_| reached) else {
            return;
        };
        // Nothing of this run stays staged; the audit's answer confirms it.
        self.run
            .discard_staged(Some(connection), |remote| remote.discard_unanswered());
        let context = self.run.context;
        let line = AuditLine::for_host(
            self.run.label(),
            &self.run.report,
            &context.settings.service,
            context.deployment,
            &context.window_services,
        );
        let _ = self.run.step(Some(connection), "audit", |remote| {
            audit::append(remote, &line)
        });
    }
}

impl<'r, 'a> OpenHost<'r, 'a> {
    fn step<T>(
        &mut self,
        name: &str,
        work: impl FnOnce(&Remote) -> Result<T, HostError>,
    ) -> Result<T, HostError> {
        self.run.step(Some(self.connection), name, work)
    }

    /// Reads the backups and lists them against the current file.
    fn list_backups(&mut self, run_key: &RunKey) -> Outcome {
        let answered = self
            .step("read-backups", |remote| remote.read_backups())
            .map_err(|error| (HostStatus::Failed, error))?;
        let read: Vec<backups::ReadBackup> = answered
            .into_iter()
            .map(|backup| backups::ReadBackup {
                number: backup.number,
                written_us: backup.written_us,
                values: parse_values(Some(&backup.content)),
            })
            .collect();
        for backup in &read {
            self.run.redactions.extend(backup.values.values().cloned());
        }
        let current = &self.assessment.current;
        let now = current
            .content
            .as_ref()
            .map(|_| (&self.assessment.current_values, current.mtime));
        self.run.report.backups = Some(backups::listing(now, &read, |value| {
            run_key.fingerprint(value)
        }));
        Ok(HostStatus::Listed)
    }

    /// A Deploy's changes: stage (unless it went with the lock), switch,
    /// restart, verify, and put back what fails.
    fn apply(&mut self) -> Outcome {
        // Staged with the lock, the file's answer is on its way already.
        let staged_with_lock = self.run.sent_ahead.first() == Some(&"stage");
        if !staged_with_lock {
            self.send_changes_ahead(true);
        }
        let outcome = self.stage_next(None).and_then(|()| {
            if staged_with_lock {
                self.send_changes_ahead(false);
            }
            self.switch_and_verify()
        });
        self.run.sent_ahead.clear();
        outcome
    }

    /// A changed host's stage (unless it went with the lock), switch and
    /// first restart always follow each other: sent together they cost one
    /// round trip, not three. The host skips the rest once one fails, as
    /// the run would.
    fn send_changes_ahead(&mut self, with_stage: bool) {
        let Some(file) = self.run.file else {
            return;
        };
        // Past the deadline, the stage step says so and nothing is sent.
        if self.assessment.same_file || self.run.check_deadline("stage").is_err() {
            return;
        }
        let remote = self.run.remote(self.connection);
        let service = remote.service;
        let mut chain = vec![(remote::switch(service), &[][..])];
        if with_stage {
            chain.insert(
                0,
                (remote::stage(service), file.text.expose_secret().as_bytes()),
            );
        }
        if let Some(first) = self.assessment.units.first() {
            chain.push((units::restart_invocation(service, first), &[]));
        }
        // A test that stops the run before a step must find it not yet taken.
        #[cfg(feature = "fault-injection")]
        if let Some(at) = chain
            .iter()
            .position(|(step, _)| crate::fault::pauses_before(&self.run.host.name, step.step))
        {
            chain.truncate(at);
        }
        if remote.send_ahead(&chain) {
            let sent: Vec<&'static str> = chain.iter().map(|(step, _)| step.step).collect();
            self.run.sent_ahead.extend(sent);
        }
    }

    /// Stages what the host gets next: `content` when given, else the run's
    /// file (or, for `rollback`, the chosen backup). Nothing is staged when the
    /// host already holds the file.
    pub fn stage_next(
        &mut self,
        content: Option<&SecretString>,
    ) -> Result<(), (HostStatus, HostError)> {
        if content.is_none() && self.assessment.same_file {
            // A run that lost its host after staging left its file behind
            // (or this run staged its file with the lock).
            if self.assessment.current.leftover_staged {
                let _ = self.step("discard", |remote| {
                    remote.discard_unanswered();
                    Ok(())
                });
                self.run.staged = false;
            }
            // Its answer comes before the audit's.
            self.run
                .discard_staged(Some(self.connection), |remote| remote.discard_unanswered());
            return Ok(());
        }
        let staging = match (content, self.run.file) {
            (Some(content), _) => Staging::Content(content),
            (None, Some(file)) => Staging::Content(&file.text),
            (None, None) => Staging::Backup(self.run.context.rollback_to),
        };
        self.step("stage", |remote| match staging {
            Staging::Content(text) => remote.stage(text),
            Staging::Backup(n) => remote.stage_backup(n),
        })
        .map_err(|error| (HostStatus::Failed, error))?;
        self.run.staged = true;
        Ok(())
    }

    /// Switches the staged file in (if any), restarts and verifies; a failure
    /// puts back what was there before the run (unless `rollbackOnFailure` is off).
    pub fn switch_and_verify(&mut self) -> Outcome {
        let assessment = self.assessment;
        if !self.run.staged {
            // The host holds the file already; restart what started before it.
            if !assessment.stale_units.is_empty() {
                self.restart_and_verify(&assessment.stale_units)
                    .map_err(|error| (HostStatus::Failed, error))?;
            }
            return Ok(HostStatus::Unchanged);
        }
        let had_previous = match self.step("switch", |remote| remote.switch()) {
            Ok(had_previous) => had_previous,
            // Someone else's file is at the target now: a person must look.
            Err(error) if error.kind == ErrorKind::TargetReplaced => {
                self.run.report.changed = true;
                return Err((HostStatus::Unknown, error));
            }
            Err(error) => {
                self.run
                    .discard_staged(Some(self.connection), |remote| remote.discard());
                return Err((HostStatus::Failed, error));
            }
        };
        self.run.staged = false;
        if self.run.switches == 0 {
            self.run.had_previous = had_previous;
        }
        self.run.switches += 1;
        self.run.report.changed = true;
        let context = self.run.context;
        match self.restart_and_verify(&assessment.units) {
            Ok(()) => Ok(HostStatus::Deployed),
            Err(error) if error.kind == ErrorKind::ConnectionLost => {
                Err((HostStatus::Unknown, error))
            }
            Err(error) if !context.rollback_on_failure => Err((HostStatus::Unhealthy, error)),
            // A Rotation's window puts every switched host back, this one
            // included, in the order that lets each one's checks pass.
            Err(error) if context.in_rotation() => Err((HostStatus::Failed, error)),
            Err(error) => self.put_back(error),
        }
    }

    /// Puts back the file the host had before this run (or removes the run's
    /// file when there was none), then restarts and verifies again. `cause`
    /// is why; the outcome is `rolledBack` unless the putting back fails.
    pub fn put_back(&mut self, cause: HostError) -> Outcome {
        self.run.put_back_for = Some(cause.clone());
        let had_previous = self.run.had_previous;
        let backup = if had_previous { self.run.switches } else { 0 };
        if let Err(error) = self.step("rollback", |remote| remote.restore(backup)) {
            return Err((HostStatus::RollbackFailed, combine(&cause, &error)));
        }
        self.run.switches = 0;
        self.run.report.changed = false;
        self.run.report.rollback = Some(if had_previous {
            RollbackAction::RestoredPrevious
        } else {
            RollbackAction::RemovedNewFile
        });
        if !had_previous {
            return Err((HostStatus::RolledBack, cause));
        }
        let units = &self.assessment.units;
        let remote = self.run.remote(self.connection);
        for unit in units {
            units::reset_failed(&remote, unit);
        }
        match self.restart_and_verify(units) {
            Ok(()) => Err((HostStatus::RolledBack, cause)),
            Err(again) if again.kind == ErrorKind::ConnectionLost => {
                Err((HostStatus::Unknown, combine(&cause, &again)))
            }
            Err(again) => Err((HostStatus::RollbackFailed, combine(&cause, &again))),
        }
    }

    /// Whether every check passes now, without restarting anything.
    fn healthy_again(&mut self) -> bool {
        let units = &self.assessment.units;
        units
            .iter()
            .try_for_each(|unit| self.instance_checks(unit))
            .and_then(|()| self.host_checks())
            .is_ok()
    }

    /// Restarts units one at a time. After each instance of a template, the
    /// checks with `{instance}` run for it before the next restarts, so a host
    /// never loses all its workers at once; the other checks run at the end.
    fn restart_and_verify(&mut self, units: &[Unit]) -> Result<(), HostError> {
        let settings = &self.run.context.settings;
        let timeout = Duration::from_millis(settings.restart.timeout_ms);
        let redactions = std::mem::take(&mut self.run.redactions);
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
                .run
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
        self.run.redactions = redactions;
        result?;
        self.host_checks()
    }

    /// The checks with `{instance}`, for `unit` when it is a template's instance.
    fn instance_checks(&mut self, unit: &Unit) -> Result<(), HostError> {
        let Some(instance) = unit.instance_name() else {
            return Ok(());
        };
        let context = self.run.context;
        let host = self.run.host;
        for check in context
            .settings
            .verify
            .iter()
            .filter(|c| c.url.contains("{instance}"))
        {
            self.verify(
                &health::expand(&check.url, &host.name, Some(instance)),
                check,
            )?;
        }
        Ok(())
    }

    /// The checks without `{instance}`: the host as a whole.
    fn host_checks(&mut self) -> Result<(), HostError> {
        let context = self.run.context;
        let host = self.run.host;
        for check in context
            .settings
            .verify
            .iter()
            .filter(|c| !c.url.contains("{instance}"))
        {
            self.verify(&health::expand(&check.url, &host.name, None), check)?;
        }
        Ok(())
    }

    fn verify(
        &mut self,
        url: &str,
        check: &crate::settings::VerifySettings,
    ) -> Result<(), HostError> {
        #[cfg(feature = "fault-injection")]
        crate::fault::pause_before(&self.run.host.name, "verify");
        self.run.check_deadline("verify")?;
        let connection = self.connection;
        let through_ssh = |url: &str, timeout: Duration| -> std::result::Result<u16, String> {
            let (host, port, path) = health::split_url(url).ok_or("not an http URL")?;
            connection.http_get(&host, port, &path, timeout)
        };
        let direct = health::Direct::new(Duration::from_millis(check.timeout_ms));
        let from_here = |url: &str, timeout: Duration| direct.get(url, timeout);
        let probe: &health::Probe = if check.via_ssh {
            &through_ssh
        } else {
            &from_here
        };
        let report = health::verify(url, check, probe, &|| connection.beat());
        self.run.record("verify", report.ok, report.ms);
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
        self.run.report.checks.push(report);
        match failure {
            Some(failure) => Err(failure),
            None => Ok(()),
        }
    }

    /// Reads the file back after a switch: the values the host now holds.
    fn read_back(&mut self) -> Result<Values, HostError> {
        let current = self.step("read-back", |remote| remote.read_current())?;
        Ok(parse_values(current.content.as_ref()))
    }

    /// After a deploy left the host's new file in place (`deployed` or
    /// `unchanged`): removes every backup that still holds another value than
    /// the new file for one of `purgeBackupsOf`, so a leaked secret does not
    /// live on in a backup. A failure becomes the host's error; its status
    /// and its new file stay.
    fn purge_if_in_place(&mut self, outcome: Outcome) -> Outcome {
        let in_place = matches!(outcome, Ok(HostStatus::Deployed | HostStatus::Unchanged));
        if self.run.context.action != Action::Deploy || !in_place {
            return outcome;
        }
        match self.purge_backups() {
            Ok(()) => outcome,
            Err(error) => Err((
                status_of(&outcome),
                HostError::new(
                    ErrorKind::PurgeFailed,
                    format!(
                        "{}; the new file is in place but old values may remain in backups",
                        error.message
                    ),
                ),
            )),
        }
    }

    fn purge_backups(&mut self) -> Result<(), HostError> {
        let keys = &self.run.context.purge_keys;
        if keys.is_empty() {
            return Ok(());
        }
        // An overlap rotation's interim file keeps the old value as `<KEY>_PREVIOUS`.
        let file = self.run.file;
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
            .filter(|backup| {
                let values = parse_values(Some(&backup.content));
                new.iter().any(|(key, value)| {
                    values
                        .get(key.as_str())
                        .is_some_and(|old| Some(old.expose_secret()) != *value)
                })
            })
            .map(|backup| backup.number)
            .collect();
        if !stale.is_empty() {
            self.step("purge", |remote| remote.purge(&stale))?;
        }
        self.run.report.backups_purged = Some(stale.len() as u32);
        Ok(())
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

    fn failed(kind: ErrorKind) -> Outcome {
        Err((HostStatus::Failed, HostError::new(kind, "why")))
    }

    #[test]
    fn an_outcome_is_final_once() {
        let mut standing = Standing::Undecided;
        assert!(standing.result().is_none());
        assert!(standing.finish(Ok(HostStatus::Deployed)).is_some());
        // Neither a second outcome nor a provisional one replaces it.
        assert!(standing.finish(failed(ErrorKind::Internal)).is_none());
        assert!(!standing.hold(failed(ErrorKind::Internal)));
        assert_eq!(standing.result(), Some(&Ok(HostStatus::Deployed)));
        assert!(standing.provisional().is_none());
    }

    #[test]
    fn a_window_result_stays_provisional_until_it_is_finished() {
        let mut standing = Standing::Undecided;
        assert!(standing.hold(Ok(HostStatus::Deployed)));
        // The window puts the host back: its result changes.
        assert!(standing.hold(Err((
            HostStatus::RollbackFailed,
            HostError::new(ErrorKind::HealthCheckFailed, "why")
        ))));
        assert!(!standing.is_final());
        let settled = standing.provisional().cloned().unwrap();
        assert_eq!(standing.finish(settled.clone()), Some(&settled));
        assert!(standing.is_final());
    }

    #[test]
    fn redaction_removes_every_secret() {
        let secrets = vec![SecretString::from("hunter2"), SecretString::from("ab")];
        assert_eq!(redact("pw hunter2 ab", &secrets), "pw [redacted] ab");
    }
}
