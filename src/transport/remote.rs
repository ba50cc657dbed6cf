//! Remote steps built on the SSH transport: read what is there, stage the new
//! file, switch it in keeping the previous one, put it back.
//!
//! Each privileged step is one run of the host program (`crate::host`,
//! installed as `/usr/local/sbin/hostenv-host`):
//! `[sudo -n] /usr/local/sbin/hostenv-host STEP SERVICE [ARG...]`, every
//! argument one space-free token the program checks itself, every path, owner,
//! mode and unit taken from the service's root-owned configuration on the
//! host. So `hostenv sudoers` can grant exactly these command lines, and no
//! other split of the same text does anything. Secret bytes travel only on
//! stdin (staging) or stdout (reading back). Once the run holds the host's
//! lock, the steps go as requests on the lock's own channel (one round trip
//! each; `host/lock.rs`), the same words with the same checks. Read-only
//! queries that need no privilege (`systemctl list-units`, `systemctl show`) are constant `sh`
//! scripts run as the login user.

use crate::host::PROGRAM;
use crate::protocol::error::{ErrorKind, HostError};
use crate::settings::names::{HostName, ServiceName};
use crate::settings::secret::{ExposeSecret, SecretString};
use crate::settings::TargetSettings;
use crate::transport::ssh::{Connection, Output};

/// One run of the host program: a step and its arguments (the service first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub step: &'static str,
    pub args: Vec<String>,
}

