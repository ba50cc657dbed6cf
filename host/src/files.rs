//! Paths the privileged steps touch, opened so that no other user can steer
//! root to another file. A directory is reached by walking from `/` one
//! component at a time without following symlinks; every directory on the way
//! must be root's and writable by no one else (a root-owned symlink in such a
//! directory is followed: no one else can change it). Inside the directory at
//! the end, names are opened with `O_NOFOLLOW` and files are created only with
//! `O_EXCL`, so a name someone swapped for a symlink, a FIFO or a hard link is
//! refused, never written through.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;

use rustix::fs::{self as fs, AtFlags, FileType, Mode, OFlags, Stat, CWD};
use rustix::io::Errno;

use super::Failure;

/// Who may own the directory at the end of a walk (those above are always root's).
#[derive(Clone, Copy)]
pub enum LastDir {
    /// Root only, created 0700 when missing: hostenv's own state and locks.
    OwnState,
    /// Root or the given uid (the service's own directory); never created.
    ServiceOrRoot(u32),
    /// Root only, neither created nor changed: where the configuration is read.
    RootOwned,
}

/// An open directory and the path it was reached by, for messages.
pub struct Dir {
    pub fd: OwnedFd,
    pub path: String,
}

impl Dir {
    pub fn join(&self, name: &str) -> String {
        if self.path == "/" {
            format!("/{name}")
        } else {
            format!("{}/{name}", self.path)
        }
    }
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);
const MAX_SYMLINK_HOPS: usize = 16;

/// Walks to `path`; `Ok(None)` when a component does not exist (and the last
/// one is not to be created).
pub fn open_dir(path: &str, last: LastDir) -> Result<Option<Dir>, Failure> {
    let root = fs::openat(CWD, "/", DIR_FLAGS, Mode::empty())
        .map_err(|e| Failure::io(format!("cannot open `/`: {e}")))?;
    let mut stack = vec![Dir {
        fd: root,
        path: "/".into(),
    }];
    check_dir(&stack[0], false, last)?;
    let mut pending: VecDeque<String> = components(path);
    let mut hops = 0;
    while let Some(name) = pending.pop_front() {
        match name.as_str() {
            "." => continue,
            ".." => {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            _ => {}
        }
        let is_last = pending.is_empty();
        let here = stack.last().expect("the root stays");
        let shown = here.join(&name);
        match fs::openat(&here.fd, name.as_str(), DIR_FLAGS, Mode::empty()) {
            Ok(fd) => {
                let dir = Dir { fd, path: shown };
                check_dir(&dir, is_last, last)?;
                stack.push(dir);
            }
            Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
                let link = fs::statat(&here.fd, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| Failure::io(format!("cannot inspect `{shown}`: {e}")))?;
                if FileType::from_raw_mode(link.st_mode) != FileType::Symlink {
                    return Err(Failure::refused(format!("`{shown}` is not a directory")));
                }
                if link.st_uid != 0 {
                    return Err(Failure::refused(format!(
                        "`{shown}` is a symbolic link owned by uid {}; hostenv follows only root's",
                        link.st_uid
                    )));
                }
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(Failure::refused(format!(
                        "`{path}` goes through too many symbolic links"
                    )));
                }
                let target = fs::readlinkat(&here.fd, name.as_str(), Vec::new())
                    .map_err(|e| Failure::io(format!("cannot read the link `{shown}`: {e}")))?;
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    stack.truncate(1);
                }
                let mut next = components(&target);
                next.extend(pending);
                pending = next;
            }
            Err(Errno::NOENT) => match last {
                LastDir::OwnState => {
                    make_dir(here, &name, 0o700)?;
                    pending.push_front(name);
                }
                LastDir::ServiceOrRoot(_) | LastDir::RootOwned => return Ok(None),
            },
            Err(e) => return Err(Failure::io(format!("cannot open `{shown}`: {e}"))),
        }
    }
    Ok(stack.pop())
}

fn components(path: &str) -> VecDeque<String> {
    path.split('/')
        .filter(|part| !part.is_empty())
        .map(str::to_string)
        .collect()
}

