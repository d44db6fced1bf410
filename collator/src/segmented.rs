//! Segmented logs (issue #19): the collator's side of [`logfile::segments`], whose layout it
//! uses as is. A log kept as a directory of segment files is written like one file whose
//! offsets and message numbers never restart: the writer ([`crate::writer`]) appends to the
//! active segment and rolls to the next before a group that would overflow it; this module
//! opens the log, knows the active segment, rolls, and deletes old segments on a thread of
//! its own so that unlinking a large file never stalls the writer.
//!
//! - **Where things live.** The journal is `LOG.collator` and the synced length `LOG.synced`,
//!   beside the directory, as `FILE.collator` and `FILE.synced` are beside a plain file; the
//!   lock is the directory's own (as in directory mode). Journal and watermark hold the log's
//!   (global) offsets.
//! - **The restart check** reads only the active segment: the journal's groups and
//!   checkpoint are made the segment's ([`Local`]), the file is checked and cut as a plain
//!   file would be, and its count is added to the segment's first message number. Sealed
//!   segments are checked by [`logfile::segments::Log::open`] from their names and lengths.
//! - **Rolling** is due ([`logfile::segments::Rolling::due`]) before a write group, never
//!   inside one, so never inside a batch. Where acknowledgements or the watermark wait for
//!   syncs (`--sync data`, `interval`) the active segment is synced first (in `data` it
//!   already is), then the next one is created and the directory synced: a crash leaves the
//!   old segment whole and sealed, and either no new segment or an empty one. In `none` and
//!   `write`, which never wait for a sync, the sealed segment is synced by a thread of its
//!   own (the [`Sealer`]), so the roll costs the writer no `fdatasync`; a power loss before
//!   that sync ends can leave a sealed segment short, and the restart cuts the log at its
//!   end ([`Log::open_cutting_short`]) — the unsynced tail a plain file loses in a power
//!   loss in those modes, here at most the segments the sealer had not synced yet.
//! - **Retention** ([`logfile::segments::Retention::expired`]) runs on its own thread: at
//!   start, after every roll, and on a timer when `--retain-ms` is set. It deletes whole
//!   segments, oldest first and never the active one, so a crash between deletions leaves a
//!   shorter log that is still contiguous.
//! - **Fault points** (tests only): [`FAULT_VAR`] makes the collator kill itself with
//!   SIGKILL at one step of a roll or a deletion, so the tests can crash it at each step.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use logfile::segments::{self, Log, Marker, Retention, Rolling, SegmentName};

use crate::dedupe::Loaded;
use crate::watermark;
use crate::writer::{FileWriter, Settings};

/// The environment variable naming a fault point, `STEP` or `STEP:N` (the N-th time the step
/// is reached; the first by default), at which the collator kills itself with SIGKILL. For
/// the crash tests only; the steps are [`FAULT_STEPS`].
pub const FAULT_VAR: &str = "TAILSRV_COLLATOR_FAULT";

/// The environment variable holding a delay in milliseconds before each sync of the
/// [`Sealer`], so that a power-loss test finds sealed segments not synced yet (tests only).
pub const SEALER_DELAY_VAR: &str = "TAILSRV_COLLATOR_SEALER_DELAY_MS";

/// The fault points, in the order a roll and a deletion reach them.
pub const FAULT_STEPS: [&str; 5] = [
    // The active segment is synced and sealed; the next one is not created yet.
    "roll-before-create",
    // The next segment exists, empty, and the directory is synced.
    "roll-after-create",
    // The first group is written to the new segment, not yet synced or answered.
    "roll-after-write",
    // Retention chose a segment to delete and has not unlinked it yet.
    "delete-before-unlink",
    // A segment is unlinked (the directory not synced); later ones of the pass are not.
    "delete-after-unlink",
];

/// The fault point [`FAULT_VAR`] names, checked: `None` without one.
fn fault_plan() -> &'static Result<Option<(String, u64)>, String> {
    static PLAN: OnceLock<Result<Option<(String, u64)>, String>> = OnceLock::new();
    PLAN.get_or_init(|| {
        let Ok(v) = std::env::var(FAULT_VAR) else {
            return Ok(None);
        };
        let (step, n) = match v.split_once(':') {
            Some((s, n)) => (s, n.parse::<u64>().map_err(|_| n.to_owned())),
            None => (v.as_str(), Ok(1)),
        };
        match (FAULT_STEPS.contains(&step), n) {
            (true, Ok(n)) if n > 0 => Ok(Some((step.to_owned(), n))),
            _ => Err(format!(
                "{FAULT_VAR}={v:?}: expected STEP or STEP:N (N from 1), STEP one of {}",
                FAULT_STEPS.join(", ")
            )),
        }
    })
}

