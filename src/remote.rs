//! Remote file operations built on the SSH transport: read what is there,
//! stage the new file, switch it in keeping the previous one, put it back.
//!
//! Each privileged operation is an [`Invocation`]: a constant one-line POSIX sh
//! script run as `[sudo -n] /bin/sh -c SCRIPT hostenv-STEP ARGS...`. The script
//! text never varies and every argument follows from the request alone (no
//! random names), so `hostenv sudoers` can grant exactly these command lines
//! and nothing else. Arguments are names and paths already held to plain
//! character sets (settings.rs) and quoted anyway; secret bytes travel only on
//! stdin (staging) or stdout (reading back).

use crate::error::{ErrorKind, HostError};
use crate::secret::{ExposeSecret, SecretString};
use crate::settings::TargetSettings;
use crate::ssh::{Connection, Output};

// One line each, so that sudoers can name them exactly; no backslash and no
// character sudoers would read as a wildcard.
const READ: &str = concat!(
    r#"set -eu; path=$1; owner=$2; group=$3; "#,
    r#"uid=$(id -u "$owner" 2>/dev/null) || { echo "hostenv: there is no user $owner on this host" >&2; exit 3; }; "#,
    r#"gid=$(getent group "$group" | cut -d: -f3); "#,
    r#"[ -n "$gid" ] || { echo "hostenv: there is no group $group on this host" >&2; exit 3; }; "#,
    r#"if [ -e "$path.hostenv-new" ]; then left=staged; else left=clean; fi; "#,
    r#"if [ -e "$path" ]; then "#,
    r#"[ -f "$path" ] || { echo "hostenv: $path is not a regular file" >&2; exit 3; }; "#,
    r#"echo "present $uid $gid $(stat -c '%u %g %a %.6Y' -- "$path") $left"; cat -- "$path"; "#,
    r#"else echo "absent $uid $gid $left"; fi"#,
);

const STAGE: &str = concat!(
    r#"set -eu; umask 077; staged=$1; owner=$2; group=$3; mode=$4; "#,
    r#"dir=$(dirname -- "$staged"); "#,
    r#"[ -d "$dir" ] || { echo "hostenv: the directory $dir does not exist" >&2; exit 3; }; "#,
    r#"rm -f -- "$staged"; set -C; "#,
    r#"cat > "$staged" || { rm -f -- "$staged"; echo "hostenv: cannot write $staged" >&2; exit 4; }; "#,
    r#"set +C; "#,
    r#"{ chown -- "$owner:$group" "$staged" && chmod -- "$mode" "$staged" && sync -- "$staged"; } "#,
    r#"|| { rm -f -- "$staged"; echo "hostenv: cannot set up $staged" >&2; exit 4; }"#,
);

const SWITCH: &str = concat!(
    r#"set -eu; umask 077; staged=$1; target=$2; state=$3; keep=$4; "#,
    r#"mkdir -p -- "$state"; chmod 700 -- "$state"; "#,
    r#"if [ -e "$target" ]; then n=$keep; "#,
    r#"while [ "$n" -gt 1 ]; do p=$((n - 1)); "#,
    r#"if [ -e "$state/env.$p" ]; then mv -f -- "$state/env.$p" "$state/env.$n"; fi; n=$p; done; "#,
    r#"cp -p -- "$target" "$state/env.1"; sync -- "$state/env.1"; echo previous; "#,
    r#"else echo none; fi; "#,
    r#"mv -f -- "$staged" "$target"; sync -- "$(dirname -- "$target")""#,
);

// `$3` is the backup to put back (1 = the newest), or 0 when there was no
// previous file and the new one is removed.
const RESTORE: &str = concat!(
    r#"set -eu; umask 077; target=$1; state=$2; n=$3; "#,
    r#"if [ "$n" -gt 0 ]; then "#,
    r#"[ -f "$state/env.$n" ] || { echo "hostenv: there is no backup $n in $state" >&2; exit 3; }; "#,
    r#"rm -f -- "$target.hostenv-restore"; cp -p -- "$state/env.$n" "$target.hostenv-restore"; "#,
    r#"mv -f -- "$target.hostenv-restore" "$target"; "#,
    r#"else rm -f -- "$target"; fi; "#,
    r#"sync -- "$(dirname -- "$target")""#,
);

