//! `hostenv-host`: the program on each host that does hostenv's privileged
//! steps. A non-root deploy user reaches it only through sudo rules of the
//! form `/usr/local/sbin/hostenv-host STEP SERVICE [N]`, where every argument
//! is one short token this program checks itself (sudo joins arguments with
//! spaces before matching, so a rule is exact only when no argument can hold
//! one). Every path, owner, mode and unit comes from the service's root-owned
//! configuration (`config.rs`), never from an argument; every file is reached
//! without following a link someone else could plant (`files.rs`).
//!
//! Since the steps moved onto the lock's channel (`lock.rs`, its grammar in
//! `channel.rs`), a deploy user's sudo rules name only `lock`: every other
//! step reaches root as a request on that channel, checked by the same
//! function as the step run on its own (`HostConfig::admits`).
//!
//! This module uses nothing else of the crate: it is the whole of what runs as
//! root on a host, and can be read on its own.

pub mod channel;
pub mod config;
mod files;
pub mod limits;
mod lock;
mod steps;
mod units;

use std::io::{Read, Write};

use config::{is_plain_name, is_unit_name, HostConfig, MAX_BACKUPS};
use files::{Dir, LastDir, Ownership};
use limits::Limits;

pub use lock::lock_name;
pub use steps::printable_ascii;

/// Where the program is installed, root-owned, mode 0755.
pub const PROGRAM: &str = "/usr/local/sbin/hostenv-host";
/// Where each service's configuration lives: `<service>.conf`, root-owned, 0644.
pub const CONFIG_DIR: &str = "/etc/hostenv";
/// The lock files' directory: root's own, 0700.
pub const LOCK_DIR: &str = "/run/hostenv";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Bumped whenever a step's arguments or answers change.
pub const PROTOCOL: u32 = 6;
/// The longest audit line the host program takes.
pub const MAX_AUDIT_LINE: u64 = 16 * 1024;
/// Root's limits for every service: optional, `limits.rs`.
pub const LIMITS_FILE: &str = "limits.conf";
/// The most a target, staged file or backup may hold (systemd reads no more than 4 MiB before v249).
pub const MAX_FILE_BYTES: u64 = 4 << 20;
/// The only PATH the programs this one starts (getent, systemctl) are looked up in.
const CHILD_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// The first line of `describe` and `version`: what the agent compares with itself.
pub fn banner() -> String {
    format!("hostenv-host {VERSION} protocol {PROTOCOL}")
}

/// Why a step did not happen: printed as `hostenv-host: MESSAGE` on stderr.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: Option<String>,
}

impl Failure {
    /// The arguments are not a step this program knows (exit 2).
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: 2,
            message: Some(message.into()),
        }
    }
    /// The host is not in a state the step can safely act on (exit 3).
    pub fn refused(message: impl Into<String>) -> Failure {
        Failure {
            code: 3,
            message: Some(message.into()),
        }
    }
    /// A system call failed (exit 4).
    pub fn io(message: impl Into<String>) -> Failure {
        Failure {
            code: 4,
            message: Some(message.into()),
        }
    }
    /// The target changed, but not into what the step was to put there (exit 6).
    pub fn changed(message: impl Into<String>) -> Failure {
        Failure {
            code: CHANGED,
            message: Some(message.into()),
        }
    }
    /// The step already said why on stdout.
    fn silent(code: u8) -> Failure {
        Failure {
            code,
            message: None,
        }
    }
}

/// The exit code of a step that changed the target into something other
/// than what it was to put there: the run cannot say what the host holds.
pub const CHANGED: u8 = 6;

/// One step, with its arguments checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Version,
    /// The host's realtime and monotonic clocks, read together: the agent
    /// turns a unit's monotonic start (precise on every systemd) into
    /// wall-clock time to compare with its file's.
    Clock,
    Describe,
    Configure,
    Read,
    Stage,
    Restage(u32),
    Switch,
    Restore(u32),
    Discard,
    ReadBackups,
    Purge,
    Audit,
    Lock {
        environment: String,
        shared: bool,
    },
    Restart(String),
    ResetFailed(String),
}