/// Reaching fault point `step`: if [`FAULT_VAR`] names it and this is the N-th time, the
/// collator logs it and kills itself with SIGKILL (no destructor, no flush: a `kill -9`).
pub fn fault(step: &str) {
    static REACHED: AtomicU64 = AtomicU64::new(0);
    let Ok(Some((at, n))) = fault_plan() else {
        return;
    };
    if at == step && REACHED.fetch_add(1, Ordering::SeqCst) + 1 == *n {
        log::error!("fault point {step} reached ({FAULT_VAR}): killing myself with SIGKILL");
        // SAFETY: kill(2) on our own pid; nothing runs after it.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// A byte count as the flags take it: a number, optionally followed by `K`, `M`, `G` or `T`
/// (powers of 1024, optionally written `KiB` or `KB`, case-insensitive).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (n, unit) = t.split_at(digits);
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(format!(
                "{s:?}: expected a byte count such as 65536, 64K or 64M"
            ))
        }
    };
    n.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{s:?}: expected a byte count such as 65536, 64K or 64M"))
}

/// The journal's write groups, checkpoint and batches as offsets in the active segment,
/// whose first byte is the log's byte `base` (a plain file's base is 0: all unchanged).
#[derive(Debug)]
pub struct Local {
    /// The groups that start in the segment.
    pub groups: Vec<(u64, u64, u32)>,
    /// The checkpoint, if it is in the segment; its start if it is before it (everything
    /// before the segment is sealed, synced before the segment was created).
    pub checkpoint: Option<u64>,
    /// The batches that start in the segment.
    pub batches: Vec<(u64, u64)>,
}

impl Local {
    /// The part of `loaded` about the segment at `base`.
    pub fn of(loaded: &Loaded, base: u64) -> Local {
        Local {
            groups: loaded
                .groups
                .iter()
                .filter(|g| g.0 >= base)
                .map(|&(s, e, crc)| (s - base, e - base, crc))
                .collect(),
            checkpoint: loaded.checkpoint.map(|c| c.saturating_sub(base)),
            batches: loaded
                .batches
                .iter()
                .filter(|b| b.0 >= base)
                .map(|&(s, e)| (s - base, e - base))
                .collect(),
        }
    }
}

/// The active segment, as its writer keeps it: where it starts, how old it is, when to roll,
/// and the retention thread to tell after a roll.
#[derive(Debug)]
pub struct Active {
    dir: PathBuf,
    name: SegmentName,
    since: Instant,
    rolling: Rolling,
    retention: Option<mpsc::Sender<()>>,
    /// Rolled since the last write (for the `roll-after-write` fault point).
    rolled: bool,
    /// Syncs sealed segments off the writer's path (`--sync none|write`).
    sealer: Option<Sealer>,
    /// The directory's lock, held for the collator's life.
    _lock: File,
}

impl Active {
    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the segment starts.
    pub fn name(&self) -> SegmentName {
        self.name
    }

    /// Whether a group of `incoming` bytes must go to a new segment, the active one holding
    /// `len` bytes.
    pub fn due(&self, len: u64, incoming: u64) -> bool {
        self.rolling.due(len, self.since.elapsed(), incoming)
    }

    /// Creates the next segment at the log's `end` and message `count` (the active one is
    /// synced and sealed), returns it open for appending, and wakes retention.
    pub fn roll(&mut self, end: u64, count: u64) -> io::Result<File> {
        fault("roll-before-create");
        let next = SegmentName {
            base: end,
            first_message: count,
        };
        let file = segments::roll(&self.dir, next)?;
        log::info!(
            offset = end, msgno = count;
            "rolled to a new segment {} at byte {end} (message {count})",
            next.file_name()
        );
        self.name = next;
        self.since = Instant::now();
        self.rolled = true;
        fault("roll-after-create");
        if let Some(r) = &self.retention {
            let _ = r.send(());
        }
        Ok(file)
    }

    /// The segment rolled away from, `dirty` if it holds bytes not synced yet: synced by
    /// the sealer, if there is one (else the writer synced it before the roll).
    pub fn sealed(&mut self, file: File, dirty: bool) {
        if let (true, Some(sealer)) = (dirty, &self.sealer) {
            sealer.sync(file, self.dir.clone());
        }
    }

    /// A group was written to the segment.
    pub fn written(&mut self) {
        if std::mem::take(&mut self.rolled) {
            fault("roll-after-write");
        }
    }
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, why)
}