/// Every directory on the way is root's and writable by no one else; the last
/// may be the service's own (`RootOr`), and hostenv's own is made 0700.
fn check_dir(dir: &Dir, is_last: bool, last: LastDir) -> Result<(), Failure> {
    let stat = fs::fstat(&dir.fd).map_err(|e| Failure::io(format!("`{}`: {e}", dir.path)))?;
    let mode = stat.st_mode & 0o7777;
    let owner_ok = match (is_last, last) {
        (true, LastDir::ServiceOrRoot(uid)) => stat.st_uid == 0 || stat.st_uid == uid,
        _ => stat.st_uid == 0,
    };
    if !owner_ok {
        let who = match (is_last, last) {
            (true, LastDir::ServiceOrRoot(_)) => "root or the target's owner",
            _ => "root",
        };
        return Err(Failure::refused(format!(
            "`{}` belongs to uid {}; only {who} may own it",
            dir.path, stat.st_uid
        )));
    }
    if mode & 0o022 != 0 {
        return Err(Failure::refused(format!(
            "`{}` is writable by its group or others (mode {mode:04o}); hostenv acts only in directories no one else can write",
            dir.path
        )));
    }
    if is_last && matches!(last, LastDir::OwnState) && mode & 0o077 != 0 {
        fs::fchmod(&dir.fd, Mode::from_raw_mode(0o700))
            .map_err(|e| Failure::io(format!("cannot make `{}` 0700: {e}", dir.path)))?;
    }
    Ok(())
}

/// Makes a directory `name` in `dir` (one that exists already is fine).
pub fn make_dir(dir: &Dir, name: &str, mode: u32) -> Result<(), Failure> {
    match fs::mkdirat(&dir.fd, name, Mode::from_raw_mode(mode)) {
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        Err(e) => Err(Failure::io(format!(
            "cannot create `{}`: {e}",
            dir.join(name)
        ))),
    }
}

/// A regular file read whole: its status and bytes.
pub struct Contents {
    pub stat: Stat,
    pub bytes: Vec<u8>,
}

/// Reads `name` in `dir` if it is there: never through a symlink, only a
/// regular file with no other hard link, at most `max` bytes.
pub fn read_file(dir: &Dir, name: &str, max: u64) -> Result<Option<Contents>, Failure> {
    let Some((mut file, stat)) = open_regular(dir, name, OFlags::RDONLY)? else {
        return Ok(None);
    };
    let shown = dir.join(name);
    if stat.st_size as u64 > max {
        return Err(Failure::refused(format!(
            "`{shown}` is larger than {max} bytes, more than hostenv ever writes"
        )));
    }
    let mut bytes = Vec::new();
    (&mut file)
        .take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::io(format!("cannot read `{shown}`: {e}")))?;
    if bytes.len() as u64 > max {
        return Err(Failure::refused(format!("`{shown}` grew while read")));
    }
    Ok(Some(Contents { stat, bytes }))
}

/// Opens `name` without following a symlink or blocking on a FIFO; refuses
/// anything but a regular file with one link.
fn open_regular(dir: &Dir, name: &str, access: OFlags) -> Result<Option<(File, Stat)>, Failure> {
    let shown = dir.join(name);
    let flags = access | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = match fs::openat(&dir.fd, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(Errno::LOOP) => {
            return Err(Failure::refused(format!(
                "`{shown}` is a symbolic link; hostenv never follows one there"
            )))
        }
        Err(e) => return Err(Failure::io(format!("cannot open `{shown}`: {e}"))),
    };
    let stat = fs::fstat(&fd).map_err(|e| Failure::io(format!("`{shown}`: {e}")))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(Failure::refused(format!("`{shown}` is not a regular file")));
    }
    if stat.st_nlink != 1 {
        return Err(Failure::refused(format!(
            "`{shown}` has {} hard links; hostenv uses only a file with one",
            stat.st_nlink
        )));
    }
    Ok(Some((File::from(fd), stat)))
}

/// Whether anything (file, link, directory) has `name` in `dir`.
pub fn exists(dir: &Dir, name: &str) -> bool {
    fs::statat(&dir.fd, name, AtFlags::SYMLINK_NOFOLLOW).is_ok()
}

/// The status of `name` itself (a symlink is not followed), if it is there.
pub fn status(dir: &Dir, name: &str) -> Option<Stat> {
    fs::statat(&dir.fd, name, AtFlags::SYMLINK_NOFOLLOW).ok()
}

