//! [`Decoder`]: the messages of a reader one at a time, for a program that takes framed
//! messages on its input (tswrite's stdin).
//!
//! Every message is held whole in memory before it is handed out, so the decoder has a
//! maximum message size and keeps to it: a length prefix over it is an error before anything
//! is allocated (a corrupt prefix, or the wrong framing, would otherwise ask for gigabytes),
//! and so is a delimited message that runs on past it. Length prefixes are parsed by
//! [`Splitter`], the same code that splits files; after a malformed one there is no next
//! boundary to trust, so every error is final.
//!
//! The end of the input ends the last message in the delimiter framings (an unterminated last
//! line is a message, as in the collator's `lines` mode); in the prefix framings an input that
//! ends inside a message is an error.

use std::fmt;
use std::io::{self, BufRead};

use super::{Framing, FramingError, Splitter};

/// Why the decoder stopped. Offsets are byte offsets in the input, of the start of the
/// offending message.
#[derive(Debug)]
pub enum DecodeError {
    /// Reading failed.
    Io(io::Error),
    /// A length prefix over the limit, or a malformed varint.
    Framing(FramingError),
    /// A delimited message goes on past `max` bytes with no delimiter.
    #[allow(missing_docs)] // Named in the line above.
    TooLong { offset: u64, max: u64 },
    /// The input ends `have` bytes into a length-prefixed message.
    #[allow(missing_docs)]
    Truncated { offset: u64, have: u64 },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Io(e) => e.fmt(f),
            DecodeError::Framing(e) => e.fmt(f),
            DecodeError::TooLong { offset, max } => write!(
                f,
                "the message at byte {offset} is over the limit of {max} bytes (no delimiter \
                 within it: wrong framing?)"
            ),
            DecodeError::Truncated { offset, have } => write!(
                f,
                "the input ends inside the message at byte {offset} ({have} bytes of it)"
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

impl From<io::Error> for DecodeError {
    fn from(e: io::Error) -> DecodeError {
        DecodeError::Io(e)
    }
}

/// One message as it was read: its framed bytes and where its payload lies in them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    framed: &'a [u8],
    payload: (usize, usize),
}

impl<'a> Message<'a> {
    /// The bytes consumed from the input for it: prefix or delimiter included.
    pub fn framed(&self) -> &'a [u8] {
        self.framed
    }

    /// The message itself.
    pub fn payload(&self) -> &'a [u8] {
        &self.framed[self.payload.0..self.payload.1]
    }
}

/// Reads the messages of `input` in a framing, each at most `max_message` bytes of payload.
#[derive(Debug)]
pub struct Decoder<R> {
    input: R,
    framing: Framing,
    max_message: u64,
    /// Bytes consumed from the input.
    offset: u64,
    /// The last message read, framed.
    buf: Vec<u8>,
    /// Set once an error was returned: it is returned again.
    failed: Option<String>,
}

impl<R: BufRead> Decoder<R> {
    /// A decoder at the start of a message.
    pub fn new(input: R, framing: Framing, max_message: u64) -> Decoder<R> {
        Decoder {
            input,
            framing,
            max_message,
            offset: 0,
            buf: Vec::new(),
            failed: None,
        }
    }

    /// The input, for a caller that looks at its buffer.
    pub fn get_ref(&self) -> &R {
        &self.input
    }

