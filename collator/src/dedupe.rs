//! Idempotent producers, and the journal that makes them (and the restart check) survive a
//! crash.
//!
//! A request may carry `id P seq S`. For each producer the collator remembers the positions
//! of its last [`WINDOW`] requests. A retry of one of them is answered with its original
//! position and writes nothing; the next one must be `S = last + 1` (a gap is refused with
//! the sequence expected); a producer never seen before may start anywhere, and so may a
//! restarted one: a sequence more than [`WINDOW`] ahead starts a new session (the client
//! library starts its sequence from the clock in microseconds). **The window:**
//! a retry more than [`WINDOW`] requests old is refused (`sequence-gap`), so a producer must
//! not have more than [`WINDOW`] requests unacknowledged. Producers are remembered for as
//! long as the journal is kept; the body of a retry is not compared with the original.
//!
//! **The journal** (`FILE.collator` beside the log, or under `--journal-dir` in directory
//! mode) is a text file of records appended by the writer *before* a group's data:
//!
//! ```text
//! e END                                     checkpoint: the file's first END bytes are synced
//! g START END CRC                           a write group spans START..END, CRC-32 (hex) of it
//!                                           (where groups are not marked by an xattr)
//! p ID SEQ OFFSET MSGNO N END               producer ID's request SEQ: N messages at OFFSET
//! b START END                               (older journals) a batch spans START..END
//! ```
//!
//! Outside `data` mode, where the file system has no extended attributes, or with
//! `--no-xattr`, every group gets a `g` record, written before its data and (in `data`
//! mode) synced with it before any answer (the two `fdatasync`s run in parallel, see
//! [`crate::writer`]); otherwise the last group is described the same way by an extended attribute of the data file
//! ([`logfile::group::MARKER`]), made durable by the data's own `fsync`. Either way, on
//! restart the file is cut to the end of the last group whose description is there *and*
//! whose bytes check out against its CRC ([`logfile::group`], [`crate::recover`]): a torn group (half a batch,
//! zeros, a zero run with a newline after it, a message with a hole) fails its checksum or
//! has no description, and goes whole. A producer record whose END is past the recovered end
//! describes data that is not there and is dropped, so the retry writes it again. Journals
//! of older collators (no `g`/`e` records) are read with the old rules (`b` records and the
//! data's own framing) and rewritten in the new form. The journal is rewritten compactly
//! (atomically, by rename, starting with a checkpoint) at every start and whenever it grows
//! past [`COMPACT_AT`].

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use proto::collate::{Ack, Producer};

/// Requests remembered per producer.
pub const WINDOW: usize = 256;

/// Journal size that triggers a compaction.
pub const COMPACT_AT: u64 = 4 << 20;

/// One remembered request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Its sequence number.
    pub seq: u64,
    /// Where it was written.
    pub ack: Ack,
    /// The byte offset after its last message.
    pub end: u64,
    /// Whether its group is written (and synced, as the mode asks): only then may a retry be
    /// told it succeeded.
    pub committed: bool,
}

/// What a producer's request is, given what the collator remembers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// New: write it.
    Fresh,
    /// A retry of a request written at `Entry::ack` (if committed).
    Duplicate(Entry),
    /// A sequence number skipped: `expected` was next.
    Gap {
        /// The sequence number expected.
        expected: u64,
    },
    /// Older than the window: its fate is no longer known.
    TooOld {
        /// The oldest sequence number remembered.
        oldest: u64,
    },
    /// Within the remembered span, but not remembered (should not happen: the window is a
    /// run of consecutive numbers).
    Unknown {
        /// The oldest sequence number remembered.
        oldest: u64,
        /// The newest.
        newest: u64,
    },
}

/// The producers' windows.
#[derive(Debug, Default, Clone)]
pub struct Producers {
    map: HashMap<String, VecDeque<Entry>>,
}

impl Producers {
    /// What `p` is. The window is always a run of consecutive sequence numbers (a new
    /// session clears it), counted with wrap-around, so a producer may count through
    /// `u64::MAX` to 0: a retry of `u64::MAX` after 0 is a duplicate, not a new request.
    pub fn check(&self, p: &Producer) -> Check {
        let Some(window) = self.map.get(&p.id) else {
            return Check::Fresh;
        };
        let (Some(first), Some(last)) = (window.front(), window.back()) else {
            return Check::Fresh;
        };
        if p.seq.wrapping_sub(first.seq) <= last.seq.wrapping_sub(first.seq) {
            return match window.iter().rev().find(|e| e.seq == p.seq) {
                Some(e) => Check::Duplicate(*e),
                None => Check::Unknown {
                    oldest: first.seq,
                    newest: last.seq,
                },
            };
        }
        let ahead = p.seq.wrapping_sub(last.seq);
        if ahead == 1 {
            return Check::Fresh;
        }
        if ahead <= WINDOW as u64 {
            return Check::Gap {
                expected: last.seq.wrapping_add(1),
            };
        }
        // Far from the window: ahead of it is a restarted producer (a producer keeps at most
        // WINDOW requests unanswered, so no session skips that many), behind it too old.
        let newer = if first.seq > last.seq {
            // The window wraps: whichever side is nearer.
            ahead < first.seq.wrapping_sub(p.seq)
        } else {
            p.seq > last.seq
        };
        if newer {
            Check::Fresh
        } else {
            Check::TooOld { oldest: first.seq }
        }
    }