impl Step {
    /// The steps anyone may run: they read nothing secret.
    fn unprivileged(&self) -> bool {
        matches!(self, Step::Version | Step::Clock | Step::Describe)
    }
}

/// Reads `STEP SERVICE [ARG]`: each argument one token, exactly as many as the step takes.
pub fn parse(args: &[String]) -> Result<(Step, Option<String>), Failure> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let (name, rest) = words
        .split_first()
        .ok_or_else(|| Failure::usage("no step given"))?;
    let alone = match *name {
        "version" => Some(Step::Version),
        "clock" => Some(Step::Clock),
        _ => None,
    };
    if let Some(step) = alone {
        return match rest {
            [] => Ok((step, None)),
            _ => Err(Failure::usage(format!("`{name}` takes no arguments"))),
        };
    }
    let (service, extra) = rest
        .split_first()
        .ok_or_else(|| Failure::usage(format!("`{}` needs a service", clean(name))))?;
    if !is_plain_name(service) {
        return Err(Failure::usage("the service must be a plain name"));
    }
    let number = |text: &str, low: u32| -> Result<u32, Failure> {
        let plain = !text.is_empty()
            && text.len() <= 3
            && text.bytes().all(|b| b.is_ascii_digit())
            && (text == "0" || !text.starts_with('0'));
        plain
            .then(|| text.parse::<u32>().ok())
            .flatten()
            .filter(|n| (low..=MAX_BACKUPS).contains(n))
            .ok_or_else(|| Failure::usage(format!("`{}` is not a backup number", clean(text))))
    };
    let step = match (*name, extra) {
        ("describe", []) => Step::Describe,
        ("configure", []) => Step::Configure,
        ("read", []) => Step::Read,
        ("stage", []) => Step::Stage,
        ("restage", [n]) => Step::Restage(number(n, 1)?),
        ("switch", []) => Step::Switch,
        ("restore", [n]) => Step::Restore(number(n, 0)?),
        ("discard", []) => Step::Discard,
        ("read-backups", []) => Step::ReadBackups,
        ("purge", []) => Step::Purge,
        ("audit", []) => Step::Audit,
        ("lock", [environment, mode]) if is_plain_name(environment) => Step::Lock {
            environment: environment.to_string(),
            shared: match *mode {
                "shared" => true,
                "exclusive" => false,
                _ => return Err(Failure::usage("the lock mode is `exclusive` or `shared`")),
            },
        },
        ("restart", [unit]) if is_unit_name(unit) => Step::Restart(unit.to_string()),
        ("reset-failed", [unit]) if is_unit_name(unit) => Step::ResetFailed(unit.to_string()),
        _ => {
            return Err(Failure::usage(format!(
                "`{}` with {} more argument(s) is not a step",
                clean(name),
                extra.len()
            )))
        }
    };
    Ok((step, Some(service.to_string())))
}

/// An argument as it may be shown: printable, short.
fn clean(text: &str) -> String {
    lock::sanitize(text).chars().take(40).collect()
}

/// Keeps a process's secrets out of core dumps and away from other processes
/// of the same user: no core file (`RLIMIT_CORE` 0), and not dumpable, which
/// also makes `/proc/<pid>/mem`, `environ` and the rest root's. Both programs
/// call it first (hostenv's environment holds secrets from the start).
pub fn protect_process() -> std::io::Result<()> {
    use rustix::process::{self, DumpableBehavior, Resource, Rlimit};
    let none = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    process::setrlimit(Resource::Core, none)?;
    process::set_dumpable_behavior(DumpableBehavior::NotDumpable)?;
    Ok(())
}

/// The program's entry point: runs one step and returns the exit code.
pub fn main(args: Vec<String>) -> u8 {
    // The staged file's secrets pass through this process: no core dump of it.
    if let Err(error) = protect_process() {
        eprintln!("hostenv-host: cannot keep secrets out of core dumps: {error}");
        return 4;
    }
    let result = parse(&args).and_then(|(step, service)| run(&step, service.as_deref()));
    match result {
        Ok(()) => 0,
        Err(failure) => {
            if let Some(message) = &failure.message {
                eprintln!("hostenv-host: {message}");
            }
            failure.code
        }
    }
}

