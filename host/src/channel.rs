//! The grammar of what a run sends the lock holder (`lock.rs`) on its stdin,
//! read one byte at a time by one state machine that fails closed: the first
//! byte that does not fit ends the channel, and nothing after it is framed.
//!
//! ```text
//! stream      = holder-line *( beat / request )
//! holder-line = "hold " SECONDS " " TEXT LF    ; at most MAX_HOLDER_LINE bytes before LF
//! beat        = "h"
//! request     = ( "x" / "&" ) SEQ 1*( " " WORD ) LF LENGTH LF INPUT
//!                                              ; at most MAX_STEP_LINE bytes before LF
//! SEQ         = the request's number: 1 for the first, then one more each time
//! WORD        = 1*( %x21-7E )                 ; printable ASCII, no space
//! TEXT        = *( %x20-7E )                  ; printable ASCII
//! SECONDS     = LENGTH = "0" / %x31-39 *DIGIT  ; within their limits
//! INPUT       = exactly LENGTH bytes, any bytes
//! ```
//!
//! `&` asks for the step only if the one before it succeeded. SECONDS is how
//! long the run may still take (the holder caps it with root's limit). A
//! value inside INPUT is data, whatever it looks like: only a reader that
//! lost count of INPUT could take it for a request, and this one either
//! counts exactly or stops.

use super::MAX_FILE_BYTES;

/// The longest holder line, without its LF.
pub const MAX_HOLDER_LINE: usize = 2048;
/// The longest request line (`xSEQ STEP SERVICE [ARG]`), without its LF.
pub const MAX_STEP_LINE: usize = 512;
/// The most stdin one request carries: a staged file.
pub const MAX_INPUT: u64 = MAX_FILE_BYTES;
/// The most digits a length or a number of seconds has.
const MAX_DIGITS: usize = 7;
/// The longest run a holder line may announce, in seconds (root's limit is lower or equal).
pub const MAX_SECONDS: u64 = 9_999_999;

/// The first line: how long the run may take, and who it is (no secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub seconds: u64,
    pub text: String,
}

/// One step the run asked for.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// Its number: the answer names it.
    pub seq: u64,
    pub words: Vec<String>,
    pub input: Vec<u8>,
    /// Sent with `&`: only when the request before it succeeded.
    pub after_success: bool,
}

impl Drop for Request {
    fn drop(&mut self) {
        // A staged file's bytes do not outlive the request.
        wipe(&mut self.input);
    }
}

/// Zeroes bytes that held a secret.
pub fn wipe(bytes: &mut [u8]) {
    bytes.fill(0);
    std::hint::black_box(bytes);
}

/// Something whole on the channel.
#[derive(Debug, PartialEq, Eq)]
pub enum Framed {
    Holder(Holder),
    Request(Request),
}

/// Why the channel ended: the number of the request the reader was at (0
/// for the holder line) and what did not fit. Nothing after it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    pub seq: u64,
    pub reason: &'static str,
}

/// What one feed framed, and whether the channel broke after it.
#[derive(Debug, Default)]
pub struct Fed {
    pub framed: Vec<Framed>,
    pub broken: Option<Broken>,
}

#[derive(Default)]
enum State {
    /// The holder line so far.
    #[default]
    HolderLine,
    /// Between requests: beats until a marker.
    Idle,
    /// A request line so far (after its marker).
    Line { after_success: bool },
    /// The length line so far.
    Length {
        words: Vec<String>,
        after_success: bool,
    },
    /// The input so far, and how long it is to be.
    Input(Request, usize),
    /// Ended: nothing more is read.
    Broken(Broken),
}

/// The holder's reader: bytes in, whole holder line and requests out.
#[derive(Default)]
pub struct Reader {
    state: State,
    /// The current line (holder, request or length).
    line: Vec<u8>,
    /// The number the next request must carry.
    next_seq: u64,
    /// Requests still allowed to start; None for no bound.
    may_start: Option<usize>,
}

impl Reader {
    pub fn new() -> Reader {
        Reader {
            next_seq: 1,
            ..Reader::default()
        }
    }

    /// Allows at most `count` more requests to start (None: no bound): a
    /// holder still waiting for its lock takes no more than the run sends
    /// with the lock step.
    pub fn limit_requests(&mut self, count: Option<usize>) {
        self.may_start = count;
    }

    /// Whether a frame is partway read (silence then is not a pause between steps).
    pub fn in_frame(&self) -> bool {
        !matches!(self.state, State::Idle | State::Broken(_))
    }

    /// The number of the request being read, or due next.
    pub fn position(&self) -> u64 {
        match &self.state {
            State::HolderLine => 0,
            State::Input(request, _) => request.seq,
            _ => self.next_seq,
        }
    }

