//! [`Splitter`]: where each message of a stream ends, fed in pieces cut anywhere.
//!
//! It is incremental because the stream arrives in pieces cut anywhere, inside a length
//! prefix too: it keeps the partial prefix between calls and reports a message only once its
//! last byte has been fed, so half a message is never counted. Delimiters are found with
//! memchr; payloads of length-prefixed messages are skipped by arithmetic, never scanned, and
//! a reader may even skip them without reading ([`Splitter::skip_payload`]).
//!
//! A malformed prefix (a length over the configured maximum, or a varint longer than 10
//! bytes) is not something to resynchronise from: every later boundary would be a guess. The
//! splitter fails for good at that point and keeps returning the same error.

use std::fmt;

use super::Framing;

/// Longest valid LEB128 encoding of a u64.
const MAX_VARINT_LEN: u8 = 10;

/// Why the stream cannot be split any further. Offsets are absolute stream offsets of the
/// start of the offending message (its prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FramingError {
    /// A length prefix says `len`, more than the allowed `max`.
    #[allow(missing_docs)] // Named in the line above.
    TooLong { offset: u64, len: u64, max: u64 },
    /// A varint prefix longer than 10 bytes, or one that overflows 64 bits.
    #[allow(missing_docs)]
    BadVarint { offset: u64 },
}

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FramingError::TooLong { offset, len, max } => write!(
                f,
                "message at byte {offset} claims {len} bytes, over the limit of {max} (corrupt prefix or wrong framing?)"
            ),
            FramingError::BadVarint { offset } => write!(
                f,
                "malformed varint length prefix at byte {offset} (longer than 10 bytes or over 64 bits)"
            ),
        }
    }
}

impl std::error::Error for FramingError {}

/// Where the splitter is inside the current message.
#[derive(Debug, Clone, Copy)]
enum State {
    /// Reading a length prefix that started at `start`: `value` so far from `have` bytes.
    Prefix { start: u64, value: u64, have: u8 },
    /// Inside a payload, `remaining` bytes to go (never 0: a finished payload is reported at once).
    Payload { remaining: u64 },
    /// Delimiter framings: just scanning for the next delimiter.
    Scan,
    /// Failed for good.
    Failed,
}

/// Incremental splitter: feed the stream's bytes in order, in chunks split anywhere (inside a
/// length prefix too); it reports the absolute end offset of every complete message. Skips
/// payloads without scanning them.
#[derive(Debug, Clone)]
pub struct Splitter {
    framing: Framing,
    max_message: u64,
    offset: u64,
    /// End of the last complete message (or where we started).
    boundary: u64,
    state: State,
    error: Option<FramingError>,
}

impl Splitter {
    /// A splitter at stream offset 0, on a message boundary.
    pub fn new(framing: Framing, max_message: u64) -> Self {
        Self::at(framing, max_message, 0)
    }

    /// A splitter resuming at `offset`, which must be a message boundary.
    pub fn at(framing: Framing, max_message: u64, offset: u64) -> Self {
        Splitter {
            framing,
            max_message,
            offset,
            boundary: offset,
            state: Self::boundary_state(framing, offset),
            error: None,
        }
    }

    fn boundary_state(framing: Framing, offset: u64) -> State {
        match framing {
            Framing::Newline | Framing::Nul => State::Scan,
            Framing::U32Be | Framing::Varint => State::Prefix {
                start: offset,
                value: 0,
                have: 0,
            },
        }
    }

    /// The framing this splitter splits.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Bytes consumed so far (absolute stream offset).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The error the splitter failed with, if it has.
    pub fn error(&self) -> Option<&FramingError> {
        self.error.as_ref()
    }

    /// End offset of the last complete message seen (where the next message starts).
    pub fn boundary(&self) -> u64 {
        self.boundary
    }

    /// Whether the bytes consumed so far end exactly on a message boundary.
    pub fn at_boundary(&self) -> bool {
        self.error.is_none() && self.boundary == self.offset
    }

    /// Payload bytes of the current message still to come. A reader that knows those bytes
    /// are in the file may [`skip_payload`](Self::skip_payload) instead of reading them.
    /// Always 0 for the delimiter framings, whose payload must be scanned.
    pub fn payload_remaining(&self) -> u64 {
        match self.state {
            State::Payload { remaining } => remaining,
            _ => 0,
        }
    }

