//! Remote file operations built on the SSH transport: read what is there,
//! stage the new file, switch it in keeping the previous one, put it back.
//!
//! Each operation is a constant POSIX sh script run as
//! `[sudo -n] /bin/sh -c SCRIPT hostenv-STEP ARGS...`: the script text never
//! varies, arguments are names and paths already held to plain character sets
//! (settings.rs) and quoted anyway, and secret bytes travel only on stdin
//! (staging) or stdout (reading back).

use crate::error::{ErrorKind, HostError};
use crate::secret::{ExposeSecret, SecretString};
use crate::settings::TargetSettings;
use crate::ssh::{Connection, Output};

const READ: &str = r#"set -eu
path=$1 owner=$2 group=$3
uid=$(id -u "$owner" 2>/dev/null) || { echo "hostenv: there is no user $owner on this host" >&2; exit 3; }
gid=$(getent group "$group" | cut -d: -f3)
[ -n "$gid" ] || { echo "hostenv: there is no group $group on this host" >&2; exit 3; }
if [ -e "$path" ]; then
  [ -f "$path" ] || { echo "hostenv: $path is not a regular file" >&2; exit 3; }
  printf 'present %s %s %s\n' "$uid" "$gid" "$(stat -c '%u %g %a %Y' -- "$path")"
  cat -- "$path"
else
  printf 'absent %s %s\n' "$uid" "$gid"
fi
"#;

const STAGE: &str = r#"set -eu
umask 077
staged=$1 owner=$2 group=$3 mode=$4
dir=$(dirname -- "$staged")
[ -d "$dir" ] || { echo "hostenv: the directory $dir does not exist" >&2; exit 3; }
set -C
cat > "$staged" || { rm -f -- "$staged"; echo "hostenv: cannot write $staged" >&2; exit 4; }
set +C
chown -- "$owner:$group" "$staged" && chmod -- "$mode" "$staged" && sync -- "$staged" \
  || { rm -f -- "$staged"; echo "hostenv: cannot set up $staged" >&2; exit 4; }
"#;

const SWITCH: &str = r#"set -eu
umask 077
staged=$1 target=$2 state=$3 keep=$4
mkdir -p -- "$state"
chmod 700 -- "$state"
if [ -e "$target" ]; then
  n=$keep
  while [ "$n" -gt 1 ]; do
    p=$((n - 1))
    if [ -e "$state/env.$p" ]; then mv -f -- "$state/env.$p" "$state/env.$n"; fi
    n=$p
  done
  cp -p -- "$target" "$state/env.1"
  sync -- "$state/env.1"
  echo previous
else
  echo none
fi
mv -f -- "$staged" "$target"
sync -- "$(dirname -- "$target")"
"#;

const RESTORE: &str = r#"set -eu
umask 077
target=$1 state=$2 previous=$3
if [ "$previous" = yes ]; then
  rm -f -- "$target.hostenv-restore"
  cp -p -- "$state/env.1" "$target.hostenv-restore"
  mv -f -- "$target.hostenv-restore" "$target"
else
  rm -f -- "$target"
fi
sync -- "$(dirname -- "$target")"
"#;

const DISCARD: &str = r#"rm -f -- "$1""#;

/// Single-quotes an argument for the remote shell.
pub fn quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}

/// What the host has at the target path now.
pub struct Current {
    /// The file's bytes (a secret), or None when there is no file.
    pub content: Option<SecretString>,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// The numeric ids the target should have.
    pub want_uid: u32,
    pub want_gid: u32,
}

/// The remote side of one host, over its one connection.
pub struct Remote<'a> {
    pub connection: &'a Connection,
    pub host: &'a str,
    pub sudo: bool,
}

