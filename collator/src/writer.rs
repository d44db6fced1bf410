//! One file's writer: the only code that appends to it, and the group commit.
//!
//! Connections validate and frame requests, then [`FileWriter::submit`] them. Submitting
//! reserves the request's position at once (offset and message number are the queue's running
//! end), checks idempotence, and queues it; a dedicated thread per file takes *everything*
//! queued, from every connection, describes the group (`START END CRC`: in `data` mode in
//! the file's extended attribute [`logfile::group::MARKER`], else or where there are none as
//! a journal `g` record), writes its journal records, then the data with one `pwritev`, syncs if the mode
//! says so, and answers all of it. The description is what lets the restart check cut a torn
//! group after a power loss; the attribute is made durable by the data's `fsync` (the same
//! cost as `fdatasync` for an append), a journal record by a journal `fdatasync` run in
//! parallel with the data's (on a helper thread). Whatever arrives during
//! a write or a sync joins the next group: there is no timer and no artificial delay, so one
//! producer gets the latency of one write, and sixteen share one `fdatasync`.
//!
//! When the answer goes out depends on [`SyncMode`]: `none` at queueing, `write` after the
//! write, `data` after the sync of journal and data, `interval` after the write with a sync
//! every interval and at shutdown.
//!
//! **Failures.** A write that fails (disk full, a short write) is undone: the data file and
//! the journal are cut back to the last good end, synced, and the file's length checked;
//! then the group gets `error:` naming that length, everything queued behind it (whose
//! reserved positions are now wrong) `error: ... not written`, and the writer goes on. If
//! the cut-back fails, the requests are told they may be partly in the file, and the
//! collator stops (the restart check cuts what has no intact `g` record). Space is
//! reserved with `fallocate` before writing, so a full disk is usually found before a byte
//! is written. A failed `fdatasync` is never retried — the kernel may have dropped the dirty
//! pages and a second sync would report success for data that is gone — so every pending
//! request gets `error:` and the collator exits non-zero; the restart check takes over.
//!
//! **Back-pressure.** At most `--max-pending` bytes are queued per file; a submitter waits
//! for room (and its connection stops being read) until the writer frees it.
//!
//! **Segmented logs** ([`crate::segmented`]): the file is the active segment, and offsets
//! (answers, journal, watermark) are the log's, the file's plus its base. Before a group
//! that [`logfile::segments::Rolling::due`] says would overflow it, the writer syncs the
//! active segment (if anything is unsynced), gives back its reserved space, and rolls: the
//! group goes whole into the next segment.

use std::fs::File;
use std::io::{self, IoSlice};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use event_listener::Event;
use proto::collate::{Ack, End, Producer};
use proto::framing::Framing;
use proto::{Code, Refusal};
use rustix::fs::{fallocate, FallocateFlags};

use crate::dedupe::{self, Check, Entry, Journal, Producers};
use crate::segmented::Active;
use crate::watermark::Watermark;

/// `--sync`: when a request is acknowledged, and so what an acknowledgement promises. Asked
/// through its methods, which say what each mode implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Once validated and queued.
    None,
    /// After `write(2)` returned.
    Write,
    /// After `fdatasync`, with group commit.
    Data,
    /// After the write; `fdatasync` in the background every interval.
    Interval(Duration),
}

impl SyncMode {
    /// Whether a request is answered as soon as it is queued, before its write (`none`).
    pub fn acks_at_queueing(self) -> bool {
        self == SyncMode::None
    }

    /// Whether every write group is synced before it is answered (`data`): an answer means
    /// on disk, and the group's description may ride on the data's own sync.
    pub fn acks_after_sync(self) -> bool {
        self == SyncMode::Data
    }

    /// The background sync's period (`interval=MS`).
    pub fn sync_interval(self) -> Option<Duration> {
        match self {
            SyncMode::Interval(d) => Some(d),
            _ => None,
        }
    }

    /// Whether a segment that is rolled away from may be synced off the writer's path
    /// ([`crate::segmented`]): where nothing waits for a sync (`none`, `write`). Where the
    /// synced length is published, the sealed segment is synced before the next one exists,
    /// so the watermark never counts a byte that is not on disk.
    pub fn seals_off_path(self) -> bool {
        !self.publishes_watermark()
    }