const DISCARD: &str = r#"rm -f -- "$1""#;

const RESTAGE: &str = concat!(
    r#"set -eu; umask 077; staged=$1; state=$2; n=$3; "#,
    r#"[ -f "$state/env.$n" ] || { echo "hostenv: there is no backup $n in $state" >&2; exit 3; }; "#,
    r#"rm -f -- "$staged"; cp -p -- "$state/env.$n" "$staged"; sync -- "$staged""#,
);

// Every backup as `backup N BYTES` followed by its bytes.
const READ_BACKUPS: &str = concat!(
    r#"set -eu; state=$1; keep=$2; n=1; "#,
    r#"while [ "$n" -le "$keep" ]; do f="$state/env.$n"; "#,
    r#"if [ -f "$f" ]; then echo "backup $n $(wc -c < "$f")"; cat -- "$f"; fi; "#,
    r#"n=$((n + 1)); done"#,
);

// Removes the backups numbered on stdin, then renumbers the rest from 1 so
// that "the Nth newest" keeps its meaning.
const PURGE: &str = concat!(
    r#"set -eu; state=$1; keep=$2; read -r gone; "#,
    r#"for n in $gone; do "#,
    r#"{ [ "$n" -ge 1 ] && [ "$n" -le "$keep" ]; } 2>/dev/null || { echo "hostenv: bad backup number" >&2; exit 3; }; "#,
    r#"rm -f -- "$state/env.$n"; done; "#,
    r#"i=1; j=1; while [ "$i" -le "$keep" ]; do "#,
    r#"if [ -e "$state/env.$i" ]; then "#,
    r#"[ "$i" -eq "$j" ] || mv -f -- "$state/env.$i" "$state/env.$j"; j=$((j + 1)); fi; "#,
    r#"i=$((i + 1)); done; sync -- "$state""#,
);

/// One run of a constant script with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub step: &'static str,
    pub script: &'static str,
    pub args: Vec<String>,
}