    /// Whether the channel has ended.
    pub fn broken(&self) -> Option<&Broken> {
        match &self.state {
            State::Broken(broken) => Some(broken),
            _ => None,
        }
    }

    /// Reads `bytes`: whatever they complete, and where the channel broke.
    pub fn feed(&mut self, bytes: &[u8]) -> Fed {
        let mut fed = Fed::default();
        let mut rest = bytes;
        while !rest.is_empty() {
            if let State::Broken(_) = self.state {
                break;
            }
            if let State::Input(request, want) = &mut self.state {
                // Input is data: taken by count, never looked at.
                let take = (*want - request.input.len()).min(rest.len());
                request.input.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if request.input.len() == *want {
                    let State::Input(request, _) = std::mem::take(&mut self.state) else {
                        unreachable!("matched above");
                    };
                    fed.framed.push(Framed::Request(request));
                    self.state = State::Idle;
                }
                continue;
            }
            let byte = rest[0];
            rest = &rest[1..];
            let at = self.position();
            match self.byte(byte) {
                Ok(Some(framed)) => fed.framed.push(framed),
                Ok(None) => {}
                Err(reason) => {
                    let broken = Broken { seq: at, reason };
                    wipe(&mut self.line);
                    self.line.clear();
                    self.state = State::Broken(broken);
                }
            }
        }
        fed.broken = self.broken().cloned();
        fed
    }

    /// One byte outside a request's input.
    fn byte(&mut self, byte: u8) -> Result<Option<Framed>, &'static str> {
        match std::mem::take(&mut self.state) {
            State::HolderLine if byte == b'\n' => {
                let holder = holder_line(&self.line)?;
                self.line.clear();
                self.state = State::Idle;
                Ok(Some(Framed::Holder(holder)))
            }
            State::HolderLine => {
                self.push(byte, MAX_HOLDER_LINE, "the holder line is too long")?;
                self.state = State::HolderLine;
                Ok(None)
            }
            State::Idle => {
                let after_success = match byte {
                    b'h' => {
                        self.state = State::Idle;
                        return Ok(None);
                    }
                    b'x' => false,
                    b'&' => true,
                    _ => return Err("a byte between requests is neither a beat nor a request"),
                };
                match &mut self.may_start {
                    Some(0) => {
                        return Err("more requests than a run sends before it holds the lock")
                    }
                    Some(left) => *left -= 1,
                    None => {}
                }
                self.state = State::Line { after_success };
                Ok(None)
            }
            State::Line { after_success } if byte == b'\n' => {
                let words = self.request_line()?;
                self.line.clear();
                self.state = State::Length {
                    words,
                    after_success,
                };
                Ok(None)
            }
            State::Line { after_success } => {
                self.push(byte, MAX_STEP_LINE, "a request line is too long")?;
                self.state = State::Line { after_success };
                Ok(None)
            }
            State::Length {
                words,
                after_success,
            } if byte == b'\n' => {
                let length = number(&self.line, MAX_INPUT)
                    .ok_or("a request's length is not a size the holder takes")?;
                self.line.clear();
                let request = Request {
                    seq: self.next_seq,
                    words,
                    input: Vec::new(),
                    after_success,
                };
                self.next_seq += 1;
                if length == 0 {
                    self.state = State::Idle;
                    return Ok(Some(Framed::Request(request)));
                }
                let length = length as usize;
                let mut request = request;
                request.input.reserve_exact(length);
                self.state = State::Input(request, length);
                Ok(None)
            }
            State::Length {
                words,
                after_success,
            } => {
                if !byte.is_ascii_digit() || self.line.len() >= MAX_DIGITS {
                    return Err("a request's length is not a size the holder takes");
                }
                self.line.push(byte);
                self.state = State::Length {
                    words,
                    after_success,
                };
                Ok(None)
            }
            State::Input(..) | State::Broken(_) => unreachable!("handled by feed"),
        }
    }

    /// Adds a printable byte to the current line, within `max`.
    fn push(&mut self, byte: u8, max: usize, too_long: &'static str) -> Result<(), &'static str> {
        if !(0x20..=0x7e).contains(&byte) {
            return Err("a line holds a byte that is not printable ASCII");
        }
        if self.line.len() >= max {
            return Err(too_long);
        }
        self.line.push(byte);
        Ok(())
    }

    /// `SEQ WORD...`: the number must be the one due, every word non-empty.
    fn request_line(&self) -> Result<Vec<String>, &'static str> {
        let text = std::str::from_utf8(&self.line).map_err(|_| "not ASCII")?;
        let mut fields = text.split(' ');
        let seq = fields.next().unwrap_or_default();
        if number(seq.as_bytes(), u64::MAX) != Some(self.next_seq) {
            return Err("a request does not carry the number due");
        }
        let words: Vec<String> = fields.map(str::to_string).collect();
        if words.is_empty() || words.iter().any(String::is_empty) {
            return Err("a request line is not words separated by single spaces");
        }
        Ok(words)
    }
}