    /// Bytes consumed from the input so far (through the last message returned).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next message; `None` at the end of the input, on a message boundary. After an
    /// error every call fails (an I/O error of kind `InvalidData` repeats what went wrong).
    pub fn next_message(&mut self) -> Result<Option<Message<'_>>, DecodeError> {
        if let Some(why) = &self.failed {
            return Err(DecodeError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                why.clone(),
            )));
        }
        self.buf.clear();
        let read = match self.framing.delimiter() {
            Some(d) => self.read_delimited(d),
            None => self.read_prefixed(),
        };
        match read {
            Ok(None) => Ok(None),
            Ok(Some(payload)) => {
                self.offset += self.buf.len() as u64;
                Ok(Some(Message {
                    framed: &self.buf,
                    payload,
                }))
            }
            Err(e) => {
                self.failed = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Up to and including the delimiter, or the end of the input.
    fn read_delimited(&mut self, delim: u8) -> Result<Option<(usize, usize)>, DecodeError> {
        // The payload may be `max_message` bytes; its delimiter is one more.
        let limit = self.max_message.saturating_add(1);
        loop {
            let chunk = match self.input.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if chunk.is_empty() {
                if self.buf.len() as u64 > self.max_message {
                    return Err(self.too_long());
                }
                return Ok((!self.buf.is_empty()).then_some((0, self.buf.len())));
            }
            let room = limit.saturating_sub(self.buf.len() as u64);
            let window = &chunk[..chunk.len().min(usize::try_from(room).unwrap_or(usize::MAX))];
            if let Some(i) = memchr::memchr(delim, window) {
                self.buf.extend_from_slice(&window[..=i]);
                self.input.consume(i + 1);
                return Ok(Some((0, self.buf.len() - 1)));
            }
            if window.len() < chunk.len() {
                return Err(self.too_long());
            }
            let n = window.len();
            self.buf.extend_from_slice(window);
            self.input.consume(n);
        }
    }

    /// The prefix byte by byte through the splitter (at most 10 bytes), then the payload it
    /// announces, which the splitter has already held to the limit.
    fn read_prefixed(&mut self) -> Result<Option<(usize, usize)>, DecodeError> {
        let mut splitter = Splitter::at(self.framing, self.max_message, self.offset);
        let mut ended = false;
        while splitter.payload_remaining() == 0 && !ended {
            let mut byte = [0u8; 1];
            if read_some(&mut self.input, &mut byte)? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(self.truncated());
            }
            self.buf.push(byte[0]);
            splitter
                .feed(&byte, |_| ended = true)
                .map_err(DecodeError::Framing)?;
        }
        let prefix = self.buf.len();
        let payload = splitter.payload_remaining() as usize;
        self.buf.resize(prefix + payload, 0);
        let mut have = prefix;
        while have < self.buf.len() {
            let n = read_some(&mut self.input, &mut self.buf[have..])?;
            if n == 0 {
                self.buf.truncate(have);
                return Err(self.truncated());
            }
            have += n;
        }
        Ok(Some((prefix, self.buf.len())))
    }

    fn too_long(&self) -> DecodeError {
        DecodeError::TooLong {
            offset: self.offset,
            max: self.max_message,
        }
    }

    fn truncated(&self) -> DecodeError {
        DecodeError::Truncated {
            offset: self.offset,
            have: self.buf.len() as u64,
        }
    }
}