fn run(step: &Step, service: Option<&str>) -> Result<(), Failure> {
    let stdout = &mut std::io::stdout().lock();
    if *step == Step::Version {
        return writeln!(stdout, "{}", banner()).map_err(|e| Failure::io(e.to_string()));
    }
    if *step == Step::Clock {
        return writeln!(stdout, "{}", units::clock()).map_err(|e| Failure::io(e.to_string()));
    }
    let service = service.expect("every step but version names a service");
    if !step.unprivileged() && !rustix::process::geteuid().is_root() {
        return Err(Failure::refused(
            "this step runs as root (through sudo for a deploy user)",
        ));
    }
    if *step == Step::Configure {
        return configure(service);
    }
    let config = load(service);
    let problem = install_problem();
    let description = match (&problem, &config) {
        (Some(problem), _) => format!("{}\nunsafe {problem}\n", banner()),
        (None, Ok(config)) => format!("{}\n{}", banner(), config.render(service)),
        (None, Err(failure)) => format!(
            "{}\nunconfigured {}\n",
            banner(),
            failure.message.clone().unwrap_or_default()
        ),
    };
    if *step == Step::Describe {
        return stdout
            .write_all(description.as_bytes())
            .map_err(|e| Failure::io(e.to_string()));
    }
    if let Step::Lock {
        environment,
        shared,
    } = step
    {
        // The lock's first answer is the description, so that a run learns
        // what this program is in the round trip that takes the lock.
        write!(stdout, "describe {}\n{description}", description.len())
            .and_then(|()| stdout.flush())
            .map_err(|e| Failure::io(e.to_string()))?;
        if let Some(problem) = problem {
            return Err(Failure::refused(problem));
        }
        let config = config?;
        let limits = load_limits()?;
        return lock::hold(service, environment, *shared, &config, &limits);
    }
    let config = config?;
    config.admits(step)?;
    let mut session = Session::alone(load_limits()?);
    let stdin = &mut std::io::stdin().lock();
    let stderr = &mut std::io::stderr().lock();
    let result = execute(step, &config, stdin, (stdout, stderr), &mut session);
    stdout.flush().map_err(|e| Failure::io(e.to_string()))?;
    result
}

/// What a step knows beyond its arguments: on the lock's channel, the run's
/// environment and the file the channel staged; root's limits everywhere.
pub struct Session {
    environment: Option<String>,
    staged: Option<steps::Staged>,
    limits: Limits,
}

impl Session {
    /// A step run on its own.
    fn alone(limits: Limits) -> Session {
        Session {
            environment: None,
            staged: None,
            limits,
        }
    }

    /// The steps on the channel of a lock taken for `environment`.
    fn on_channel(environment: &str, limits: Limits) -> Session {
        Session {
            environment: Some(environment.to_string()),
            staged: None,
            limits,
        }
    }
}

impl Step {
    /// The steps that change the host: refused under a shared lock.
    fn writes(&self) -> bool {
        matches!(
            self,
            Step::Stage
                | Step::Restage(_)
                | Step::Switch
                | Step::Restore(_)
                | Step::Discard
                | Step::Purge
                | Step::Restart(_)
                | Step::ResetFailed(_)
        )
    }
}

/// Runs one privileged file or unit step of a configured service, reading
/// `stdin` and answering on `stdout` and `stderr`: for a run of its own, and
/// for the lock holder, which runs the same steps for requests on its channel.
/// The step's arguments were checked against `config` (`HostConfig::admits`).
fn execute(
    step: &Step,
    config: &HostConfig,
    stdin: &mut dyn Read,
    (stdout, stderr): (&mut dyn Write, &mut dyn Write),
    session: &mut Session,
) -> Result<(), Failure> {
    let target = steps::Target::new(config)?;
    let environment = session.environment.as_deref();
    match step {
        Step::Read => steps::read(&target, stdout),
        Step::Stage => {
            session.staged = None;
            session.staged = Some(steps::stage(&target, stdin)?);
            Ok(())
        }
        Step::Restage(n) => {
            session.staged = None;
            session.staged = Some(steps::restage(&target, *n)?);
            Ok(())
        }
        Step::Switch => {
            let staged = session.staged.take().ok_or_else(|| {
                Failure::refused(
                    "`switch` installs only a file its own lock's channel staged: run it there, after `stage` or `restage`",
                )
            })?;
            steps::switch(&target, &staged, environment, stdout)
        }
        Step::Restore(n) => steps::restore(&target, *n, environment),
        Step::Discard => {
            session.staged = None;
            steps::discard(&target)
        }
        Step::ReadBackups => steps::read_backups(&target, stdout),
        Step::Purge => steps::purge(&target, stdin),
        Step::Audit => steps::audit(&target, stdin, &session.limits),
        Step::Restart(unit) => units::restart(config, unit, stdout, stderr),
        Step::ResetFailed(unit) => units::reset_failed(config, unit),
        Step::Version | Step::Clock | Step::Describe | Step::Configure | Step::Lock { .. } => {
            Err(Failure::usage("this step is not run on the lock's channel"))
        }
    }
}

