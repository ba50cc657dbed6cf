//! The host lock's holder: an flock on the target file's lock in
//! `/run/hostenv/` (a directory only root can write, made 0700 and checked
//! every time), held for as long as hostenv's SSH channel, our stdin, stays
//! open and beats, and never past the run's deadline or root's limits.
//!
//! One lock per target file, whatever service or environment asks: its name
//! is the target's path (`/opt/voxbridge/.env` → `opt%voxbridge%.env.lock`;
//! `%` is in no path, so no two paths share a name).
//!
//! stdin is read by one grammar (`channel.rs`): a holder line (how long the
//! run may take, who it is), then beats and requests. stdout: `held-by
//! TEXT` while another run has the lock, `acquired` once it is ours, then
//! an answer per request, `done SEQ CODE OUTLEN ERRLEN\n` and the step's
//! stdout and stderr, where SEQ is the request's number. Right after
//! `acquired` comes, unasked, the answer to `read SERVICE` as request 0:
//! every run reads the file first. A request runs the step exactly as a run
//! of its own would (`super::request`: the same checks against root's
//! configuration; the locked service only; nothing that writes under a
//! shared lock); one sent with `&` runs only when the one before it
//! succeeded (else it is answered `done SEQ 5 ...`, skipped).
//!
//! The first byte that does not fit the grammar, a request that stops
//! partway, or a run that outlives its deadline ends the channel: the holder
//! answers `broken SEQ LEN\n` and LEN bytes saying why, runs nothing more,
//! and exits, which releases the lock.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fs::{flock, FlockOperation};
use rustix::io::Errno;

use super::channel::{wipe, Framed, Holder, Reader, Request};
use super::config::HostConfig;
use super::files::{self, LastDir};
use super::limits::Limits;
use super::{Failure, Session, LOCK_DIR};

/// The holder lets go after this long without hearing from hostenv, and
/// ends the channel when a request stops partway for this long.
pub const BEAT_TIMEOUT: Duration = Duration::from_secs(30);
/// The holder line travels with the lock step: it has this long to arrive.
const HOLDER_LINE_WITHIN: Duration = Duration::from_secs(10);
/// How long past its run's deadline a holder may still be finishing a step.
const MARGIN: Duration = Duration::from_secs(60);
/// Why a waiting holder ended its channel (the reader says the same).
const TOO_MANY_WAITING: &str = "more requests than a run sends before it holds the lock";
/// The most of the lock file's first line shown to a run that waits.
const MAX_SHOWN: usize = 600;

/// The lock file's name for the target at `path`.
pub fn lock_name(path: &str) -> String {
    format!("{}.lock", path.trim_start_matches('/').replace('/', "%"))
}

