//! The lock's own channel (`host/lock.rs` is the other end): taking the lock,
//! the heartbeat that keeps it, and the run's steps as requests on it, some
//! sent ahead of the answers they wait for.

use std::io::Write;

use std::time::{Duration, Instant};

use ssh2::Channel;

use super::{lost, Connection, Output, Reading};
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
pub(crate) fn description_end(out: &[u8]) -> Option<(Option<String>, usize)> {
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
    // A length the host chose: no add may overflow (a garbled head is no description).
    let end = (newline + 1).checked_add(length)?;
    (out.len() >= end).then(|| {
        (
            Some(String::from_utf8_lossy(&out[newline + 1..end]).into_owned()),
            end,
        )
    })
}

/// A lock holder's answer: its exit code and where its stdout and stderr lie.
pub(crate) type Answer = (i32, std::ops::Range<usize>, std::ops::Range<usize>);

/// The most a holder's answer may carry: every backup a host keeps, whole.
const MAX_ANSWER: usize =
    (crate::host::config::MAX_BACKUPS as usize + 1) * crate::host::MAX_FILE_BYTES as usize;

/// The most an answer's head line, and the lock step's own lines before its
/// first answer, may hold.
const MAX_HEAD: usize = 64 * 1024;

/// The most the answer to the step `words` may hold: a file read back, every
/// backup a host keeps, or a few lines (any other step).
fn answer_limit(words: &[String]) -> usize {
    match words.first().map(String::as_str) {
        Some("read") => crate::host::MAX_FILE_BYTES as usize + MAX_HEAD,
        Some("read-backups") => MAX_ANSWER + MAX_HEAD,
        _ => MAX_HEAD,
    }
}

/// What the start of `out` is, for request `seq`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Heard {
    /// Not all of it has come yet.
    Partial,
    /// `done SEQ CODE OUTLEN ERRLEN\n` and that many bytes: the answer.
    Answer(Answer),
    /// `broken SEQ LEN\n` and why: the holder ended the channel.
    Broken(String),
    /// An answer announcing more than a host can hold (its first line).
    TooLarge(String),
    /// Anything else, or an answer to another request (its first line, cut short).
    Garbage(String),
}

/// Reads the holder's next answer in `out`, which must be for request `seq`.
pub(crate) fn lock_answer(out: &[u8], seq: u64) -> Heard {
    let Some(end) = out.iter().position(|b| *b == b'\n') else {
        // A head is short: a long line without an end is no answer.
        return if out.len() > 128 {
            Heard::Garbage(String::from_utf8_lossy(&out[..80]).into_owned())
        } else {
            Heard::Partial
        };
    };
    let line = String::from_utf8_lossy(&out[..end]);
    let shown = || line.chars().take(80).collect::<String>();
    let fields: Vec<&str> = line.split(' ').collect();
    // A length of digits past what a host can hold is too large, not garbage.
    let number = |text: &str| {
        let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
        match text.parse::<usize>() {
            Ok(n) if n <= MAX_ANSWER => Ok(n),
            _ if digits => Err(true),
            _ => Err(false),
        }
    };
    let start = end + 1;
    let (code, lengths) = match fields.as_slice() {
        ["done", at, code, stdout, stderr] if at.parse() == Ok(seq) => {
            match (code.parse::<i32>(), number(stdout), number(stderr)) {
                (Ok(code), Ok(stdout), Ok(stderr)) => (Some(code), (stdout, stderr)),
                (Ok(_), Err(true), _) | (Ok(_), _, Err(true)) => return Heard::TooLarge(shown()),
                _ => return Heard::Garbage(shown()),
            }
        }
        ["broken", _, length] => match number(length) {
            Ok(length) => (None, (0, length)),
            Err(true) => return Heard::TooLarge(shown()),
            Err(false) => return Heard::Garbage(shown()),
        },
        _ => return Heard::Garbage(shown()),
    };
    let (stdout, stderr) = lengths;
    if out.len() < start + stdout + stderr {
        return Heard::Partial;
    }
    let err = start + stdout..start + stdout + stderr;
    match code {
        Some(code) => Heard::Answer((code, start..start + stdout, err)),
        None => Heard::Broken(String::from_utf8_lossy(&out[err]).trim().to_string()),
    }
}

/// A request's first lines for the lock holder (`host/channel.rs`): its
/// marker (`&`: only after the one before it succeeded), number and words,
/// and the length of the stdin that follows. None for what the holder would
/// refuse: such a request is never sent.
fn request_head(
    seq: u64,
    after_success: bool,
    words: &[String],
    stdin_len: usize,
) -> Result<String, HostError> {
    crate::host::channel::request_head(seq, after_success, words, stdin_len).ok_or_else(|| {
        HostError::new(
            ErrorKind::Internal,
            format!(
                "the step `{}` ({stdin_len} bytes of input) is not one the lock holder takes; nothing was sent",
                words.first().map_or("", String::as_str)
            ),
        )
    })
}