    /// Remembers a request. A request that does not follow the last one starts a new session:
    /// the old session's requests are forgotten (their retries are refused as too old).
    pub fn record(&mut self, id: &str, entry: Entry) {
        let window = self.map.entry(id.to_owned()).or_default();
        if window
            .back()
            .is_some_and(|last| entry.seq != last.seq.wrapping_add(1))
        {
            window.clear();
        }
        window.push_back(entry);
        if window.len() > WINDOW {
            window.pop_front();
        }
    }

    /// Marks `id`'s request `seq` as written.
    pub fn commit(&mut self, id: &str, seq: u64) {
        if let Some(e) = self
            .map
            .get_mut(id)
            .and_then(|w| w.iter_mut().rev().find(|e| e.seq == seq))
        {
            e.committed = true;
        }
    }

    /// Forgets every request not written (after a failed write).
    pub fn drop_uncommitted(&mut self) {
        for w in self.map.values_mut() {
            w.retain(|e| e.committed);
        }
        self.map.retain(|_, w| !w.is_empty());
    }

    /// The committed entries, as journal records.
    fn render_into(&self, out: &mut Vec<u8>) {
        for (id, w) in &self.map {
            for e in w.iter().filter(|e| e.committed) {
                render_producer(id, e, out);
            }
        }
    }
}

/// Appends a `p` record.
pub fn render_producer(id: &str, e: &Entry, out: &mut Vec<u8>) {
    let _ = writeln!(
        out,
        "p {id} {} {} {} {} {}",
        e.seq, e.ack.offset, e.ack.msgno, e.ack.count, e.end
    );
}

/// Appends a `g` record: a write group spans START..END and its bytes have CRC-32 `crc`.
pub fn render_group(start: u64, end: u64, crc: u32, out: &mut Vec<u8>) {
    let _ = writeln!(out, "g {start} {end} {crc:08x}");
}

/// Appends a `b` record (journals before `g` records; still read).
#[cfg(test)]
pub fn render_batch(start: u64, end: u64, out: &mut Vec<u8>) {
    let _ = writeln!(out, "b {start} {end}");
}

/// What a journal held.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Extents `(start, end)` of requests of several messages, sorted.
    pub batches: Vec<(u64, u64)>,
    /// Producer records in journal order.
    records: Vec<(String, Entry)>,
    /// Write groups `(start, end, crc)`, in journal order.
    pub groups: Vec<(u64, u64, u32)>,
    /// The file's synced length when the journal was last rewritten (`e END`).
    pub checkpoint: Option<u64>,
}

impl Loaded {
    /// The producers whose requests are wholly within the first `end` bytes.
    pub fn producers(&self, end: u64) -> Producers {
        let mut p = Producers::default();
        for (id, e) in &self.records {
            if e.end <= end {
                p.record(id, *e);
            }
        }
        p
    }
}

/// Reads the journal at `path` (an absent journal is empty). A torn last line is ignored.
pub fn load(path: &Path) -> io::Result<Loaded> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::default()),
        Err(e) => return Err(ctx(path, "reading", e)),
    };
    let mut loaded = Loaded::default();
    let complete = match memchr::memrchr(b'\n', &text) {
        Some(i) => &text[..i],
        None => &[][..],
    };
    for line in complete.split(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(line);
        let f: Vec<&str> = line.split(' ').collect();
        let n = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok());
        match f.first() {
            Some(&"b") if f.len() == 3 => {
                if let (Some(start), Some(end)) = (n(1), n(2)) {
                    loaded.batches.push((start, end));
                }
            }
            Some(&"g") if f.len() == 4 => {
                let crc = u32::from_str_radix(f[3], 16).ok();
                if let (Some(start), Some(end), Some(crc)) = (n(1), n(2), crc) {
                    loaded.groups.push((start, end, crc));
                }
            }
            Some(&"e") if f.len() == 2 => {
                if let Some(end) = n(1) {
                    loaded.checkpoint = Some(end);
                    // Groups before a checkpoint are covered by it.
                    loaded.groups.clear();
                }
            }
            Some(&"p") if f.len() == 7 => {
                if let (Some(seq), Some(offset), Some(msgno), Some(count), Some(end)) =
                    (n(2), n(3), n(4), n(5), n(6))
                {
                    let entry = Entry {
                        seq,
                        ack: Ack {
                            offset,
                            msgno,
                            count,
                        },
                        end,
                        committed: true,
                    };
                    loaded.records.push((f[1].to_owned(), entry));
                }
            }
            _ => {
                log::warn!(journal:% = path.display(); "ignoring a malformed journal line: {line:?}")
            }
        }
    }
    loaded.batches.sort_unstable();
    loaded.batches.dedup();
    Ok(loaded)
}

