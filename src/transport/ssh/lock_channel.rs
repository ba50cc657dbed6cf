//! The lock's own channel (`host/lock.rs` is the other end): taking the lock,
//! the heartbeat that keeps it, and the run's steps as requests on it, some
//! sent ahead of the answers they wait for.

use std::io::Write;

use std::time::{Duration, Instant};

use ssh2::Channel;

use super::{lost, Connection, Output};
use crate::protocol::error::{ErrorKind, HostError, Result};

/// What the lock step answered: whether this run holds the lock (else the
/// holder or the failure), and how the host program described itself first
/// (None from a program that does not).
pub struct Held {
    pub verdict: Result<(), String>,
    pub description: Option<String>,
}

/// Where the lock step's description ends in `out`: the description and the
/// offset after it, (None, 0) when the answer has none, or None while it is
/// still arriving.
fn description_end(out: &[u8]) -> Option<(Option<String>, usize)> {
    const HEAD: &[u8] = b"describe ";
    if !out.starts_with(HEAD) {
        let could_be = out.len() < HEAD.len() && HEAD.starts_with(out);
        return (!could_be).then_some((None, 0));
    }
    let newline = out.iter().position(|b| *b == b'\n')?;
    let length: usize = std::str::from_utf8(&out[HEAD.len()..newline])
        .ok()?
        .parse()
        .ok()?;
    let end = newline + 1 + length;
    (out.len() >= end).then(|| {
        (
            Some(String::from_utf8_lossy(&out[newline + 1..end]).into_owned()),
            end,
        )
    })
}

/// A lock holder's answer: its exit code and where its stdout and stderr lie.
type Answer = (i32, std::ops::Range<usize>, std::ops::Range<usize>);

/// One answer of the lock holder in `out`: `done CODE OUTLEN ERRLEN\n` and
/// where its stdout and stderr lie; None while it is still arriving; the
/// first line (cut short) when it is not an answer.
fn lock_answer(out: &[u8]) -> Result<Option<Answer>, String> {
    let Some(end) = out.iter().position(|b| *b == b'\n') else {
        return Ok(None);
    };
    let line = String::from_utf8_lossy(&out[..end]);
    let fields: Vec<&str> = line.split(' ').collect();
    let parsed = match fields.as_slice() {
        ["done", code, stdout, stderr] => match (code.parse(), stdout.parse(), stderr.parse()) {
            (Ok(code), Ok(stdout), Ok(stderr)) => Some((code, stdout, stderr)),
            _ => None,
        },
        _ => None,
    };
    let (code, stdout, stderr): (i32, usize, usize) =
        parsed.ok_or_else(|| line.chars().take(80).collect::<String>())?;
    let start = end + 1;
    Ok((out.len() >= start + stdout + stderr).then(|| {
        (
            code,
            start..start + stdout,
            start + stdout..start + stdout + stderr,
        )
    }))
}

/// A request's first lines for the lock holder (`host/lock.rs`): `x` or `&`
/// (only after the one before it succeeded), the step's words, the length of
/// the stdin that follows.
fn request_head(marker: u8, words: &[String], stdin_len: usize) -> String {
    format!("{}{}\n{stdin_len}\n", marker as char, words.join(" "))
}

/// A step sent to the lock holder before the run asked for its answer: its
/// words and a digest of its stdin, so that only the very same step (a
/// stage of the same file) takes that answer.
#[derive(Clone, PartialEq, Eq)]
struct SentAhead {
    words: Vec<String>,
    stdin: [u8; 32],
}

impl SentAhead {
    fn new(words: &[String], stdin: &[u8]) -> SentAhead {
        use sha2::Digest;
        SentAhead {
            words: words.to_vec(),
            stdin: sha2::Sha256::digest(stdin).into(),
        }
    }
}

