//! The host lock's holder: an flock on `/run/hostenv/<service>.<env>.lock`
//! (a directory only root can write, made 0700 and checked every time), held
//! for as long as hostenv's SSH channel, our stdin, stays open and beats.
//!
//! stdin: one line naming the holder (action, build, user, time; no secrets),
//! then a byte every few seconds. stdout: `held-by TEXT` while another run has
//! the lock, `acquired` once it is ours. Once acquired, the channel also
//! carries the run's other steps, each one round trip instead of a new
//! command's two or three: `x STEP SERVICE [ARG]\nLEN\n` and LEN bytes of
//! stdin run that step exactly as a run of its own would (the same argument
//! checks; the locked service only; nothing that writes under a shared
//! lock), answered `done CODE OUTLEN ERRLEN\n` and the step's stdout and
//! stderr. A request that starts `&` instead of `x` runs only when the one
//! before it succeeded (else it is answered `done 5 ...`, skipped), so a run
//! can send steps that always follow each other (stage, switch, restart) in
//! one go and wait for their answers once. Any other byte is a heartbeat. Right after `acquired` comes, unasked,
//! the answer to `read SERVICE`: every run reads the file first. The holder is written and read only
//! through the locked descriptor, with control characters removed and its
//! length bounded, so the file can neither aim a write nor print a root file.

