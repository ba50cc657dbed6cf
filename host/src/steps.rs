//! The file steps: read what is there, stage the new file beside the target,
//! switch it in keeping the previous one as backup 1, put a backup back,
//! read and purge backups, append the audit line. Each takes its paths,
//! owner and mode from the service's configuration.

use std::io::{Read, Write};

use sha2::{Digest, Sha256};

use super::config::{is_plain_name, HostConfig};
use super::files::{self, Dir, LastDir, Ownership};
use super::limits::Limits;
use super::{Failure, MAX_AUDIT_LINE, MAX_FILE_BYTES};

/// In the state directory: the environment whose run last put the target in place.
const WRITTEN_BY: &str = "written-by";

/// The file a stage wrote, as the channel remembers it until the switch:
/// `switch` installs this file and no other.
pub struct Staged {
    dev: u64,
    ino: u64,
    len: u64,
    digest: [u8; 32],
}

impl Staged {
    fn of(stat: &rustix::fs::Stat, bytes: &[u8]) -> Staged {
        Staged {
            dev: stat.st_dev,
            ino: stat.st_ino,
            len: bytes.len() as u64,
            digest: Sha256::digest(bytes).into(),
        }
    }

    /// Whether `stat` and `bytes` are this file, as it was written.
    fn is(&self, stat: &rustix::fs::Stat, bytes: &[u8]) -> bool {
        stat.st_dev == self.dev
            && stat.st_ino == self.ino
            && bytes.len() as u64 == self.len
            && <[u8; 32]>::from(Sha256::digest(bytes)) == self.digest
    }
}

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

