//! The DATA body decoder, without I/O: bytes in, the message out.
//!
//! RFC 5321 §4.1.1.4: the body ends with `CRLF . CRLF`, and nothing else
//! ends it: `LF . LF`, `CR . CR` or `LF . CRLF` are content. §4.5.2: a line
//! starting with a period has it removed (dot-unstuffing).
//!
//! Policy on bare line ends (RFC 5321 §2.3.8: CR and LF only occur together
//! as CRLF), `smtp.bare_lf` in the config:
//! - [`BareLf::Normalize`] (default, as Postfix's `smtpd_forbid_bare_newline
//!   = normalize`): a bare LF ends a *line* and is stored as CRLF, but never
//!   the *body*: `\n.\n` or `\r\n.\n` is a content line holding `.`, which
//!   outbound SMTP dot-stuffs again, so nothing we relay can be split by a
//!   lax server downstream (SMTP smuggling). Scripts that send LF-only
//!   messages (Python's `smtplib.sendmail` with bytes) keep working.
//! - [`BareLf::Reject`]: the whole message is refused with `550 5.6.0` once
//!   its real end has been read.
//!
//! A bare CR is kept as content either way (it never ends a line here, and
//! rejecting it would refuse old but harmless mail).
//!
//! Size: once the decoded body passes the limit, bytes are counted but no
//! longer kept; the caller answers `552 5.3.4` at the end (RFC 1870 §6.3:
//! the rest of the message is read, not left in the command stream).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line (also the start of the body).
    LineStart,
    /// At the start of a line that followed a bare LF: a period here is
    /// unstuffed but `.` CRLF is content, not the end of the body.
    LineStartAfterBareLf,
    /// Inside a line.
    Middle,
    /// After a CR inside a line.
    Cr,
    /// After a period at the start of a line.
    Dot,
    /// After a period at the start of a line that followed a bare LF.
    DotAfterBareLf,
    /// After `.` `CR` at the start of a line: one LF away from the end.
    DotCr,
}

/// What to do with a bare LF in a message body (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BareLf {
    #[default]
    Normalize,
    Reject,
}

/// How the body ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataOutcome {
    /// The message, unstuffed, with CRLF line ends, terminator removed.
    Message(Vec<u8>),
    /// The body went over the limit; `size` bytes were seen.
    TooBig { size: u64 },
    /// The body contained a bare LF (see the module docs).
    BareLf,
}

#[derive(Debug)]
pub struct DataDecoder {
    state: State,
    message: Vec<u8>,
    size: u64,
    max_size: u64,
    policy: BareLf,
    bare_lf: bool,
}

impl DataDecoder {
    pub fn new(max_size: u64, policy: BareLf) -> Self {
        DataDecoder {
            state: State::LineStart,
            message: Vec::new(),
            size: 0,
            max_size,
            policy,
            bare_lf: false,
        }
    }

    /// Feeds received bytes. Returns how many were consumed and, when the
    /// terminator was among them, the outcome; bytes after the terminator
    /// are not consumed (they are the next pipelined commands).
    pub fn feed(&mut self, input: &[u8]) -> (usize, Option<DataOutcome>) {
        for (i, &byte) in input.iter().enumerate() {
            if self.step(byte) {
                return (i + 1, Some(self.finish()));
            }
        }
        (input.len(), None)
    }

    /// One byte; true at the end of the body.
    fn step(&mut self, byte: u8) -> bool {
        match (self.state, byte) {
            (State::DotCr, b'\n') => return true,
            (State::LineStart, b'.') => self.state = State::Dot,
            (State::LineStartAfterBareLf, b'.') => self.state = State::DotAfterBareLf,
            // RFC 5321 §4.5.2 still applies to the line's leading period.
            (State::DotAfterBareLf, b'\r') => {
                self.emit(b".");
                self.state = State::Middle;
                self.content(b'\r');
            }
            (State::DotAfterBareLf, other) => {
                if other == b'\n' {
                    self.emit(b".");
                }
                self.state = State::Middle;
                self.content(other);
            }
            (State::Dot, b'\r') => self.state = State::DotCr,
            // `.` then a bare LF: never the end of the body, only a content
            // line holding a period.
            (State::Dot, b'\n') => {
                self.emit(b".");
                self.state = State::Middle;
                self.content(b'\n');
            }
            // RFC 5321 §4.5.2: a leading period on a line with more
            // characters is removed; the byte after it is content.
            (State::Dot, other) => {
                self.state = State::Middle;
                self.content(other);
            }
            // `.` CR then something else than LF: the period is removed
            // (the line has other characters), the CR is a bare CR.
            (State::DotCr, other) => {
                self.emit(b"\r");
                self.state = State::Middle;
                self.content(other);
            }
            (State::Cr, b'\n') => {
                self.emit(b"\r\n");
                self.state = State::LineStart;
            }
            (State::Cr, other) => {
                self.emit(b"\r");
                self.state = State::Middle;
                self.content(other);
            }
            (State::LineStart | State::LineStartAfterBareLf | State::Middle, other) => {
                self.state = State::Middle;
                self.content(other);
            }
        }
        false
    }

