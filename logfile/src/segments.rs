//! A segmented log: one log kept as a directory of plain segment files, so that old data can
//! be deleted a whole segment at a time while byte offsets and message numbers stay global
//! and are never renumbered.
//!
//! The layout, read and written only through this module:
//!
//! ```text
//! LOG/tailsrv-log                                  the marker: "tailsrv segmented log 1"
//!                                                  and "framing NAME" lines
//! LOG/00000000000000000000-00000000000000000000.log   segment: base offset, first message
//! LOG/00000000000000065536-00000000000000001489.log   the next one, and so on
//! ```
//!
//! - A segment holds exactly the bytes of whole messages, so `cat LOG/*.log` is the log (the
//!   zero-padded names sort in offset order) and `grep` works on it.
//! - Its name says where it sits in the log: the global byte offset of its first byte (the
//!   base) and the global number of its first message. Nothing needs a scan of old segments
//!   to know where the log starts, where the active segment starts, or how many messages
//!   came before it.
//! - The last segment is the active one, the only one ever written. Every other one is
//!   sealed, and its length is known from the names alone: the next base minus its base.
//!   [`Log::open`] checks that every sealed segment is exactly that long, so a reader can
//!   trust the names. Offset N is the N-th byte ever appended, whatever retention deleted.
//! - Rolling ([`roll`]) creates the next segment, named by where the active one ends, and
//!   syncs the directory; a crash in between leaves either no new segment or an empty one,
//!   both consistent. Retention deletes whole segments, oldest first and never the active
//!   one ([`Retention::expired`]): a crash in the middle leaves a shorter log, still
//!   contiguous. The log starts at the base of its oldest remaining segment.
//!
//! Other files in the directory (indexes, temporaries) are ignored by [`Log::open`]; only
//! names this module renders count as segments.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::context;

/// The marker's file name inside a segmented log's directory.
pub const MARKER: &str = "tailsrv-log";

/// The marker's first line; a later format would change the number.
const MARKER_HEAD: &str = "tailsrv segmented log 1";

/// A segment file's extension.
const EXT: &str = ".log";

/// Digits of each number in a segment's name (enough for any u64).
const DIGITS: usize = 20;

/// Whether `dir` is a segmented log (it holds the marker).
pub fn is_segmented(dir: &Path) -> bool {
    dir.join(MARKER).is_file()
}

/// Where a segment starts: its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentName {
    /// Global byte offset of the segment's first byte.
    pub base: u64,
    /// Global number of the segment's first message.
    pub first_message: u64,
}

impl SegmentName {
    /// The first segment of a new log.
    pub const FIRST: SegmentName = SegmentName {
        base: 0,
        first_message: 0,
    };

    /// The file name: `BASE-FIRSTMESSAGE.log`, both zero-padded to 20 digits.
    pub fn file_name(&self) -> String {
        format!(
            "{:0w$}-{:0w$}{EXT}",
            self.base,
            self.first_message,
            w = DIGITS
        )
    }

    /// Parses a file name [`SegmentName::file_name`] rendered; None for any other name.
    pub fn parse(name: &str) -> Option<SegmentName> {
        let stem = name.strip_suffix(EXT)?;
        let (base, first) = stem.split_once('-')?;
        let number = |s: &str| {
            (s.len() == DIGITS && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
        };
        Some(SegmentName {
            base: number(base)?,
            first_message: number(first)?,
        })
    }
}

/// What the marker says about the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Marker {
    /// The framing the log's messages are in, as `--framing` spells it, if the writer said.
    pub framing: Option<String>,
}

impl Marker {
    /// The marker file's content.
    pub fn render(&self) -> String {
        let mut s = format!("{MARKER_HEAD}\n");
        if let Some(f) = &self.framing {
            s.push_str(&format!("framing {f}\n"));
        }
        s
    }

    /// Parses a marker file's content; an error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Marker, String> {
        let mut lines = text.lines();
        if lines.next().map(str::trim) != Some(MARKER_HEAD) {
            return Err(format!("its first line is not {MARKER_HEAD:?}"));
        }
        let mut marker = Marker::default();
        for line in lines.map(str::trim).filter(|l| !l.is_empty()) {
            // Other keys are for later readers.
            if let Some(("framing", f)) = line.split_once(' ') {
                marker.framing = Some(f.trim().to_owned());
            }
        }
        Ok(marker)
    }
}

