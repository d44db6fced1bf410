//! The restart check: before the first write, under the lock, find where the last complete
//! write group ended and cut off whatever a crash left after it.
//!
//! **From the group's description.** Every write group is described by `START END CRC`,
//! set before its data and made durable with it: by the data file's extended attribute
//! [`MARKER`] (its last group, synced by the data's `fsync`; [`marked_end`]), or where there
//! are no extended attributes by the journal's `g` records ([`crate::dedupe`];
//! [`verified_end`]: the groups in the last `max_cut` bytes are checked, older ones were
//! synced long ago). The file's good part ends at the last group that is all there and
//! matches its CRC; if the last described group does not, at its start (everything before it
//! was synced before it began). Whatever follows is cut, however it looks: half a batch, a
//! partial message, zeros (also a zero run ending in a newline, which newline framing would
//! take for a message), zeros in the middle of a group, or complete messages no group
//! describes: a group is all or nothing, and never one the producers were told was written.
//!
//! **From the data** (a file of an older collator: no marker, no `g` records), three kinds of
//! torn tail are recognised from the file and the journal alone:
//! - a **partial message**: the splitter ([`proto::framing::Splitter`]) reaches the end of the
//!   file inside a message, or on a malformed length prefix;
//! - a **zero run**: after a power loss, blocks the file system had allocated but not written
//!   read back as zeros. In the prefix framings and `nul`, zeros parse as empty messages,
//!   which the collator never writes (it refuses them at the door), so trailing empty
//!   messages are cut;
//! - a **half-written batch**: complete messages that are only part of one request, when
//!   the old journal's `b` record of the batch survived.
//!
//! Both ways, the messages before the cut are counted with the framing's splitter (and its
//! rules apply there too). What is cut is logged with its offset range, length and reason. A
//! cut larger than one group could ever leave is refused instead: that is not a torn tail but
//! the wrong `--framing` or a file someone else wrote, and the collator stops rather than
//! destroy it.

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

