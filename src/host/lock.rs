//! The host lock's holder: an flock on `/run/hostenv/<service>.<env>.lock`
//! (a directory only root can write, made 0700 and checked every time), held
//! for as long as hostenv's SSH channel, our stdin, stays open and beats.
//!
//! stdin: one line naming the holder (action, build, user, time; no secrets),
//! then a byte every few seconds. stdout: `held-by TEXT` while another run has
//! the lock, `acquired` once it is ours. Once acquired, `a` + one JSON line
//! appends that line to the service's audit log as the `audit` step would, and
//! is answered `audited` or `audit-failed REASON`: the run's last word on the
//! host travels on the channel it already has, one round trip instead of a
//! new command's three. The holder is written and read only
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
                if !caller_alive(&mut stdin, Duration::from_millis(200)) {
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
    let mut requests = Requests::default();
    while last.elapsed() < BEAT_TIMEOUT {
        let Some(bytes) = heard(&mut stdin, BEAT_TIMEOUT - last.elapsed()) else {
            break;
        };
        last = Instant::now();
        for line in requests.feed(&bytes) {
            let answer = match super::audit_line(service, &line) {
                Ok(()) => "audited".to_string(),
                Err(failure) => format!(
                    "audit-failed {}",
                    sanitize(&failure.message.unwrap_or_default())
                ),
            };
            say(&mut stdout, &answer)?;
        }
    }
    Ok(())
}

/// The audit lines in what the caller sends after `acquired`: heartbeats are
/// single bytes other than `a`; `a` starts a line that ends at a newline.
#[derive(Default)]
struct Requests {
    line: Option<Vec<u8>>,
}

impl Requests {
    /// The lines completed by `bytes`. A line longer than the audit step
    /// accepts is kept whole only up to that bound, and then refused there.
    fn feed(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut done = Vec::new();
        for &byte in bytes {
            match (&mut self.line, byte) {
                (Some(_), b'\n') => done.push(self.line.take().unwrap_or_default()),
                (Some(line), _) => {
                    if line.len() <= super::steps::MAX_AUDIT_LINE as usize {
                        line.push(byte);
                    }
                }
                (None, b'a') => self.line = Some(Vec::new()),
                (None, _) => {}
            }
        }
        done
    }
}

/// Waits up to `wait` for the caller: what it sent, or None once stdin has
/// closed or stayed silent for all of `wait`.
fn heard(stdin: &mut std::io::Stdin, wait: Duration) -> Option<Vec<u8>> {
    if !ready(stdin, wait) {
        return None;
    }
    let mut buffer = [0u8; 4096];
    match stdin.read(&mut buffer) {
        Ok(n) if n > 0 => Some(buffer[..n].to_vec()),
        _ => None,
    }
}

fn ready(stdin: &std::io::Stdin, wait: Duration) -> bool {
    let timeout = Timespec {
        tv_sec: wait.as_secs() as i64,
        tv_nsec: i64::from(wait.subsec_nanos()),
    };
    let fd = stdin.as_fd();
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    matches!(poll(&mut fds, Some(&timeout)), Ok(n) if n > 0)
}

/// While waiting for the lock: false once the caller has closed stdin (it gave up).
fn caller_alive(stdin: &mut std::io::Stdin, wait: Duration) -> bool {
    if !ready(stdin, wait) {
        return true;
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
    fn audit_requests_are_lines_after_a_and_beats_are_ignored() {
        let mut requests = Requests::default();
        assert!(requests.feed(b"hhh").is_empty());
        assert_eq!(requests.feed(b"ha{\"x\":"), Vec::<Vec<u8>>::new());
        assert_eq!(requests.feed(b"1}\nh"), vec![b"{\"x\":1}".to_vec()]);
        let long = requests.feed(&[b"a".as_slice(), &[b'x'; 20_000], b"\n"].concat());
        assert_eq!(long.len(), 1);
        assert_eq!(
            long[0].len(),
            super::super::steps::MAX_AUDIT_LINE as usize + 1
        );
    }

    #[test]
    fn holders_lose_control_characters_and_length() {
        assert_eq!(sanitize("a\nb\u{1b}[2Jc\u{7f}"), "ab[2Jc");
        assert_eq!(sanitize(&"x".repeat(5000)).len(), MAX_HOLDER);
    }
}