/// One segment file as [`Log::open`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Where it starts.
    pub name: SegmentName,
    /// Its path.
    pub path: PathBuf,
    /// Its length when listed (for the active segment, it grows after that).
    pub len: u64,
    /// When it was last written.
    pub modified: SystemTime,
}

impl Segment {
    /// The global offset just past its last byte (when listed).
    pub fn end(&self) -> u64 {
        self.name.base + self.len
    }
}

/// What [`Log::open_cutting_short`] cut: the log now ends at `at`, inside what was sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShortCut {
    /// The short segment, now the active one.
    pub segment: PathBuf,
    /// Where the log ends now (the short segment's end).
    pub at: u64,
    /// Where the short segment should have ended (its successor's base).
    pub was: u64,
    /// How many later segments were deleted.
    pub removed: usize,
    /// Where the log ended before the cut.
    pub lost_to: u64,
}

/// A segmented log's directory as it is on disk: its marker and its segments, oldest first,
/// checked to be contiguous. A snapshot: the caller lists again to see rolls and deletions.
#[derive(Debug, Clone)]
pub struct Log {
    dir: PathBuf,
    marker: Marker,
    segments: Vec<Segment>,
}

/// Why a directory is not a consistent segmented log.
fn corrupt(dir: &Path, why: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("segmented log {}: {why}", dir.display()),
    )
}

