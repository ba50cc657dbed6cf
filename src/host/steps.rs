//! The file steps: read what is there, stage the new file beside the target,
//! switch it in keeping the previous one as backup 1, put a backup back,
//! read and purge backups, append the audit line. Each takes its paths,
//! owner and mode from the service's configuration.

use std::io::{Read, Write};

use super::config::HostConfig;
use super::files::{self, Dir, LastDir, Ownership};
use super::{Failure, MAX_FILE_BYTES};

/// The service's configuration with its names resolved on this host.
pub struct Target<'a> {
    pub config: &'a HostConfig,
    pub uid: u32,
    pub gid: u32,
    /// The target's directory and file name.
    dir_path: String,
    name: String,
}

impl<'a> Target<'a> {
    pub fn new(config: &'a HostConfig) -> Result<Target<'a>, Failure> {
        let uid = lookup("passwd", &config.owner, "user")?;
        let gid = lookup("group", &config.group, "group")?;
        let (dir, name) = config.path.rsplit_once('/').expect("an absolute path");
        Ok(Target {
            config,
            uid,
            gid,
            dir_path: if dir.is_empty() {
                "/".into()
            } else {
                dir.into()
            },
            name: name.into(),
        })
    }

    fn staged(&self) -> String {
        format!("{}.hostenv-new", self.name)
    }

    fn restoring(&self) -> String {
        format!("{}.hostenv-restore", self.name)
    }

    /// The target's directory, if it exists: root's or the owner's, and writable by no one else.
    fn dir(&self) -> Result<Option<Dir>, Failure> {
        files::open_dir(&self.dir_path, LastDir::ServiceOrRoot(self.uid))
    }

    fn existing_dir(&self) -> Result<Dir, Failure> {
        self.dir()?.ok_or_else(|| {
            Failure::refused(format!("the directory {} does not exist", self.dir_path))
        })
    }

    fn state(&self) -> Result<Dir, Failure> {
        let dir = files::open_dir(&self.config.state_dir, LastDir::OwnState)?;
        dir.ok_or_else(|| Failure::io(format!("cannot create `{}`", self.config.state_dir)))
    }

    fn ownership(&self) -> Ownership {
        Ownership {
            uid: self.uid,
            gid: self.gid,
            mode: self.config.mode,
        }
    }
}

/// A user's or group's numeric id, as the host's name service knows it.
fn lookup(database: &str, name: &str, what: &str) -> Result<u32, Failure> {
    let output = std::process::Command::new("getent")
        .args([database, "--", name])
        .env_clear()
        .env("PATH", super::CHILD_PATH)
        .output()
        .map_err(|e| Failure::io(format!("cannot run getent: {e}")))?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .next()
        .and_then(|line| line.split(':').nth(2))
        .and_then(|id| id.parse().ok())
        .filter(|_| output.status.success())
        .ok_or_else(|| Failure::refused(format!("there is no {what} {name} on this host")))
}

/// `present UID GID FILE_UID FILE_GID MODE MTIME LEFT SYSTEMD` and the bytes,
/// or `absent UID GID LEFT SYSTEMD`; LEFT says whether a staged file was left
/// behind, SYSTEMD is the host's systemd version (0 when it cannot be told),
/// which decides how the host reads the file.
pub fn read(target: &Target, out: &mut dyn Write) -> Result<(), Failure> {
    let systemd = systemd_version();
    let Some(dir) = target.dir()? else {
        return emit(
            out,
            format!("absent {} {} clean {systemd}\n", target.uid, target.gid).as_bytes(),
        );
    };
    let left = if files::exists(&dir, &target.staged()) {
        "staged"
    } else {
        "clean"
    };
    match files::read_file(&dir, &target.name, MAX_FILE_BYTES)? {
        None => emit(
            out,
            format!("absent {} {} {left} {systemd}\n", target.uid, target.gid).as_bytes(),
        ),
        Some(contents) => {
            let stat = &contents.stat;
            let header = format!(
                "present {} {} {} {} {:o} {}.{:06} {left} {systemd}\n",
                target.uid,
                target.gid,
                stat.st_uid,
                stat.st_gid,
                stat.st_mode & 0o7777,
                stat.st_mtime,
                stat.st_mtime_nsec / 1000
            );
            emit(out, header.as_bytes())?;
            emit(out, &contents.bytes)
        }
    }
}

/// The first number of `systemctl --version` (`systemd 252 (252.30-1)`), or 0.
fn systemd_version() -> u32 {
    std::process::Command::new("systemctl")
        .arg("--version")
        .env_clear()
        .env("PATH", super::CHILD_PATH)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .and_then(|output| {
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// The new file from stdin, beside the target, owner and mode set, fsynced.
pub fn stage(target: &Target, input: &mut dyn Read) -> Result<(), Failure> {
    let mut bytes = Vec::new();
    input
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::io(format!("cannot read the new file: {e}")))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(Failure::refused(format!(
            "the new file is larger than {MAX_FILE_BYTES} bytes"
        )));
    }
    let dir = target.existing_dir()?;
    files::write_new(&dir, &target.staged(), &bytes, &target.ownership()).map(|_| ())
}

/// Backup `n` (1 = the newest) copied beside the target, for a rollback.
pub fn restage(target: &Target, n: u32) -> Result<(), Failure> {
    let bytes = backup(target, n)?;
    let dir = target.existing_dir()?;
    files::write_new(&dir, &target.staged(), &bytes, &target.ownership()).map(|_| ())
}

fn backup(target: &Target, n: u32) -> Result<Vec<u8>, Failure> {
    let state = target.state()?;
    match files::read_file(&state, &format!("env.{n}"), MAX_FILE_BYTES)? {
        Some(contents) => Ok(contents.bytes),
        None => Err(Failure::refused(format!(
            "there is no backup {n} in {}",
            target.config.state_dir
        ))),
    }
}

/// Keeps the current file as backup 1 (older ones move up, the oldest
/// beyond `backups` goes) and renames the staged file over the target.
/// Prints `previous` or `none`.
pub fn switch(target: &Target, out: &mut dyn Write) -> Result<(), Failure> {
    let dir = target.existing_dir()?;
    let staged = target.staged();
    let Some(new) = files::read_file(&dir, &staged, MAX_FILE_BYTES)? else {
        return Err(Failure::refused(format!(
            "there is no staged file `{}`",
            dir.join(&staged)
        )));
    };
    let mode = new.stat.st_mode & 0o7777;
    if new.stat.st_uid != target.uid || new.stat.st_gid != target.gid || mode != target.config.mode
    {
        return Err(Failure::refused(format!(
            "`{}` is not the file hostenv staged (owner, group or mode changed)",
            dir.join(&staged)
        )));
    }
    let state = target.state()?;
    let previous = files::read_file(&dir, &target.name, MAX_FILE_BYTES)?;
    if let Some(previous) = &previous {
        // A backup keeps the owner and mode the file had (inside root's 0700 directory).
        let own = Ownership {
            uid: previous.stat.st_uid,
            gid: previous.stat.st_gid,
            mode: previous.stat.st_mode & 0o777,
        };
        files::write_new(&state, "env.new", &previous.bytes, &own)?;
        for n in (2..=target.config.backups).rev() {
            let older = format!("env.{}", n - 1);
            if files::exists(&state, &older) {
                files::rename(&state, &older, &format!("env.{n}"))?;
            }
        }
        files::rename(&state, "env.new", "env.1")?;
    }
    files::rename(&dir, &staged, &target.name)?;
    // What now has the target's name must be the file that was checked.
    let landed = files::status(&dir, &target.name);
    if landed.is_none_or(|s| s.st_ino != new.stat.st_ino || s.st_dev != new.stat.st_dev) {
        return Err(Failure::refused(format!(
            "`{}` was replaced while it was switched in",
            target.config.path
        )));
    }
    emit(
        out,
        if previous.is_some() {
            b"previous\n"
        } else {
            b"none\n"
        },
    )
}

/// Puts backup `n` back (1 = the newest) the way a switch installs a file;
/// with 0 removes the target (there was no file before the run).
pub fn restore(target: &Target, n: u32) -> Result<(), Failure> {
    let dir = target.existing_dir()?;
    if n == 0 {
        files::remove(&dir, &target.name)?;
        return files::sync(&dir);
    }
    let bytes = backup(target, n)?;
    let restoring = target.restoring();
    files::write_new(&dir, &restoring, &bytes, &target.ownership())?;
    files::rename(&dir, &restoring, &target.name)
}

/// Removes a staged file that will not be switched in.
pub fn discard(target: &Target) -> Result<(), Failure> {
    match target.dir()? {
        Some(dir) => files::remove(&dir, &target.staged()),
        None => Ok(()),
    }
}

/// Every backup as `backup N BYTES` followed by its bytes.
pub fn read_backups(target: &Target, out: &mut dyn Write) -> Result<(), Failure> {
    let state = target.state()?;
    for n in 1..=target.config.backups {
        if let Some(contents) = files::read_file(&state, &format!("env.{n}"), MAX_FILE_BYTES)? {
            emit(
                out,
                format!("backup {n} {}\n", contents.bytes.len()).as_bytes(),
            )?;
            emit(out, &contents.bytes)?;
        }
    }
    Ok(())
}

/// Removes the backups numbered on stdin's first line, then renumbers the
/// rest from 1 so that "the Nth newest" keeps its meaning.
pub fn purge(target: &Target, input: &mut dyn Read) -> Result<(), Failure> {
    let mut line = String::new();
    input
        .take(4096)
        .read_to_string(&mut line)
        .map_err(|_| Failure::refused("the backup numbers are not text"))?;
    let keep = target.config.backups;
    let mut gone = Vec::new();
    for word in line.split_whitespace() {
        match word.parse::<u32>() {
            Ok(n) if (1..=keep).contains(&n) => gone.push(n),
            _ => return Err(Failure::refused("bad backup number")),
        }
    }
    let state = target.state()?;
    for n in gone {
        files::remove(&state, &format!("env.{n}"))?;
    }
    let mut next = 1;
    for n in 1..=keep {
        let name = format!("env.{n}");
        if files::exists(&state, &name) {
            if n != next {
                files::rename(&state, &name, &format!("env.{next}"))?;
            }
            next += 1;
        }
    }
    files::sync(&state)
}

/// Appends one line to the audit log: a single JSON object of printable text.
pub fn audit(target: &Target, input: &mut dyn Read) -> Result<(), Failure> {
    const MAX_LINE: u64 = 16 * 1024;
    let mut line = String::new();
    input
        .take(MAX_LINE + 1)
        .read_to_string(&mut line)
        .map_err(|_| Failure::refused("the audit line is not UTF-8"))?;
    let body = line.strip_suffix('\n').unwrap_or(&line);
    let plain = body.starts_with('{')
        && body.ends_with('}')
        && (line.len() as u64) <= MAX_LINE
        && !body.chars().any(char::is_control);
    if !plain {
        return Err(Failure::refused(
            "the audit line must be one line of JSON without control characters",
        ));
    }
    let state = target.state()?;
    let mut log = files::open_own_file(&state, "audit.log", true)?;
    log.write_all(format!("{body}\n").as_bytes())
        .map_err(|e| Failure::io(format!("cannot append to the audit log: {e}")))
}

fn emit(out: &mut dyn Write, bytes: &[u8]) -> Result<(), Failure> {
    out.write_all(bytes)
        .map_err(|e| Failure::io(format!("cannot write the answer: {e}")))
}