/// `hold SECONDS TEXT`.
fn holder_line(line: &[u8]) -> Result<Holder, &'static str> {
    let malformed = "the holder line is not `hold SECONDS TEXT`";
    let rest = line.strip_prefix(b"hold ").ok_or(malformed)?;
    let space = rest.iter().position(|b| *b == b' ').ok_or(malformed)?;
    let seconds = number(&rest[..space], MAX_SECONDS)
        .filter(|s| *s > 0)
        .ok_or(malformed)?;
    let text = String::from_utf8(rest[space + 1..].to_vec()).map_err(|_| malformed)?;
    Ok(Holder { seconds, text })
}

/// A decimal number without a leading zero (but `0`), at most `max`.
fn number(digits: &[u8], max: u64) -> Option<u64> {
    let plain = !digits.is_empty()
        && digits.len() <= 20
        && digits.iter().all(u8::is_ascii_digit)
        && (digits == b"0" || digits[0] != b'0');
    plain
        .then(|| std::str::from_utf8(digits).ok()?.parse::<u64>().ok())
        .flatten()
        .filter(|n| *n <= max)
}

/// The request line a run sends for `words` as request `seq` (`x`, or `&`
/// for "only after the one before it succeeded"), with its length line:
/// what the reader above takes, and None for what it would refuse.
pub fn request_head(
    seq: u64,
    after_success: bool,
    words: &[String],
    input: usize,
) -> Option<String> {
    let marker = if after_success { '&' } else { 'x' };
    let line = format!("{seq} {}", words.join(" "));
    let fits = !words.is_empty()
        && line.len() <= MAX_STEP_LINE
        && words
            .iter()
            .all(|w| !w.is_empty() && w.bytes().all(|b| (0x21..=0x7e).contains(&b)))
        && input as u64 <= MAX_INPUT;
    fits.then(|| format!("{marker}{line}\n{input}\n"))
}