use std::fs::File;
use std::io::Write;
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
    // Steps sent before the lock was ours wait for it here.
    let mut requests = Requests::default();
    let mut early = Vec::new();
    loop {
        match flock(&file, operation) {
            Ok(()) => break,
            Err(Errno::WOULDBLOCK) => {
                if !told {
                    told = true;
                    say(&mut stdout, &format!("held-by {}", current_holder(&file)))?;
                }
                // Waiting ends when hostenv gives up and closes the channel.
                match heard(&mut stdin, Duration::from_millis(200)) {
                    Heard::Bytes(mut bytes) => {
                        early.extend(requests.feed(&bytes));
                        wipe(&mut bytes);
                    }
                    Heard::Silence => {}
                    Heard::Closed => return Ok(()),
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
    // Every run reads the file first thing under the lock: its answer goes
    // with `acquired`, unasked, saving the run that round trip.
    let read = Request {
        words: vec![String::from("read"), service.to_string()],
        input: Vec::new(),
        after_success: false,
    };
    let mut succeeded = answer(&mut stdout, Ok(read), service, shared)? == 0;
    let mut last = Instant::now();
    let mut pending = early;
    loop {
        for asked in pending.drain(..) {
            let skip = !succeeded && matches!(&asked, Ok(request) if request.after_success);
            succeeded = if skip {
                answer_skipped(&mut stdout)?;
                false
            } else {
                answer(&mut stdout, asked, service, shared)? == 0
            };
        }
        if last.elapsed() >= BEAT_TIMEOUT {
            break;
        }
        let Heard::Bytes(mut bytes) = heard(&mut stdin, BEAT_TIMEOUT - last.elapsed()) else {
            break;
        };
        pending = requests.feed(&bytes);
        wipe(&mut bytes);
        // A step may take its time (a restart): the caller was not silent.
        last = Instant::now();
    }
    Ok(())
}

/// Runs one request and answers `done CODE OUTLEN ERRLEN` with its stdout
/// and stderr; returns CODE.
fn answer(
    stdout: &mut std::io::Stdout,
    asked: Asked,
    service: &str,
    shared: bool,
) -> Result<u8, Failure> {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = match asked {
        Ok(request) => super::request(
            service,
            shared,
            &request.words,
            &request.input,
            &mut out,
            &mut err,
        ),
        Err(problem) => {
            err.extend_from_slice(format!("hostenv-host: {problem}\n").as_bytes());
            2
        }
    };
    let answered = write_answer(stdout, code, &out, &err);
    wipe(&mut out);
    answered.map(|()| code)
}

/// One answer's frame: `done CODE OUTLEN ERRLEN`, then stdout and stderr.
fn write_answer(
    stdout: &mut std::io::Stdout,
    code: u8,
    out: &[u8],
    err: &[u8],
) -> Result<(), Failure> {
    let head = format!("done {code} {} {}\n", out.len(), err.len());
    stdout
        .write_all(head.as_bytes())
        .and_then(|()| stdout.write_all(out))
        .and_then(|()| stdout.write_all(err))
        .and_then(|()| stdout.flush())
        .map_err(|e| Failure::io(format!("cannot answer: {e}")))
}

/// The exit code of a request skipped because the one before it failed.
pub const SKIPPED: u8 = 5;

/// Answers a `&` request whose predecessor failed, without running it.
fn answer_skipped(stdout: &mut std::io::Stdout) -> Result<(), Failure> {
    let err = b"hostenv-host: skipped: the step before it failed\n";
    write_answer(stdout, SKIPPED, &[], err)
}

/// The longest `STEP SERVICE [ARG]` line of a request.
const MAX_WORDS: usize = 256;

/// One step the caller asked for.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    words: Vec<String>,
    input: Vec<u8>,
    /// Sent with `&`: only when the request before it succeeded.
    after_success: bool,
}

impl Drop for Request {
    fn drop(&mut self) {
        // A staged file's bytes do not outlive the request.
        wipe(&mut self.input);
    }
}

/// A request, or why it cannot be read.
type Asked = Result<Request, String>;

/// The requests in what the caller sends after `acquired`.
#[derive(Default)]
struct Requests {
    state: Reading,
}

#[derive(Default)]
enum Reading {
    /// Between requests: heartbeats until an `x` or `&`.
    #[default]
    Idle,
    /// The step line so far; whether the request came with `&`.
    Words(Vec<u8>, bool),
    Length(Vec<String>, bool, Vec<u8>),
    Input(Request, usize),
}

impl Requests {
    /// The requests completed by `bytes`.
    fn feed(&mut self, bytes: &[u8]) -> Vec<Asked> {
        let mut done = Vec::new();
        let mut rest = bytes;
        while let Some((&byte, after)) = rest.split_first() {
            let state = std::mem::take(&mut self.state);
            self.state = match state {
                Reading::Idle if byte == b'x' => Reading::Words(Vec::new(), false),
                Reading::Idle if byte == b'&' => Reading::Words(Vec::new(), true),
                Reading::Idle => Reading::Idle,
                Reading::Words(line, after_success) if byte == b'\n' => {
                    let words = String::from_utf8_lossy(&line)
                        .split(' ')
                        .map(str::to_string)
                        .collect();
                    Reading::Length(words, after_success, Vec::new())
                }
                Reading::Words(mut line, after_success) if line.len() < MAX_WORDS => {
                    line.push(byte);
                    Reading::Words(line, after_success)
                }
                Reading::Words(..) => {
                    done.push(Err("a request's step line is too long".to_string()));
                    Reading::Idle
                }
                Reading::Length(words, after_success, digits) if byte == b'\n' => {
                    let request = |input| Request {
                        words,
                        input,
                        after_success,
                    };
                    match std::str::from_utf8(&digits)
                        .ok()
                        .and_then(|d| d.parse::<usize>().ok())
                    {
                        Some(0) => {
                            done.push(Ok(request(Vec::new())));
                            Reading::Idle
                        }
                        Some(n) if n as u64 <= super::MAX_FILE_BYTES + 64 * 1024 => {
                            Reading::Input(request(Vec::with_capacity(n)), n)
                        }
                        _ => {
                            done.push(Err(
                                "a request's stdin length is not a size it takes".to_string()
                            ));
                            Reading::Idle
                        }
                    }
                }
                Reading::Length(words, after_success, mut digits) if digits.len() < 12 => {
                    digits.push(byte);
                    Reading::Length(words, after_success, digits)
                }
                Reading::Length(..) => {
                    done.push(Err("a request's stdin length is not a number".to_string()));
                    Reading::Idle
                }
                Reading::Input(mut request, want) => {
                    // Take as much of this read as the request still wants.
                    let take = (want - request.input.len()).min(rest.len());
                    request.input.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if request.input.len() == want {
                        done.push(Ok(request));
                        self.state = Reading::Idle;
                    } else {
                        self.state = Reading::Input(request, want);
                    }
                    continue;
                }
            };
            rest = after;
        }
        done
    }
}

/// Secret bytes (a file read, a file staged) do not outlive their answer.
fn wipe(bytes: &mut [u8]) {
    bytes.fill(0);
    std::hint::black_box(bytes);
}

/// What the caller sent within a wait.
enum Heard {
    Bytes(Vec<u8>),
    /// Nothing for all of the wait.
    Silence,
    /// stdin closed: the caller let go (or gave up waiting).
    Closed,
}

/// Waits up to `wait` for the caller.
fn heard(stdin: &mut std::io::Stdin, wait: Duration) -> Heard {
    if !ready(stdin, wait) {
        return Heard::Silence;
    }
    let mut buffer = [0u8; 4096];
    match raw_read(stdin, &mut buffer) {
        Ok(n) if n > 0 => Heard::Bytes(buffer[..n].to_vec()),
        _ => Heard::Closed,
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

/// Reads stdin's descriptor itself: `Stdin`'s own buffer would take bytes
/// off the pipe that `poll` then no longer sees, and a request whose end sat
/// in that buffer would wait for the caller forever.
fn raw_read(stdin: &std::io::Stdin, buffer: &mut [u8]) -> std::io::Result<usize> {
    rustix::io::read(stdin.as_fd(), buffer).map_err(std::io::Error::from)
}

/// The first line of stdin, byte by byte (nothing after it is consumed).
fn read_line(stdin: &mut std::io::Stdin) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() <= MAX_HOLDER && matches!(raw_read(stdin, &mut byte), Ok(1)) {
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
    fn requests_are_framed_and_beats_between_them_ignored() {
        let mut requests = Requests::default();
        assert!(requests.feed(b"hhh").is_empty());
        assert!(requests.feed(b"hxread voxbridge\n0").is_empty());
        let read = requests.feed(b"\nh");
        assert_eq!(read.len(), 1);
        assert_eq!(
            read[0],
            Ok(Request {
                words: vec!["read".into(), "voxbridge".into()],
                input: vec![],
                after_success: false
            })
        );
        // stdin may hold any byte, `x` and newlines included, split anywhere.
        assert!(requests.feed(b"xstage voxbridge\n5\nA=x").is_empty());
        let staged = requests.feed(b"\nBh");
        assert_eq!(
            staged,
            vec![Ok(Request {
                words: vec!["stage".into(), "voxbridge".into()],
                input: b"A=x\nB".to_vec(),
                after_success: false
            })]
        );
        // `&` marks a request that runs only after its predecessor succeeded.
        let chained = requests.feed(b"&switch voxbridge\n0\n&restart voxbridge u\n0\n");
        assert_eq!(chained.len(), 2);
        assert!(chained
            .iter()
            .all(|asked| asked.as_ref().is_ok_and(|r| r.after_success)));
        let long = requests.feed(&[b"x".as_slice(), &[b'r'; 300]].concat());
        assert!(long[0].is_err());
        let mut fresh = Requests::default();
        assert!(fresh.feed(b"xread voxbridge\n99999999999999\n")[0].is_err());
    }

    #[test]
    fn holders_lose_control_characters_and_length() {
        assert_eq!(sanitize("a\nb\u{1b}[2Jc\u{7f}"), "ab[2Jc");
        assert_eq!(sanitize(&"x".repeat(5000)).len(), MAX_HOLDER);
    }
}