    /// A byte inside a line (the state is already `Middle`).
    fn content(&mut self, byte: u8) {
        match byte {
            b'\r' => self.state = State::Cr,
            b'\n' => {
                self.bare_lf = true;
                match self.policy {
                    // A line end, stored as CRLF; the next line may be
                    // dot-unstuffed but can never end the body, since the
                    // terminator must be a real CRLF . CRLF.
                    BareLf::Normalize => {
                        self.emit(b"\r\n");
                        self.state = State::LineStartAfterBareLf;
                    }
                    // Kept as content so a line never starts after it:
                    // `\n.\n` stays in the body, refused at the end.
                    BareLf::Reject => self.emit(b"\n"),
                }
            }
            _ => self.emit(&[byte]),
        }
    }

    fn emit(&mut self, bytes: &[u8]) {
        self.size += bytes.len() as u64;
        if self.size <= self.max_size {
            self.message.extend_from_slice(bytes);
        }
    }

    fn finish(&mut self) -> DataOutcome {
        let message = std::mem::take(&mut self.message);
        if self.size > self.max_size {
            DataOutcome::TooBig { size: self.size }
        } else if self.bare_lf && self.policy == BareLf::Reject {
            DataOutcome::BareLf
        } else {
            DataOutcome::Message(message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in chunks of `chunk` bytes.
    fn decode_chunked(
        input: &[u8],
        max: u64,
        chunk: usize,
        policy: BareLf,
    ) -> (usize, Option<DataOutcome>) {
        let mut decoder = DataDecoder::new(max, policy);
        let mut consumed = 0;
        for piece in input.chunks(chunk) {
            let (n, outcome) = decoder.feed(piece);
            consumed += n;
            if outcome.is_some() {
                return (consumed, outcome);
            }
        }
        (consumed, None)
    }

    /// The same result whatever the chunking (bare LF policy: reject).
    fn decode(input: &[u8], max: u64) -> (usize, Option<DataOutcome>) {
        decode_with(input, max, BareLf::Reject)
    }

    fn decode_with(input: &[u8], max: u64, policy: BareLf) -> (usize, Option<DataOutcome>) {
        let whole = decode_chunked(input, max, input.len().max(1), policy);
        for chunk in [1, 2, 3, 7] {
            assert_eq!(
                decode_chunked(input, max, chunk, policy),
                whole,
                "chunk {chunk}"
            );
        }
        whole
    }

    fn message(bytes: &[u8]) -> Option<DataOutcome> {
        Some(DataOutcome::Message(bytes.to_vec()))
    }

    #[test]
    fn ends_at_crlf_dot_crlf_and_leaves_the_rest() {
        let input = b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n";
        let (n, outcome) = decode(input, 1000);
        assert_eq!(outcome, message(b"Subject: x\r\n\r\nhello\r\n"));
        assert_eq!(&input[n..], b"QUIT\r\n");
    }

    #[test]
    fn empty_body() {
        assert_eq!(decode(b".\r\n", 1000), (3, message(b"")));
    }

    #[test]
    fn dot_unstuffing() {
        let (_, outcome) = decode(b"..hidden\r\n...\r\n.x\r\n.\r\n", 1000);
        assert_eq!(outcome, message(b".hidden\r\n..\r\nx\r\n"));
    }

    #[test]
    fn needs_more_until_the_terminator() {
        assert_eq!(decode(b"hello\r\n.", 1000), (8, None));
        assert_eq!(decode(b"hello\r\n.\r", 1000), (9, None));
    }

    #[test]
    fn bare_lf_never_ends_the_body_and_refuses_it() {
        let input = b"a\n.\nMAIL FROM:<evil@x.example>\r\nb\r\n.\r\nNOOP\r\n";
        let (n, outcome) = decode(input, 1000);
        assert_eq!(outcome, Some(DataOutcome::BareLf));
        assert_eq!(&input[n..], b"NOOP\r\n");
    }

    #[test]
    fn other_smuggling_shapes_are_content() {
        // `\r\n.\n` and `\n.\r\n`: neither ends the body; both hold a bare LF.
        let input = b"a\r\n.\nb\r\n.\r\n";
        assert_eq!(
            decode(input, 1000),
            (input.len(), Some(DataOutcome::BareLf))
        );
        let input = b"a\n.\r\nb\r\n.\r\n";
        assert_eq!(
            decode(input, 1000),
            (input.len(), Some(DataOutcome::BareLf))
        );
        // `\r.\r`: bare CRs are content, the body goes on.
        let (_, outcome) = decode(b"a\r.\rb\r\n.\r\n", 1000);
        assert_eq!(outcome, message(b"a\r.\rb\r\n"));
        // `.` CR x at a line start: the period goes, the bare CR stays.
        let (_, outcome) = decode(b".\rx\r\n.\r\n", 1000);
        assert_eq!(outcome, message(b"\rx\r\n"));
    }

    #[test]
    fn normalize_turns_bare_lf_into_line_ends_but_never_the_end() {
        let n = |input: &[u8]| decode_with(input, 1000, BareLf::Normalize);
        // `\n.\n` is a period line; the smuggled commands are content.
        let input = b"a\n.\nMAIL FROM:<evil@x.example>\r\nb\r\n.\r\nNOOP\r\n";
        let (used, outcome) = n(input);
        assert_eq!(
            outcome,
            message(b"a\r\n.\r\nMAIL FROM:<evil@x.example>\r\nb\r\n")
        );
        assert_eq!(&input[used..], b"NOOP\r\n");
        // `\r\n.\n` and `\n.\r\n`: content too.
        assert_eq!(n(b"a\r\n.\nb\r\n.\r\n").1, message(b"a\r\n.\r\nb\r\n"));
        assert_eq!(n(b"a\n.\r\nb\r\n.\r\n").1, message(b"a\r\n.\r\nb\r\n"));
        // LF-only lines, with unstuffing of a doubled period.
        assert_eq!(
            n(b"x\n..y\n.z\n\r\n.\r\n").1,
            message(b"x\r\n.y\r\nz\r\n\r\n")
        );
        // The real terminator still ends it.
        assert_eq!(n(b"x\n\r\n.\r\n").1, message(b"x\r\n\r\n"));
    }

    #[test]
    fn normalized_output_never_holds_a_bare_lf_or_a_terminator() {
        let alphabet = b"\r\n.a";
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..5_000 {
            let mut input = Vec::new();
            for _ in 0..48 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                input.push(alphabet[(state % 4) as usize]);
            }
            input.extend_from_slice(b"\r\n.\r\n");
            if let (_, Some(DataOutcome::Message(m))) =
                decode_with(&input, 1 << 20, BareLf::Normalize)
            {
                for (i, &b) in m.iter().enumerate() {
                    if b == b'\n' {
                        assert!(i > 0 && m[i - 1] == b'\r', "bare LF in {m:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn size_limit_reads_to_the_end() {
        let input = b"0123456789\r\n0123456789\r\n.\r\nQUIT\r\n";
        let (n, outcome) = decode(input, 12);
        assert_eq!(outcome, Some(DataOutcome::TooBig { size: 24 }));
        assert_eq!(&input[n..], b"QUIT\r\n");
        // Exactly at the limit is fine.
        let (_, outcome) = decode(b"0123456789\r\n.\r\n", 12);
        assert_eq!(outcome, message(b"0123456789\r\n"));
    }

    #[test]
    fn random_input_never_panics() {
        let alphabet = b"\r\n.a";
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..5_000 {
            let mut input = Vec::new();
            for _ in 0..64 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                input.push(alphabet[(state % 4) as usize]);
            }
            let (n, _) = decode(&input, 16);
            assert!(n <= input.len());
        }
    }
}