/// `present UID GID FILE_UID FILE_GID MODE MTIME LEFT SYSTEMD BY` and the
/// bytes, or `absent UID GID LEFT SYSTEMD BY`; LEFT says whether a staged file
/// was left behind, SYSTEMD is the host's systemd version (0 when it cannot
/// be told), which decides how the host reads the file, BY the environment
/// whose run last put the target in place (`-` when not known).
pub fn read(target: &Target, out: &mut dyn Write) -> Result<(), Failure> {
    let systemd = format!("{} {}", systemd_version(), written_by(target)?);
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

/// The environment recorded with the target, or `-`.
fn written_by(target: &Target) -> Result<String, Failure> {
    let Some(state) = files::open_dir(&target.config.state_dir, LastDir::RootOwned)? else {
        return Ok("-".into());
    };
    let Some(contents) = files::read_file(&state, WRITTEN_BY, 128)? else {
        return Ok("-".into());
    };
    let text = String::from_utf8_lossy(&contents.bytes);
    let name = text.strip_suffix('\n').unwrap_or(&text);
    Ok(if is_plain_name(name) { name } else { "-" }.to_string())
}

/// Records which environment's run put the target in place (None: not known).
fn record_writer(target: &Target, environment: Option<&str>) -> Result<(), Failure> {
    let state = target.state()?;
    let Some(environment) = environment else {
        return files::remove(&state, WRITTEN_BY);
    };
    let root = Ownership {
        uid: 0,
        gid: 0,
        mode: 0o600,
    };
    let temporary = format!("{WRITTEN_BY}.new");
    files::write_new(
        &state,
        &temporary,
        format!("{environment}\n").as_bytes(),
        &root,
    )?;
    files::rename(&state, &temporary, WRITTEN_BY)
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
pub fn stage(target: &Target, input: &mut dyn Read) -> Result<Staged, Failure> {
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
    write_staged(target, &bytes)
}

/// Backup `n` (1 = the newest) copied beside the target, for a rollback.
pub fn restage(target: &Target, n: u32) -> Result<Staged, Failure> {
    let bytes = backup(target, n)?;
    write_staged(target, &bytes)
}

fn write_staged(target: &Target, bytes: &[u8]) -> Result<Staged, Failure> {
    let dir = target.existing_dir()?;
    let stat = files::write_new(&dir, &target.staged(), bytes, &target.ownership())?;
    Ok(Staged::of(&stat, bytes))
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
/// beyond `backups` goes) and renames the staged file over the target; the
/// staged file must be `staged`, the very file this channel's stage wrote
/// (device, inode, length and digest), and what lands at the target's name
/// is checked to be it. Records `environment` as the target's writer.
/// Prints `previous` or `none`.
pub fn switch(
    target: &Target,
    staged: &Staged,
    environment: Option<&str>,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let dir = target.existing_dir()?;
    let staged_name = target.staged();
    let Some(new) = files::read_file(&dir, &staged_name, MAX_FILE_BYTES)? else {
        return Err(Failure::refused(format!(
            "there is no staged file `{}`",
            dir.join(&staged_name)
        )));
    };
    let mode = new.stat.st_mode & 0o7777;
    let owned = new.stat.st_uid == target.uid && new.stat.st_gid == target.gid;
    if !staged.is(&new.stat, &new.bytes) || !owned || mode != target.config.mode {
        return Err(Failure::refused(format!(
            "`{}` is not the file this run staged (another file, or its bytes, owner or mode changed)",
            dir.join(&staged_name)
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
    files::rename(&dir, &staged_name, &target.name)?;
    // What now has the target's name must be the file that was checked.
    let landed = files::read_file(&dir, &target.name, MAX_FILE_BYTES);
    if !matches!(&landed, Ok(Some(landed)) if staged.is(&landed.stat, &landed.bytes)) {
        return Err(Failure::changed(format!(
            "`{}` was replaced while it was switched in: it is not the file this run staged",
            target.config.path
        )));
    }
    record_writer(target, environment)?;
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
/// with 0 removes the target (there was no file before the run). Records
/// `environment` as the target's writer.
pub fn restore(target: &Target, n: u32, environment: Option<&str>) -> Result<(), Failure> {
    let dir = target.existing_dir()?;
    if n == 0 {
        files::remove(&dir, &target.name)?;
        files::sync(&dir)?;
        return record_writer(target, None);
    }
    let bytes = backup(target, n)?;
    let restoring = target.restoring();
    files::write_new(&dir, &restoring, &bytes, &target.ownership())?;
    files::rename(&dir, &restoring, &target.name)?;
    record_writer(target, environment)
}

/// Removes a staged file that will not be switched in.
pub fn discard(target: &Target) -> Result<(), Failure> {
    match target.dir()? {
        Some(dir) => files::remove(&dir, &target.staged()),
        None => Ok(()),
    }
}

/// Every backup as `backup N BYTES SECONDS.MICROS` (its size and its
/// modification time: when it was written at the target, which renaming it
/// into a backup keeps) followed by its bytes.
pub fn read_backups(target: &Target, out: &mut dyn Write) -> Result<(), Failure> {
    let state = target.state()?;
    for n in 1..=target.config.backups {
        if let Some(contents) = files::read_file(&state, &format!("env.{n}"), MAX_FILE_BYTES)? {
            let stat = &contents.stat;
            let header = format!(
                "backup {n} {} {}.{:06}\n",
                contents.bytes.len(),
                stat.st_mtime,
                stat.st_mtime_nsec / 1000
            );
            emit(out, header.as_bytes())?;
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

/// Appends one line to the audit log: a single JSON object, every character
/// that is not printable ASCII escaped (`\\uXXXX`, which JSON reads back as
/// the same character), so that no line can forge another or move a
/// terminal's cursor. The log is rotated at root's `audit-log-bytes`,
/// keeping `audit-log-keep` old logs (`audit.log.1` the newest).
pub fn audit(target: &Target, input: &mut dyn Read, limits: &Limits) -> Result<(), Failure> {
    let mut line = String::new();
    input
        .take(MAX_AUDIT_LINE + 1)
        .read_to_string(&mut line)
        .map_err(|_| Failure::refused("the audit line is not UTF-8"))?;
    let body = line.strip_suffix('\n').unwrap_or(&line);
    let plain = body.starts_with('{')
        && body.ends_with('}')
        && (line.len() as u64) <= MAX_AUDIT_LINE
        && !body.contains('\n');
    if !plain {
        return Err(Failure::refused(
            "the audit line must be one line of JSON, at most 16 KiB",
        ));
    }
    let entry = format!("{}\n", printable_ascii(body));
    let state = target.state()?;
    // Holders under a shared lock append at the same time: one at a time here.
    let guard = files::open_own_file(&state, "audit.lock", false)?;
    files::lock_exclusive(&guard, std::time::Duration::from_secs(10))?;
    let mut log = files::open_own_file(&state, "audit.log", true)?;
    let size = log
        .metadata()
        .map_err(|e| Failure::io(format!("cannot read the audit log's size: {e}")))?
        .len();
    if size > 0 && size + entry.len() as u64 > limits.audit_log_bytes {
        for n in (1..limits.audit_log_keep).rev() {
            let older = format!("audit.log.{n}");
            if files::exists(&state, &older) {
                files::rename(&state, &older, &format!("audit.log.{}", n + 1))?;
            }
        }
        files::rename(&state, "audit.log", "audit.log.1")?;
        log = files::open_own_file(&state, "audit.log", true)?;
    }
    log.write_all(entry.as_bytes())
        .map_err(|e| Failure::io(format!("cannot append to the audit log: {e}")))
}

/// `text` with every character but printable ASCII as `\\uXXXX` (UTF-16
/// units), which a JSON reader takes back as the same character: one line
/// that no character can break, hide or use to move a terminal's cursor.
pub fn printable_ascii(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if (' '..='~').contains(&c) {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

fn emit(out: &mut dyn Write, bytes: &[u8]) -> Result<(), Failure> {
    out.write_all(bytes)
        .map_err(|e| Failure::io(format!("cannot write the answer: {e}")))
}

#[cfg(test)]
mod tests {
    use super::printable_ascii;

    #[test]
    fn audit_lines_keep_printable_ascii_only() {
        assert_eq!(printable_ascii("{\"by\":\"ci\"}"), "{\"by\":\"ci\"}");
        assert_eq!(
            printable_ascii("{\"by\":\"a\u{2028}b\u{1b}[2J\u{202e}\u{1f600}\"}"),
            "{\"by\":\"a\\u2028b\\u001b[2J\\u202e\\ud83d\\ude00\"}"
        );
        // What JSON reads back is the line as sent.
        let sent = "{\"by\":\"caf\u{e9} \u{2029}\"}";
        let text = printable_ascii(sent);
        assert!(text.is_ascii());
        assert_eq!(text, "{\"by\":\"caf\\u00e9 \\u2029\"}");
    }
}
