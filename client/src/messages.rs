//! Whole messages out of a byte stream that arrives in arbitrary pieces.
//!
//! The stream is cut by TCP wherever it likes; a consumer with a framing must hand on only
//! complete messages and checkpoint only message boundaries (a resume from the middle of a
//! length-prefixed message would read payload bytes as a prefix). [`Messages`] keeps the
//! incomplete tail of the stream and releases the complete part, with the boundaries inside
//! it, so a writer that manages only part of a batch can still tell which messages got out.
//! The cutting itself is [`proto::framing::Splitter`]'s: framing is written once.
//!
//! Without a framing every byte is a boundary and bytes pass straight through.

use proto::framing::{Framing, FramingError, Splitter};

/// Splits a stream that starts at a message boundary into complete messages.
#[derive(Debug)]
pub struct Messages {
    splitter: Option<Splitter>,
    /// Bytes received but not yet released, starting at absolute offset `start`.
    held: Vec<u8>,
    start: u64,
    /// Ends (absolute) of the complete messages in `held`, in order.
    ends: Vec<u64>,
    error: Option<FramingError>,
}

/// A run of complete messages ready to be written out.
#[derive(Debug)]
pub struct Batch<'a> {
    /// The bytes, starting at absolute offset `start`.
    pub bytes: &'a [u8],
    /// Absolute offset of `bytes[0]`.
    pub start: u64,
    /// Absolute end offsets of the messages in `bytes` (empty without a framing: then every
    /// byte is a boundary).
    pub ends: &'a [u64],
}

impl Batch<'_> {
    /// The last boundary at or before `start + written`: how far a partly written batch got.
    pub fn boundary_within(&self, written: usize) -> u64 {
        let reached = self.start + written as u64;
        if self.ends.is_empty() {
            // No framing: any byte is a boundary. With a framing and no message, `bytes` is empty.
            return reached;
        }
        match self.ends.partition_point(|&e| e <= reached) {
            0 => self.start,
            i => self.ends[i - 1],
        }
    }

    /// Where the batch ends (absolute).
    pub fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }
}

impl Messages {
    /// A splitter for a stream resumed at `offset`, which must be a message boundary.
    pub fn new(framing: Option<Framing>, max_message: u64, offset: u64) -> Messages {
        Messages {
            splitter: framing.map(|f| Splitter::at(f, max_message, offset)),
            held: Vec::new(),
            start: offset,
            ends: Vec::new(),
            error: None,
        }
    }

    /// Absolute offset of the first byte not yet released (a message boundary).
    pub fn boundary(&self) -> u64 {
        self.start
    }

    /// Takes the next bytes of the stream and returns the complete messages now available.
    /// Call [`Messages::release`] with how far the batch was written before pushing again.
    ///
    /// After a malformed message ([`Messages::error`]) the batch still holds every complete
    /// message before it, and nothing more ever comes.
    pub fn push(&mut self, chunk: &[u8]) -> Batch<'_> {
        if self.error.is_none() {
            self.held.extend_from_slice(chunk);
            if let Some(s) = &mut self.splitter {
                let ends = &mut self.ends;
                if let Err(e) = s.feed(chunk, |end| ends.push(end)) {
                    self.error = Some(e);
                }
            }
        }
        let complete = match (&self.splitter, self.ends.last()) {
            (None, _) => self.held.len(),
            (Some(_), Some(&e)) => (e - self.start) as usize,
            (Some(_), None) => 0,
        };
        Batch {
            bytes: &self.held[..complete],
            start: self.start,
            ends: &self.ends,
        }
    }

    /// Why the stream cannot be split past the last complete message, if it cannot.
    pub fn error(&self) -> Option<&FramingError> {
        self.error.as_ref()
    }

    /// Forgets everything before `boundary` (a boundary of the last batch).
    pub fn release(&mut self, boundary: u64) {
        let n = (boundary - self.start) as usize;
        self.held.drain(..n);
        self.start = boundary;
        let done = self.ends.partition_point(|&e| e <= boundary);
        self.ends.drain(..done);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newline_pieces() {
        let mut m = Messages::new(Some(Framing::Newline), 100, 10);
        let b = m.push(b"ab");
        assert!(b.bytes.is_empty());
        let b = m.push(b"c\nde\nf");
        assert_eq!(b.bytes, b"abc\nde\n");
        assert_eq!(b.ends, &[14, 17]);
        assert_eq!(b.boundary_within(5), 14);
        assert_eq!(b.boundary_within(2), 10);
        m.release(14);
        let b = m.push(b"");
        assert_eq!(b.bytes, b"de\n");
        let end = b.end();
        m.release(end);
        assert_eq!(m.boundary(), 17);
        let b = m.push(b"g\n");
        assert_eq!(b.bytes, b"fg\n");
    }

    #[test]
    fn malformed_keeps_what_came_before() {
        let mut m = Messages::new(Some(Framing::U32Be), 10, 0);
        let b = m.push(&[0, 0, 0, 1, b'x', 0, 0, 1, 0, b'y']);
        assert_eq!(b.bytes, &[0, 0, 0, 1, b'x']);
        assert!(m.error().is_some());
    }

    #[test]
    fn raw_passes_through() {
        let mut m = Messages::new(None, 100, 0);
        let b = m.push(b"xyz");
        assert_eq!(b.bytes, b"xyz");
        assert_eq!(b.boundary_within(2), 2);
        m.release(2);
        let b = m.push(b"w");
        assert_eq!(b.bytes, b"zw");
        assert_eq!(b.start, 2);
    }
}