/// The channel that holds a host lock, and when it last heard from us.
pub(super) struct Heartbeat {
    channel: Channel,
    last: Instant,
    /// The holder's unasked answer to `read SERVICE`, until the run asks.
    read: Option<Output>,
    /// Steps sent ahead whose answers are not read yet, oldest first.
    ahead: std::collections::VecDeque<SentAhead>,
    /// What arrived after the last answer read: the next answers' first bytes.
    pending: zeroize::Zeroizing<Vec<u8>>,
    /// Why the channel no longer lines requests up with answers (a write or
    /// read that failed partway): every later step fails with it.
    broken: Option<String>,
}

/// How often the lock holder on the host hears from hostenv; it gives up the
/// lock after 30 s without a beat (`host/lock.rs`).
const BEAT_EVERY: Duration = Duration::from_secs(5);

impl Connection {
    /// Lets go of the host lock: the holder on the host sees its stdin close
    /// and exits, releasing the flock. Nothing to do when none is held.
    pub fn release_lock(&self) {
        let Some(mut heartbeat) = self.lock.borrow_mut().take() else {
            return;
        };
        let deadline = Instant::now() + self.io_timeout;
        let _ = self.retry("releasing the lock", deadline, || {
            heartbeat.channel.send_eof()
        });
        let _ = self.retry("releasing the lock", deadline, || heartbeat.channel.close());
    }

    /// Runs the host program's step `words` with `stdin` on the lock's own
    /// channel (`host/lock.rs`): one round trip, where a command of its own
    /// costs two or three; a step sent ahead with these words only waits for
    /// its answer. None when this connection holds no lock.
    pub fn run_on_lock(
        &self,
        words: &[String],
        stdin: &[u8],
        timeout: Option<Duration>,
    ) -> Option<Result<Output, HostError>> {
        let host = self.host.as_str();
        let mut lock = self.lock.borrow_mut();
        let heartbeat = lock.as_mut()?;
        if words.first().is_some_and(|w| w == "read") && words.len() == 2 && stdin.is_empty() {
            if let Some(read) = heartbeat.read.take() {
                return Some(Ok(read));
            }
        }
        let deadline = Instant::now() + timeout.unwrap_or(self.io_timeout);
        // Answers come in the order the steps went. A step sent ahead only
        // waits for its answer; any other goes at once, then the answers
        // still due before its own are read and let go (their steps were
        // no longer wanted: one before them failed, or they tidy up).
        let this = SentAhead::new(words, stdin);
        if !heartbeat.ahead.contains(&this) {
            if let Err(error) = self.send(heartbeat, b'x', words, stdin, deadline) {
                return Some(Err(error));
            }
            heartbeat.ahead.push_back(this.clone());
        }
        while let Some(sent) = heartbeat.ahead.pop_front() {
            let answer = self.read_answer(heartbeat, deadline);
            if sent == this || answer.is_err() {
                return Some(answer);
            }
        }
        Some(Err(lost(
            host,
            "the lock's channel",
            "a step went unanswered",
        )))
    }

    /// Sends `steps` to the lock holder at once, each after the first to run
    /// only if the one before it succeeded; their answers are read when the
    /// run takes each step (`run_on_lock`). For steps that always follow each
    /// other: one round trip for all. False when this connection holds no lock.
    pub fn send_ahead(&self, steps: &[(Vec<String>, &[u8])]) -> bool {
        let mut lock = self.lock.borrow_mut();
        let Some(heartbeat) = lock.as_mut() else {
            return false;
        };
        let deadline = Instant::now() + self.io_timeout;
        for (index, (words, stdin)) in steps.iter().enumerate() {
            let marker = if index == 0 { b'x' } else { b'&' };
            // A failure breaks the channel; the step that reads it says so.
            if self
                .send(heartbeat, marker, words, stdin, deadline)
                .is_err()
            {
                break;
            }
            heartbeat.ahead.push_back(SentAhead::new(words, stdin));
        }
        true
    }