impl Log {
    /// Creates a new segmented log at `dir` (which may exist, but must hold no marker): the
    /// directory, the first segment and the marker, last, so that a crash leaves either no
    /// log or a whole one. Everything is synced.
    pub fn create(dir: &Path, marker: &Marker) -> io::Result<Log> {
        fs::create_dir_all(dir).map_err(|e| context(dir, "creating the directory", e))?;
        if is_segmented(dir) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} is already a segmented log", dir.display()),
            ));
        }
        let first = dir.join(SegmentName::FIRST.file_name());
        let f = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&first)
            .map_err(|e| context(&first, "creating", e))?;
        f.sync_all().map_err(|e| context(&first, "syncing", e))?;
        crate::replace(&dir.join(MARKER), marker.render().as_bytes())?;
        Log::open(dir)
    }

    /// Lists the log at `dir` and checks it: a marker, at least one segment, bases and first
    /// message numbers that never go back, and every sealed segment exactly as long as the
    /// names say (next base minus its base). An error names the file and what is wrong.
    pub fn open(dir: &Path) -> io::Result<Log> {
        let log = Log::list(dir)?;
        log.check()?;
        Ok(log)
    }

    /// Opens the log for its writer after a crash that may have lost unsynced bytes: as
    /// [`Log::open`], but a sealed segment shorter than its successor's name says (its last
    /// bytes were never synced: a writer that syncs sealed segments off its write path,
    /// then lost power) ends the log. Every later segment is deleted, newest first, and the
    /// directory synced; the short one is the active segment again, for the writer's own
    /// restart check to cut. Returns the log and what was cut, if anything. A sealed segment
    /// *longer* than its name says is not a lost tail: refused as [`Log::open`] does.
    pub fn open_cutting_short(dir: &Path) -> io::Result<(Log, Option<ShortCut>)> {
        let mut log = Log::list(dir)?;
        let short = log
            .segments
            .windows(2)
            .position(|w| w[0].end() < w[1].name.base);
        let cut = match short {
            None => None,
            Some(i) => {
                let cut = ShortCut {
                    segment: log.segments[i].path.clone(),
                    at: log.segments[i].end(),
                    was: log.segments[i + 1].name.base,
                    removed: log.segments.len() - i - 1,
                    lost_to: log.active().end(),
                };
                // Newest first: a crash half way leaves the same short segment, found again.
                for s in log.segments[i + 1..].iter().rev() {
                    remove(s)?;
                }
                crate::sync_dir(&log.segments[i].path)?;
                log.segments.truncate(i + 1);
                Some(cut)
            }
        };
        log.check()?;
        Ok((log, cut))
    }

    /// The marker and the segments, sorted, not checked.
    fn list(dir: &Path) -> io::Result<Log> {
        let marker_path = dir.join(MARKER);
        let text = fs::read_to_string(&marker_path)
            .map_err(|e| context(&marker_path, "reading the marker", e))?;
        let marker = Marker::parse(&text)
            .map_err(|why| corrupt(dir, format!("the marker {}: {why}", marker_path.display())))?;
        // Every name is listed before any length is read. A writer seals a segment (its
        // last write) before it creates the next, so if the listing holds the next one, the
        // sealed one's length read after it is final; a listing that interleaved reads of
        // lengths with a long directory's later pages could read a segment's length while
        // it was still active and then find its successor, and call the log inconsistent.
        let mut names = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| context(dir, "listing", e))? {
            let entry = entry.map_err(|e| context(dir, "listing", e))?;
            if let Some(name) = entry.file_name().to_str().and_then(SegmentName::parse) {
                names.push((name, entry.path()));
            }
        }
        let mut segments = Vec::new();
        for (name, path) in names {
            let meta = match fs::metadata(&path) {
                Ok(m) => m,
                // Deleted by retention since it was listed: it is not part of the log.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(context(&path, "stat of", e)),
            };
            segments.push(Segment {
                name,
                path,
                len: meta.len(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
        segments.sort_by_key(|s| s.name);
        let log = Log {
            dir: dir.to_owned(),
            marker,
            segments,
        };
        Ok(log)
    }

    fn check(&self) -> io::Result<()> {
        if self.segments.is_empty() {
            return Err(corrupt(&self.dir, "it holds no segment".into()));
        }
        for pair in self.segments.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if b.name.base == a.name.base {
                return Err(corrupt(
                    &self.dir,
                    format!(
                        "two segments start at byte {}: {} and {}",
                        a.name.base,
                        a.path.display(),
                        b.path.display()
                    ),
                ));
            }
            if b.name.first_message < a.name.first_message {
                return Err(corrupt(
                    &self.dir,
                    format!(
                        "{} starts at message {}, before {}'s {}",
                        b.path.display(),
                        b.name.first_message,
                        a.path.display(),
                        a.name.first_message
                    ),
                ));
            }
            if a.end() != b.name.base {
                return Err(corrupt(
                    &self.dir,
                    format!(
                        "{} is {} bytes long, but the next segment starts at byte {} \
                         ({} bytes after it): a sealed segment must end where the next begins",
                        a.path.display(),
                        a.len,
                        b.name.base,
                        b.name.base - a.name.base
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the marker says.
    pub fn marker(&self) -> &Marker {
        &self.marker
    }

    /// The segments, oldest first; never empty.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The active segment (the last one, the only one written).
    pub fn active(&self) -> &Segment {
        self.segments.last().expect("checked: never empty")
    }

    /// Where the log starts: the oldest segment's base offset and first message number.
    /// Everything before was deleted by retention.
    pub fn start(&self) -> SegmentName {
        self.segments[0].name
    }

    /// The global offset just past the log's last byte (when listed).
    pub fn end(&self) -> u64 {
        self.active().end()
    }

    /// The segment that holds byte `offset`: the last one starting at or before it. None
    /// below the log start; the active segment for offsets at or past its base (including
    /// ones it does not hold yet).
    pub fn find(&self, offset: u64) -> Option<&Segment> {
        let i = self.segments.partition_point(|s| s.name.base <= offset);
        i.checked_sub(1).map(|i| &self.segments[i])
    }

    /// Bytes the log holds on disk (when listed).
    pub fn bytes(&self) -> u64 {
        self.end() - self.start().base
    }
}

/// Seals the active segment and starts the next one at `next` (where the active one ends:
/// its base plus its length, and the message number after its last message). The caller
/// has written and, where its durability asks, synced the active segment first. The new
/// segment is created empty (it must not exist) and the directory synced; returns it open
/// for appending.
pub fn roll(dir: &Path, next: SegmentName) -> io::Result<File> {
    let path = dir.join(next.file_name());
    let f = OpenOptions::new()
        .append(true)
        .read(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| context(&path, "creating the next segment", e))?;
    // `sync_dir` syncs the directory holding the path it is given: LOG, not LOG's parent.
    crate::sync_dir(&path)?;
    Ok(f)
}

/// Deletes a sealed segment (the caller never passes the active one). Readers that have it
/// open go on reading it: an unlinked file stays readable until closed. Not synced: a
/// deletion lost in a crash is done again by the next pass of retention.
pub fn remove(segment: &Segment) -> io::Result<()> {
    match fs::remove_file(&segment.path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(context(&segment.path, "deleting", e)),
        _ => Ok(()),
    }
}

/// When to start a new segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rolling {
    /// Roll before a write that would make the active segment longer than this.
    pub bytes: Option<u64>,
    /// Roll before a write once the active segment is this old.
    pub age: Option<Duration>,
}

impl Rolling {
    /// Whether a write of `incoming` bytes must go to a new segment, given the active one's
    /// length and age. An empty segment is never rolled (a write longer than `bytes` gets a
    /// segment of its own), so a batch is never split.
    pub fn due(&self, active_len: u64, active_age: Duration, incoming: u64) -> bool {
        active_len > 0
            && (self
                .bytes
                .is_some_and(|b| active_len.saturating_add(incoming) > b)
                || self.age.is_some_and(|a| active_age >= a))
    }
}

/// Which old segments to delete.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep at most this many bytes: delete the oldest sealed segments until the rest fit.
    pub bytes: Option<u64>,
    /// Delete sealed segments last written longer ago than this.
    pub age: Option<Duration>,
}

impl Retention {
    /// Whether this retention ever deletes anything.
    pub fn is_set(&self) -> bool {
        self.bytes.is_some() || self.age.is_some()
    }

    /// The segments of `log` to delete now, oldest first: a prefix of the sealed ones (the
    /// active segment is never deleted), so the log stays contiguous.
    pub fn expired<'a>(&self, log: &'a Log, now: SystemTime) -> &'a [Segment] {
        let sealed = &log.segments()[..log.segments().len() - 1];
        let mut keep_bytes = log.bytes();
        let n = sealed
            .iter()
            .take_while(|s| {
                let too_big = self.bytes.is_some_and(|b| keep_bytes > b);
                let too_old = self
                    .age
                    .is_some_and(|a| now.duration_since(s.modified).is_ok_and(|d| d > a));
                if too_big || too_old {
                    keep_bytes -= s.len;
                    true
                } else {
                    false
                }
            })
            .count();
        &sealed[..n]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn name(base: u64, first_message: u64) -> SegmentName {
        SegmentName {
            base,
            first_message,
        }
    }

    #[test]
    fn names_render_parse_and_sort_in_offset_order() {
        let n = name(65536, 1489);
        assert_eq!(
            n.file_name(),
            "00000000000000065536-00000000000000001489.log"
        );
        assert_eq!(SegmentName::parse(&n.file_name()), Some(n));
        let max = name(u64::MAX, u64::MAX);
        assert_eq!(SegmentName::parse(&max.file_name()), Some(max));
        assert!(name(9, 0).file_name() < name(10, 0).file_name());
        for bad in [
            "00000000000000065536-00000000000000001489.idx",
            "65536-1489.log",
            "00000000000000065536.log",
            "0000000000000006553x-00000000000000001489.log",
            "99999999999999999999-00000000000000000000.log",
            "tailsrv-log",
        ] {
            assert_eq!(SegmentName::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn markers_round_trip_and_refuse_other_files() {
        let m = Marker {
            framing: Some("u32be".into()),
        };
        assert_eq!(Marker::parse(&m.render()), Ok(m));
        assert_eq!(
            Marker::parse("tailsrv segmented log 1\nlater key\n"),
            Ok(Marker::default())
        );
        assert!(Marker::parse("hello\n").is_err());
        assert!(Marker::parse("").is_err());
    }

    fn append(path: &Path, bytes: &[u8]) {
        OpenOptions::new()
            .append(true)
            .open(path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
    }

    #[test]
    fn a_log_rolls_finds_offsets_and_keeps_global_offsets_after_deletion() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log");
        let log = Log::create(&dir, &Marker::default()).unwrap();
        assert!(is_segmented(&dir));
        assert_eq!((log.start(), log.end()), (SegmentName::FIRST, 0));
        append(&log.active().path, b"a\nb\n");
        let mut f = roll(&dir, name(4, 2)).unwrap();
        f.write_all(b"c\n").unwrap();
        roll(&dir, name(6, 3)).unwrap();
        let log = Log::open(&dir).unwrap();
        assert_eq!(log.segments().len(), 3);
        assert_eq!((log.end(), log.bytes()), (6, 6));
        assert_eq!(log.find(0).unwrap().name, name(0, 0));
        assert_eq!(log.find(3).unwrap().name, name(0, 0));
        assert_eq!(log.find(4).unwrap().name, name(4, 2));
        assert_eq!(log.find(6).unwrap().name, name(6, 3));
        assert_eq!(log.find(1000).unwrap().name, name(6, 3));
        // A second roll at the same place is refused, not a second segment.
        assert!(roll(&dir, name(6, 3)).is_err());
        remove(&log.segments()[0]).unwrap();
        remove(&log.segments()[0]).unwrap(); // already gone: fine
        let log = Log::open(&dir).unwrap();
        assert_eq!(log.start(), name(4, 2));
        assert_eq!(log.find(3), None);
        assert_eq!(log.find(4).unwrap().name, name(4, 2));
        assert_eq!(log.end(), 6);
        // Creating over an existing log is refused.
        assert!(Log::create(&dir, &Marker::default()).is_err());
    }

    #[test]
    fn an_inconsistent_directory_is_refused_with_the_file_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log");
        let log = Log::create(&dir, &Marker::default()).unwrap();
        append(&log.active().path, b"abc\n");
        // The next segment claims to start at byte 6: the sealed one is 2 bytes short.
        roll(&dir, name(6, 1)).unwrap();
        let e = Log::open(&dir).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let msg = e.to_string();
        assert!(
            msg.contains("00000000000000000000-00000000000000000000.log is 4 bytes long"),
            "{msg}"
        );
        fs::remove_file(dir.join(name(6, 1).file_name())).unwrap();
        fs::write(dir.join(name(4, 0).file_name()), b"").unwrap();
        fs::write(dir.join(name(4, 1).file_name()), b"").unwrap();
        assert!(Log::open(&dir)
            .unwrap_err()
            .to_string()
            .contains("two segments start at byte 4"));
        let empty = tmp.path().join("empty");
        fs::create_dir(&empty).unwrap();
        fs::write(empty.join(MARKER), Marker::default().render()).unwrap();
        assert!(Log::open(&empty)
            .unwrap_err()
            .to_string()
            .contains("holds no segment"));
        assert_eq!(
            Log::open(tmp.path()).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        // Files that are not segments are ignored.
        let ok = tmp.path().join("ok");
        Log::create(&ok, &Marker::default()).unwrap();
        fs::write(
            ok.join("00000000000000000000-00000000000000000000.log.idx"),
            b"x",
        )
        .unwrap();
        fs::write(ok.join("notes.txt"), b"x").unwrap();
        assert_eq!(Log::open(&ok).unwrap().segments().len(), 1);
    }

    #[test]
    fn rolling_never_splits_a_write_and_never_leaves_an_empty_segment() {
        let r = Rolling {
            bytes: Some(100),
            age: Some(Duration::from_secs(60)),
        };
        let young = Duration::from_secs(1);
        assert!(!r.due(0, young, 1000), "an empty segment takes any write");
        assert!(!r.due(0, Duration::from_secs(3600), 1));
        assert!(!r.due(60, young, 40));
        assert!(r.due(60, young, 41));
        assert!(r.due(1, Duration::from_secs(60), 1));
        assert!(!Rolling::default().due(u64::MAX, Duration::MAX, u64::MAX));
    }

    #[test]
    fn retention_deletes_a_prefix_of_sealed_segments() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log");
        let log = Log::create(&dir, &Marker::default()).unwrap();
        append(&log.active().path, &[b'x'; 10]);
        for (base, msg) in [(10, 1), (20, 2), (30, 3)] {
            roll(&dir, name(base, msg))
                .unwrap()
                .write_all(&[b'x'; 10])
                .unwrap();
        }
        let log = Log::open(&dir).unwrap();
        let now = SystemTime::now();
        let bases = |s: &[Segment]| s.iter().map(|s| s.name.base).collect::<Vec<_>>();
        let by_bytes = |b| Retention {
            bytes: Some(b),
            age: None,
        };
        assert_eq!(bases(by_bytes(40).expired(&log, now)), Vec::<u64>::new());
        assert_eq!(bases(by_bytes(39).expired(&log, now)), vec![0]);
        assert_eq!(bases(by_bytes(20).expired(&log, now)), vec![0, 10]);
        // Never the active segment, even when it alone is over the limit.
        assert_eq!(bases(by_bytes(0).expired(&log, now)), vec![0, 10, 20]);
        let by_age = Retention {
            bytes: None,
            age: Some(Duration::from_secs(60)),
        };
        assert!(by_age.expired(&log, now).is_empty());
        let later = now + Duration::from_secs(3600);
        assert_eq!(bases(by_age.expired(&log, later)), vec![0, 10, 20]);
        assert!(!Retention::default().is_set());
        assert!(Retention::default().expired(&log, later).is_empty());
    }
}
