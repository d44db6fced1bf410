//! The torn-tail cut: before a writer appends to a log it did not close cleanly, find where
//! the last complete write ended and cut off whatever a crash left after it. One cut for
//! every writer of a framed log (the collator, tsbridge's output) and, framing unknown, for a
//! byte-for-byte copy (tsmirror's replica: [`cut_zero_tail`]).
//!
//! [`cut_torn_tail`] recognises three kinds of torn tail from the file alone (and a journal,
//! where the writer keeps one):
//! - a **partial message**: the splitter ([`proto::framing::Splitter`]) reaches the end of the
//!   file inside a message, or on a malformed length prefix;
//! - a **zero run**: after a power loss, blocks the file system had allocated but not written
//!   read back as zeros (XFS; not ext4 in its default `data=ordered` mode). In the prefix
//!   framings and `nul`, zeros parse as empty messages, so trailing empty messages are cut. The
//!   collator never writes an empty message (it refuses them at the door); a writer that does
//!   (tsbridge copies a stream's empty payloads) gets its trailing ones cut too, and must be
//!   able to fetch them again;
//! - a **half-written batch**: complete messages that are only part of one request, when the
//!   journal's record of the batch survived;
//!
//! and with a write group's description ([`crate::group`], the `limit`) a **half-written
//! group**: everything past the last complete group, however it looks.
//!
//! The messages before the cut are counted with the framing's splitter (and its rules apply
//! there too). What is cut is logged with its offset range, length and reason. A cut larger
//! than one write could ever leave is refused instead: that is not a torn tail but the wrong
//! framing or a file someone else wrote, and the writer stops rather than destroy it.
//!
//! Reads go up to fstat's length: some file systems (FUSE, network ones) answer a read of a
//! range just written with nothing; that is retried briefly, never taken for the end (which
//! would cut what could not be read).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use proto::framing::{Framing, Splitter};

/// Where the file's complete writes end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// The byte offset of the next message (the file's length after the cut).
    pub end: u64,
    /// How many messages the file holds (the next message number).
    pub count: u64,
    /// Bytes cut off the tail.
    pub cut: u64,
}

/// Reads that return nothing before the file's length, retried 10 ms apart before the
/// restart check gives up with an error (a short read, not the end of the file).
const EMPTY_READS: u32 = 200;