/// The holder line for a run of at most `seconds` that describes itself as
/// `text`; None for what the reader would refuse.
pub fn holder_head(seconds: u64, text: &str) -> Option<String> {
    let line = format!("hold {seconds} {text}");
    let fits = (1..=MAX_SECONDS).contains(&seconds)
        && line.len() <= MAX_HOLDER_LINE
        && text.bytes().all(|b| (0x20..=0x7e).contains(&b));
    fits.then(|| format!("{line}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        text.split(' ').map(str::to_string).collect()
    }

    fn requests(fed: &Fed) -> Vec<(u64, Vec<String>, Vec<u8>, bool)> {
        fed.framed
            .iter()
            .filter_map(|f| match f {
                Framed::Request(r) => {
                    Some((r.seq, r.words.clone(), r.input.clone(), r.after_success))
                }
                Framed::Holder(_) => None,
            })
            .collect()
    }

    #[test]
    fn a_well_framed_stream_reads_back_split_anywhere() {
        let mut stream = holder_head(600, "{\"by\":\"ci\"}").unwrap().into_bytes();
        stream.extend(b"hh");
        let file = b"A=1\nxstage voxbridge\n0\n&switch voxbridge\n0\n";
        stream.extend(
            request_head(1, false, &words("stage voxbridge"), file.len())
                .unwrap()
                .bytes(),
        );
        stream.extend(file);
        stream.extend(b"h");
        stream.extend(
            request_head(2, true, &words("switch voxbridge"), 0)
                .unwrap()
                .bytes(),
        );
        for split in 0..stream.len() {
            let mut reader = Reader::new();
            let (a, b) = stream.split_at(split);
            let mut first = reader.feed(a);
            let second = reader.feed(b);
            assert!(first.broken.is_none() && second.broken.is_none(), "{split}");
            first.framed.extend(second.framed);
            assert_eq!(
                first.framed[0],
                Framed::Holder(Holder {
                    seconds: 600,
                    text: "{\"by\":\"ci\"}".into()
                })
            );
            assert_eq!(
                requests(&first),
                [
                    (1, words("stage voxbridge"), file.to_vec(), false),
                    (2, words("switch voxbridge"), vec![], true)
                ],
                "{split}"
            );
        }
    }

    #[test]
    fn the_first_malformed_byte_ends_the_channel() {
        let head = holder_head(60, "ci").unwrap();
        for (tail, seq) in [
            // Not a beat, not a marker.
            ("y", 1),
            ("\n", 1),
            // Out of order, missing, or with a leading zero.
            ("x2 read voxbridge\n0\n", 1),
            ("xread voxbridge\n0\n", 1),
            ("x01 read voxbridge\n0\n", 1),
            // Double spaces, a trailing space, a control character.
            ("x1 read  voxbridge\n0\n", 1),
            ("x1 read voxbridge \n0\n", 1),
            ("x1 read\tvoxbridge\n0\n", 1),
            // Lengths: too many digits, a leading zero, a sign, too large.
            ("x1 read voxbridge\n00\n", 1),
            ("x1 read voxbridge\n+1\n", 1),
            ("x1 read voxbridge\n99999999\n", 1),
            ("x1 read voxbridge\n4194305\n", 1),
            ("x1 read voxbridge\n\n", 1),
        ] {
            let mut reader = Reader::new();
            let fed = reader.feed(format!("{head}{tail}x2 restore voxbridge 0\n0\n").as_bytes());
            assert_eq!(requests(&fed), [], "{tail:?}");
            assert_eq!(fed.broken.as_ref().map(|b| b.seq), Some(seq), "{tail:?}");
            // Nothing after it is read, whatever comes.
            let again = reader.feed(b"x1 read voxbridge\n0\n");
            assert!(again.framed.is_empty());
        }
        // A step line too long, and a holder line too long, end the channel
        // at the byte past the limit: what follows is never a request.
        let mut reader = Reader::new();
        let long = format!("{head}x1 {}\n0\nx2 read voxbridge\n0\n", "a".repeat(600));
        let fed = reader.feed(long.as_bytes());
        assert_eq!(
            fed.broken.as_ref().unwrap().reason,
            "a request line is too long"
        );
        assert!(requests(&fed).is_empty());
        let mut reader = Reader::new();
        let long = format!("hold 60 {}\nx1 restore voxbridge 0\n0\n", "b".repeat(3000));
        let fed = reader.feed(long.as_bytes());
        assert_eq!(fed.broken.unwrap().seq, 0);
        assert!(fed.framed.is_empty());
        for bad in [
            "hold 0 x\n",
            "hold 60\n",
            "hold x y\n",
            "hello\n",
            "hold 060 x\n",
        ] {
            let fed = Reader::new().feed(bad.as_bytes());
            assert!(fed.broken.is_some(), "{bad:?}");
        }
    }

    #[test]
    fn a_value_that_looks_like_requests_is_input() {
        let value =
            b"\n\n\nx2 stage voxbridge\n27\nPWNED=attacker-chosen-file\n&3 switch voxbridge\n0\n";
        let mut stream = holder_head(60, "ci").unwrap().into_bytes();
        stream.extend(
            request_head(1, false, &words("stage voxbridge"), value.len())
                .unwrap()
                .bytes(),
        );
        stream.extend(value);
        let fed = Reader::new().feed(&stream);
        assert!(fed.broken.is_none());
        assert_eq!(
            requests(&fed),
            [(1, words("stage voxbridge"), value.to_vec(), false)]
        );
    }

    #[test]
    fn a_waiting_holder_takes_no_more_than_one_request() {
        let mut reader = Reader::new();
        reader.limit_requests(Some(1));
        let mut stream = holder_head(60, "ci").unwrap();
        stream.push_str("x1 stage voxbridge\n1\nAx2 audit voxbridge\n2\n{}");
        let fed = reader.feed(stream.as_bytes());
        assert_eq!(requests(&fed).len(), 1);
        assert_eq!(fed.broken.unwrap().seq, 2);
    }

    #[test]
    fn the_agent_side_heads_are_refused_where_the_reader_would_refuse_them() {
        assert_eq!(
            request_head(3, true, &words("read voxbridge"), 0).unwrap(),
            "&3 read voxbridge\n0\n"
        );
        assert!(request_head(1, false, &words("read vox bridge"), 0).is_some());
        assert!(request_head(1, false, &["read".into(), "".into()], 0).is_none());
        assert!(request_head(1, false, &["re ad".into()], 0).is_none());
        assert!(request_head(1, false, &["a\nb".into()], 0).is_none());
        assert!(request_head(1, false, &[("a".repeat(600))], 0).is_none());
        assert!(request_head(1, false, &words("stage voxbridge"), 4 << 20).is_some());
        assert!(request_head(1, false, &words("stage voxbridge"), (4 << 20) + 1).is_none());
        assert!(holder_head(60, &"x".repeat(MAX_HOLDER_LINE)).is_none());
        assert!(holder_head(60, "caf\u{e9}").is_none());
        assert!(holder_head(0, "x").is_none());
    }
}
