//! The host program on each host (`crate::host`): installed at this hostenv's
//! version, with the configuration the request needs for its service. Every
//! run compares what the host program says of itself: first thing in its
//! answer to the lock step, or (when that fails or the program does not say)
//! through `hostenv-host describe SERVICE`, no sudo. Logged in as root, hostenv installs or updates both itself
//! (root can already do anything they allow); a non-root deploy user cannot,
//! so the host fails naming what to run: `hostenv host-install`, as root.

use crate::host::config::HostConfig;
use crate::host::{banner, CONFIG_DIR, PROGRAM};
use crate::protocol::error::{ErrorKind, HostError};
use crate::settings::names::Unit;
use crate::settings::Settings;
use crate::transport::remote::{quote, Invocation, Remote};
use crate::transport::units;

/// What the request needs `/etc/hostenv/<service>.conf` to say. A
/// template admits the instances the request's hosts list (the same list on
/// every host of the request) or, where a host leaves them to be found on it,
/// any instance (`name@*.service`).
pub fn expected_config(settings: &Settings) -> HostConfig {
    let target = &settings.target;
    let mut instances: Vec<String> = Vec::new();
    for template in settings.restart.units.iter().filter(|u| u.is_template()) {
        for host in &settings.hosts {
            let admitted: Vec<String> = match &host.instances {
                Some(names) => names
                    .iter()
                    .filter_map(|name| template.instance(name))
                    .map(|unit| unit.to_string())
                    .collect(),
                None => template.instances_pattern().into_iter().collect(),
            };
            instances.extend(admitted);
        }
    }
    instances.sort();
    instances.dedup();
    HostConfig {
        path: target.path.to_string(),
        owner: target.owner.to_string(),
        group: target.group.to_string(),
        mode: target.mode,
        backups: target.backups.max(1),
        state_dir: target.state_dir.to_string(),
        units: settings.restart.units.iter().map(Unit::to_string).collect(),
        instances,
        restart_timeout_s: units::timeout_seconds(std::time::Duration::from_millis(
            settings.restart.timeout_ms,
        )),
    }
}

/// How the host's program and configuration compare with the request's.
#[derive(Debug, PartialEq, Eq)]
pub enum State {
    Ready,
    /// Not installed, or no configuration for the service: what is missing.
    Missing(String),
    /// Another version, or another configuration: what differs.
    Differs(String),
}

/// Asks the host program what it is and how the service is configured.
pub fn inspect(remote: &Remote, expected: &str) -> Result<State, HostError> {
    let describe = Invocation::new("describe", &[remote.service]);
    let output = remote.connection.exec(&describe.shell_line(false), &[])?;
    if output.status == 127 || output.stderr.contains("not found") {
        return Ok(State::Missing(format!("there is no `{PROGRAM}`")));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(state_of(&text, &output.stderr, remote.service, expected))
}

/// How a description (what `describe`, or the lock step first, answered)
/// compares with what the request needs; `stderr` speaks when it is empty.
pub fn state_of(text: &str, stderr: &str, service: &str, expected: &str) -> State {
    let (version, config) = text.split_once('\n').unwrap_or((text, ""));
    if version != banner() {
        let found = if version.is_empty() {
            first_words(stderr)
        } else {
            version.to_string()
        };
        return State::Differs(format!(
            "`{PROGRAM}` is `{found}`, this hostenv needs `{}`",
            banner()
        ));
    }
    if let Some(problem) = config.strip_prefix("unsafe ") {
        return State::Differs(problem.trim().to_string());
    }
    if let Some(problem) = config.strip_prefix("unconfigured ") {
        return State::Missing(problem.trim().to_string());
    }
    if config != expected {
        return State::Differs(format!(
            "`{CONFIG_DIR}/{service}.conf` differs from the request: {}",
            difference(config, expected)
        ));
    }
    State::Ready
}

fn first_words(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or("no answer")
        .chars()
        .take(120)
        .collect()
}

/// The first setting the two configurations disagree on, by name.
fn difference(host: &str, expected: &str) -> String {
    let settings = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(str::to_string)
            .collect()
    };
    let (host, expected) = (settings(host), settings(expected));
    for line in &expected {
        if !host.contains(line) {
            let key = line.split(' ').next().unwrap_or_default();
            let has: Vec<&String> = host
                .iter()
                .filter(|l| l.split(' ').next() == Some(key))
                .collect();
            return match has.as_slice() {
                [] => format!("the request needs `{line}`, the host has no `{key}`"),
                has => format!(
                    "the request needs `{line}`, the host has `{}`",
                    has.iter()
                        .map(|l| l.as_str())
                        .collect::<Vec<_>>()
                        .join("`, `")
                ),
            };
        }
    }
    match host.iter().find(|line| !expected.contains(line)) {
        Some(line) => format!("the host has `{line}`, which the request does not"),
        None => "the comments differ".into(),
    }
}