/// A step sent to the lock holder before the run asked for its answer: its
/// words and a digest of its stdin, so that only the very same step (a
/// stage of the same file) takes that answer.
#[derive(Clone, PartialEq, Eq)]
struct SentAhead {
    words: Vec<String>,
    stdin: [u8; 32],
}

/// A step sent ahead, and the number its answer will carry.
struct Awaited {
    step: SentAhead,
    seq: u64,
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
    ahead: std::collections::VecDeque<Awaited>,
    /// The number the next request will carry.
    next_seq: u64,
    /// What arrived after the last answer read: the next answers' first bytes.
    pending: zeroize::Zeroizing<Vec<u8>>,
    /// Why the channel no longer lines requests up with answers (a write or
    /// read that failed partway): every later step fails with it.
    broken: Option<String>,
    /// A step that changes the target (a switch, a put-back) went whole to
    /// the holder: if its answer is lost, it may have run.
    asked_for_a_change: bool,
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
        if !heartbeat.ahead.iter().any(|a| a.step == this) {
            if let Err(error) = self.send(heartbeat, false, words, stdin, deadline) {
                return Some(Err(error));
            }
        }
        while let Some(sent) = heartbeat.ahead.pop_front() {
            let limit = answer_limit(&sent.step.words);
            let answer = self.read_answer(heartbeat, (sent.seq, limit), deadline);
            if sent.step == this || answer.is_err() {
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
            // A failure breaks the channel; the step that reads it says so.
            if self
                .send(heartbeat, index > 0, words, stdin, deadline)
                .is_err()
            {
                break;
            }
        }
        true
    }

    /// Writes one request (`after_success`: only if the one before it
    /// succeeded) and awaits its answer; a write that fails partway breaks
    /// the channel. A request the holder would refuse is not sent at all.
    fn send(
        &self,
        heartbeat: &mut Heartbeat,
        after_success: bool,
        words: &[String],
        stdin: &[u8],
        deadline: Instant,
    ) -> Result<(), HostError> {
        let host = self.host.as_str();
        if let Some(why) = &heartbeat.broken {
            return Err(lost(host, "the lock's channel", why));
        }
        let seq = heartbeat.next_seq;
        let head = request_head(seq, after_success, words, stdin.len())?;
        let parts = [head.as_bytes(), stdin];
        if let Err(failed) = self.write_all(&mut heartbeat.channel, &parts, deadline, false) {
            heartbeat.broken = Some("a step was cut off partway".into());
            return Err(failed.into_error(host, "sending a step on the lock's channel"));
        }
        heartbeat.next_seq += 1;
        heartbeat.asked_for_a_change |= words
            .first()
            .is_some_and(|step| step == "switch" || step == "restore");
        heartbeat.ahead.push_back(Awaited {
            step: SentAhead::new(words, stdin),
            seq,
        });
        heartbeat.last = Instant::now();
        Ok(())
    }

    /// Reads the answer to request `seq` (at most `limit` bytes), `done SEQ CODE OUTLEN ERRLEN\n`
    /// and that many bytes of stdout and stderr, starting with what came
    /// after the last one; what comes after this one is kept for the next.
    /// An answer for another request, or none, breaks the channel.
    /// `drain` does not beat here: a beat would write to this very channel.
    fn read_answer(
        &self,
        heartbeat: &mut Heartbeat,
        (seq, limit): (u64, usize),
        deadline: Instant,
    ) -> Result<Output, HostError> {
        let host = self.host.as_str();
        if let Some(why) = &heartbeat.broken {
            return Err(lost(host, "the lock's channel", why));
        }
        let mut answer = std::mem::take(&mut heartbeat.pending);
        let mut noise = Vec::new();
        let reading = Reading {
            what: "reading a step's answer on the lock's channel",
            deadline,
            limit,
            beat: false,
        };
        let drained = self.drain(
            &mut heartbeat.channel,
            (&mut answer, &mut noise),
            &reading,
            |out| lock_answer(out, seq) != Heard::Partial,
        );
        if let Err(error) = drained {
            // A late answer would be taken for the next step's.
            heartbeat.broken = Some("an answer did not come whole in time and size".into());
            return Err(error);
        }
        match lock_answer(&answer, seq) {
            Heard::Answer((status, out, err)) => {
                heartbeat.pending = zeroize::Zeroizing::new(answer[err.end..].to_vec());
                Ok(Output {
                    status,
                    stdout: answer[out].to_vec(),
                    stderr: String::from_utf8_lossy(&answer[err]).into_owned(),
                })
            }
            Heard::Partial => {
                heartbeat.broken = Some("the lock holder ended".into());
                Err(lost(host, "the lock holder", "ended before it answered"))
            }
            Heard::Broken(why) => {
                heartbeat.broken = Some(why.clone());
                Err(lost(host, "the lock holder ended the channel", why))
            }
            Heard::TooLarge(line) => {
                heartbeat.broken = Some("an answer announced more than a host holds".into());
                Err(HostError::new(
                    ErrorKind::HostAnswerTooLarge,
                    format!(
                        "`{host}`: the lock holder answered `{line}`, more than the {MAX_ANSWER} bytes hostenv reads there"
                    ),
                ))
            }
            Heard::Garbage(line) => {
                heartbeat.broken = Some("an answer was not the one awaited".into());
                Err(lost(
                    host,
                    "the lock's channel",
                    format!(
                        "the holder answered `{line}` where the answer to request {seq} was due"
                    ),
                ))
            }
        }
    }