impl Invocation {
    pub fn new(step: &'static str, args: &[&str]) -> Invocation {
        Invocation {
            step,
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// The step and its arguments, as the lock holder takes them.
    pub fn words(&self) -> Vec<String> {
        let mut words = vec![self.step.to_string()];
        words.extend(self.args.iter().cloned());
        words
    }

    fn argv(&self) -> Vec<String> {
        let mut argv = vec![PROGRAM.to_string(), self.step.to_string()];
        argv.extend(self.args.iter().cloned());
        argv
    }

    /// The command line for the remote shell.
    pub fn shell_line(&self, sudo: bool) -> String {
        let line = self
            .argv()
            .iter()
            .map(|a| quote(a))
            .collect::<Vec<_>>()
            .join(" ");
        if sudo {
            format!("sudo -n {line}")
        } else {
            line
        }
    }

    /// The command as a sudoers rule names it: the program and its tokens.
    pub fn sudoers_command(&self) -> String {
        self.argv()
            .iter()
            .map(|a| sudoers_escape(a))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A constant read-only `sh` script with its arguments, run as the login user.
pub struct Query {
    pub step: &'static str,
    pub script: &'static str,
    pub args: Vec<String>,
}

impl Query {
    pub fn new(step: &'static str, script: &'static str, args: &[&str]) -> Query {
        Query {
            step,
            script,
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }

    pub fn shell_line(&self) -> String {
        let mut argv = vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            self.script.to_string(),
            format!("hostenv-{}", self.step),
        ];
        argv.extend(self.args.iter().cloned());
        argv.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")
    }
}

/// Single-quotes an argument for the remote shell.
pub fn quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}

/// sudoers treats `\ , : = ( ) !` as syntax and `* ? [ ]` as wildcards; the
/// tokens hostenv passes hold none of them but `:` (a unit instance may), and
/// each is escaped all the same.
fn sudoers_escape(arg: &str) -> String {
    let mut out = String::new();
    for c in arg.chars() {
        if matches!(
            c,
            '\\' | ',' | ':' | '=' | '(' | ')' | '*' | '?' | '[' | ']' | '!' | '#'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

pub fn read(service: &ServiceName) -> Invocation {
    Invocation::new("read", &[service])
}

pub fn stage(service: &ServiceName) -> Invocation {
    Invocation::new("stage", &[service])
}

pub fn switch(service: &ServiceName) -> Invocation {
    Invocation::new("switch", &[service])
}

/// Puts backup `n` back (1 = the newest), or with 0 removes the target.
pub fn restore(service: &ServiceName, n: u32) -> Invocation {
    Invocation::new("restore", &[service, &n.to_string()])
}

pub fn read_backups(service: &ServiceName) -> Invocation {
    Invocation::new("read-backups", &[service])
}

pub fn purge(service: &ServiceName) -> Invocation {
    Invocation::new("purge", &[service])
}

/// A rollback's stage: backup `n` (1 = the newest) copied beside the target.
pub fn restage(service: &ServiceName, n: u32) -> Invocation {
    Invocation::new("restage", &[service, &n.to_string()])
}

pub fn discard(service: &ServiceName) -> Invocation {
    Invocation::new("discard", &[service])
}

pub fn audit(service: &ServiceName) -> Invocation {
    Invocation::new("audit", &[service])
}

/// What the host has at the target path now.
pub struct Current {
    /// The file's bytes (a secret), or None when there is no file.
    pub content: Option<SecretString>,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    /// Modification time, microseconds since the epoch.
    pub mtime: i64,
    /// The numeric ids the target should have.
    pub want_uid: u32,
    pub want_gid: u32,
    /// A staged file from a run that never switched it in (its host was lost) is still there.
    pub leftover_staged: bool,
    /// The host's systemd version, when it could be told.
    pub systemd: Option<u32>,
    /// The environment whose run last put the target in place, when known.
    pub written_by: Option<String>,
}

/// The remote side of one host and service, over the host's one connection.
pub struct Remote<'a> {
    pub connection: &'a Connection,
    pub host: &'a HostName,
    pub sudo: bool,
    pub service: &'a ServiceName,
    pub target: &'a TargetSettings,
}

impl Remote<'_> {
    /// Runs a privileged invocation; a non-zero exit is that step's error.
    pub fn run(&self, invocation: &Invocation, stdin: &[u8]) -> Result<Output, HostError> {
        let output = self.output(invocation, stdin, None)?;
        self.check(invocation.step, output)
    }

    /// Runs a privileged invocation and returns what it answered, whatever
    /// its exit: on the lock's channel when the run holds the lock, else as a
    /// command of its own (within `timeout`, or the connection's I/O timeout).
    pub fn output(
        &self,
        invocation: &Invocation,
        stdin: &[u8],
        timeout: Option<std::time::Duration>,
    ) -> Result<Output, HostError> {
        if invocation.step != "configure" {
            if let Some(answer) = self
                .connection
                .run_on_lock(&invocation.words(), stdin, timeout)
            {
                return answer;
            }
        }
        let line = invocation.shell_line(self.sudo);
        match timeout {
            Some(timeout) => self.connection.exec_with_timeout(&line, stdin, timeout),
            None => self.connection.exec(&line, stdin),
        }
    }

    /// Sends invocations that always follow each other to the lock holder in
    /// one go, each after the first only if the one before it succeeded;
    /// `run` and `output` of the same invocations then only read their
    /// answers. False when the run holds no lock (nothing was sent).
    pub fn send_ahead(&self, steps: &[(Invocation, &[u8])]) -> bool {
        let steps: Vec<(Vec<String>, &[u8])> = steps
            .iter()
            .map(|(invocation, stdin)| (invocation.words(), *stdin))
            .collect();
        self.connection.send_ahead(&steps)
    }

    /// Runs a read-only query that needs no privilege, never through sudo.
    pub fn query(&self, query: &Query) -> Result<Output, HostError> {
        let output = self.connection.exec(&query.shell_line(), &[])?;
        self.check(query.step, output)
    }

    pub fn check(&self, step: &str, output: Output) -> Result<Output, HostError> {
        if output.status == 0 {
            return Ok(output);
        }
        if self.sudo && is_sudo_refusal(&output.stderr) {
            return Err(HostError::new(
                ErrorKind::SudoRefused,
                format!(
                    "`{}`: sudo refused the `{step}` step (`sudo -n {PROGRAM} {step} …`); \
                     grant the lines `hostenv sudoers` prints: {}",
                    self.host,
                    first_line(&output.stderr)
                ),
            ));
        }
        Err(HostError::new(
            ErrorKind::RemoteCommandFailed,
            format!(
                "`{}`: the `{step}` step failed (exit {}): {}",
                self.host,
                output.status,
                first_line(&output.stderr)
            ),
        ))
    }

    pub fn read_current(&self) -> Result<Current, HostError> {
        let target = self.target;
        let output = self.run(&read(self.service), &[])?;
        parse_current(&output.stdout).ok_or_else(|| {
            HostError::new(
                ErrorKind::CurrentFileInvalid,
                format!(
                    "`{}`: `{}` could not be read back (not UTF-8, or an unexpected answer)",
                    self.host, target.path
                ),
            )
        })
    }

    /// Writes the new file beside the target, mode 600 from its first byte.
    pub fn stage(&self, content: &SecretString) -> Result<(), HostError> {
        self.run(&stage(self.service), content.expose_secret().as_bytes())
            .map(|_| ())
    }

    /// Stages backup `n` for a rollback; a missing backup is `noBackup`.
    pub fn stage_backup(&self, n: u32) -> Result<(), HostError> {
        let target = self.target;
        self.run(&restage(self.service, n), &[])
            .map(|_| ())
            .map_err(|error| {
                if error.message.contains("there is no backup") {
                    HostError::new(
                        ErrorKind::NoBackup,
                        format!(
                            "`{}`: there is no backup {n} of `{}` to put back",
                            self.host, target.path
                        ),
                    )
                } else {
                    error
                }
            })
    }

    /// Keeps the current file as backup 1 and renames the staged one over it.
    /// Returns whether there was a previous file.
    pub fn switch(&self) -> Result<bool, HostError> {
        let output = self.output(&switch(self.service), &[], None)?;
        if output.status == i32::from(crate::host::CHANGED) {
            return Err(HostError::new(
                ErrorKind::TargetReplaced,
                format!(
                    "`{}`: {}",
                    self.host,
                    first_line(&output.stderr).trim_start_matches("hostenv-host: ")
                ),
            ));
        }
        let output = self.check("switch", output)?;
        Ok(String::from_utf8_lossy(&output.stdout).starts_with("previous"))
    }

    /// Puts backup `n` back (1 = the newest), or with 0 removes the target.
    pub fn restore(&self, n: u32) -> Result<(), HostError> {
        self.run(&restore(self.service, n), &[]).map(|_| ())
    }

    /// Every backup the host keeps, numbered from 1 (the newest); contents are secrets.
    pub fn read_backups(&self) -> Result<Vec<Backup>, HostError> {
        let target = self.target;
        let output = self.run(&read_backups(self.service), &[])?;
        parse_backups(&output.stdout).ok_or_else(|| {
            HostError::new(
                ErrorKind::CurrentFileInvalid,
                format!(
                    "`{}`: the backups in `{}` could not be read (not UTF-8, or an unexpected answer)",
                    self.host, target.state_dir
                ),
            )
        })
    }

    /// Removes backups by number and renumbers the rest from 1.
    pub fn purge(&self, numbers: &[u32]) -> Result<(), HostError> {
        let list: Vec<String> = numbers.iter().map(u32::to_string).collect();
        self.run(
            &purge(self.service),
            format!("{}\n", list.join(" ")).as_bytes(),
        )
        .map(|_| ())
    }

    /// Removes a staged file that will not be switched in.
    pub fn discard(&self) {
        let _ = self.run(&discard(self.service), &[]);
    }

    /// Asks the lock holder to remove a staged file without waiting: its
    /// answer is read before the next step's.
    pub fn discard_unanswered(&self) {
        self.send_ahead(&[(discard(self.service), &[])]);
    }
}

/// `present UID GID FILE_UID FILE_GID MODE MTIME LEFT SYSTEMD BY` or
/// `absent UID GID LEFT SYSTEMD BY`, then the bytes; LEFT is `staged` when a
/// staged file was left behind, SYSTEMD the host's version (0: unknown), BY
/// the environment that last put the target in place (`-`: unknown).
pub(crate) fn parse_current(stdout: &[u8]) -> Option<Current> {
    let newline = stdout.iter().position(|b| *b == b'\n')?;
    let header = std::str::from_utf8(&stdout[..newline]).ok()?;
    let fields: Vec<&str> = header.split(' ').collect();
    let number = |i: usize| fields.get(i).and_then(|f| f.parse::<i64>().ok());
    let (want_uid, want_gid) = (number(1)? as u32, number(2)? as u32);
    let left = |i: usize| fields.get(i).map(|f| *f == "staged");
    let systemd = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u32>().ok())
            .map(|v| Some(v).filter(|v| *v > 0))
    };
    let written_by = |i: usize| {
        let by = fields.get(i)?;
        Some((*by != "-").then(|| by.to_string()))
    };
    match *fields.first()? {
        "absent" => Some(Current {
            content: None,
            uid: 0,
            gid: 0,
            mode: 0,
            mtime: 0,
            want_uid,
            want_gid,
            leftover_staged: left(3)?,
            systemd: systemd(4)?,
            written_by: written_by(5)?,
        }),
        "present" => Some(Current {
            content: Some(SecretString::from(
                String::from_utf8(stdout[newline + 1..].to_vec()).ok()?,
            )),
            uid: number(3)? as u32,
            gid: number(4)? as u32,
            mode: u32::from_str_radix(fields.get(5)?, 8).ok()?,
            mtime: micros(fields.get(6)?)?,
            want_uid,
            want_gid,
            leftover_staged: left(7)?,
            systemd: systemd(8)?,
            written_by: written_by(9)?,
        }),
        _ => None,
    }
}

/// One backup a host keeps: its number (1 = the newest), when it was written
/// at the target (its modification time, in microseconds since the epoch),
/// and its bytes, which are secrets.
pub struct Backup {
    pub number: u32,
    pub written_us: i64,
    pub content: SecretString,
}

/// `backup N BYTES SECONDS.MICROS` headers, each followed by exactly BYTES
/// bytes; anything else (a field more or less, a number that is no number)
/// and the whole answer is refused.
pub(crate) fn parse_backups(mut stdout: &[u8]) -> Option<Vec<Backup>> {
    let mut backups = Vec::new();
    while !stdout.is_empty() {
        let newline = stdout.iter().position(|b| *b == b'\n')?;
        let header = std::str::from_utf8(&stdout[..newline]).ok()?;
        let mut fields = header.split(' ');
        let (Some("backup"), Some(n), Some(bytes), Some(written), None) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            return None;
        };
        let (number, bytes) = (n.parse::<u32>().ok()?, bytes.parse::<usize>().ok()?);
        let written_us = micros(written)?;
        // A length the host chose: no add may overflow.
        let end = (newline + 1).checked_add(bytes)?;
        let body = stdout.get(newline + 1..end)?;
        backups.push(Backup {
            number,
            written_us,
            content: SecretString::from(String::from_utf8(body.to_vec()).ok()?),
        });
        stdout = &stdout[end..];
    }
    Some(backups)
}

/// `SECONDS.FRACTION` (as `stat -c %.6Y` prints it) in microseconds.
/// The host chose the text: a number no time has is no time (None), never an overflow.
fn micros(text: &str) -> Option<i64> {
    let (seconds, fraction) = text.split_once('.').unwrap_or((text, ""));
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let fraction = format!("{fraction:0<6}");
    seconds
        .parse::<i64>()
        .ok()?
        .checked_mul(1_000_000)?
        .checked_add(fraction.get(..6)?.parse::<i64>().ok()?)
}

/// Whether sudo said no (as opposed to the command failing).
pub fn is_sudo_refusal(stderr: &str) -> bool {
    stderr.lines().any(|line| {
        line.starts_with("sudo:")
            && (line.contains("password is required")
                || line.contains("not allowed")
                || line.contains("may not run")
                || line.contains("not in the sudoers"))
    })
}

fn first_line(text: &str) -> String {
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty() && !l.contains("unable to resolve host"))
        .unwrap_or("no message")
        .trim();
    line.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(quote("plain"), "'plain'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn a_step_is_the_program_and_its_tokens() {
        let restore = restore(&ServiceName::parse("voxbridge").unwrap(), 2);
        assert_eq!(
            restore.shell_line(true),
            "sudo -n '/usr/local/sbin/hostenv-host' 'restore' 'voxbridge' '2'"
        );
        assert_eq!(
            restore.sudoers_command(),
            "/usr/local/sbin/hostenv-host restore voxbridge 2"
        );
        let unit = Invocation::new("restart", &["voxcore", "voxcore@a:b.service"]);
        assert_eq!(
            unit.sudoers_command(),
            "/usr/local/sbin/hostenv-host restart voxcore voxcore@a\\:b.service"
        );
    }