/// One request on the lock holder's channel (`lock.rs`): `words` as a run of
/// its own would take them, checked against the configuration the lock was
/// taken with, for the locked service only, and no write under a shared
/// lock. Returns the exit code a run of its own would have.
fn request(
    (service, config): (&str, &HostConfig),
    shared: bool,
    words: &[String],
    stdin: &[u8],
    (stdout, stderr): (&mut Vec<u8>, &mut Vec<u8>),
    session: &mut Session,
) -> u8 {
    let result = parse(words).and_then(|(step, named)| {
        if named.as_deref() != Some(service) {
            return Err(Failure::usage(
                "the lock's channel runs steps of its own service only",
            ));
        }
        if matches!(
            step,
            Step::Version | Step::Clock | Step::Describe | Step::Configure | Step::Lock { .. }
        ) {
            return Err(Failure::usage("this step is not run on the lock's channel"));
        }
        if shared && step.writes() {
            return Err(Failure::refused(
                "a shared lock does not admit a step that writes",
            ));
        }
        config.admits(&step)?;
        execute(&step, config, &mut &stdin[..], (stdout, stderr), session)
    });
    match result {
        Ok(()) => 0,
        Err(failure) => {
            if let Some(message) = &failure.message {
                let _ = writeln!(stderr, "hostenv-host: {message}");
            }
            failure.code
        }
    }
}

/// Why the installed program could be replaced by someone other than root, if it could.
fn install_problem() -> Option<String> {
    let (dir, name) = PROGRAM.rsplit_once('/').expect("absolute");
    let dir = match files::open_dir(dir, LastDir::RootOwned) {
        Ok(Some(dir)) => dir,
        Ok(None) => return Some(format!("there is no `{dir}`")),
        Err(failure) => return failure.message,
    };
    match files::status(&dir, name) {
        Some(stat) if stat.st_uid == 0 && stat.st_mode & 0o022 == 0 => None,
        Some(_) => Some(format!(
            "`{PROGRAM}` must be root's and writable by no one else"
        )),
        None => Some(format!("there is no `{PROGRAM}`")),
    }
}

/// The service's configuration, only from a root-owned file no one else can write.
fn load(service: &str) -> Result<HostConfig, Failure> {
    let missing = || Failure::refused(format!("there is no `{CONFIG_DIR}/{service}.conf`"));
    let dir = files::open_dir(CONFIG_DIR, LastDir::RootOwned)?.ok_or_else(missing)?;
    let name = format!("{service}.conf");
    let contents = files::read_file(&dir, &name, 64 * 1024)?.ok_or_else(missing)?;
    if contents.stat.st_uid != 0 || contents.stat.st_mode & 0o022 != 0 {
        return Err(Failure::refused(format!(
            "`{}` must be root's and writable by no one else",
            dir.join(&name)
        )));
    }
    let text = String::from_utf8(contents.bytes)
        .map_err(|_| Failure::refused(format!("`{}` is not UTF-8", dir.join(&name))))?;
    HostConfig::parse(&text)
        .map_err(|problem| Failure::refused(format!("`{}`: {problem}", dir.join(&name))))
}