/// Scans `file` and cuts its torn tail. `batches` are the journal's extents of requests of
/// several messages, `(start, end)`, sorted (empty without a journal). `max_cut` is the most
/// a crash can leave behind; a longer tail is an error.
pub fn recover(
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

/// The extended attribute on the data file that describes its last write group:
/// `START END CRC` (decimal, decimal, hex), set before the group's data is written and made
/// durable by the same `fsync` as the data.
pub const MARKER: &str = "user.tailsrv.group";

/// Sets the file's [`MARKER`].
pub fn write_marker(file: &File, start: u64, end: u64, crc: u32) -> io::Result<()> {
    let value = format!("{start} {end} {crc:08x}");
    rustix::fs::fsetxattr(
        file,
        MARKER,
        value.as_bytes(),
        rustix::fs::XattrFlags::empty(),
    )
    .map_err(io::Error::from)
}

/// The file's [`MARKER`], if it has a well-formed one.
pub fn read_marker(file: &File) -> Option<(u64, u64, u32)> {
    let mut buf = [0u8; 80];
    let n = rustix::fs::fgetxattr(file, MARKER, &mut buf).ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    let mut f = text.split(' ');
    let start = f.next()?.parse().ok()?;
    let end = f.next()?.parse().ok()?;
    let crc = u32::from_str_radix(f.next()?, 16).ok()?;
    (f.next().is_none() && start <= end).then_some((start, end, crc))
}

fn crc_of(file: &File, start: u64, end: u64) -> io::Result<u32> {
    let mut buf = vec![0u8; 256 << 10];
    let mut h = crc32fast::Hasher::new();
    let mut at = start;
    while at < end {
        let n = (end - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)?;
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok(h.finalize())
}

/// Where the last complete write group ends, from the file's [`MARKER`]: its group if the
/// bytes are all there and match the CRC, else the group's start (everything before it was
/// synced before the group was begun). `None` without a usable marker.
pub fn marked_end(file: &File) -> io::Result<Option<u64>> {
    let Some((start, end, crc)) = read_marker(file) else {
        return Ok(None);
    };
    let len = file.metadata()?.len();
    if start > len {
        log::warn!(
            "the file's last write group starts at byte {start}, but the file holds {len}: \
             checking it by its framing alone"
        );
        return Ok(None);
    }
    if end > len {
        log::warn!(
            offset = start, bytes = end - start;
            "the last write group {start}..{end} is not all in the file (it ends at {len})"
        );
        return Ok(Some(start));
    }
    if crc_of(file, start, end)? != crc {
        log::warn!(
            offset = start, bytes = end - start;
            "the last write group {start}..{end} fails its checksum (a torn write)"
        );
        return Ok(Some(start));
    }
    Ok(Some(end))
}

/// Where the last complete write group ends, from the journal's `g` records and checkpoint
/// (`None` for a journal without them: an older collator's, or none). Groups that end within
/// the last `window` bytes of the file are checked against their CRC, in order, and the first
/// that is missing bytes or fails is where the file's good part ends; earlier ones (synced
/// long ago) are trusted if the file reaches their end.
pub fn verified_end(
    file: &File,
    groups: &[(u64, u64, u32)],
    checkpoint: Option<u64>,
    window: u64,
) -> io::Result<Option<u64>> {
    if groups.is_empty() && checkpoint.is_none() {
        return Ok(None);
    }
    let len = file.metadata()?.len();
    let mut good = checkpoint.unwrap_or_else(|| groups[0].0);
    if good > len {
        log::warn!(
            "the journal's checkpoint says {good} bytes were synced but the file holds {len}: \
             checking the file by its framing alone"
        );
        return Ok(None);
    }
    let from = len.saturating_sub(window);
    for &(start, end, crc) in groups {
        if start != good || end < start {
            log::warn!(
                "the journal's write group {start}..{end} does not follow the one before \
                 (ending at {good}): the groups after byte {good} are not trusted"
            );
            break;
        }
        if end > len {
            log::warn!(
                offset = start, bytes = end - start;
                "write group {start}..{end} is not all in the file (it ends at {len})"
            );
            break;
        }
        if end > from && crc_of(file, start, end)? != crc {
            log::warn!(
                offset = start, bytes = end - start;
                "write group {start}..{end} fails its checksum (a torn write)"
            );
            break;
        }
        good = end;
    }
    Ok(Some(good))
}

/// For the delimiter framings: the end and count of the last non-empty message, given that
/// the complete messages end at `boundary` and number `count`. Only `nul` can hold empty
/// messages made of zeros (one zero byte each); a newline log's last message is its last.
fn solid_end(file: &File, framing: Framing, boundary: u64, count: u64) -> io::Result<(u64, u64)> {
    if framing != Framing::Nul {
        return Ok((boundary, count));
    }
    // Find the last non-zero byte before the boundary, reading backwards.
    let mut buf = vec![0u8; 64 << 10];
    let mut hi = boundary;
    while hi > 0 {
        let lo = hi.saturating_sub(buf.len() as u64);
        let piece = &mut buf[..(hi - lo) as usize];
        file.read_exact_at(piece, lo)?;
        if let Some(i) = piece.iter().rposition(|&b| b != 0) {
            // Its message's terminator follows it; every zero after that is an empty message.
            let end = lo + i as u64 + 2;
            return Ok((end, count - (boundary - end)));
        }
        hi = lo;
    }
    Ok((0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(bytes: &[u8]) -> (tempfile::TempDir, File) {
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
            let r = recover(&f, framing, 1000, &[], 1 << 20, None).unwrap();
            assert_eq!((r.end, r.count), (whole, 3), "{framing}");
            assert_eq!(f.metadata().unwrap().len(), whole);
            // A zero run.
            let mut zeros = good.clone();
            zeros.extend_from_slice(&[0; 100]);
            let (_d, f) = file_with(&zeros);
            let r = recover(&f, framing, 1000, &[], 1 << 20, None).unwrap();
            assert_eq!((r.end, r.count, r.cut), (whole, 3, 100), "{framing}");
            // A half-written batch: the journal says a batch from "two" on goes further.
            let one = framed(framing, &[b"one"]).len() as u64;
            let (_d, f) = file_with(&good);
            let r = recover(&f, framing, 1000, &[(one, whole + 10)], 1 << 20, None).unwrap();
            assert_eq!((r.end, r.count), (one, 1), "{framing}");
            // A batch from the very start.
            let (_d, f) = file_with(&good);
            let r = recover(&f, framing, 1000, &[(0, whole + 10)], 1 << 20, None).unwrap();
            assert_eq!((r.end, r.count), (0, 0), "{framing}");
            // Intact: nothing cut.
            let (_d, f) = file_with(&good);
            let r = recover(&f, framing, 1000, &[(0, one), (one, whole)], 1 << 20, None).unwrap();
            assert_eq!((r.end, r.count, r.cut), (whole, 3, 0), "{framing}");
        }
    }

    #[test]
    fn groups_are_checked_against_their_crc() {
        let good = framed(Framing::Newline, &[b"one", b"two"]);
        let group = framed(Framing::Newline, &[b"three", b"four"]);
        let crc = crc32fast::hash(&group);
        let (s, e) = (good.len() as u64, (good.len() + group.len()) as u64);
        let whole = [&good[..], &group].concat();
        let mut holed = whole.clone();
        holed[good.len() + 2] = 0;
        for (data, want) in [
            (&whole, e),
            (&holed, s),
            (&whole[..whole.len() - 1].to_vec(), s),
        ] {
            let (_d, f) = file_with(data);
            // The journal's records.
            let groups = [(0, s, crc32fast::hash(&good)), (s, e, crc)];
            assert_eq!(
                verified_end(&f, &groups, None, 1 << 20).unwrap(),
                Some(want)
            );
            assert_eq!(
                verified_end(&f, &groups[1..], Some(s), 1 << 20).unwrap(),
                Some(want)
            );
            // The file's marker, where the file system has extended attributes.
            if write_marker(&f, s, e, crc).is_ok() {
                assert_eq!(marked_end(&f).unwrap(), Some(want));
            }
        }
        let (_d, f) = file_with(&whole);
        assert_eq!(verified_end(&f, &[], None, 1 << 20).unwrap(), None);
        assert_eq!(marked_end(&f).unwrap(), None);
    }

    #[test]
    fn too_much_to_cut_is_refused() {
        let mut data = framed(Framing::Newline, &[b"a"]);
        data.extend_from_slice(&[b'x'; 5000]);
        let (_d, f) = file_with(&data);
        assert!(recover(&f, Framing::Newline, 100, &[], 1000, None).is_err());
        assert_eq!(f.metadata().unwrap().len(), data.len() as u64);
    }
}