    /// Whether this connection's lock holder was sent, whole, a step that
    /// changes the target (`switch`, `restore`): after a lost answer, it
    /// may have run.
    pub fn asked_for_a_change(&self) -> bool {
        self.lock
            .borrow()
            .as_ref()
            .is_some_and(|heartbeat| heartbeat.asked_for_a_change)
    }

    /// Sends the lock holder its heartbeat when one is due.
    pub fn beat(&self) {
        let mut lock = self.lock.borrow_mut();
        if let Some(heartbeat) = lock.as_mut() {
            // A request cut off partway would take a beat for its input.
            if heartbeat.broken.is_none() && heartbeat.last.elapsed() >= BEAT_EVERY {
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
        holder_line: &str,
        wait: Duration,
        with_lock: &[(Vec<String>, &[u8])],
    ) -> Result<Held, HostError> {
        // The holder line, then steps for once the lock is ours: they travel
        // with the command and cost no round trip of their own.
        let mut stdin = zeroize::Zeroizing::new(holder_line.as_bytes().to_vec());
        for (index, (words, input)) in with_lock.iter().enumerate() {
            let head = request_head(index as u64 + 1, false, words, input.len())?;
            stdin.extend_from_slice(head.as_bytes());
            stdin.extend_from_slice(input);
        }
        let answer_by = Instant::now() + self.io_timeout;
        let mut channel = self.start(command, &stdin, answer_by)?;
        let (mut answer, mut errors) = (Vec::new(), Vec::new());
        // The holder describes itself first (`describe N` and N bytes), then
        // answers `held-by WHO` or `acquired`.
        let first = Reading {
            what: "waiting for the lock",
            deadline: answer_by,
            limit: MAX_HEAD,
            beat: true,
        };
        self.drain(&mut channel, (&mut answer, &mut errors), &first, |out| {
            description_end(out).is_some_and(|(_, end)| out[end..].contains(&b'\n'))
        })?;
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
                let waiting = Reading {
                    what: "waiting for the lock",
                    deadline: give_up,
                    // `acquired`, and perhaps one read's worth of the first answer.
                    limit: 2 * MAX_HEAD,
                    beat: true,
                };
                let waited =
                    self.drain(&mut channel, (&mut answer, &mut errors), &waiting, acquired);
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
                    next_seq: with_lock.len() as u64 + 1,
                    pending: Default::default(),
                    broken: None,
                    asked_for_a_change: false,
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
                    // The unasked read is request 0.
                    let read_limit = answer_limit(&["read".to_string()]);
                    let read = self.read_answer(&mut heartbeat, (0, read_limit), answer_by)?;
                    heartbeat.read = Some(read);
                    // One that describes itself takes the steps sent with it.
                    heartbeat.ahead = with_lock
                        .iter()
                        .enumerate()
                        .map(|(index, (words, stdin))| Awaited {
                            step: SentAhead::new(words, stdin),
                            seq: index as u64 + 1,
                        })
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
    use super::{description_end, lock_answer, Heard};

    #[test]
    fn an_answer_is_taken_only_for_the_request_it_names() {
        let answer = b"done 3 0 2 1\nokEnext";
        assert_eq!(lock_answer(answer, 3), Heard::Answer((0, 13..15, 15..16)));
        assert!(matches!(lock_answer(answer, 4), Heard::Garbage(_)));
        assert_eq!(lock_answer(b"done 3 0 20 0\nshort", 3), Heard::Partial);
        assert_eq!(lock_answer(b"done 3 0", 3), Heard::Partial);
        assert_eq!(
            lock_answer(b"broken 3 9\nbad frame", 3),
            Heard::Broken("bad frame".into())
        );
        // Lengths a host chose cannot overflow or ask for more than a host keeps.
        for line in [
            "done 3 0 18446744073709551615 2\n",
            "done 3 0 99999999999999999999999 0\n",
            "done 3 0 99999999999 0\n",
            "broken 3 99999999999\n",
        ] {
            assert!(
                matches!(lock_answer(line.as_bytes(), 3), Heard::TooLarge(_)),
                "{line}"
            );
        }
        for line in ["done 3 x 0 0\n", "done 3 0 -1 0\n", "acquired\n"] {
            assert!(
                matches!(lock_answer(line.as_bytes(), 3), Heard::Garbage(_)),
                "{line}"
            );
        }
        assert!(matches!(lock_answer(&[b'x'; 200], 3), Heard::Garbage(_)));
    }

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
        // A length that would overflow is never an end.
        assert_eq!(description_end(b"describe 18446744073709551615\nx"), None);
        assert_eq!(description_end(b"acq"), Some((None, 0)));
    }
}