    /// Whether the synced length is worth publishing (`FILE.synced`): only where syncs happen
    /// as writes go (`data`, `interval=MS`).
    pub fn publishes_watermark(self) -> bool {
        self.acks_after_sync() || self.sync_interval().is_some()
    }
}

impl std::str::FromStr for SyncMode {
    type Err = String;

    fn from_str(s: &str) -> Result<SyncMode, String> {
        match s {
            "none" => Ok(SyncMode::None),
            "write" => Ok(SyncMode::Write),
            "data" => Ok(SyncMode::Data),
            _ => match s
                .strip_prefix("interval=")
                .and_then(|ms| ms.parse::<u64>().ok())
            {
                Some(ms) if ms > 0 => Ok(SyncMode::Interval(Duration::from_millis(ms))),
                _ => Err(format!(
                    "unknown sync mode {s:?} (expected none, write, data or interval=MS)"
                )),
            },
        }
    }
}

/// What every file's writer is told.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How messages are framed in the file.
    pub framing: Framing,
    /// When requests are acknowledged.
    pub sync: SyncMode,
    /// Longest message.
    pub max_message: u64,
    /// Longest request body.
    pub max_request: u64,
    /// Most bytes queued per file.
    pub max_pending: u64,
    /// Whether the last write group may be described by an extended attribute of the file
    /// (else always by journal records).
    pub xattr: bool,
}

/// A file ready for its writer: open, locked, its torn tail cut, its journal rewritten.
#[derive(Debug)]
pub struct Opened {
    /// The file, open for writing.
    pub file: File,
    /// Its journal.
    pub journal: Journal,
    /// Where its last complete message ends.
    pub end: u64,
    /// How many messages it holds.
    pub count: u64,
    /// The producers its journal remembers.
    pub producers: Producers,
    /// Where the synced length is published (single-file mode).
    pub watermark: Option<Watermark>,
    /// Whether each group is described by the file's extended attribute
    /// ([`logfile::group::MARKER`]) rather than a journal record.
    pub marker: bool,
    /// The log offset of the file's first byte: 0, or a segmented log's active segment's
    /// base ([`crate::segmented`]). Offsets, `end` and the journal are the log's; the file is
    /// written at `offset - base`.
    pub base: u64,
    /// The segmented log the file is the active segment of, which rolls.
    pub segment: Option<Active>,
}

/// The answer a submitter waits for.
pub type Reply = Result<Ack, Refusal>;

/// A submitted request: answered already, or to be answered by the writer.
#[derive(Debug)]
pub enum Submitted {
    /// The answer.
    Done(Reply),
    /// The answer will arrive here.
    Wait(async_channel::Receiver<Reply>),
}

struct Job {
    data: Vec<u8>,
    ack: Ack,
    producer: Option<Producer>,
    reply: Option<async_channel::Sender<Reply>>,
    /// The connection's share of the memory budget for this body, released when the job
    /// is dropped (written, or refused).
    _hold: Option<Box<dyn Send>>,
}

struct State {
    queue: Vec<Job>,
    queued_bytes: u64,
    /// The running end: where the next queued request goes.
    next_offset: u64,
    next_msgno: u64,
    producers: Producers,
    /// Retries of requests still being written, answered when their original is.
    retries: Vec<(String, u64, async_channel::Sender<Reply>)>,
    closing: bool,
    /// Set when the writer stopped for good (a failed sync): the reason.
    failed: Option<String>,
}

struct Inner {
    path: PathBuf,
    settings: Settings,
    state: Mutex<State>,
    /// Wakes the writer thread.
    work: Condvar,
    /// Wakes submitters waiting for room.
    room: Event,
}

/// A file's writer (cheap to clone).
#[derive(Clone)]
pub struct FileWriter {
    inner: Arc<Inner>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl std::fmt::Debug for FileWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWriter")
            .field("path", &self.inner.path)
            .finish()
    }
}