impl Invocation {
    pub fn new(step: &'static str, script: &'static str, args: &[&str]) -> Invocation {
        Invocation {
            step,
            script,
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }

    fn argv(&self) -> Vec<String> {
        let mut argv = vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            self.script.to_string(),
            format!("hostenv-{}", self.step),
        ];
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

    /// The command as a sudoers rule names it, arguments escaped for sudoers.
    /// `*` is the one character left as a wildcard: it appears only in a
    /// template's any-instance unit name (`voxcore@*.service`).
    pub fn sudoers_command(&self) -> String {
        self.argv()
            .iter()
            .map(|a| sudoers_escape(a))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Single-quotes an argument for the remote shell.
pub fn quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}

/// sudoers treats `\ , : =` as syntax and `* ? [ ]` as wildcards; a unit's
/// `@*.` (any instance) is kept as a wildcard on purpose.
fn sudoers_escape(arg: &str) -> String {
    let mut out = String::new();
    for c in arg.chars() {
        if matches!(c, '\\' | ',' | ':' | '=' | '?' | '[' | ']' | '!' | '#') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

pub fn read(target: &TargetSettings) -> Invocation {
    Invocation::new("read", READ, &[&target.path, &target.owner, &target.group])
}

pub fn staged_path(target: &TargetSettings) -> String {
    format!("{}.hostenv-new", target.path)
}

pub fn stage(target: &TargetSettings) -> Invocation {
    let mode = format!("{:o}", target.mode);
    Invocation::new(
        "stage",
        STAGE,
        &[&staged_path(target), &target.owner, &target.group, &mode],
    )
}

pub fn switch(target: &TargetSettings) -> Invocation {
    let keep = target.backups.max(1).to_string();
    Invocation::new(
        "switch",
        SWITCH,
        &[&staged_path(target), &target.path, &target.state_dir, &keep],
    )
}

/// Puts backup `n` back (1 = the newest), or with 0 removes the target.
pub fn restore(target: &TargetSettings, n: u32) -> Invocation {
    Invocation::new(
        "restore",
        RESTORE,
        &[&target.path, &target.state_dir, &n.to_string()],
    )
}

pub fn read_backups(target: &TargetSettings) -> Invocation {
    let keep = target.backups.max(1).to_string();
    Invocation::new("read-backups", READ_BACKUPS, &[&target.state_dir, &keep])
}

pub fn purge(target: &TargetSettings) -> Invocation {
    let keep = target.backups.max(1).to_string();
    Invocation::new("purge", PURGE, &[&target.state_dir, &keep])
}

/// A rollback's stage: backup `n` (1 = the newest) copied beside the target.
pub fn restage(target: &TargetSettings, n: u32) -> Invocation {
    Invocation::new(
        "restage",
        RESTAGE,
        &[&staged_path(target), &target.state_dir, &n.to_string()],
    )
}

pub fn discard(target: &TargetSettings) -> Invocation {
    Invocation::new("discard", DISCARD, &[&staged_path(target)])
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
}

/// The remote side of one host, over its one connection.
pub struct Remote<'a> {
    pub connection: &'a Connection,
    pub host: &'a str,
    pub sudo: bool,
}

impl Remote<'_> {
    /// Runs a privileged invocation; a non-zero exit is that step's error.
    pub fn run(&self, invocation: &Invocation, stdin: &[u8]) -> Result<Output, HostError> {
        let output = self
            .connection
            .exec(self.host, &invocation.shell_line(self.sudo), stdin)?;
        self.check(invocation.step, output)
    }

    /// Runs a read-only query that needs no privilege, never through sudo.
    pub fn query(&self, invocation: &Invocation) -> Result<Output, HostError> {
        let output = self
            .connection
            .exec(self.host, &invocation.shell_line(false), &[])?;
        self.check(invocation.step, output)
    }

    pub fn check(&self, step: &str, output: Output) -> Result<Output, HostError> {
        if output.status == 0 {
            return Ok(output);
        }
        if self.sudo && is_sudo_refusal(&output.stderr) {
            return Err(HostError::new(
                ErrorKind::SudoRefused,
                format!(
                    "`{}`: sudo refused the `{step}` step (`sudo -n /bin/sh -c … hostenv-{step} …`); \
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

    pub fn read_current(&self, target: &TargetSettings) -> Result<Current, HostError> {
        let output = self.run(&read(target), &[])?;
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
    pub fn stage(&self, target: &TargetSettings, content: &SecretString) -> Result<(), HostError> {
        self.run(&stage(target), content.expose_secret().as_bytes())
            .map(|_| ())
    }

    /// Stages backup `n` for a rollback; a missing backup is `noBackup`.
    pub fn stage_backup(&self, target: &TargetSettings, n: u32) -> Result<(), HostError> {
        self.run(&restage(target, n), &[])
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
    pub fn switch(&self, target: &TargetSettings) -> Result<bool, HostError> {
        let output = self.run(&switch(target), &[])?;
        Ok(String::from_utf8_lossy(&output.stdout).starts_with("previous"))
    }

    /// Puts backup `n` back (1 = the newest), or with 0 removes the target.
    pub fn restore(&self, target: &TargetSettings, n: u32) -> Result<(), HostError> {
        self.run(&restore(target, n), &[]).map(|_| ())
    }

    /// Every backup the host keeps, numbered from 1 (the newest); contents are secrets.
    pub fn read_backups(
        &self,
        target: &TargetSettings,
    ) -> Result<Vec<(u32, SecretString)>, HostError> {
        let output = self.run(&read_backups(target), &[])?;
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
    pub fn purge(&self, target: &TargetSettings, numbers: &[u32]) -> Result<(), HostError> {
        let list: Vec<String> = numbers.iter().map(u32::to_string).collect();
        self.run(&purge(target), format!("{}\n", list.join(" ")).as_bytes())
            .map(|_| ())
    }

    /// Removes a staged file that will not be switched in.
    pub fn discard(&self, target: &TargetSettings) {
        let _ = self.run(&discard(target), &[]);
    }
}

/// `present UID GID FILE_UID FILE_GID MODE MTIME LEFT` or `absent UID GID LEFT`,
/// then the bytes; LEFT is `staged` when a staged file was left behind.
fn parse_current(stdout: &[u8]) -> Option<Current> {
    let newline = stdout.iter().position(|b| *b == b'\n')?;
    let header = std::str::from_utf8(&stdout[..newline]).ok()?;
    let fields: Vec<&str> = header.split(' ').collect();
    let number = |i: usize| fields.get(i).and_then(|f| f.parse::<i64>().ok());
    let (want_uid, want_gid) = (number(1)? as u32, number(2)? as u32);
    let left = |i: usize| fields.get(i).map(|f| *f == "staged");
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
        }),
        _ => None,
    }
}

/// `backup N BYTES` headers, each followed by exactly BYTES bytes.
fn parse_backups(mut stdout: &[u8]) -> Option<Vec<(u32, SecretString)>> {
    let mut backups = Vec::new();
    while !stdout.is_empty() {
        let newline = stdout.iter().position(|b| *b == b'\n')?;
        let header = std::str::from_utf8(&stdout[..newline]).ok()?;
        let mut fields = header.split_whitespace();
        let (Some("backup"), Some(n), Some(bytes), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return None;
        };
        let (n, bytes) = (n.parse::<u32>().ok()?, bytes.parse::<usize>().ok()?);
        let body = stdout.get(newline + 1..newline + 1 + bytes)?;
        backups.push((
            n,
            SecretString::from(String::from_utf8(body.to_vec()).ok()?),
        ));
        stdout = &stdout[newline + 1 + bytes..];
    }
    Some(backups)
}

/// `SECONDS.FRACTION` (as `stat -c %.6Y` prints it) in microseconds.
fn micros(text: &str) -> Option<i64> {
    let (seconds, fraction) = text.split_once('.').unwrap_or((text, ""));
    let fraction = format!("{fraction:0<6}");
    Some(seconds.parse::<i64>().ok()? * 1_000_000 + fraction.get(..6)?.parse::<i64>().ok()?)
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
    fn scripts_are_one_line_without_sudoers_wildcards() {
        for script in [
            READ,
            STAGE,
            SWITCH,
            RESTORE,
            DISCARD,
            RESTAGE,
            READ_BACKUPS,
            PURGE,
        ] {
            assert!(
                !script.contains(['\n', '\\', '*', '?', '!', '#']),
                "{script}"
            );
        }
    }

    #[test]
    fn reads_the_header_and_keeps_the_bytes() {
        let current = parse_current(
            b"present 61001 61001 61001 61001 600 1700000000.250000 clean\nA=\"1\"\n",
        )
        .unwrap();
        assert_eq!(current.content.unwrap().expose_secret(), "A=\"1\"\n");
        assert_eq!(
            (current.mode, current.mtime, current.want_uid),
            (0o600, 1_700_000_000_250_000, 61001)
        );
        assert!(!current.leftover_staged);
        assert_eq!(micros("12.5"), Some(12_500_000));
        assert_eq!(micros("12"), Some(12_000_000));
        let absent = parse_current(b"absent 1 2 staged\n").unwrap();
        assert!(absent.content.is_none() && absent.leftover_staged);
        assert!(parse_current(b"garbage\n").is_none());
    }

    #[test]
    fn backups_are_split_by_their_byte_counts() {
        let backups =
            parse_backups(b"backup 1 6\nA=\"1\"\nbackup 3 0\nbackup 4 8\nB=\"x\ny\"\n").unwrap();
        let seen: Vec<(u32, &str)> = backups
            .iter()
            .map(|(n, c)| (*n, c.expose_secret()))
            .collect();
        assert_eq!(seen, [(1, "A=\"1\"\n"), (3, ""), (4, "B=\"x\ny\"\n")]);
        assert!(parse_backups(b"backup 1 99\nshort").is_none());
        assert_eq!(parse_backups(b"").unwrap().len(), 0);
    }
}