/// Removes the name (a symlink itself, never what it points to); a missing name is fine.
pub fn remove(dir: &Dir, name: &str) -> Result<(), Failure> {
    match fs::unlinkat(&dir.fd, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(Failure::io(format!(
            "cannot remove `{}`: {e}",
            dir.join(name)
        ))),
    }
}

/// Who a new file belongs to and its mode.
pub struct Ownership {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// Writes `bytes` to a new file `name` in `dir`: whatever had the name is
/// removed first, then the file is created exclusively (mode 0600, root's),
/// written, given its owner and mode through its descriptor, and fsynced.
/// Returns the new file's status. On failure the name is removed again.
pub fn write_new(
    dir: &Dir,
    name: &str,
    bytes: &[u8],
    ownership: &Ownership,
) -> Result<Stat, Failure> {
    remove(dir, name)?;
    let shown = dir.join(name);
    let flags = OFlags::WRONLY
        | OFlags::CREATE
        | OFlags::EXCL
        | OFlags::NOFOLLOW
        | OFlags::NOCTTY
        | OFlags::CLOEXEC;
    let fd = fs::openat(&dir.fd, name, flags, Mode::from_raw_mode(0o600))
        .map_err(|e| Failure::io(format!("cannot create `{shown}`: {e}")))?;
    let result = (|| {
        let mut file = File::from(fd);
        file.write_all(bytes)
            .map_err(|e| format!("cannot write `{shown}`: {e}"))?;
        fs::fchown(
            &file,
            Some(fs::Uid::from_raw(ownership.uid)),
            Some(fs::Gid::from_raw(ownership.gid)),
        )
        .map_err(|e| format!("cannot set the owner of `{shown}`: {e}"))?;
        fs::fchmod(&file, Mode::from_raw_mode(ownership.mode))
            .map_err(|e| format!("cannot set the mode of `{shown}`: {e}"))?;
        fs::fsync(&file).map_err(|e| format!("cannot sync `{shown}`: {e}"))?;
        fs::fstat(&file).map_err(|e| format!("`{shown}`: {e}"))
    })();
    result.map_err(|message| {
        let _ = remove(dir, name);
        Failure::io(message)
    })
}

/// Renames `from` over `to` in the same directory (atomic) and syncs the directory.
pub fn rename(dir: &Dir, from: &str, to: &str) -> Result<(), Failure> {
    fs::renameat(&dir.fd, from, &dir.fd, to).map_err(|e| {
        Failure::io(format!(
            "cannot rename `{}` to `{}`: {e}",
            dir.join(from),
            dir.join(to)
        ))
    })?;
    sync(dir)
}

pub fn sync(dir: &Dir) -> Result<(), Failure> {
    fs::fsync(&dir.fd).map_err(|e| Failure::io(format!("cannot sync `{}`: {e}", dir.path)))
}

/// Opens (creating, mode 0600) a file in a directory only root can write,
/// for appending or locking; refuses anything but a regular file with one link.
pub fn open_own_file(dir: &Dir, name: &str, append: bool) -> Result<File, Failure> {
    let shown = dir.join(name);
    let mut flags = OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if append {
        flags |= OFlags::APPEND;
    }
    let fd = fs::openat(&dir.fd, name, flags, Mode::from_raw_mode(0o600))
        .map_err(|e| Failure::io(format!("cannot open `{shown}`: {e}")))?;
    let stat = fs::fstat(&fd).map_err(|e| Failure::io(format!("`{shown}`: {e}")))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile
        || stat.st_nlink != 1
        || stat.st_uid != 0
    {
        return Err(Failure::refused(format!(
            "`{shown}` is not a regular root-owned file with one link"
        )));
    }
    Ok(File::from(fd))
}

/// Takes an exclusive flock on `file`, waiting at most `wait` for another
/// holder (who keeps it only for a write) to let go.
pub fn lock_exclusive(file: &File, wait: std::time::Duration) -> Result<(), Failure> {
    let until = std::time::Instant::now() + wait;
    loop {
        match fs::flock(file, fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(()),
            Err(Errno::WOULDBLOCK) if std::time::Instant::now() < until => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => return Err(Failure::io(format!("cannot lock: {e}"))),
        }
    }
}