// As root: a program for another CPU than the host's (`uname -m`, against the
// agent's reading of the program, $2) goes nowhere; else the program goes in
// under a fresh name (mktemp, so nothing planted is written through), runs
// once from there (a program the host cannot run, from a noexec mount say,
// exits 5 with the words of what refused it on stderr, and is removed), and
// only then is renamed over the old one.
const INSTALL: &str = concat!(
    r#"set -eu; umask 022; machine=$(uname -m); "#,
    r#"if [ "$machine" != "$2" ]; then cat > /dev/null; echo "this host is $machine, the host program is built for $2" >&2; exit 5; fi; "#,
    r#"dir=$(dirname -- "$1"); mkdir -p -- "$dir"; "#,
    r#"new=$(mktemp "$dir/.hostenv-host.XXXXXX"); "#,
    r#"cat > "$new" && chmod 755 "$new" || { rm -f -- "$new"; exit 4; }; "#,
    r#"if ! "$new" version > /dev/null; then rm -f -- "$new"; exit 5; fi; "#,
    r#"mv -f -- "$new" "$1" || { rm -f -- "$new"; exit 4; }"#,
);

/// INSTALL's exit when the program did not run on the host.
const DID_NOT_RUN: i32 = 5;

/// Installs the program and the service's configuration (as root, or with
/// `sudo -n` when the login user may run anything).
pub fn install(remote: &Remote, program: &Program, config: &str) -> Result<(), HostError> {
    let sudo = if remote.sudo { "sudo -n " } else { "" };
    let line = format!(
        "{sudo}/bin/sh -c {} hostenv-install {} {}",
        quote(INSTALL),
        quote(PROGRAM),
        quote(&program.machine)
    );
    let output = remote.connection.exec(&line, &program.bytes)?;
    if output.status == DID_NOT_RUN {
        return Err(HostError::new(
            ErrorKind::HostProgramUnusable,
            format!(
                "`{}`: the host program does not run there, so it was not installed: {}",
                remote.host,
                crate::protocol::text::plain(output.stderr.lines().next().unwrap_or("no message"))
            ),
        ));
    }
    remote.check("install", output)?;
    let configure = Invocation::new("configure", &[remote.service]);
    remote.run(&configure, config.as_bytes()).map(|_| ())
}

/// The host program to install, always a static build: `HOSTENV_HOST_PROGRAM`,
/// else the first static one of `hostenv-host` beside this binary (the
/// release archive puts it there) and, in a cargo build tree, the musl build
/// of the same profile (`scripts/host-program.sh`; cargo's own build beside
/// this binary is linked to this machine's C library). Read only when a host
/// needs it, once per run. With `HOSTENV_HOST_PROGRAM_SHA256` (the Jenkins
/// steps set it from the release they verified), the bytes read must have
/// that digest: the very bytes checked are the bytes installed as root, so
/// another process of the agent's user cannot swap the file in between.
pub struct LocalProgram {
    candidates: Vec<std::path::PathBuf>,
    pinned: Option<String>,
    read: std::sync::OnceLock<Result<Program, ProgramProblem>>,
}

/// A static host program, and the CPU it is for (as `uname -m` names it).
pub struct Program {
    pub bytes: Vec<u8>,
    pub machine: String,
}

/// Why there is no host program to install.
#[derive(Clone, Debug)]
pub struct ProgramProblem {
    pub kind: ErrorKind,
    pub message: String,
}

/// The target the static host program is built for in a cargo build tree.
const STATIC_TARGET: &str = "x86_64-unknown-linux-musl";