/// Root's limits: `/etc/hostenv/limits.conf` when there is one (root's, and
/// writable by no one else), else the defaults.
fn load_limits() -> Result<Limits, Failure> {
    let Some(dir) = files::open_dir(CONFIG_DIR, LastDir::RootOwned)? else {
        return Ok(Limits::default());
    };
    let Some(contents) = files::read_file(&dir, LIMITS_FILE, 64 * 1024)? else {
        return Ok(Limits::default());
    };
    let shown = dir.join(LIMITS_FILE);
    if contents.stat.st_uid != 0 || contents.stat.st_mode & 0o022 != 0 {
        return Err(Failure::refused(format!(
            "`{shown}` must be root's and writable by no one else"
        )));
    }
    let text = String::from_utf8(contents.bytes)
        .map_err(|_| Failure::refused(format!("`{shown}` is not UTF-8")))?;
    Limits::parse(&text).map_err(|problem| Failure::refused(format!("`{shown}`: {problem}")))
}

/// Writes the service's configuration from stdin (root only; `hostenv host-install`).
fn configure(service: &str) -> Result<(), Failure> {
    let mut text = String::new();
    std::io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut text)
        .map_err(|_| Failure::refused("the configuration is not UTF-8"))?;
    let config = HostConfig::parse(&text).map_err(Failure::refused)?;
    let dir = config_dir()?;
    let name = format!("{service}.conf");
    let own = Ownership {
        uid: 0,
        gid: 0,
        mode: 0o644,
    };
    let temporary = format!(".{name}.new");
    files::write_new(&dir, &temporary, config.render(service).as_bytes(), &own)?;
    files::rename(&dir, &temporary, &name)
}

fn config_dir() -> Result<Dir, Failure> {
    if let Some(dir) = files::open_dir(CONFIG_DIR, LastDir::RootOwned)? {
        return Ok(dir);
    }
    let (parent, name) = CONFIG_DIR.rsplit_once('/').expect("absolute");
    let parent = files::open_dir(parent, LastDir::RootOwned)?
        .ok_or_else(|| Failure::io(format!("there is no `{parent}`")))?;
    files::make_dir(&parent, name, 0o755)?;
    files::open_dir(CONFIG_DIR, LastDir::RootOwned)?
        .ok_or_else(|| Failure::io(format!("cannot create `{CONFIG_DIR}`")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn steps_take_exactly_their_tokens() {
        assert_eq!(
            parse(&args("restage voxbridge 3")).unwrap(),
            (Step::Restage(3), Some("voxbridge".into()))
        );
        assert_eq!(
            parse(&args("restore voxbridge 0")).unwrap().0,
            Step::Restore(0)
        );
        assert_eq!(
            parse(&args("lock voxcore production shared")).unwrap().0,
            Step::Lock {
                environment: "production".into(),
                shared: true
            }
        );
        assert_eq!(
            parse(&args("restart voxcore voxcore@1.service")).unwrap().0,
            Step::Restart("voxcore@1.service".into())
        );
        assert_eq!(parse(&args("version")).unwrap().0, Step::Version);
        assert_eq!(parse(&args("clock")).unwrap(), (Step::Clock, None));
    }

    #[test]
    fn anything_else_is_refused_as_usage() {
        let refused = [
            vec!["read voxbridge".to_string()],
            vec!["read".into(), "voxbridge".into(), "".into()],
            vec!["read".into(), "vox bridge".into()],
            vec!["read".into(), "../etc".into()],
            args("restage voxbridge 0"),
            args("restage voxbridge 01"),
            args("restage voxbridge 101"),
            args("restore voxbridge -1"),
            args("switch voxbridge extra"),
            args("lock voxbridge production exclusive now"),
            args("lock voxbridge prod/uction exclusive"),
            args("restart voxcore voxcore@$(id).service"),
            args("restart voxcore /etc/shadow"),
            args("sh -c id"),
            // `version` and `clock` name no service, so the lock's channel,
            // which runs its own service's steps only, refuses them too.
            args("clock voxbridge"),
            args("version now"),
            vec![],
        ];
        for words in refused {
            let failure = parse(&words).expect_err(&format!("{words:?}"));
            assert_eq!(failure.code, 2, "{words:?}");
        }
    }
}