/// Everything the writer thread owns.
struct Disk {
    file: File,
    journal: Journal,
    /// End of the last good write and its message count.
    end: u64,
    count: u64,
    /// Written but not yet synced (interval mode).
    dirty: bool,
    /// Journal records appended since its last sync.
    journal_dirty: bool,
    /// How far space is reserved (`fallocate`).
    reserved_to: u64,
    watermark: Option<Watermark>,
    last_sync: Instant,
    /// Started the first time journal and data are synced together.
    syncer: Option<Syncer>,
    /// The last group is described by the file's extended attribute (else by a `g` record).
    marker: bool,
    /// The log offset of the file's first byte (see [`Opened::base`]).
    base: u64,
    segment: Option<Active>,
}

impl Disk {
    /// Where the log's end is in the file.
    fn pos(&self) -> u64 {
        self.end - self.base
    }
}

/// The data file's sync: `fsync` where the extended attribute describes the last group (it
/// is metadata `fdatasync` may leave behind; an append commits the inode either way, so it
/// costs the same), `fdatasync` otherwise.
fn data_sync(file: &File, marker: bool) -> io::Result<()> {
    if marker {
        rustix::fs::fsync(file).map_err(io::Error::from)
    } else {
        rustix::fs::fdatasync(file).map_err(io::Error::from)
    }
}

/// A thread that syncs the journal while the writer syncs the data, so a group costs the
/// time of one `fdatasync`, not two in a row.
struct Syncer {
    files: std::sync::mpsc::Sender<File>,
    done: std::sync::mpsc::Receiver<io::Result<()>>,
}

impl Syncer {
    fn start() -> io::Result<Syncer> {
        let (files, rx) = std::sync::mpsc::channel::<File>();
        let (tx, done) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("collator-jsync".into())
            .spawn(move || {
                for f in rx {
                    if tx
                        .send(rustix::fs::fdatasync(&f).map_err(io::Error::from))
                        .is_err()
                    {
                        return;
                    }
                }
            })?;
        Ok(Syncer { files, done })
    }