/// One `read`, retried when interrupted.
fn read_some(input: &mut impl BufRead, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match input.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message of `input`, or the error that stopped the decoder, read through a
    /// buffer of `cap` bytes.
    fn decode(
        framing: Framing,
        input: &[u8],
        max: u64,
        cap: usize,
    ) -> (Vec<Vec<u8>>, Option<DecodeError>, u64) {
        let mut d = Decoder::new(io::BufReader::with_capacity(cap, input), framing, max);
        let mut out = Vec::new();
        let mut consumed = 0;
        loop {
            match d.next_message() {
                Ok(Some(m)) => {
                    consumed += m.framed().len() as u64;
                    out.push(m.payload().to_vec());
                }
                Ok(None) => return (out, None, consumed),
                Err(e) => {
                    assert_eq!(d.offset(), consumed);
                    return (out, Some(e), consumed);
                }
            }
        }
    }

    /// `msgs` framed one after the other.
    fn framed(framing: Framing, msgs: &[&[u8]]) -> Vec<u8> {
        msgs.iter().fold(Vec::new(), |mut out, m| {
            framing.encode(m, &mut out);
            out
        })
    }

    #[test]
    fn messages_come_out_as_they_went_in() {
        let long = vec![b'x'; 300];
        let msgs: [&[u8]; 4] = [b"one", b"", &long, b"four"];
        for framing in Framing::ALL {
            let data = framed(framing, &msgs);
            for cap in [1, 2, 7, 4096] {
                let (out, err, consumed) = decode(framing, &data, 300, cap);
                assert!(err.is_none(), "{framing} {cap}: {err:?}");
                assert_eq!(out, msgs, "{framing} {cap}");
                assert_eq!(consumed, data.len() as u64);
            }
        }
    }

    #[test]
    fn an_unterminated_last_line_is_a_message() {
        let (out, err, _) = decode(Framing::Newline, b"a\nlast", 100, 3);
        assert!(err.is_none());
        assert_eq!(out, [&b"a"[..], b"last"]);
        // ...within the limit too.
        let (out, err, _) = decode(Framing::Nul, b"0123456789", 9, 4);
        assert!(out.is_empty());
        assert!(
            matches!(err, Some(DecodeError::TooLong { offset: 0, max: 9 })),
            "{err:?}"
        );
    }

    #[test]
    fn an_over_long_prefix_is_refused_before_it_is_read() {
        // 0xffffffff: four gigabytes announced, none allocated.
        let mut data = framed(Framing::U32Be, &[b"fine"]);
        data.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
        let (out, err, consumed) = decode(Framing::U32Be, &data, 1 << 20, 4096);
        assert_eq!(out, [b"fine"]);
        assert_eq!(consumed, 8);
        let e = err.unwrap();
        assert!(
            matches!(
                e,
                DecodeError::Framing(FramingError::TooLong {
                    offset: 8,
                    len: 0xffff_ffff,
                    ..
                })
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("over the limit of 1048576"), "{e}");
        // A varint of 2^62.
        let (_, err, _) = decode(
            Framing::Varint,
            &[0x80; 8].iter().chain(&[0x40]).copied().collect::<Vec<_>>(),
            1000,
            64,
        );
        assert!(matches!(
            err,
            Some(DecodeError::Framing(FramingError::TooLong { .. }))
        ));
        // Eleven continuation bytes.
        let (_, err, _) = decode(Framing::Varint, &[0x80; 11], 1000, 64);
        assert!(matches!(
            err,
            Some(DecodeError::Framing(FramingError::BadVarint { offset: 0 }))
        ));
    }

    #[test]
    fn limits_are_exact() {
        for framing in Framing::ALL {
            let data = framed(framing, &[&[b'a'; 10], &[b'b'; 11]]);
            let (out, err, consumed) = decode(framing, &data, 10, 4);
            assert_eq!(out, [vec![b'a'; 10]], "{framing}");
            assert_eq!(consumed, 10 + framing.overhead(10), "{framing}");
            let at = consumed;
            match err {
                Some(DecodeError::TooLong { offset, max: 10 }) => assert_eq!(offset, at),
                Some(DecodeError::Framing(FramingError::TooLong {
                    offset,
                    len: 11,
                    max: 10,
                })) => {
                    assert_eq!(offset, at)
                }
                e => panic!("{framing}: {e:?}"),
            }
        }
    }

    #[test]
    fn an_input_that_ends_inside_a_prefixed_message_is_an_error() {
        for framing in [Framing::U32Be, Framing::Varint] {
            let data = framed(framing, &[b"one", b"two"]);
            let first = framed(framing, &[b"one"]).len();
            for cut in first + 1..data.len() {
                let (out, err, _) = decode(framing, &data[..cut], 100, 3);
                assert_eq!(out, [b"one"], "{framing} {cut}");
                match err {
                    Some(DecodeError::Truncated { offset, have }) => {
                        assert_eq!((offset, have), (first as u64, (cut - first) as u64))
                    }
                    e => panic!("{framing} {cut}: {e:?}"),
                }
            }
        }
    }

    #[test]
    fn errors_are_final() {
        let mut d = Decoder::new(&[0xffu8; 8][..], Framing::U32Be, 10);
        assert!(d.next_message().is_err());
        let again = d.next_message().unwrap_err();
        assert!(again.to_string().contains("over the limit"), "{again}");
    }
}
