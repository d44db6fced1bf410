//! Write groups: how a writer describes what it is about to append so that a restart can
//! tell a complete group from a torn one. A group is `START END CRC` (the CRC-32 of its
//! bytes), set before its data is written: by the data file's extended attribute [`MARKER`]
//! (its last group, made durable by the data's own `fsync`; [`marked_end`]), or by records in
//! a journal the writer keeps ([`verified_end`]: the groups in the last `window` bytes are
//! checked, older ones were synced long ago). The file's good part ends at the last group
//! that is all there and matches its CRC; if the last described group does not, at its start
//! (everything before it was synced before it began). That end is the `limit` of
//! [`crate::cut_torn_tail`]: past it everything goes.
//!
//! The collator writes groups; the format (the attribute's name and text) is on disk, so it
//! never changes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tail::tests::file_with;
    use proto::framing::Framing;

    fn framed(msgs: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in msgs {
            Framing::Newline.encode(m, &mut out);
        }
        out
    }

    #[test]
    fn groups_are_checked_against_their_crc() {
        let good = framed(&[b"one", b"two"]);
        let group = framed(&[b"three", b"four"]);
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
    fn groups_that_do_not_follow_are_not_trusted() {
        let data = framed(&[b"one", b"two", b"three"]);
        let (_d, f) = file_with(&data);
        let crc = |a: usize, b: usize| crc32fast::hash(&data[a..b]);
        // 0..4 then 5..8: a gap at 4, so the groups after it are not trusted.
        let groups = [(0, 4, crc(0, 4)), (5, 8, crc(5, 8))];
        assert_eq!(verified_end(&f, &groups, None, 1 << 20).unwrap(), Some(4));
        // A checkpoint past the file's end: no trust at all.
        assert_eq!(verified_end(&f, &[], Some(1000), 1 << 20).unwrap(), None);
        // A marker that starts past the end is no help either; a malformed one is none.
        if write_marker(&f, 1000, 1010, 0).is_ok() {
            assert_eq!(marked_end(&f).unwrap(), None);
            rustix::fs::fsetxattr(&f, MARKER, b"1 x y", rustix::fs::XattrFlags::empty()).unwrap();
            assert_eq!(read_marker(&f), None);
        }
    }
}