fn ctx(path: &Path, what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} journal {}: {e}", path.display()))
}

/// The journal file, open for appending.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    len: u64,
}

impl Journal {
    /// Replaces the journal at `path` with one that holds `producers`' committed entries
    /// and the checkpoint `e END` (`end` must be synced already; batches and groups before
    /// it need no record): written to a temporary file, synced, renamed over the old one,
    /// and the directory synced.
    pub fn rewrite(path: &Path, producers: &Producers, end: u64) -> io::Result<Journal> {
        let mut text = Vec::new();
        let _ = writeln!(text, "e {end}");
        producers.render_into(&mut text);
        let file = logfile::replace(path, &text)?;
        Ok(Journal {
            path: path.to_owned(),
            file,
            len: text.len() as u64,
        })
    }

    /// Appends `records` (written whole, or cut back and an error).
    pub fn append(&mut self, records: &[u8]) -> io::Result<()> {
        if let Err(e) = self.file.write_all_at(records, self.len) {
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += records.len() as u64;
        Ok(())
    }

    /// Cuts the journal back to `len` (undoing a group that failed), synced.
    pub fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.file.sync_all()?;
        self.len = len;
        Ok(())
    }

    /// A second handle on the file (for syncing it on another thread).
    pub fn handle(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    /// Its length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: &str, seq: u64) -> Producer {
        Producer { id: id.into(), seq }
    }

    fn entry(seq: u64, offset: u64) -> Entry {
        Entry {
            seq,
            ack: Ack {
                offset,
                msgno: seq,
                count: 1,
            },
            end: offset + 10,
            committed: true,
        }
    }

    #[test]
    fn windows() {
        let mut ps = Producers::default();
        assert_eq!(ps.check(&p("a", 7)), Check::Fresh);
        ps.record("a", entry(7, 0));
        assert_eq!(ps.check(&p("a", 8)), Check::Fresh);
        assert_eq!(ps.check(&p("a", 7)), Check::Duplicate(entry(7, 0)));
        assert_eq!(ps.check(&p("a", 9)), Check::Gap { expected: 8 });
        assert_eq!(
            ps.check(&p("a", 7 + WINDOW as u64)),
            Check::Gap { expected: 8 }
        );
        assert_eq!(ps.check(&p("a", 8 + WINDOW as u64)), Check::Fresh);
        assert_eq!(ps.check(&p("a", 6)), Check::TooOld { oldest: 7 });
        for s in 8..8 + WINDOW as u64 {
            ps.record("a", entry(s, s * 10));
        }
        assert_eq!(ps.check(&p("a", 7)), Check::TooOld { oldest: 8 });
        ps.record(
            "a",
            Entry {
                committed: false,
                ..entry(8 + WINDOW as u64, 0)
            },
        );
        ps.drop_uncommitted();
        assert_eq!(ps.check(&p("a", 8 + WINDOW as u64)), Check::Fresh);
        // Wrap-around: MAX, 0, then MAX again is a retry; 13 is a gap after 0.
        let mut ps = Producers::default();
        for s in 10..13 {
            ps.record("w", entry(s, s * 10));
        }
        assert_eq!(ps.check(&p("w", u64::MAX)), Check::Fresh);
        ps.record("w", entry(u64::MAX, 500));
        assert_eq!(ps.check(&p("w", 0)), Check::Fresh);
        ps.record("w", entry(0, 600));
        assert_eq!(
            ps.check(&p("w", u64::MAX)),
            Check::Duplicate(entry(u64::MAX, 500))
        );
        assert_eq!(ps.check(&p("w", 13)), Check::Gap { expected: 1 });
        assert_eq!(
            ps.check(&p("w", u64::MAX - 5)),
            Check::TooOld { oldest: u64::MAX }
        );
        assert_eq!(ps.check(&p("w", 1000)), Check::Fresh);
    }

    #[test]
    fn journal_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.collator");
        let mut ps = Producers::default();
        ps.record("a", entry(1, 0));
        let mut j = Journal::rewrite(&path, &ps, 0).unwrap();
        let mut more = Vec::new();
        render_producer("b", &entry(5, 10), &mut more);
        render_batch(10, 20, &mut more);
        more.extend_from_slice(b"p torn");
        j.append(&more).unwrap();
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.batches, [(10, 20)]);
        assert_eq!(
            loaded.producers(20).check(&p("b", 5)),
            Check::Duplicate(entry(5, 10))
        );
        // Past the recovered end: forgotten, so the retry writes it again.
        assert_eq!(loaded.producers(15).check(&p("b", 5)), Check::Fresh);
        assert_eq!(loaded.producers(15).check(&p("a", 2)), Check::Fresh);
    }
}