impl Remote<'_> {
    /// The exact command line a step runs.
    pub fn command_line(&self, step: &str, script: &str, args: &[&str]) -> String {
        let mut line = String::new();
        if self.sudo {
            line.push_str("sudo -n ");
        }
        line.push_str("/bin/sh -c ");
        line.push_str(&quote(script));
        line.push_str(&format!(" hostenv-{step}"));
        for arg in args {
            line.push(' ');
            line.push_str(&quote(arg));
        }
        line
    }

    /// Runs a step's script; a non-zero exit is that step's error.
    pub fn run(
        &self,
        step: &str,
        script: &str,
        args: &[&str],
        stdin: &[u8],
    ) -> Result<Output, HostError> {
        let output =
            self.connection
                .exec(self.host, &self.command_line(step, script, args), stdin)?;
        self.check(step, output)
    }

    pub fn check(&self, step: &str, output: Output) -> Result<Output, HostError> {
        if output.status == 0 {
            return Ok(output);
        }
        if self.sudo && is_sudo_refusal(&output.stderr) {
            return Err(HostError::new(
                ErrorKind::SudoRefused,
                format!(
                    "`{}`: sudo refused the `{step}` step (`sudo -n /bin/sh -c …`): {}",
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
        let output = self.run(
            "read",
            READ,
            &[&target.path, &target.owner, &target.group],
            &[],
        )?;
        let invalid = || {
            HostError::new(
                ErrorKind::CurrentFileInvalid,
                format!(
                    "`{}`: unexpected answer reading `{}`",
                    self.host, target.path
                ),
            )
        };
        let newline = output
            .stdout
            .iter()
            .position(|b| *b == b'\n')
            .ok_or_else(invalid)?;
        let header = std::str::from_utf8(&output.stdout[..newline]).map_err(|_| invalid())?;
        let fields: Vec<&str> = header.split(' ').collect();
        let number = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<i64>().ok())
                .ok_or_else(invalid)
        };
        let (want_uid, want_gid) = (number(1)? as u32, number(2)? as u32);
        match fields.first() {
            Some(&"absent") => Ok(Current {
                content: None,
                uid: 0,
                gid: 0,
                mode: 0,
                mtime: 0,
                want_uid,
                want_gid,
            }),
            Some(&"present") => {
                let content =
                    String::from_utf8(output.stdout[newline + 1..].to_vec()).map_err(|_| {
                        HostError::new(
                            ErrorKind::CurrentFileInvalid,
                            format!("`{}`: `{}` is not UTF-8", self.host, target.path),
                        )
                    })?;
                Ok(Current {
                    content: Some(SecretString::from(content)),
                    uid: number(3)? as u32,
                    gid: number(4)? as u32,
                    mode: u32::from_str_radix(fields.get(5).ok_or_else(invalid)?, 8)
                        .map_err(|_| invalid())?,
                    mtime: number(6)?,
                    want_uid,
                    want_gid,
                })
            }
            _ => Err(invalid()),
        }
    }

    /// Writes the new file beside the target under a fresh name; returns that name.
    pub fn stage(
        &self,
        target: &TargetSettings,
        content: &SecretString,
    ) -> Result<String, HostError> {
        let staged = format!("{}.hostenv-{}", target.path, nonce());
        let mode = format!("{:o}", target.mode);
        self.run(
            "stage",
            STAGE,
            &[&staged, &target.owner, &target.group, &mode],
            content.expose_secret().as_bytes(),
        )?;
        Ok(staged)
    }

    /// Keeps the current file as backup 1 and renames the staged one over it.
    /// Returns whether there was a previous file.
    pub fn switch(&self, target: &TargetSettings, staged: &str) -> Result<bool, HostError> {
        let keep = target.backups.max(1).to_string();
        let output = self.run(
            "switch",
            SWITCH,
            &[staged, &target.path, &target.state_dir, &keep],
            &[],
        )?;
        Ok(String::from_utf8_lossy(&output.stdout).starts_with("previous"))
    }

    /// Puts the previous file back (backup 1), or removes the new one when there was none.
    pub fn restore(&self, target: &TargetSettings, had_previous: bool) -> Result<(), HostError> {
        let previous = if had_previous { "yes" } else { "no" };
        self.run(
            "restore",
            RESTORE,
            &[&target.path, &target.state_dir, previous],
            &[],
        )
        .map(|_| ())
    }

    /// Removes a staged file that will not be switched in.
    pub fn discard(&self, staged: &str) {
        let _ = self.run("discard", DISCARD, &[staged], &[]);
    }
}

fn is_sudo_refusal(stderr: &str) -> bool {
    stderr.starts_with("sudo:")
        && (stderr.contains("password is required")
            || stderr.contains("not allowed")
            || stderr.contains("may not run")
            || stderr.contains("not in the sudoers"))
}

fn first_line(text: &str) -> String {
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message")
        .trim();
    line.chars().take(300).collect()
}

/// A name no other run will pick: time and process id, hex.
fn nonce() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:x}{:x}", nanos as u64, std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(quote("plain"), "'plain'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