/// Scans `file` in `framing` and cuts its torn tail (see the module docs): what follows the
/// last complete message, a run of empty messages (zeros) before it, and a batch the end cuts
/// through. `batches` are the extents of requests of several messages a journal recorded,
/// `(start, end)`, sorted (empty without one). `max_cut` is the most a crash can leave
/// behind; a longer tail is an error and nothing is cut. `limit`, where the last complete
/// write group ends ([`crate::group`]), if known: everything past it is cut unread.
///
/// The cut is logged (`cutting a torn tail: N bytes from byte B to E (reason)`) and not
/// synced: the caller syncs it, or its next synced write does.
pub fn cut_torn_tail(
    file: &File,
    framing: Framing,
    max_message: u64,
    batches: &[(u64, u64)],
    max_cut: u64,
    limit: Option<u64>,
) -> io::Result<Recovered> {
    let file_len = file.metadata()?.len();
    // Past the last verified write group nothing is scanned: it all goes.
    let len = limit.map_or(file_len, |l| l.min(file_len));
    let mut splitter = Splitter::new(framing, max_message);
    let mut count = 0u64;
    let mut prev = 0u64;
    // The last non-empty message's end and count (zeros parse as empty messages).
    let mut solid = (0u64, 0u64);
    // Message boundaries where a journalled batch starts, with the count there.
    let mut batch_starts: Vec<(u64, u64)> = Vec::new();
    if batches.first().is_some_and(|b| b.0 == 0) {
        batch_starts.push((0, 0));
    }
    let mut j = 0;
    // Small enough to stay in the cache between the copy and the scan.
    let mut buf = vec![0u8; 256 << 10];
    let mut at = 0u64;
    let mut framing_error = None;
    let delimited = framing.delimiter().is_some();
    let mut empty_reads = 0u32;
    while at < len {
        let want = (len - at).min(buf.len() as u64) as usize;
        let n = file.read_at(&mut buf[..want], at)?;
        if n == 0 {
            // Not the end: fstat counts these bytes and only we write the file. Some file
            // systems (FUSE, network ones) return short reads for a range just written;
            // try again briefly, and never cut what could not be read.
            empty_reads += 1;
            if empty_reads > EMPTY_READS {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the file reads empty at byte {at} of {len} (fstat's length) after \
                         {EMPTY_READS} tries: a short read that never completed"
                    ),
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            continue;
        }
        empty_reads = 0;
        let chunk = &buf[..n];
        let base = at;
        if delimited {
            // The fast path (`wc -l` speed): count delimiters with SIMD, stopping only at
            // batch starts to note the count there. Trailing empty messages are found after.
            let mut from = 0usize;
            while from < n {
                while j < batches.len() && batches[j].0 < base + from as u64 {
                    j += 1;
                }
                let to = match batches.get(j) {
                    Some(b) if b.0 < base + n as u64 => (b.0 - base) as usize,
                    _ => n,
                };
                let mut never = u64::MAX;
                count += splitter
                    .feed_sparse(&chunk[from..to], u64::MAX, &mut never, |_| {})
                    .unwrap_or(0);
                if to < n || batches.get(j).is_some_and(|b| b.0 == base + n as u64) {
                    let at_start = base + to as u64;
                    if splitter.boundary() == at_start && at_start > 0 {
                        batch_starts.push((at_start, count));
                    }
                    j += 1;
                }
                from = to;
            }
            at += n as u64;
            continue;
        }
        let r = splitter.feed(chunk, |end| {
            count += 1;
            let empty = match framing {
                Framing::Newline | Framing::Nul => unreachable!("the fast path above"),
                Framing::U32Be => end - prev == 4,
                Framing::Varint => {
                    // Bytes of this message still in the chunk tell; a message that started in
                    // an earlier chunk is non-empty (its prefix alone was not the whole of it).
                    prev >= base
                        && chunk[(prev - base) as usize..(end - base) as usize]
                            .iter()
                            .all(|&b| b & 0x7f == 0)
                }
            };
            if !empty {
                solid = (end, count);
            }
            while j < batches.len() && batches[j].0 < end {
                j += 1;
            }
            if j < batches.len() && batches[j].0 == end {
                batch_starts.push((end, count));
            }
            prev = end;
        });
        if let Err(e) = r {
            framing_error = Some(e);
            break;
        }
        at += n as u64;
    }
    if delimited {
        solid = solid_end(file, framing, splitter.boundary(), count)?;
    }
    let mut end = (splitter.boundary(), count);
    let mut reason = if framing_error.is_some() {
        "malformed length prefix"
    } else {
        "partial message"
    };
    if solid.0 < end.0 {
        end = solid;
        reason = "run of empty messages (zeros)";
    }
    // A batch the end cuts through goes whole.
    if let Some(&(start, _)) = batches.iter().find(|b| b.0 < end.0 && end.0 < b.1) {
        match batch_starts.iter().find(|s| s.0 == start) {
            Some(&at) => {
                end = at;
                reason = "half-written batch";
            }
            None => log::warn!(
                "the journal names a batch at byte {start}, which is not a message boundary: \
                 ignoring it (was the file written by something else?)"
            ),
        }
    }
    if end.0 == len && len < file_len {
        reason = "past the last complete write group";
    }
    let cut = file_len - end.0;
    if cut > 0 {
        if cut > max_cut {
            let why = match &framing_error {
                Some(e) => format!("{e}"),
                None => reason.to_owned(),
            };
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the last {cut} bytes (from byte {}) are not complete {framing} messages \
                     ({why}); that is more than a crash can leave (at most {max_cut}): wrong \
                     --framing, or a file written by something else? Not cutting it",
                    end.0
                ),
            ));
        }
        log::warn!(
            offset = end.0, bytes = cut, reason;
            "cutting a torn tail: {cut} bytes from byte {} to {file_len} ({reason})", end.0
        );
        // Not synced here: the next synced write persists the new length with its data, and
        // if a crash comes first the same tail is found and cut again.
        file.set_len(end.0)?;
    }
    Ok(Recovered {
        end: end.0,
        count: end.1,
        cut,
    })
}

/// For the delimiter framings: the end and count of the last non-empty message, given that
/// the complete messages end at `boundary` and number `count`. Only `nul` can hold empty
/// messages made of zeros (one zero byte each); a newline log's last message is its last.
fn solid_end(file: &File, framing: Framing, boundary: u64, count: u64) -> io::Result<(u64, u64)> {
    if framing != Framing::Nul {
        return Ok((boundary, count));
    }
    Ok(match last_nonzero(file, boundary)? {
        Some(i) => {
            // Its message's terminator follows it; every zero after that is an empty message.
            let end = i + 2;
            (end, count - (boundary - end))
        }
        None => (0, 0),
    })
}