/// Opens the segmented log at `dir` (created if absent or an empty directory), locks it,
/// checks its active segment, starts retention, and starts its writer.
pub fn open(
    dir: &Path,
    rolling: Rolling,
    retention: Retention,
    settings: &Settings,
    fatal: async_channel::Sender<io::Error>,
) -> io::Result<FileWriter> {
    fault_plan().as_ref().map_err(|e| invalid(e.clone()))?;
    match fs::metadata(dir) {
        Ok(m) if !m.is_dir() => {
            return Err(invalid(format!(
                "{} is a plain file: a segmented log is a directory (--segment-* and \
                 --retain-* make one at a new path; a file is not converted)",
                dir.display()
            )))
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir_all(dir)
            .map_err(|e| logfile::context(dir, "creating the directory", e))?,
        Err(e) => return Err(logfile::context(dir, "stat of", e)),
    }
    // Canonical: `LOG/` and `LOG` are the same log, with the same `LOG.collator` beside it.
    let dir = fs::canonicalize(dir).map_err(|e| logfile::context(dir, "resolving", e))?;
    let lock = File::open(&dir).map_err(|e| logfile::context(&dir, "opening", e))?;
    logfile::lock_exclusive(&lock, &dir, "collator")?;
    let framing = settings.framing.to_string();
    let off_path = settings.sync.seals_off_path();
    let log = if segments::is_segmented(&dir) {
        if off_path {
            let (log, cut) = Log::open_cutting_short(&dir)?;
            if let Some(c) = cut {
                log::warn!(
                    path:% = c.segment.display(), offset = c.at;
                    "the sealed segment {} ends at byte {}, not {}: its unsynced tail was \
                     lost (a power loss before its sync); the log ends there now ({} later \
                     segments, to byte {}, deleted), and the restart check goes on from it",
                    c.segment.display(), c.at, c.was, c.removed, c.lost_to
                );
            }
            log
        } else {
            Log::open(&dir)?
        }
    } else {
        let listed = fs::read_dir(&dir).map_err(|e| logfile::context(&dir, "listing", e))?;
        if listed.count() > 0 {
            return Err(invalid(format!(
                "{} is a directory that is not a segmented log (no {} marker) and not empty: \
                 not making it one (directory mode is --journal-dir JDIR, without --segment-*)",
                dir.display(),
                segments::MARKER
            )));
        }
        log::info!(path:% = dir.display(); "creating a segmented log at {}", dir.display());
        Log::create(
            &dir,
            &Marker {
                framing: Some(framing.clone()),
            },
        )?
    };
    if let Some(f) = log.marker().framing.as_ref().filter(|f| **f != framing) {
        return Err(invalid(format!(
            "the segmented log {} holds {f} messages (its marker says), not {framing}: \
             pass --framing {f}",
            dir.display()
        )));
    }
    let active = log.active().clone();
    // The active segment's age, to roll by --segment-ms across restarts.
    let age = fs::metadata(&active.path)
        .and_then(|m| m.created())
        .ok()
        .and_then(|born| SystemTime::now().duration_since(born).ok())
        .unwrap_or_default();
    let journal = logfile::sibling(&dir, ".collator");
    let synced = settings
        .sync
        .publishes_watermark()
        .then(|| watermark::path_for(&dir));
    let retention = match retention.is_set() {
        true => Some(start_retention(dir.clone(), retention)?),
        false => None,
    };
    log::info!(
        path:% = dir.display(), start = log.start().base, segments = log.segments().len();
        "segmented log {}: {} segments, from byte {} (message {}); writing {}",
        dir.display(), log.segments().len(), log.start().base, log.start().first_message,
        active.name.file_name()
    );
    let segment = Active {
        dir,
        name: active.name,
        since: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
        rolling,
        retention,
        rolled: false,
        sealer: off_path.then(Sealer::start).transpose()?,
        _lock: lock,
    };
    crate::recover::open_writer(
        &active.path,
        &journal,
        synced.as_deref(),
        settings,
        fatal,
        |_| Ok(()),
        Some(segment),
    )
}

/// The thread that syncs sealed segments for a writer that does not wait for syncs
/// (`--sync none|write`): a roll hands it the segment's file and goes on writing, so the
/// `fdatasync` of up to a segment of dirty pages (tens to hundreds of milliseconds) is not
/// on the writer's path. At most [`SEALER_QUEUE`] segments wait; a writer that rolls faster
/// than the disk syncs waits for room (the disk's pace). Dropped, it finishes the queue.
/// A power loss before a sealed segment's sync ends leaves it short; the restart cuts the
/// log there ([`Log::open_cutting_short`]), as a plain file loses its unsynced tail.
#[derive(Debug)]
struct Sealer {
    queue: Option<mpsc::SyncSender<(File, PathBuf)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Sealed segments waiting for their sync, at most.
const SEALER_QUEUE: usize = 2;

impl Sealer {
    fn start() -> io::Result<Sealer> {
        let (tx, rx) = mpsc::sync_channel::<(File, PathBuf)>(SEALER_QUEUE);
        let delay = std::env::var(SEALER_DELAY_VAR)
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis);
        let thread = std::thread::Builder::new()
            .name("collator-sealer".into())
            .spawn(move || {
                for (file, dir) in rx {
                    if let Some(d) = delay {
                        std::thread::sleep(d);
                    }
                    if let Err(e) = file.sync_data() {
                        // Not retried (the kernel may have dropped the pages): the restart
                        // after a power loss cuts what is missing; until then readers have
                        // the page cache's bytes.
                        log::error!(
                            path:% = dir.display();
                            "fdatasync of a sealed segment of {} failed: {e}", dir.display()
                        );
                    }
                }
            })?;
        Ok(Sealer {
            queue: Some(tx),
            thread: Some(thread),
        })
    }

    fn sync(&self, file: File, dir: PathBuf) {
        if let Some(q) = &self.queue {
            let _ = q.send((file, dir));
        }
    }
}

impl Drop for Sealer {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the retention thread of the log at `dir`: a pass at once, then one each time it
/// is told (after a roll) and, with an age limit, every quarter of it (10 ms to a minute).
/// It ends when the writer drops its end of the channel.
fn start_retention(dir: PathBuf, retention: Retention) -> io::Result<mpsc::Sender<()>> {
    let (tx, rx) = mpsc::channel::<()>();
    let period = retention
        .age
        .map(|a| (a / 4).clamp(Duration::from_millis(10), Duration::from_secs(60)));
    std::thread::Builder::new()
        .name("collator-retention".into())
        .spawn(move || loop {
            retain(&dir, &retention);
            let next = match period {
                Some(p) => rx.recv_timeout(p).or_else(|e| match e {
                    mpsc::RecvTimeoutError::Timeout => Ok(()),
                    mpsc::RecvTimeoutError::Disconnected => Err(()),
                }),
                None => rx.recv().map_err(|_| ()),
            };
            if next.is_err() {
                return;
            }
            // Rolls while a pass ran need one more pass, not one each.
            while rx.try_recv().is_ok() {}
        })?;
    Ok(tx)
}

/// One pass of retention: lists the log, deletes what [`Retention::expired`] says, oldest
/// first. A failure is logged and the pass ends (the next one tries again).
fn retain(dir: &Path, retention: &Retention) {
    let log = match Log::open(dir) {
        Ok(log) => log,
        Err(e) => {
            log::warn!(path:% = dir.display(); "retention skipped a pass: {e}");
            return;
        }
    };
    for s in retention.expired(&log, SystemTime::now()) {
        fault("delete-before-unlink");
        if let Err(e) = segments::remove(s) {
            log::warn!(path:% = s.path.display(); "retention: {e}");
            return;
        }
        log::info!(
            offset = s.end(), bytes = s.len;
            "retention deleted {} ({} bytes): the log now starts at byte {}",
            s.path.display(), s.len, s.end()
        );
        fault("delete-after-unlink");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes("65536"), Ok(65536));
        assert_eq!(parse_bytes("64K"), Ok(64 << 10));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("2g"), Ok(2 << 30));
        assert_eq!(parse_bytes("1T"), Ok(1 << 40));
        for bad in ["", "M", "12X", "-1", "99999999999T", "1.5M"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_journal_is_made_the_active_segments() {
        let mut loaded = Loaded::default();
        loaded.groups = vec![(100, 150, 1), (150, 200, 2), (200, 260, 3)];
        loaded.checkpoint = Some(100);
        loaded.batches = vec![(120, 150), (210, 260)];
        let plain = Local::of(&loaded, 0);
        assert_eq!(plain.groups, loaded.groups);
        assert_eq!(plain.checkpoint, Some(100));
        assert_eq!(plain.batches, loaded.batches);
        // The segment starting at 200: one group, the checkpoint before it is its start.
        let seg = Local::of(&loaded, 200);
        assert_eq!(seg.groups, vec![(0, 60, 3)]);
        assert_eq!(seg.checkpoint, Some(0));
        assert_eq!(seg.batches, vec![(10, 60)]);
        // A checkpoint inside the segment.
        let seg = Local::of(&loaded, 50);
        assert_eq!(seg.checkpoint, Some(50));
        assert_eq!(Local::of(&Loaded::default(), 7).checkpoint, None);
    }
}