impl LocalProgram {
    pub fn locate(env: &dyn crate::settings::secret::EnvLookup) -> LocalProgram {
        let candidates = match env.get("HOSTENV_HOST_PROGRAM") {
            Some(path) => vec![path.into()],
            None => {
                let dir = std::env::current_exe()
                    .ok()
                    .and_then(|exe| exe.parent().map(std::path::Path::to_path_buf))
                    .unwrap_or_default();
                // A test binary runs from deps/, an example from examples/:
                // one below cargo's binaries.
                let profile_dir = if dir.ends_with("deps") || dir.ends_with("examples") {
                    dir.parent().unwrap_or(&dir).to_path_buf()
                } else {
                    dir.clone()
                };
                let mut candidates = vec![dir.join("hostenv-host")];
                if let (Some(profile), Some(target_dir)) =
                    (profile_dir.file_name(), profile_dir.parent())
                {
                    candidates.push(profile_dir.join("hostenv-host"));
                    candidates.push(
                        target_dir
                            .join(STATIC_TARGET)
                            .join(profile)
                            .join("hostenv-host"),
                    );
                }
                candidates.dedup();
                candidates
            }
        };
        let pinned = env
            .get("HOSTENV_HOST_PROGRAM_SHA256")
            .map(|digest| digest.to_string_lossy().trim().to_ascii_lowercase());
        LocalProgram {
            candidates,
            pinned,
            read: std::sync::OnceLock::new(),
        }
    }

    pub fn program(&self) -> Result<&Program, ProgramProblem> {
        self.read
            .get_or_init(|| self.first_static())
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The first candidate that is a static build, held to the pin; else why
    /// none can go on a host (a dynamic build found is named before a
    /// missing one).
    fn first_static(&self) -> Result<Program, ProgramProblem> {
        let mut dynamic = None;
        for path in &self.candidates {
            let Ok(bytes) = std::fs::read(path) else {
                continue;
            };
            match crate::transport::elf::static_program_machine(&bytes) {
                Ok(machine) => return self.pinned(path, Program { bytes, machine }),
                Err(problem) => {
                    dynamic.get_or_insert(ProgramProblem {
                        kind: ErrorKind::HostProgramUnusable,
                        message: format!(
                            "`{}` cannot go on a host: {problem}; hostenv installs only a static build \
                             (the release's, or one `scripts/host-program.sh` makes)",
                            path.display()
                        ),
                    });
                }
            }
        }
        Err(dynamic.unwrap_or_else(|| ProgramProblem {
            kind: ErrorKind::HostProgramMissing,
            message: format!(
                "no host program to install at `{}` (set HOSTENV_HOST_PROGRAM)",
                self.candidates[0].display()
            ),
        }))
    }

    /// `program`, unless a pin says other bytes.
    fn pinned(&self, path: &std::path::Path, program: Program) -> Result<Program, ProgramProblem> {
        match &self.pinned {
            Some(pinned) if *pinned != sha256_hex(&program.bytes) => Err(ProgramProblem {
                kind: ErrorKind::HostProgramMissing,
                message: format!(
                    "`{}` does not have the SHA-256 HOSTENV_HOST_PROGRAM_SHA256 pins; nothing was installed",
                    path.display()
                ),
            }),
            _ => Ok(program),
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The error for a host whose program a non-root login cannot fix.
pub fn not_ready(host: &str, service: &str, state: &State) -> HostError {
    let (kind, what) = match state {
        State::Missing(what) => (ErrorKind::HostProgramMissing, what),
        State::Differs(what) => (ErrorKind::HostProgramMismatch, what),
        State::Ready => unreachable!("a ready host is not an error"),
    };
    HostError::new(
        kind,
        format!(
            "`{host}`: {what}; as root, run `hostenv host-install --request REQUEST` (or install `{PROGRAM}` {} and `{CONFIG_DIR}/{service}.conf` with your configuration management)",
            crate::host::VERSION
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_the_setting() {
        let expected = "# c\npath /opt/a/.env\nbackups 5\nunit a.service\n";
        assert_eq!(
            difference(
                "# c\npath /opt/a/.env\nbackups 3\nunit a.service\n",
                expected
            ),
            "the request needs `backups 5`, the host has `backups 3`"
        );
        assert_eq!(
            difference(
                "# c\npath /opt/a/.env\nbackups 5\nunit a.service\nunit b.service\n",
                expected
            ),
            "the host has `unit b.service`, which the request does not"
        );
    }

    #[test]
    fn the_install_script_names_no_secret_and_one_path() {
        assert!(!INSTALL.contains('\n'));
        assert!(INSTALL.contains("mktemp"));
    }
}