    /// Writes one request (`marker` is `x`, or `&` for "only after the one
    /// before it succeeded"); a write that fails partway breaks the channel.
    fn send(
        &self,
        heartbeat: &mut Heartbeat,
        marker: u8,
        words: &[String],
        stdin: &[u8],
        deadline: Instant,
    ) -> Result<(), HostError> {
        let host = self.host.as_str();
        if let Some(why) = &heartbeat.broken {
            return Err(lost(host, "the lock's channel", why));
        }
        let head = request_head(marker, words, stdin.len());
        let parts = [head.as_bytes(), stdin];
        if let Err(failed) = self.write_all(&mut heartbeat.channel, &parts, deadline, false) {
            heartbeat.broken = Some("a step was cut off partway".into());
            return Err(failed.into_error(host, "sending a step on the lock's channel"));
        }
        heartbeat.last = Instant::now();
        Ok(())
    }

    /// Reads one `done CODE OUTLEN ERRLEN\n` answer and that many bytes of
    /// stdout and stderr from the lock's channel, starting with what came
    /// after the last one; what comes after this one is kept for the next.
    /// `drain` does not beat here: a beat would write to this very channel.
    fn read_answer(
        &self,
        heartbeat: &mut Heartbeat,
        deadline: Instant,
    ) -> Result<Output, HostError> {
        let host = self.host.as_str();
        if let Some(why) = &heartbeat.broken {
            return Err(lost(host, "the lock's channel", why));
        }
        let mut answer = std::mem::take(&mut heartbeat.pending);
        let mut noise = Vec::new();
        let drained = self.drain(
            "reading a step's answer on the lock's channel",
            &mut heartbeat.channel,
            (&mut answer, &mut noise),
            deadline,
            |out| !matches!(lock_answer(out), Ok(None)),
            false,
        );
        if let Err(error) = drained {
            // A late answer would be taken for the next step's.
            heartbeat.broken = Some("an answer did not come in time".into());
            return Err(error);
        }
        match lock_answer(&answer) {
            Ok(Some((status, out, err))) => {
                heartbeat.pending = zeroize::Zeroizing::new(answer[err.end..].to_vec());
                Ok(Output {
                    status,
                    stdout: answer[out].to_vec(),
                    stderr: String::from_utf8_lossy(&answer[err]).into_owned(),
                })
            }
            Ok(None) => Err(lost(host, "the lock holder", "ended before it answered")),
            Err(line) => {
                heartbeat.broken = Some("an answer was not one".into());
                Err(HostError::new(
                    ErrorKind::RemoteCommandFailed,
                    format!("`{host}`: the lock holder answered `{line}`"),
                ))
            }
        }
    }

    /// Sends the lock holder its heartbeat when one is due.
    pub fn beat(&self) {
        let mut lock = self.lock.borrow_mut();
        if let Some(heartbeat) = lock.as_mut() {
            if heartbeat.last.elapsed() >= BEAT_EVERY {
                // A beat that would block is simply tried again at the next idle moment.
                if heartbeat.channel.write(b"h").is_ok_and(|n| n == 1) {
                    heartbeat.last = Instant::now();
                }
            }
        }
    }