    /// For the delimiter framings: advances to `to` over bytes that were split elsewhere
    /// (the indexer splits big ranges on several threads), the last message among them
    /// ending at `last_end`, if one did. Does nothing for the prefix framings, whose state
    /// cannot be known without reading in order.
    pub fn skip_scanned(&mut self, to: u64, last_end: Option<u64>) {
        if !matches!(self.state, State::Scan) || to < self.offset {
            return;
        }
        self.offset = to;
        if let Some(end) = last_end {
            self.boundary = end.clamp(self.boundary, to);
        }
    }

    /// Advances over `n` payload bytes without looking at them; `n` is capped at
    /// [`payload_remaining`](Self::payload_remaining). Reports the message's end if reached.
    pub fn skip_payload(&mut self, n: u64, mut on_end: impl FnMut(u64)) {
        if let State::Payload { remaining } = self.state {
            let n = n.min(remaining);
            self.offset += n;
            if n == remaining {
                self.boundary = self.offset;
                on_end(self.offset);
                self.state = Self::boundary_state(self.framing, self.offset);
            } else {
                self.state = State::Payload {
                    remaining: remaining - n,
                };
            }
        }
    }

    /// Consumes the next `chunk` of the stream, calling `on_end` with the absolute end offset
    /// of every message completed in it, in order. After an error, the bytes from the
    /// malformed prefix on are not consumed and every later call returns the same error.
    pub fn feed(&mut self, chunk: &[u8], mut on_end: impl FnMut(u64)) -> Result<(), FramingError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        match self.framing {
            Framing::Newline => self.feed_delimited(b'\n', chunk, on_end),
            Framing::Nul => self.feed_delimited(0, chunk, on_end),
            Framing::U32Be | Framing::Varint => {
                let mut rest = chunk;
                while !rest.is_empty() {
                    match self.state {
                        State::Payload { .. } => {
                            let n = (rest.len() as u64).min(self.payload_remaining());
                            self.skip_payload(n, &mut on_end);
                            rest = &rest[n as usize..];
                        }
                        State::Prefix { .. } => {
                            let used = self.feed_prefix(rest, &mut on_end)?;
                            rest = &rest[used..];
                        }
                        State::Scan | State::Failed => unreachable!("not a prefixed state"),
                    }
                }
                Ok(())
            }
        }
    }

    /// Like [`feed`](Self::feed), for readers that only need every `stride`-th message end
    /// (an index with one entry per `stride` messages). `until_mark` counts the message ends
    /// still to pass before the next one reported to `on_mark` (1 means the very next end);
    /// it is reset to `stride` after each report. Returns how many messages the chunk
    /// completed.
    ///
    /// Why it exists: with the delimiter framings it counts delimiters with SIMD in blocks and
    /// only locates the few that are reported, instead of visiting every one. That is what
    /// makes a cold index build run at `wc -l` speed.
    pub fn feed_sparse(
        &mut self,
        chunk: &[u8],
        stride: u64,
        until_mark: &mut u64,
        mut on_mark: impl FnMut(u64),
    ) -> Result<u64, FramingError> {
        let stride = stride.max(1);
        if *until_mark == 0 {
            *until_mark = stride;
        }
        let mut completed = 0u64;
        let Some(delim) = self.framing.delimiter() else {
            self.feed(chunk, |e| {
                completed += 1;
                *until_mark -= 1;
                if *until_mark == 0 {
                    on_mark(e);
                    *until_mark = stride;
                }
            })?;
            return Ok(completed);
        };
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        /// Small enough that locating a mark inside a block is cheap, large enough that
        /// counting a block is mostly SIMD work.
        const BLOCK: usize = 2048;
        let base = self.offset;
        let mut pos = 0;
        while pos < chunk.len() {
            let block = &chunk[pos..(pos + BLOCK).min(chunk.len())];
            let found = bytecount::count(block, delim) as u64;
            if found < *until_mark {
                *until_mark -= found;
                completed += found;
                pos += block.len();
                continue;
            }
            let Some(i) = memchr::memchr_iter(delim, block).nth(*until_mark as usize - 1) else {
                unreachable!("the block holds at least until_mark delimiters")
            };
            completed += *until_mark;
            pos += i + 1;
            on_mark(base + pos as u64);
            *until_mark = stride;
        }
        if let Some(last) = memchr::memrchr(delim, chunk) {
            self.boundary = base + last as u64 + 1;
        }
        self.offset += chunk.len() as u64;
        Ok(completed)
    }

    fn feed_delimited(
        &mut self,
        delim: u8,
        chunk: &[u8],
        mut on_end: impl FnMut(u64),
    ) -> Result<(), FramingError> {
        let base = self.offset;
        for i in memchr::memchr_iter(delim, chunk) {
            self.boundary = base + i as u64 + 1;
            on_end(self.boundary);
        }
        self.offset += chunk.len() as u64;
        Ok(())
    }

    /// Consumes prefix bytes from `bytes` (non-empty); returns how many were used.
    fn feed_prefix(
        &mut self,
        bytes: &[u8],
        on_end: &mut impl FnMut(u64),
    ) -> Result<usize, FramingError> {
        let State::Prefix {
            start,
            mut value,
            mut have,
        } = self.state
        else {
            unreachable!("feed_prefix outside a prefix")
        };
        let mut used = 0;
        let mut complete = false;
        match self.framing {
            Framing::U32Be => {
                let take = (4 - have as usize).min(bytes.len());
                for &b in &bytes[..take] {
                    value = (value << 8) | u64::from(b);
                }
                have += take as u8;
                used = take;
                complete = have == 4;
            }
            Framing::Varint => {
                for &b in bytes {
                    used += 1;
                    let bits = u64::from(b & 0x7f);
                    let shift = 7 * u32::from(have);
                    // The 10th byte may only carry the top bit of a u64 and must end the varint.
                    if have == MAX_VARINT_LEN - 1 && (bits > 1 || b & 0x80 != 0) {
                        return Err(self.fail(FramingError::BadVarint { offset: start }));
                    }
                    value |= bits << shift;
                    have += 1;
                    if b & 0x80 == 0 {
                        complete = true;
                        break;
                    }
                }
            }
            Framing::Newline | Framing::Nul => unreachable!("delimiter framings have no prefix"),
        }
        self.offset += used as u64;
        if !complete {
            self.state = State::Prefix { start, value, have };
            return Ok(used);
        }
        if value > self.max_message {
            // The prefix is not consumed: the splitter stops on the boundary before it.
            self.offset = start;
            return Err(self.fail(FramingError::TooLong {
                offset: start,
                len: value,
                max: self.max_message,
            }));
        }
        if value == 0 {
            self.boundary = self.offset;
            on_end(self.offset);
            self.state = Self::boundary_state(self.framing, self.offset);
        } else {
            self.state = State::Payload { remaining: value };
        }
        Ok(used)
    }

    fn fail(&mut self, e: FramingError) -> FramingError {
        if let FramingError::BadVarint { offset } = e {
            self.offset = offset;
        }
        self.state = State::Failed;
        self.error = Some(e.clone());
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::DEFAULT_MAX_MESSAGE;

    /// Independent encoders and a naive, whole-buffer reference splitter.
    fn u32be(msgs: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in msgs {
            out.extend_from_slice(&(m.len() as u32).to_be_bytes());
            out.extend_from_slice(m);
        }
        out
    }

    fn leb128(mut n: u64, out: &mut Vec<u8>) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn varint(msgs: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in msgs {
            leb128(m.len() as u64, &mut out);
            out.extend_from_slice(m);
        }
        out
    }

    fn delimited(msgs: &[Vec<u8>], d: u8) -> Vec<u8> {
        let mut out = Vec::new();
        for m in msgs {
            out.extend(m.iter().map(|&b| if b == d { d ^ 1 } else { b }));
            out.push(d);
        }
        out
    }

    /// Message ends computed from the message lengths, the way a writer would know them.
    fn expected_ends(framing: Framing, msgs: &[Vec<u8>]) -> Vec<u64> {
        let mut ends = Vec::new();
        let mut pos = 0u64;
        for m in msgs {
            let prefix = match framing {
                Framing::Newline | Framing::Nul => 1,
                Framing::U32Be => 4,
                Framing::Varint => {
                    let mut v = Vec::new();
                    leb128(m.len() as u64, &mut v);
                    v.len() as u64
                }
            };
            pos += prefix + m.len() as u64;
            ends.push(pos);
        }
        ends
    }

    fn encode(framing: Framing, msgs: &[Vec<u8>]) -> Vec<u8> {
        match framing {
            Framing::Newline => delimited(msgs, b'\n'),
            Framing::Nul => delimited(msgs, 0),
            Framing::U32Be => u32be(msgs),
            Framing::Varint => varint(msgs),
        }
    }

    fn split_in(framing: Framing, data: &[u8], cuts: &[usize]) -> Result<Vec<u64>, FramingError> {
        let mut s = Splitter::new(framing, DEFAULT_MAX_MESSAGE);
        let mut ends = Vec::new();
        let mut prev = 0;
        for &c in cuts.iter().chain(std::iter::once(&data.len())) {
            s.feed(&data[prev..c], |e| ends.push(e))?;
            prev = c;
        }
        assert_eq!(s.offset(), data.len() as u64);
        Ok(ends)
    }

    fn small_messages() -> Vec<Vec<u8>> {
        vec![
            b"ab".to_vec(),
            vec![],
            b"x".to_vec(),
            (0..200u8).collect(), // varint prefix of 2 bytes
            vec![],
            b"hello".to_vec(),
        ]
    }

    #[test]
    fn every_single_and_double_split_point() {
        let msgs = small_messages();
        for framing in Framing::ALL {
            let data = encode(framing, &msgs);
            let want = expected_ends(framing, &msgs);
            assert_eq!(split_in(framing, &data, &[]).unwrap(), want, "{framing}");
            for i in 0..=data.len() {
                assert_eq!(
                    split_in(framing, &data, &[i]).unwrap(),
                    want,
                    "{framing} @{i}"
                );
                for j in i..=data.len() {
                    assert_eq!(
                        split_in(framing, &data, &[i, j]).unwrap(),
                        want,
                        "{framing} @{i},{j}"
                    );
                }
            }
            // One byte at a time.
            let cuts: Vec<usize> = (1..data.len()).collect();
            assert_eq!(
                split_in(framing, &data, &cuts).unwrap(),
                want,
                "{framing} bytewise"
            );
        }
    }

    #[test]
    fn partial_message_is_not_counted() {
        for framing in Framing::ALL {
            let msgs = small_messages();
            let data = encode(framing, &msgs);
            let want = expected_ends(framing, &msgs);
            for cut in 0..data.len() {
                let mut s = Splitter::new(framing, DEFAULT_MAX_MESSAGE);
                let mut ends = Vec::new();
                s.feed(&data[..cut], |e| ends.push(e)).unwrap();
                let complete: Vec<u64> =
                    want.iter().copied().filter(|&e| e <= cut as u64).collect();
                assert_eq!(ends, complete, "{framing} cut {cut}");
                assert_eq!(
                    s.at_boundary(),
                    complete.last().copied().unwrap_or(0) == cut as u64
                );
            }
        }
    }

    #[test]
    fn resume_at_a_boundary() {
        for framing in Framing::ALL {
            let msgs = small_messages();
            let data = encode(framing, &msgs);
            let want = expected_ends(framing, &msgs);
            let at = want[2];
            let mut s = Splitter::at(framing, DEFAULT_MAX_MESSAGE, at);
            let mut ends = Vec::new();
            s.feed(&data[at as usize..], |e| ends.push(e)).unwrap();
            assert_eq!(ends, want[3..], "{framing}");
        }
    }

    #[test]
    fn skipping_payloads_without_data() {
        for framing in [Framing::U32Be, Framing::Varint] {
            let msgs = small_messages();
            let data = encode(framing, &msgs);
            let want = expected_ends(framing, &msgs);
            let mut s = Splitter::new(framing, DEFAULT_MAX_MESSAGE);
            let mut ends = Vec::new();
            while (s.offset() as usize) < data.len() {
                if s.payload_remaining() > 0 {
                    s.skip_payload(u64::MAX, |e| ends.push(e));
                } else {
                    let o = s.offset() as usize;
                    s.feed(&data[o..o + 1], |e| ends.push(e)).unwrap();
                }
            }
            assert_eq!(ends, want, "{framing}");
        }
    }

    #[test]
    fn long_varints() {
        let len = 300_000u64; // 3-byte prefix
        let mut data = Vec::new();
        leb128(len, &mut data);
        data.resize(data.len() + len as usize, 7);
        let mut s = Splitter::new(Framing::Varint, DEFAULT_MAX_MESSAGE);
        let mut ends = Vec::new();
        for c in data.chunks(1000) {
            s.feed(c, |e| ends.push(e)).unwrap();
        }
        assert_eq!(ends, [3 + len]);
    }

    #[test]
    fn too_long_is_sticky() {
        let max = 100;
        for framing in [Framing::U32Be, Framing::Varint] {
            let ok = encode(framing, &[vec![1; 10]]);
            let bad = encode(framing, &[vec![1; 101]]);
            let mut data = ok.clone();
            data.extend_from_slice(&bad);
            for cut in 0..data.len() {
                let mut s = Splitter::new(framing, max);
                let mut ends = Vec::new();
                let r = s
                    .feed(&data[..cut], |e| ends.push(e))
                    .and_then(|()| s.feed(&data[cut..], |e| ends.push(e)));
                let want = FramingError::TooLong {
                    offset: ok.len() as u64,
                    len: 101,
                    max,
                };
                assert_eq!(r, Err(want.clone()), "{framing} cut {cut}");
                assert_eq!(ends, [ok.len() as u64]);
                assert_eq!(s.offset(), ok.len() as u64);
                assert_eq!(s.feed(b"\0\0\0\0", |_| panic!()), Err(want.clone()));
                assert_eq!(s.error(), Some(&want));
            }
        }
    }

    #[test]
    fn bad_varints() {
        // 11 continuation bytes, and a 10-byte varint that overflows 64 bits.
        let eleven = [0x80u8; 11];
        let overflow = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        for bad in [&eleven[..], &overflow[..]] {
            let mut data = vec![0x01, b'a'];
            data.extend_from_slice(bad);
            let mut s = Splitter::new(Framing::Varint, u64::MAX);
            let mut ends = Vec::new();
            let r = s.feed(&data, |e| ends.push(e));
            assert_eq!(r, Err(FramingError::BadVarint { offset: 2 }));
            assert_eq!(ends, [2]);
            assert_eq!(s.offset(), 2);
        }
        // The largest valid 10-byte varint is u64::MAX, refused only by the length limit.
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        let mut s = Splitter::new(Framing::Varint, DEFAULT_MAX_MESSAGE);
        assert!(matches!(
            s.feed(&max, |_| {}),
            Err(FramingError::TooLong { len: u64::MAX, .. })
        ));
    }

    #[test]
    fn sparse_feeding_marks_every_stride() {
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut rand = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n.max(1)
        };
        for round in 0..400 {
            let framing = Framing::ALL[round % 4];
            let msgs: Vec<Vec<u8>> = (0..rand(400))
                .map(|_| {
                    let cap = if rand(20) == 0 { 5000 } else { 40 };
                    (0..rand(cap)).map(|_| rand(256) as u8).collect()
                })
                .collect();
            let data = encode(framing, &msgs);
            let ends = expected_ends(framing, &msgs);
            let stride = 1 + rand(9);
            let want: Vec<u64> = ends
                .iter()
                .copied()
                .skip(stride as usize - 1)
                .step_by(stride as usize)
                .collect();
            let mut s = Splitter::new(framing, DEFAULT_MAX_MESSAGE);
            let mut until = stride;
            let mut marks = Vec::new();
            let mut completed = 0;
            let mut at = 0;
            while at < data.len() {
                let to = (at + 1 + rand(6000) as usize).min(data.len());
                completed += s
                    .feed_sparse(&data[at..to], stride, &mut until, |e| marks.push(e))
                    .unwrap();
                let whole = ends.iter().filter(|&&e| e <= to as u64).count() as u64;
                assert_eq!(completed, whole, "{framing} round {round}");
                assert_eq!(
                    s.boundary(),
                    ends[..whole as usize].last().copied().unwrap_or(0)
                );
                at = to;
            }
            assert_eq!(marks, want, "{framing} round {round} stride {stride}");
            assert_eq!(until, stride - (ends.len() as u64 % stride));
        }
    }

    #[test]
    fn random_streams_in_random_pieces() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut rand = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for round in 0..200 {
            let framing = Framing::ALL[round % 4];
            let msgs: Vec<Vec<u8>> = (0..rand(20))
                .map(|_| {
                    let len = if rand(10) == 0 {
                        rand(70_000)
                    } else {
                        rand(300)
                    };
                    (0..len).map(|_| rand(256) as u8).collect()
                })
                .collect();
            let data = encode(framing, &msgs);
            let mut cuts: Vec<usize> = (0..rand(30))
                .map(|_| rand(data.len() as u64 + 1) as usize)
                .collect();
            cuts.sort_unstable();
            assert_eq!(
                split_in(framing, &data, &cuts).unwrap(),
                expected_ends(framing, &msgs),
                "{framing} round {round}"
            );
        }
    }
}