    /// `fdatasync` of `journal` and [`data_sync`] of `data` at the same time.
    fn both(&self, journal: io::Result<File>, data: &File, marker: bool) -> io::Result<()> {
        let sent = journal.and_then(|j| {
            self.files
                .send(j)
                .map_err(|_| io::Error::other("the journal's sync thread is gone"))
        });
        let d = data_sync(data, marker);
        let j = sent.and_then(|()| {
            self.done
                .recv()
                .unwrap_or_else(|_| Err(io::Error::other("the journal's sync thread is gone")))
        });
        j.and(d)
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FileWriter {
    /// Starts the writer of the file at `path`, opened, locked and recovered. `fatal` gets
    /// the error that stops it for good.
    pub fn start(
        path: &Path,
        opened: Opened,
        settings: Settings,
        fatal: async_channel::Sender<io::Error>,
    ) -> io::Result<FileWriter> {
        let Opened {
            file,
            journal,
            end,
            count,
            producers,
            watermark,
            marker,
            base,
            segment,
        } = opened;
        let inner = Arc::new(Inner {
            path: path.to_owned(),
            settings,
            state: Mutex::new(State {
                queue: Vec::new(),
                queued_bytes: 0,
                next_offset: end,
                next_msgno: count,
                producers,
                retries: Vec::new(),
                closing: false,
                failed: None,
            }),
            work: Condvar::new(),
            room: Event::new(),
        });
        let disk = Disk {
            file,
            journal,
            end,
            count,
            dirty: false,
            journal_dirty: false,
            reserved_to: end,
            watermark,
            last_sync: Instant::now(),
            syncer: None,
            marker,
            base,
            segment,
        };
        let thread_inner = inner.clone();
        let name = format!("writer {}", path.display());
        let thread = std::thread::Builder::new()
            .name("collator-writer".into())
            .spawn(move || {
                if let Err(e) = write_loop(&thread_inner, disk) {
                    log::error!(path:% = thread_inner.path.display(); "{name} stopped: {e}");
                    let _ = fatal.try_send(e);
                }
            })?;
        Ok(FileWriter {
            inner,
            thread: Arc::new(Mutex::new(Some(thread))),
        })
    }

    /// The running end (everything queued included), and the framing.
    pub fn end(&self) -> End {
        let s = lock(&self.inner.state);
        End {
            offset: s.next_offset,
            msgno: s.next_msgno,
            framing: self.inner.settings.framing,
        }
    }

    /// Queues `count` framed messages (`data`, validated), waiting for room if the file's
    /// queue is full.
    pub async fn submit(
        &self,
        data: Vec<u8>,
        count: u64,
        producer: Option<Producer>,
        hold: Option<Box<dyn Send>>,
    ) -> Submitted {
        let mut hold = Some(hold);
        let len = data.len() as u64;
        let mut data = Some(data);
        loop {
            let listener;
            {
                let mut s = lock(&self.inner.state);
                if let Some(why) = &s.failed {
                    return Submitted::Done(Err(Refusal::new(Code::Io, why.clone())));
                }
                if s.closing {
                    return Submitted::Done(Err(Refusal::new(
                        Code::Busy,
                        "the collator is shutting down",
                    )));
                }
                if let Some(p) = &producer {
                    match s.producers.check(p) {
                        Check::Fresh => {}
                        Check::Duplicate(e) if e.committed => return Submitted::Done(Ok(e.ack)),
                        Check::Duplicate(_) => {
                            // The original is still being written: answer with its fate.
                            let (tx, rx) = async_channel::bounded(1);
                            s.retries.push((p.id.clone(), p.seq, tx));
                            return Submitted::Wait(rx);
                        }
                        Check::Gap { expected } => {
                            return Submitted::Done(Err(Refusal::new(
                                Code::SequenceGap,
                                format!(
                                    "producer {} sent seq {}, expected {expected}",
                                    p.id, p.seq
                                ),
                            )))
                        }
                        Check::Unknown { oldest, newest } => {
                            return Submitted::Done(Err(Refusal::new(
                                Code::SequenceGap,
                                format!(
                                    "producer {} sent seq {}, which is not among the requests \
                                     remembered ({oldest} to {newest}): it was not written",
                                    p.id, p.seq
                                ),
                            )))
                        }
                        Check::TooOld { oldest } => {
                            return Submitted::Done(Err(Refusal::new(
                                Code::SequenceGap,
                                format!(
                                    "producer {} sent seq {}, older than the oldest remembered \
                                     ({oldest}, a window of {} requests): its fate is unknown",
                                    p.id,
                                    p.seq,
                                    dedupe::WINDOW
                                ),
                            )))
                        }
                    }
                }
                if s.queued_bytes == 0 || s.queued_bytes + len <= self.inner.settings.max_pending {
                    let ack = Ack {
                        offset: s.next_offset,
                        msgno: s.next_msgno,
                        count,
                    };
                    s.next_offset += len;
                    s.next_msgno += count;
                    s.queued_bytes += len;
                    if let Some(p) = &producer {
                        s.producers.record(
                            &p.id,
                            Entry {
                                seq: p.seq,
                                ack,
                                end: ack.offset + len,
                                committed: false,
                            },
                        );
                    }
                    let (reply, answer) = if self.inner.settings.sync.acks_at_queueing() {
                        (None, Submitted::Done(Ok(ack)))
                    } else {
                        let (tx, rx) = async_channel::bounded(1);
                        (Some(tx), Submitted::Wait(rx))
                    };
                    s.queue.push(Job {
                        data: data.take().unwrap_or_default(),
                        ack,
                        producer,
                        reply,
                        _hold: hold.take().flatten(),
                    });
                    drop(s);
                    self.inner.work.notify_one();
                    return answer;
                }
                listener = self.inner.room.listen();
            }
            listener.await;
        }
    }

    /// Stops taking requests, writes (and syncs) what is queued, and waits for the thread.
    pub fn close(&self) {
        lock(&self.inner.state).closing = true;
        self.inner.work.notify_all();
        self.inner.room.notify(usize::MAX);
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

fn refusal_for(e: &io::Error, end: u64) -> Refusal {
    let full = matches!(
        e.raw_os_error(),
        Some(c) if c == rustix::io::Errno::NOSPC.raw_os_error()
            || c == rustix::io::Errno::DQUOT.raw_os_error()
    );
    if full {
        Refusal::new(
            Code::DiskFull,
            format!(
                "the disk is full; nothing of the request is in the file (cut back to byte \
                 {end} and synced)"
            ),
        )
    } else {
        Refusal::new(
            Code::Io,
            format!(
                "writing failed ({e}); nothing of the request is in the file (cut back to \
                 byte {end} and synced)"
            ),
        )
    }
}

fn answer(job: &Job, reply: Reply) {
    if let Some(tx) = &job.reply {
        let _ = tx.try_send(reply);
    }
}

/// The writer thread: groups until closed and drained, or until a sync fails.
fn write_loop(inner: &Inner, mut disk: Disk) -> io::Result<()> {
    let interval = inner.settings.sync.sync_interval();
    loop {
        let (jobs, bytes) = {
            let mut s = lock(&inner.state);
            loop {
                if !s.queue.is_empty() || s.closing {
                    break;
                }
                match interval {
                    Some(d) if disk.dirty => {
                        let left = d.saturating_sub(disk.last_sync.elapsed());
                        if left.is_zero() {
                            break;
                        }
                        s = inner
                            .work
                            .wait_timeout(s, left)
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                    }
                    _ => s = inner.work.wait(s).unwrap_or_else(|p| p.into_inner()),
                }
            }
            if s.queue.is_empty() && s.closing {
                drop(s);
                if disk.dirty || !inner.settings.sync.acks_after_sync() {
                    sync(inner, &mut disk, &[])?;
                }
                return Ok(());
            }
            let jobs = std::mem::take(&mut s.queue);
            let bytes: u64 = jobs.iter().map(|j| j.data.len() as u64).sum();
            (jobs, bytes)
        };
        if jobs.is_empty() {
            // The interval ran out: background sync.
            sync(inner, &mut disk, &[])?;
            continue;
        }
        let count: u64 = jobs.iter().map(|j| j.ack.count).sum();
        let journal_len = disk.journal.len();
        if disk
            .segment
            .as_ref()
            .is_some_and(|s| s.due(disk.pos(), bytes))
        {
            // Sealed on disk before the next segment exists where syncs are awaited (`data`,
            // `interval`): a crash never leaves a sealed segment shorter than the names say.
            // In `none` and `write` its sync is the sealer's, off this path; a power loss
            // before it ends is cut back at the restart ([`crate::segmented`]).
            let off_path = inner.settings.sync.seals_off_path();
            if disk.dirty && !off_path {
                sync(inner, &mut disk, &jobs)?;
            }
            if let Err(e) = roll(&mut disk) {
                undo(inner, &mut disk, journal_len, &jobs, &e)?;
                continue;
            }
        }
        match write_group(&mut disk, &jobs, bytes) {
            Ok(()) => {}
            Err(e) => {
                undo(inner, &mut disk, journal_len, &jobs, &e)?;
                continue;
            }
        }
        if let Some(s) = &mut disk.segment {
            s.written();
        }
        disk.end += bytes;
        disk.count += count;
        disk.dirty = true;
        if inner.settings.sync.acks_after_sync() {
            sync(inner, &mut disk, &jobs)?;
        }
        // The connections' answer tasks woken here are polled on this thread (a few, see
        // `shared::rt::run_woken_here`), so an acknowledgement goes out right after its
        // write or sync, without a hand-off to an executor thread. They only write to their
        // sockets and wait again: they never wait on this thread, nor take `state`.
        shared::rt::run_woken_here(|| {
            for job in &jobs {
                answer(job, Ok(job.ack));
            }
        });
        let compact = {
            let mut s = lock(&inner.state);
            s.queued_bytes -= bytes;
            for job in &jobs {
                if let Some(p) = &job.producer {
                    s.producers.commit(&p.id, p.seq);
                }
            }
            if !s.retries.is_empty() {
                let retries = std::mem::take(&mut s.retries);
                for (id, seq, tx) in retries {
                    let original = jobs.iter().find(|j| {
                        j.producer
                            .as_ref()
                            .is_some_and(|p| p.id == id && p.seq == seq)
                    });
                    match original {
                        Some(j) => {
                            let _ = tx.try_send(Ok(j.ack));
                        }
                        None => s.retries.push((id, seq, tx)),
                    }
                }
            }
            (disk.journal.len() > dedupe::COMPACT_AT).then(|| {
                let mut committed = s.producers.clone();
                committed.drop_uncommitted();
                committed
            })
        };
        inner.room.notify(usize::MAX);
        if let Some(producers) = compact {
            // Everything in the file up to disk.end is written; in data mode synced too.
            if !inner.settings.sync.acks_after_sync() {
                sync(inner, &mut disk, &[])?;
            }
            let path = disk.journal.path().to_owned();
            disk.journal = Journal::rewrite(&path, &producers, disk.end)?;
        }
    }
}

/// Starts the next segment where the active one ends (group boundaries only: never inside
/// a batch), and writes there from now on. The old one's space reserved past its end is
/// given back first.
fn roll(disk: &mut Disk) -> io::Result<()> {
    let pos = disk.pos();
    let Some(segment) = &mut disk.segment else {
        return Ok(());
    };
    disk.file.set_len(pos)?;
    let sealed = std::mem::replace(&mut disk.file, segment.roll(disk.end, disk.count)?);
    // Still dirty only where the sync was left to the sealer (`seals_off_path`).
    segment.sealed(sealed, std::mem::take(&mut disk.dirty));
    disk.base = disk.end;
    disk.reserved_to = disk.end;
    Ok(())
}

/// The group's description (marker or `g` record, with its CRC), the producers' journal
/// records, space, then the data with `pwritev` (looping over short writes).
fn write_group(disk: &mut Disk, jobs: &[Job], bytes: u64) -> io::Result<()> {
    let mut records = Vec::with_capacity(64);
    let mut crc = crc32fast::Hasher::new();
    for job in jobs {
        crc.update(&job.data);
    }
    if disk.marker {
        let pos = disk.pos();
        logfile::group::write_marker(&disk.file, pos, pos + bytes, crc.finalize())?;
    } else {
        dedupe::render_group(disk.end, disk.end + bytes, crc.finalize(), &mut records);
    }
    for job in jobs {
        if let Some(p) = &job.producer {
            let entry = Entry {
                seq: p.seq,
                ack: job.ack,
                end: job.ack.offset + job.data.len() as u64,
                committed: true,
            };
            dedupe::render_producer(&p.id, &entry, &mut records);
        }
    }
    if !records.is_empty() {
        disk.journal.append(&records)?;
        disk.journal_dirty = true;
    }
    reserve(disk, bytes)?;
    let mut at = disk.pos();
    let mut job = 0;
    let mut skip = 0usize; // Bytes of jobs[job] already written.
    while job < jobs.len() {
        let slices: Vec<IoSlice<'_>> = jobs[job..]
            .iter()
            .take(1024)
            .enumerate()
            .map(|(i, j)| IoSlice::new(if i == 0 { &j.data[skip..] } else { &j.data }))
            .collect();
        let mut n = rustix::io::pwritev(&disk.file, &slices, at)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short write"));
        }
        at += n as u64;
        while n > 0 && job < jobs.len() {
            let left = jobs[job].data.len() - skip;
            if n >= left {
                n -= left;
                job += 1;
                skip = 0;
            } else {
                skip += n;
                n = 0;
            }
        }
    }
    Ok(())
}

/// Space for `bytes` more at the end, reserved with `fallocate` in steps of [`RESERVE`] (a
/// call per write would double the cost of a small synced write), so a full disk is found
/// before anything is written. File systems without `fallocate` skip this.
fn reserve(disk: &mut Disk, bytes: u64) -> io::Result<()> {
    let end = disk.end + bytes;
    if end <= disk.reserved_to {
        return Ok(());
    }
    let mut want = bytes.max(RESERVE);
    loop {
        match fallocate(&disk.file, FallocateFlags::KEEP_SIZE, disk.pos(), want) {
            Ok(()) => {
                disk.reserved_to = disk.end + want;
                return Ok(());
            }
            Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {
                disk.reserved_to = u64::MAX;
                return Ok(());
            }
            // Less than a step left: reserve exactly what this group needs.
            Err(e) if e == rustix::io::Errno::NOSPC && want > bytes => want = bytes,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Bytes reserved ahead of the end at a time.
const RESERVE: u64 = 4 << 20;

/// A failed write: cut file and journal back (synced, and the file's length checked), refuse
/// the group and everything queued. If the cut-back itself fails, the requests may be partly
/// in the file: they are told so, and the error stops the collator (its restart check then
/// cuts what has no complete journal record).
fn undo(
    inner: &Inner,
    disk: &mut Disk,
    journal_len: u64,
    jobs: &[Job],
    e: &io::Error,
) -> io::Result<()> {
    log::error!(path:% = inner.path.display(), offset = disk.end;
        "write failed, cutting back to byte {}: {e}", disk.end);
    let end = disk.end;
    let pos = disk.pos();
    let cut = disk
        .file
        .set_len(pos)
        .and_then(|()| disk.file.sync_all())
        .and_then(|()| match disk.file.metadata()?.len() {
            l if l == pos => Ok(()),
            l => Err(io::Error::other(format!(
                "the file is {l} bytes after the cut"
            ))),
        })
        .and_then(|()| disk.journal.truncate(journal_len));
    // Truncating frees what was reserved beyond the end.
    disk.reserved_to = end;
    let (refusal, fatal) = match cut {
        Ok(()) => (refusal_for(e, end), None),
        Err(cut_err) => {
            let why = format!(
                "writing {} failed ({e}) and cutting it back to byte {end} failed too \
                 ({cut_err}): the request may be partly in the file; the collator stops and \
                 its restart check decides",
                inner.path.display()
            );
            log::error!(path:% = inner.path.display(); "{why}");
            (Refusal::new(Code::Io, why.clone()), Some(why))
        }
    };
    // Requests queued behind the group were never written at all.
    let behind = Refusal::new(
        refusal.code,
        format!("not written: an earlier write failed ({e})"),
    );
    let mut s = lock(&inner.state);
    let queued = std::mem::take(&mut s.queue);
    let lost_acks = jobs
        .iter()
        .chain(&queued)
        .filter(|j| j.reply.is_none())
        .count();
    if lost_acks > 0 {
        log::error!("{lost_acks} requests acknowledged at queueing (--sync none) were not written");
    }
    for job in jobs {
        answer(job, Err(refusal.clone()));
    }
    for job in &queued {
        answer(job, Err(behind.clone()));
    }
    for (_, _, tx) in s.retries.drain(..) {
        let _ = tx.try_send(Err(refusal.clone()));
    }
    s.queued_bytes = 0;
    s.next_offset = disk.end;
    s.next_msgno = disk.count;
    s.producers.drop_uncommitted();
    if let Some(why) = &fatal {
        s.failed = Some(why.clone());
    }
    drop(s);
    inner.room.notify(usize::MAX);
    match fatal {
        Some(why) => Err(io::Error::other(why)),
        None => Ok(()),
    }
}

/// The sync of the journal (if written to) and the data. A failure is final: every job in hand and every
/// queued one is refused, and the error stops the collator.
fn sync(inner: &Inner, disk: &mut Disk, jobs: &[Job]) -> io::Result<()> {
    let r = if disk.journal_dirty {
        let syncer = match &mut disk.syncer {
            Some(s) => Ok(s),
            slot @ None => Syncer::start().map(|s| slot.insert(s)),
        };
        syncer.and_then(|s| s.both(disk.journal.handle(), &disk.file, disk.marker))
    } else {
        data_sync(&disk.file, disk.marker)
    };
    disk.journal_dirty = false;
    disk.last_sync = Instant::now();
    match r {
        Ok(()) => {
            disk.dirty = false;
            if let Some(w) = &mut disk.watermark {
                if let Err(e) = w.publish(disk.end) {
                    log::warn!(path:% = inner.path.display(); "cannot publish the synced length: {e}");
                }
            }
            Ok(())
        }
        Err(e) => {
            let why = format!(
                "fdatasync of {} failed ({e}); not retried (the kernel may have dropped the \
                 data): the collator stops, and its restart check decides what is in the file",
                inner.path.display()
            );
            let refusal = Refusal::new(Code::Io, why.clone());
            let mut s = lock(&inner.state);
            s.failed = Some(why.clone());
            let queued = std::mem::take(&mut s.queue);
            for (_, _, tx) in s.retries.drain(..) {
                let _ = tx.try_send(Err(refusal.clone()));
            }
            drop(s);
            for job in jobs.iter().chain(&queued) {
                answer(job, Err(refusal.clone()));
            }
            inner.room.notify(usize::MAX);
            Err(io::Error::new(e.kind(), why))
        }
    }
}
