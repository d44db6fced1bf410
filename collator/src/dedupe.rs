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
//! mode) is a text file of records appended by the writer *before* a group's data, for the
//! requests that need one:
//!
//! ```text
//! b START END                               a request of several messages spans START..END
//! p ID SEQ OFFSET MSGNO N END               producer ID's request SEQ: N messages at OFFSET
//! ```
//!
//! Written first and (in `data` mode) synced with the data, so on restart: a batch that
//! the recovered end cuts through was only partly written ([`crate::recover`] cuts back to
//! its start: all or nothing), and a producer record whose END is past the recovered end
//! describes data that is not there and is dropped, so the retry writes it again. Records
//! that are kept describe data that is. A group of single messages without ids (a message
//! is whole or cut anyway) writes no record, and costs no journal sync. The journal is
//! rewritten compactly (atomically, by rename) at every start and whenever it grows past
//! [`COMPACT_AT`].

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
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
}

/// The producers' windows.
#[derive(Debug, Default, Clone)]
pub struct Producers {
    map: HashMap<String, VecDeque<Entry>>,
}

impl Producers {
    /// What `p` is.
    pub fn check(&self, p: &Producer) -> Check {
        let Some(window) = self.map.get(&p.id) else {
            return Check::Fresh;
        };
        let (Some(first), Some(last)) = (window.front(), window.back()) else {
            return Check::Fresh;
        };
        if p.seq == last.seq.wrapping_add(1) || p.seq > last.seq.saturating_add(WINDOW as u64) {
            // Next in sequence, or so far ahead that no session could have skipped that many
            // (a producer keeps at most WINDOW requests unanswered): a restarted producer.
            Check::Fresh
        } else if p.seq > last.seq {
            Check::Gap {
                expected: last.seq + 1,
            }
        } else if p.seq < first.seq {
            Check::TooOld { oldest: first.seq }
        } else {
            window
                .iter()
                .find(|e| e.seq == p.seq)
                .map_or(Check::TooOld { oldest: first.seq }, |e| {
                    Check::Duplicate(*e)
                })
        }
    }

    /// Remembers a request.
    pub fn record(&mut self, id: &str, entry: Entry) {
        let window = self.map.entry(id.to_owned()).or_default();
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

/// Appends a `b` record.
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
}

impl Loaded {
    /// Whether the journal held no record at all.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty() && self.records.is_empty()
    }

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
    /// (batches already complete need no record): written to a temporary file, synced,
    /// renamed over the old one, and the directory synced.
    pub fn rewrite(path: &Path, producers: &Producers) -> io::Result<Journal> {
        let mut text = Vec::new();
        producers.render_into(&mut text);
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        {
            let mut f = File::create(&tmp).map_err(|e| ctx(&tmp, "creating", e))?;
            f.write_all(&text).map_err(|e| ctx(&tmp, "writing", e))?;
            f.sync_data().map_err(|e| ctx(&tmp, "syncing", e))?;
        }
        std::fs::rename(&tmp, path).map_err(|e| ctx(path, "renaming into", e))?;
        if let Some(dir) = path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| ctx(path, "syncing the directory of", e))?;
        }
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| ctx(path, "opening", e))?;
        Ok(Journal {
            path: path.to_owned(),
            file,
            len: text.len() as u64,
        })
    }

    /// Opens the journal at `path` empty (created if absent): for a journal that held no
    /// records, where there is nothing to carry over and nothing to sync.
    pub fn empty(path: &Path) -> io::Result<Journal> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(path)
            .map_err(|e| ctx(path, "opening", e))?;
        Ok(Journal {
            path: path.to_owned(),
            file,
            len: 0,
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

    /// Cuts the journal back to `len` (undoing a group that failed).
    pub fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.len = len;
        Ok(())
    }

    /// Its length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// `fdatasync`.
    pub fn sync(&self) -> io::Result<()> {
        rustix::fs::fdatasync(&self.file).map_err(io::Error::from)
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
    }

    #[test]
    fn journal_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.collator");
        let mut ps = Producers::default();
        ps.record("a", entry(1, 0));
        let mut j = Journal::rewrite(&path, &ps).unwrap();
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
