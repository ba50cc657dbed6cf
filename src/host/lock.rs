//! The host lock's holder: an flock on `/run/hostenv/<service>.<env>.lock`
//! (a directory only root can write, made 0700 and checked every time), held
//! for as long as hostenv's SSH channel, our stdin, stays open and beats.
//!
//! stdin: one line naming the holder (action, build, user, time; no secrets),
//! then a byte every few seconds. stdout: `held-by TEXT` while another run has
//! the lock, `acquired` once it is ours. The holder is written and read only
//! through the locked descriptor, with control characters removed and its
//! length bounded, so the file can neither aim a write nor print a root file.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fs::{flock, FlockOperation};
use rustix::io::Errno;

use super::files::{self, LastDir};
use super::{Failure, LOCK_DIR};

/// The holder lets go after this long without hearing from hostenv.
pub const BEAT_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_HOLDER: usize = 600;

pub fn hold(service: &str, environment: &str, shared: bool) -> Result<(), Failure> {
    let dir = files::open_dir(LOCK_DIR, LastDir::OwnState)?
        .ok_or_else(|| Failure::io(format!("cannot create `{LOCK_DIR}`")))?;
    let file = files::open_own_file(&dir, &format!("{service}.{environment}.lock"), false)?;
    let mut stdin = std::io::stdin();
    let holder = sanitize(&read_line(&mut stdin));
    let mut stdout = std::io::stdout();
    let operation = if shared {
        FlockOperation::NonBlockingLockShared
    } else {
        FlockOperation::NonBlockingLockExclusive
    };
    let mut told = false;
    loop {
        match flock(&file, operation) {
            Ok(()) => break,
            Err(Errno::WOULDBLOCK) => {
                if !told {
                    told = true;
                    say(&mut stdout, &format!("held-by {}", current_holder(&file)))?;
                }
                // Waiting ends when hostenv gives up and closes the channel.
                if !caller_alive(&mut stdin, Duration::from_millis(200), false) {
                    return Ok(());
                }
            }
            Err(e) => return Err(Failure::io(format!("cannot lock: {e}"))),
        }
    }
    if !shared {
        let line = format!("{holder}\n");
        file.set_len(0)
            .and_then(|()| file.write_all_at(line.as_bytes(), 0))
            .map_err(|e| Failure::io(format!("cannot record the holder: {e}")))?;
    }
    say(&mut stdout, "acquired")?;
    let mut last = Instant::now();
    while last.elapsed() < BEAT_TIMEOUT {
        if caller_alive(&mut stdin, BEAT_TIMEOUT - last.elapsed(), true) {
            last = Instant::now();
        } else {
            break;
        }
    }
    Ok(())
}

/// Waits up to `wait` for stdin: false once it has closed (or, when
/// `need_beat`, stayed silent for all of `wait`).
fn caller_alive(stdin: &mut std::io::Stdin, wait: Duration, need_beat: bool) -> bool {
    let timeout = Timespec {
        tv_sec: wait.as_secs() as i64,
        tv_nsec: i64::from(wait.subsec_nanos()),
    };
    let ready = {
        let fd = stdin.as_fd();
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match poll(&mut fds, Some(&timeout)) {
            Ok(0) => false,
            Ok(_) => true,
            Err(_) => return false,
        }
    };
    if !ready {
        return !need_beat;
    }
    let mut buffer = [0u8; 64];
    matches!(stdin.read(&mut buffer), Ok(n) if n > 0)
}

/// The first line of stdin, byte by byte (nothing after it is consumed).
fn read_line(stdin: &mut std::io::Stdin) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() <= MAX_HOLDER && matches!(stdin.read(&mut byte), Ok(1)) {
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// Who holds the lock now, as its holder recorded it.
fn current_holder(file: &File) -> String {
    let mut buffer = vec![0u8; MAX_HOLDER];
    let n = file.read_at(&mut buffer, 0).unwrap_or(0);
    let text = String::from_utf8_lossy(&buffer[..n]);
    let first = sanitize(text.lines().next().unwrap_or_default());
    if first.is_empty() {
        "a run that did not say who it is".into()
    } else {
        first
    }
}

/// Printable text only, at most `MAX_HOLDER` characters.
pub fn sanitize(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_HOLDER)
        .collect()
}

fn say(stdout: &mut std::io::Stdout, line: &str) -> Result<(), Failure> {
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .map_err(|e| Failure::io(format!("cannot answer: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_lose_control_characters_and_length() {
        assert_eq!(sanitize("a\nb\u{1b}[2Jc\u{7f}"), "ab[2Jc");
        assert_eq!(sanitize(&"x".repeat(5000)).len(), MAX_HOLDER);
    }
}