pub fn hold(
    service: &str,
    environment: &str,
    shared: bool,
    config: &HostConfig,
    limits: &Limits,
) -> Result<(), Failure> {
    let started = Instant::now();
    let dir = files::open_dir(LOCK_DIR, LastDir::OwnState)?
        .ok_or_else(|| Failure::io(format!("cannot create `{LOCK_DIR}`")))?;
    let file = files::open_own_file(&dir, &lock_name(&config.path), false)?;
    let mut channel = Channel::new();
    let holder = channel.holder_line(started + HOLDER_LINE_WITHIN)?;
    let ends = started + Duration::from_secs(holder.seconds).min(limits.run) + MARGIN;
    let give_up = (started + limits.lock_wait).min(ends);
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
                    channel.say(&format!("held-by {}", current_holder(&file)))?;
                    // While it waits, a holder keeps no more than a run sends
                    // with its lock step: one request.
                    let held = channel.framed.len() + usize::from(channel.reader.in_frame());
                    if held > 1 {
                        return Err(channel.end(TOO_MANY_WAITING));
                    }
                    channel.reader.limit_requests(Some(1 - held));
                }
                if Instant::now() >= give_up {
                    return Err(Failure::refused(format!(
                        "gave up waiting for the lock after {} s (root's `lock-wait` or the run's deadline)",
                        started.elapsed().as_secs()
                    )));
                }
                // Waiting ends when hostenv gives up and closes the channel.
                match channel.listen(Duration::from_millis(200)) {
                    Heard::Closed => return Ok(()),
                    Heard::Bytes | Heard::Silence => channel.end_if_broken()?,
                }
            }
            Err(e) => return Err(Failure::io(format!("cannot lock: {e}"))),
        }
    }
    if !shared {
        let line = format!("{service} {environment} {}\n", holder.text);
        file.set_len(0)
            .and_then(|()| file.write_all_at(line.as_bytes(), 0))
            .map_err(|e| Failure::io(format!("cannot record the holder: {e}")))?;
    }
    channel.say("acquired")?;
    channel.reader.limit_requests(None);
    let mut session = Session::on_channel(environment, limits.clone());
    // Every run reads the file first thing under the lock: its answer goes
    // with `acquired`, unasked, as request 0, saving the run that round trip.
    let read = Request {
        seq: 0,
        words: vec![String::from("read"), service.to_string()],
        input: Vec::new(),
        after_success: false,
    };
    let mut succeeded = channel.answer(read, (service, config), shared, &mut session)? == 0;
    loop {
        while let Some(framed) = channel.framed.pop_front() {
            // The reader frames one holder line, before any request.
            let Framed::Request(request) = framed else {
                continue;
            };
            succeeded = if request.after_success && !succeeded {
                channel.answer_skipped(request.seq)?;
                false
            } else {
                channel.answer(request, (service, config), shared, &mut session)? == 0
            };
        }
        channel.end_if_broken()?;
        let now = Instant::now();
        if now >= ends {
            return Err(channel.end("the run's deadline passed"));
        }
        let silent_for = now.duration_since(channel.last_heard);
        if silent_for >= BEAT_TIMEOUT {
            if channel.reader.in_frame() {
                return Err(channel.end("a request stopped partway"));
            }
            // The run is gone without a word: let go.
            return Ok(());
        }
        let wait = (BEAT_TIMEOUT - silent_for).min(ends - now);
        if let Heard::Closed = channel.listen(wait) {
            return Ok(());
        }
    }
}

/// What the caller sent within a wait.
enum Heard {
    Bytes,
    /// Nothing for all of the wait.
    Silence,
    /// stdin closed: the caller let go (or gave up waiting).
    Closed,
}

/// Our stdin, read through the channel's grammar, and our stdout.
struct Channel {
    stdin: std::io::Stdin,
    stdout: std::io::Stdout,
    reader: Reader,
    /// What the reader framed and the holder has not yet taken.
    framed: VecDeque<Framed>,
    last_heard: Instant,
}

impl Channel {
    fn new() -> Channel {
        Channel {
            stdin: std::io::stdin(),
            stdout: std::io::stdout(),
            reader: Reader::new(),
            framed: VecDeque::new(),
            last_heard: Instant::now(),
        }
    }

    /// Waits up to `wait` for the caller and frames what it sent.
    fn listen(&mut self, wait: Duration) -> Heard {
        if !ready(&self.stdin, wait) {
            return Heard::Silence;
        }
        let mut buffer = [0u8; 16 * 1024];
        let n = match rustix::io::read(self.stdin.as_fd(), &mut buffer) {
            Ok(n) if n > 0 => n,
            _ => return Heard::Closed,
        };
        let fed = self.reader.feed(&buffer[..n]);
        wipe(&mut buffer[..n]);
        self.framed.extend(fed.framed);
        self.last_heard = Instant::now();
        Heard::Bytes
    }

    /// The holder line, which must come whole by `by`.
    fn holder_line(&mut self, by: Instant) -> Result<Holder, Failure> {
        loop {
            if let Some(Framed::Holder(_)) = self.framed.front() {
                let Some(Framed::Holder(holder)) = self.framed.pop_front() else {
                    unreachable!("looked at above");
                };
                return Ok(holder);
            }
            self.end_if_broken()?;
            let now = Instant::now();
            if now >= by {
                return Err(self.end("the holder line did not come in time"));
            }
            if let Heard::Closed = self.listen(by - now) {
                return Err(Failure::usage("the channel closed before its holder line"));
            }
        }
    }

    /// Ends the channel when the reader found a byte that does not fit.
    fn end_if_broken(&mut self) -> Result<(), Failure> {
        match self.reader.broken() {
            Some(broken) => {
                let (seq, reason) = (broken.seq, broken.reason);
                self.framed.clear();
                Err(self.write_broken(seq, reason))
            }
            None => Ok(()),
        }
    }