/// The offset of the last non-zero byte before `end`, reading backwards; `None` if there is
/// none.
fn last_nonzero(file: &File, end: u64) -> io::Result<Option<u64>> {
    let mut buf = vec![0u8; 64 << 10];
    let mut hi = end;
    while hi > 0 {
        let lo = hi.saturating_sub(buf.len() as u64);
        let piece = &mut buf[..(hi - lo) as usize];
        file.read_exact_at(piece, lo)?;
        if let Some(i) = piece.iter().rposition(|&b| b != 0) {
            return Ok(Some(lo + i as u64));
        }
        hi = lo;
    }
    Ok(None)
}

/// Aligned blocks [`cut_zero_tail`] checks for zeros (the page size of the writeback that
/// may be lost).
const BLOCK: u64 = 4096;

/// For a byte-for-byte copy, whose framing is not known (tsmirror's replica): cuts what a
/// machine crash may have left as zeros at the end of `file` and returns the new length. The
/// file is cut at the first byte of (a) the run of zero bytes that ends it, and (b) within
/// the last `window` bytes before that (how much may not have been synced), the first
/// 4 KiB-aligned block that is all zeros, whichever comes first. The cut is synced.
pub fn cut_zero_tail(file: &File, window: u64) -> io::Result<u64> {
    let len = file.metadata()?.len();
    // (a) The zero bytes that end the file.
    let mut end = last_nonzero(file, len)?.map_or(0, |i| i + 1);
    // (b) The first aligned all-zero block in the window before that.
    let lo = end.saturating_sub(window).next_multiple_of(BLOCK);
    let mut block = vec![0u8; BLOCK as usize];
    let mut at = lo;
    while at + BLOCK <= end {
        file.read_exact_at(&mut block, at)?;
        if block.iter().all(|&b| b == 0) {
            end = at;
            break;
        }
        at += BLOCK;
    }
    if end < len {
        file.set_len(end)?;
        file.sync_data()?;
    }
    Ok(end)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `bytes` in a new file, open for reading and writing.
    pub(crate) fn file_with(bytes: &[u8]) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, bytes).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        (dir, f)
    }

    fn framed(framing: Framing, msgs: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in msgs {
            framing.encode(m, &mut out);
        }
        out
    }

    #[test]
    fn torn_tails_are_cut() {
        for framing in Framing::ALL {
            let good = framed(framing, &[b"one", b"two", b"three"]);
            let whole = good.len() as u64;
            // A partial message.
            let mut torn = good.clone();
            torn.extend_from_slice(&framed(framing, &[b"four"])[..3]);
            let (_d, f) = file_with(&torn);
            let r = cut_torn_tail(&f, framing, 1000, &[], 1 << 20, None).unwrap();
            assert_eq!((r.end, r.count), (whole, 3), "{framing}");
            assert_eq!(f.metadata().unwrap().len(), whole);
            // A zero run.
            let mut zeros = good.clone();
            zeros.extend_from_slice(&[0; 100]);
            let (_d, f) = file_with(&zeros);
            let r = cut_torn_tail(&f, framing, 1000, &[], 1 << 20, None).unwrap();
            assert_eq!((r.end, r.count, r.cut), (whole, 3, 100), "{framing}");
            // A half-written batch: the journal says a batch from "two" on goes further.
            let one = framed(framing, &[b"one"]).len() as u64;
            let (_d, f) = file_with(&good);
            let r = cut_torn_tail(&f, framing, 1000, &[(one, whole + 10)], 1 << 20, None).unwrap();
            assert_eq!((r.end, r.count), (one, 1), "{framing}");
            // A batch from the very start.
            let (_d, f) = file_with(&good);
            let r = cut_torn_tail(&f, framing, 1000, &[(0, whole + 10)], 1 << 20, None).unwrap();
            assert_eq!((r.end, r.count), (0, 0), "{framing}");
            // Intact: nothing cut.
            let (_d, f) = file_with(&good);
            let r =
                cut_torn_tail(&f, framing, 1000, &[(0, one), (one, whole)], 1 << 20, None).unwrap();
            assert_eq!((r.end, r.count, r.cut), (whole, 3, 0), "{framing}");
        }
    }

    #[test]
    fn too_much_to_cut_is_refused() {
        let mut data = framed(Framing::Newline, &[b"a"]);
        data.extend_from_slice(&[b'x'; 5000]);
        let (_d, f) = file_with(&data);
        assert!(cut_torn_tail(&f, Framing::Newline, 100, &[], 1000, None).is_err());
        assert_eq!(f.metadata().unwrap().len(), data.len() as u64);
    }

    /// After a valid message, zeros of any length (a power loss on XFS) in every framing:
    /// cut back to the message, never counted as messages. In newline framing the zeros are
    /// a partial message; in the others, empty messages.
    #[test]
    fn a_tail_of_zeros_after_a_valid_message_is_cut_in_every_framing() {
        for framing in Framing::ALL {
            let good = framed(framing, &[b"valid"]);
            for zeros in [1usize, 3, 4, 5, 4096, 70_000] {
                let mut data = good.clone();
                data.resize(good.len() + zeros, 0);
                let (_d, f) = file_with(&data);
                let r = cut_torn_tail(&f, framing, 1000, &[], 1 << 20, None).unwrap();
                let want = Recovered {
                    end: good.len() as u64,
                    count: 1,
                    cut: zeros as u64,
                };
                assert_eq!(r, want, "{framing} {zeros}");
                assert_eq!(f.metadata().unwrap().len(), good.len() as u64);
            }
            // An all-zero file is all cut.
            let (_d, f) = file_with(&[0; 100]);
            let r = cut_torn_tail(&f, framing, 1000, &[], 1 << 20, None).unwrap();
            assert_eq!((r.end, r.count, r.cut), (0, 0, 100), "{framing}");
        }
    }

    #[test]
    fn past_the_last_group_everything_goes() {
        for framing in Framing::ALL {
            let good = framed(framing, &[b"one", b"two"]);
            let one = framed(framing, &[b"one"]).len() as u64;
            let (_d, f) = file_with(&good);
            let r = cut_torn_tail(&f, framing, 1000, &[], 1 << 20, Some(one)).unwrap();
            assert_eq!((r.end, r.count), (one, 1), "{framing}");
            assert_eq!(f.metadata().unwrap().len(), one);
        }
    }

    #[test]
    fn a_malformed_prefix_at_the_end_is_cut_and_one_too_far_back_is_refused() {
        let mut data = framed(Framing::U32Be, &[b"ok"]);
        data.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 1]);
        let (_d, f) = file_with(&data);
        let r = cut_torn_tail(&f, Framing::U32Be, 1000, &[], 100, None).unwrap();
        assert_eq!((r.end, r.count, r.cut), (6, 1, 5));
        let (_d, f) = file_with(&data);
        let e = cut_torn_tail(&f, Framing::U32Be, 1000, &[], 4, None).unwrap_err();
        assert!(e.to_string().contains("claims 4294967295 bytes"), "{e}");
        assert_eq!(f.metadata().unwrap().len(), data.len() as u64);
    }

    fn zero_cut(content: &[u8], window: u64) -> (u64, Vec<u8>) {
        let (d, file) = file_with(content);
        let len = cut_zero_tail(&file, window).unwrap();
        (len, std::fs::read(d.path().join("log")).unwrap())
    }

    #[test]
    fn zero_tails_of_a_copy_are_cut() {
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251 + 1) as u8).collect();
        // Nothing to cut.
        assert_eq!(zero_cut(&data, 1 << 20).0, 20_000);
        assert_eq!(zero_cut(b"", 1 << 20).0, 0);
        // Trailing zero bytes, however many, and an all-zero file.
        let mut tail = data.clone();
        tail.extend_from_slice(&[0; 70_000]);
        assert_eq!(zero_cut(&tail, 4096), (20_000, data.clone()));
        assert_eq!(zero_cut(&[0; 9000], 4096).0, 0);
        // An aligned zero block inside the window, data after it.
        let mut hole = data.clone();
        hole[8192..12_288].fill(0);
        assert_eq!(zero_cut(&hole, 1 << 20), (8192, data[..8192].to_vec()));
        // ...but not one before the window, nor an unaligned run of zeros.
        assert_eq!(zero_cut(&hole, 4096).0, 20_000);
        let mut unaligned = data.clone();
        unaligned[8000..12_000].fill(0);
        assert_eq!(zero_cut(&unaligned, 1 << 20).0, 20_000);
    }
}