    /// Runs the lock holder (`host/lock.rs`): it answers `acquired`, or first
    /// `held-by WHO` while another run has the lock; then we wait up to `wait`
    /// for `acquired`. Once acquired the channel stays open, holding the lock,
    /// until the connection ends; a run that stops waiting closes it. `with_lock`
    /// are steps sent with the command, for the holder to take once the lock
    /// is its own (their answers are read as with `send_ahead`).
    pub fn hold(
        &self,
        command: &str,
        holder: &str,
        wait: Duration,
        with_lock: &[(Vec<String>, &[u8])],
    ) -> Result<Held, HostError> {
        // The holder line, then steps for once the lock is ours: they travel
        // with the command and cost no round trip of their own.
        let mut stdin = zeroize::Zeroizing::new(format!("{holder}\n").into_bytes());
        for (words, input) in with_lock {
            stdin.extend_from_slice(request_head(b'x', words, input.len()).as_bytes());
            stdin.extend_from_slice(input);
        }
        let answer_by = Instant::now() + self.io_timeout;
        let mut channel = self.start(command, &stdin, answer_by)?;
        let (mut answer, mut errors) = (Vec::new(), Vec::new());
        // The holder describes itself first (`describe N` and N bytes), then
        // answers `held-by WHO` or `acquired`.
        self.drain(
            "waiting for the lock",
            &mut channel,
            (&mut answer, &mut errors),
            answer_by,
            |out| description_end(out).is_some_and(|(_, end)| out[end..].contains(&b'\n')),
            true,
        )?;
        let (description, start) = description_end(&answer).unwrap_or((None, 0));
        let acquired = move |out: &[u8]| {
            out[start.min(out.len())..]
                .split(|b| *b == b'\n')
                .any(|l| l == b"acquired")
        };
        let first = String::from_utf8_lossy(&answer[start.min(answer.len())..])
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        let verdict = 'verdict: {
            if first.starts_with("held-by ") && !acquired(&answer) {
                let give_up = Instant::now() + wait;
                let waited = self.drain(
                    "waiting for the lock",
                    &mut channel,
                    (&mut answer, &mut errors),
                    give_up,
                    acquired,
                    true,
                );
                match waited {
                    Err(_) if Instant::now() >= give_up => {
                        // Closing the channel ends the waiting holder on the host.
                        drop(channel);
                        break 'verdict Err(first);
                    }
                    Err(error) => return Err(error),
                    Ok(()) if !acquired(&answer) => break 'verdict Err(first),
                    Ok(()) => {}
                }
            }
            if acquired(&answer) {
                let mut heartbeat = Heartbeat {
                    channel,
                    last: Instant::now(),
                    read: None,
                    ahead: Default::default(),
                    pending: Default::default(),
                    broken: None,
                };
                // A holder that describes itself answers `read` unasked
                // right after `acquired`.
                if description.is_some() {
                    let tail = &answer[start.min(answer.len())..];
                    let after = tail
                        .windows(9)
                        .position(|w| w == b"acquired\n")
                        .map(|at| tail[at + 9..].to_vec())
                        .unwrap_or_default();
                    // The file's first bytes may be here: not left behind.
                    zeroize::Zeroize::zeroize(&mut answer);
                    let answer_by = Instant::now() + self.io_timeout;
                    heartbeat.pending = zeroize::Zeroizing::new(after);
                    let read = self.read_answer(&mut heartbeat, answer_by)?;
                    heartbeat.read = Some(read);
                    // One that describes itself takes the steps sent with it.
                    heartbeat.ahead = with_lock
                        .iter()
                        .map(|(words, stdin)| SentAhead::new(words, stdin))
                        .collect();
                }
                *self.lock.borrow_mut() = Some(heartbeat);
                break 'verdict Ok(());
            }
            let errors = String::from_utf8_lossy(&errors).into_owned();
            Err(if first.is_empty() {
                errors
                    .lines()
                    .find(|l| !l.contains("unable to resolve host"))
                    .unwrap_or("no answer")
                    .to_string()
            } else {
                first
            })
        };
        Ok(Held {
            verdict,
            description,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::description_end;

    #[test]
    fn the_lock_steps_description_is_found_whole_or_not_at_all() {
        let answer = b"describe 13\nhostenv-host\nacquired\n";
        assert_eq!(
            description_end(answer),
            Some((Some("hostenv-host\n".to_string()), 25))
        );
        assert_eq!(&answer[25..], b"acquired\n");
        // Still arriving: the head, or the text.
        assert_eq!(description_end(b"descr"), None);
        assert_eq!(description_end(b"describe 12\nhost"), None);
        // A program that does not describe itself.
        assert_eq!(description_end(b"acquired\n"), Some((None, 0)));
        assert_eq!(description_end(b"acq"), Some((None, 0)));
    }
}