    /// Ends the channel, saying why: nothing after this is read or run.
    fn end(&mut self, reason: &str) -> Failure {
        self.framed.clear();
        self.write_broken(self.reader.position(), reason)
    }

    /// Answers `broken SEQ LEN` and why; the failure the holder exits with.
    fn write_broken(&mut self, seq: u64, reason: &str) -> Failure {
        let message = format!("hostenv-host: the lock's channel ended: {reason}\n");
        let head = format!("broken {seq} {}\n", message.len());
        let _ = self
            .stdout
            .write_all(head.as_bytes())
            .and_then(|()| self.stdout.write_all(message.as_bytes()))
            .and_then(|()| self.stdout.flush());
        Failure::refused(format!("the lock's channel ended: {reason}"))
    }

    fn say(&mut self, line: &str) -> Result<(), Failure> {
        writeln!(self.stdout, "{line}")
            .and_then(|()| self.stdout.flush())
            .map_err(|e| Failure::io(format!("cannot answer: {e}")))
    }

    /// Runs one request and answers `done SEQ CODE OUTLEN ERRLEN` with its
    /// stdout and stderr; returns CODE.
    fn answer(
        &mut self,
        request: Request,
        locked: (&str, &HostConfig),
        shared: bool,
        session: &mut Session,
    ) -> Result<u8, Failure> {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = super::request(
            locked,
            shared,
            &request.words,
            &request.input,
            (&mut out, &mut err),
            session,
        );
        let answered = self.write_answer(request.seq, code, &out, &err);
        wipe(&mut out);
        answered.map(|()| code)
    }

    /// Answers a `&` request whose predecessor failed, without running it.
    fn answer_skipped(&mut self, seq: u64) -> Result<(), Failure> {
        let err = b"hostenv-host: skipped: the step before it failed\n";
        self.write_answer(seq, SKIPPED, &[], err)
    }

    fn write_answer(&mut self, seq: u64, code: u8, out: &[u8], err: &[u8]) -> Result<(), Failure> {
        let head = format!("done {seq} {code} {} {}\n", out.len(), err.len());
        self.stdout
            .write_all(head.as_bytes())
            .and_then(|()| self.stdout.write_all(out))
            .and_then(|()| self.stdout.write_all(err))
            .and_then(|()| self.stdout.flush())
            .map_err(|e| Failure::io(format!("cannot answer: {e}")))
    }
}

/// The exit code of a request skipped because the one before it failed.
pub const SKIPPED: u8 = 5;

fn ready(stdin: &std::io::Stdin, wait: Duration) -> bool {
    let timeout = Timespec {
        tv_sec: wait.as_secs() as i64,
        tv_nsec: i64::from(wait.subsec_nanos()),
    };
    let fd = stdin.as_fd();
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    matches!(poll(&mut fds, Some(&timeout)), Ok(n) if n > 0)
}

/// Who holds the lock now, as its holder recorded it.
fn current_holder(file: &File) -> String {
    let mut buffer = vec![0u8; MAX_SHOWN];
    let n = file.read_at(&mut buffer, 0).unwrap_or(0);
    let text = String::from_utf8_lossy(&buffer[..n]);
    let first = sanitize(text.lines().next().unwrap_or_default());
    if first.is_empty() {
        "a run that did not say who it is".into()
    } else {
        first
    }
}

/// Printable text only, at most `MAX_SHOWN` characters.
pub fn sanitize(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_SHOWN)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_lock_name_per_target_path() {
        assert_eq!(lock_name("/opt/voxbridge/.env"), "opt%voxbridge%.env.lock");
        // Names that differ only where a service or environment name could
        // hold a dot still lock different files, and one path one file.
        assert_ne!(lock_name("/opt/api.v2/.env"), lock_name("/opt/api/v2.env"));
        let longest = format!("/{}", "a".repeat(super::super::config::MAX_PATH - 1));
        assert!(lock_name(&longest).len() <= 255);
    }

    #[test]
    fn holders_lose_control_characters_and_length() {
        assert_eq!(sanitize("a\nb\u{1b}[2Jc\u{7f}"), "ab[2Jc");
        assert_eq!(sanitize(&"x".repeat(5000)).len(), MAX_SHOWN);
    }
}