    #[test]
    fn reads_the_header_and_keeps_the_bytes() {
        let current = parse_current(
            b"present 61001 61001 61001 61001 600 1700000000.250000 clean 252 staging\nA=\"1\"\n",
        )
        .unwrap();
        assert_eq!(current.content.unwrap().expose_secret(), "A=\"1\"\n");
        assert_eq!(
            (current.mode, current.mtime, current.want_uid),
            (0o600, 1_700_000_000_250_000, 61001)
        );
        assert!(!current.leftover_staged);
        assert_eq!(current.systemd, Some(252));
        assert_eq!(current.written_by.as_deref(), Some("staging"));
        assert_eq!(micros("12.5"), Some(12_500_000));
        assert_eq!(micros("12"), Some(12_000_000));
        assert_eq!(micros("99999999999999999.5"), None);
        assert_eq!(micros("1.-5"), None);
        let absent = parse_current(b"absent 1 2 staged 0 -\n").unwrap();
        assert!(absent.content.is_none() && absent.leftover_staged);
        assert_eq!(absent.systemd, None);
        assert_eq!(absent.written_by, None);
        assert!(parse_current(b"garbage\n").is_none());
    }

    #[test]
    fn backups_are_split_by_their_byte_counts() {
        let backups = parse_backups(
            b"backup 1 6 1796593606.473941\nA=\"1\"\nbackup 3 0 7.5\nbackup 4 8 0.000001\nB=\"x\ny\"\n",
        )
        .unwrap();
        let seen: Vec<(u32, i64, &str)> = backups
            .iter()
            .map(|b| (b.number, b.written_us, b.content.expose_secret()))
            .collect();
        assert_eq!(
            seen,
            [
                (1, 1_796_593_606_473_941, "A=\"1\"\n"),
                (3, 7_500_000, ""),
                (4, 1, "B=\"x\ny\"\n")
            ]
        );
        assert!(parse_backups(b"backup 1 99 1.0\nshort").is_none());
        assert!(parse_backups(b"backup 1 18446744073709551615 1.0\nx").is_none());
        assert_eq!(parse_backups(b"").unwrap().len(), 0);
        // The header has one grammar: the time is required, nothing may follow
        // it, one space between fields, and a time must be a number.
        for header in [
            &b"backup 1 0\n"[..],
            b"backup 1 0 1.0 extra\n",
            b"backup  1 0 1.0\n",
            b"backup 1 0 1.0 \n",
            b"backup 1 0 one\n",
            b"backup 1 0 99999999999999999999.0\n",
            b"backup 1 0 1.x\n",
        ] {
            assert!(
                parse_backups(header).is_none(),
                "{}",
                String::from_utf8_lossy(header)
            );
        }
    }
}
