//! The scanner: follows the log, splits it into messages and keeps the index (in memory and
//! on disk) up to date. One task, the only writer of both.
//!
//! Life of the scanner:
//! 1. wait for the log to exist ([`shared::watch`] watches its directory meanwhile);
//! 2. load the index file ([`crate::store`]); reuse it only if it is ours, for this framing,
//!    stride and limit, for this inode and these first bytes of the log, and its entries
//!    still match the log: entries past the log's end are dropped (a machine crash can leave
//!    entries that were never synced, see `store`), and a sample of strides (the first, the
//!    last and a few between) is re-split and must end exactly where the index says.
//!    Otherwise rebuild, saying why in the log;
//! 3. resume from the last entry, so a restart rescans at most K-1 messages plus what was
//!    appended while we were down;
//! 4. loop: read everything new with `pread` (64 KiB at a time, published every 1 MiB),
//!    split it, publish the new count and entries, append the entries to the file (synced in batches: [`Store::sync_due`]);
//!    then sleep until the watcher says the log grew (no polling), a lookup flags the index
//!    as not matching the log, or a sync is due. A truncation (the watcher's epoch changes:
//!    the log got shorter, or the bytes before its old end were rewritten, see
//!    `shared::watch`), a log shorter than what we read (a read that comes up empty while
//!    `fstat` still counts the bytes is a short read: read again after a pause, an error
//!    after 5 s), or a lookup that found the log no
//!    longer splits where the index says ([`Index::wait_suspect`]) rebuilds from scratch. A
//!    framing error stops indexing where it happened, is logged and published for queries,
//!    and waits for one of those.
//!
//! The cold build is the same loop: with newline framing the per-chunk work is memchr and a
//! counter per message, so it runs at memory speed like `wc -l`. Batches that start more than
//! [`OFFLOAD`] bytes behind the log (a cold build, catching up after a restart) run on the
//! blocking pool (`shared::rt::spawn_blocking`), so a long scan never holds an executor
//! thread; following a live log, each batch is a few page-cache bytes and runs inline.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future;
use proto::framing::{FramingError, Splitter};
use shared::rt;
use shared::watch::FileWatch;

use crate::bulk::{self, Bulk};
use crate::index::{self, Index, Params};
use crate::store::{self, Fence, Identity, Opened, Store};

/// Bytes per `pread`: small enough that the copy out of the page cache lands in the CPU
/// cache, where the delimiter count reads it again (1 MiB reads measured ~40% slower).
const CHUNK: usize = 64 << 10;

/// Bytes read between two publications of the index (lock, entry write, yield).
const BATCH: u64 = 1 << 20;

/// How often a long first pass logs its progress.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// How far behind the log the scanner must be for a batch to go to the blocking pool.
const OFFLOAD: u64 = 4 << 20;

/// Strides re-split on start-up to check that the index still describes the log.
const SPOT_CHECKS: usize = 8;

/// Runs the scanner until an I/O error on the log or the index file. A newline or NUL log
/// far behind the index is split on `threads` threads ([`crate::bulk`]).
pub async fn run(
    index: Arc<Index>,
    watch: FileWatch,
    index_path: &Path,
    threads: usize,
) -> io::Result<()> {
    watch.wait_until(|w| w.file().is_some()).await;
    let Some(file) = watch.file() else {
        unreachable!("wait_until returned before the file was open")
    };
    let params = Identity {
        params: index.params,
        ino: store::inode(file).map_err(|e| ctx(&watch, "stat", e))?,
    };
    // Epoch before anything is read: a truncation from here on is noticed.
    let mut epoch = watch.epoch();
    let (loaded, mut entries) = load(&index, file, index_path, params)?;
    let mut store = Pending::Ready(loaded);
    let fence = Fence::default();
    loop {
        let why = follow(&index, &watch, file, &mut store, entries, epoch, threads).await?;
        epoch = watch.epoch();
        // Forget the old index before saying so: whoever reads the log line and then asks
        // must not be answered from the log as it was.
        publish(&index, Vec::new());
        log::warn!(index:% = index_path.display(); "rebuilding the index from the start: {why}");
        // The new file (written and synced before it replaces the old one) is made on the
        // blocking pool while the scan starts: queries need not wait for it. A file still
        // being made for an earlier rebuild is let go; the fence keeps them in order.
        let log = file.try_clone().map_err(|e| ctx(&watch, "dup of", e))?;
        let path = index_path.to_owned();
        let (fence, ticket) = (fence.clone(), fence.next());
        let creating =
            rt::spawn_blocking(move || Store::create_fenced(&path, params, &log, &fence, ticket));
        store = Pending::Creating(creating, Vec::new());
        entries = Vec::new();
    }
}

/// Opens the index file and decides whether its entries can be trusted.
fn load(
    index: &Index,
    file: &File,
    index_path: &Path,
    params: Identity,
) -> io::Result<(Store, Vec<u64>)> {
    let shown = index_path.display();
    match Store::open(index_path, params, file)? {
        Opened::Created(store) => {
            log::info!(index:% = shown; "no index yet, building it from the start");
            Ok((store, Vec::new()))
        }
        Opened::Rebuilt(store, why) => {
            log::warn!(index:% = shown; "rebuilding the index from the start: {why}");
            Ok((store, Vec::new()))
        }
        Opened::Resumed(mut store, mut entries) => {
            let len = file
                .metadata()
                .map_err(|e| ctx_path(index_path, "stat of the log for", e))?
                .len();
            let keep = entries.partition_point(|&o| o <= len);
            if keep < entries.len() {
                log::warn!(
                    index:% = shown, kept = keep, dropped = entries.len() - keep;
                    "the log is {len} bytes, shorter than the indexed {}: dropping the entries \
                     past its end (a machine crash, or a truncation while the indexer was down)",
                    entries[entries.len() - 1]
                );
                entries.truncate(keep);
                store.keep(keep as u64)?;
            }
            resume(index, file, index_path, params, store, entries)
        }
    }
}

/// Resumes from `entries` if they still match the log, else starts over.
fn resume(
    index: &Index,
    file: &File,
    index_path: &Path,
    params: Identity,
    store: Store,
    entries: Vec<u64>,
) -> io::Result<(Store, Vec<u64>)> {
    let shown = index_path.display();
    match verify(&index.params, file, &entries) {
        Ok(()) => {
            let offset = entries.last().copied().unwrap_or(0);
            let messages = entries.len() as u64 * index.params.k();
            log::info!(
                index:% = shown, offset = offset, messages = messages;
                "resuming from the index at byte {offset} (message {messages})"
            );
            Ok((store, entries))
        }
        Err(why) => {
            log::warn!(index:% = shown; "rebuilding the index from the start: it does not match the log: {why}");
            Ok((Store::create(index_path, params, file)?, Vec::new()))
        }
    }
}

/// Checks that the log is still the file `entries` describe (see the module docs).
pub(crate) fn verify(params: &Params, file: &File, entries: &[u64]) -> Result<(), String> {
    let Some(&last) = entries.last() else {
        return Ok(());
    };
    let len = file
        .metadata()
        .map_err(|e| format!("stat failed: {e}"))?
        .len();
    if len < last {
        return Err(format!(
            "the log is {len} bytes, shorter than the indexed {last}"
        ));
    }
    let n = entries.len();
    let mut picks: Vec<usize> = (0..SPOT_CHECKS).map(|i| i * n / SPOT_CHECKS).collect();
    picks.push(n - 1);
    picks.dedup();
    let mut buf = Vec::new();
    for i in picks {
        let from = if i == 0 { 0 } else { entries[i - 1] };
        let to = entries[i];
        let mut ends = 0u64;
        let mut last_end = from;
        index::scan(
            file,
            params.framing,
            params.max_message,
            from,
            to,
            &mut buf,
            |e| {
                ends += 1;
                last_end = e;
                false
            },
        )
        .map_err(|e| format!("re-splitting bytes {from}..{to}: {e}"))?;
        if ends != params.k() || last_end != to {
            return Err(format!(
                "bytes {from}..{to} hold {ends} messages ending at {last_end}, the index says {} ending at {to}",
                params.k()
            ));
        }
    }
    Ok(())
}

/// Publishes `entries` and keeps indexing the log until it must be rebuilt; returns why.
async fn follow(
    index: &Index,
    watch: &FileWatch,
    file: &File,
    store: &mut Pending,
    entries: Vec<u64>,
    epoch: u64,
    threads: usize,
) -> io::Result<String> {
    let stride = index.params.k();
    let resume = entries.last().copied().unwrap_or(0);
    let mut p = Progress {
        splitter: Splitter::at(index.params.framing, index.params.max_message, resume),
        stride,
        count: entries.len() as u64 * stride,
        until_entry: stride,
        new_starts: Vec::new(),
        buf: vec![0u8; CHUNK],
    };
    let generation = publish(index, entries);
    let bulk = match index.params.framing.delimiter() {
        Some(delim) if threads > 1 => Some(Bulk {
            delim,
            threads,
            stride,
        }),
        _ => None,
    };
    let started = Instant::now();
    let mut caught_up = false;
    // A long first pass (a cold build of a big log) says how it is getting on.
    let mut progress_at = started + PROGRESS_EVERY;
    let from = p.splitter.offset();
    // Why the index must be rebuilt, if it must.
    let stale = || {
        if index.is_suspect(generation) {
            Some("a lookup found that the log no longer matches it (rewritten in place?)")
        } else if watch.epoch() != epoch {
            Some("the log was truncated or rewritten")
        } else {
            None
        }
    };
    let truncated = || Ok("the log was truncated or rewritten".to_string());
    // Since when reads have come up empty before a length `fstat` still counts.
    let mut short_since: Option<Instant> = None;
    'outer: loop {
        if let Some(why) = stale() {
            return Ok(why.to_string());
        }
        let len = watch.len();
        if len < p.splitter.offset() {
            return truncated();
        }
        while p.splitter.offset() < len {
            let read = if len - p.splitter.offset() >= OFFLOAD {
                // Far behind (a cold build, catching up after a restart): the batch is long
                // blocking work, so it runs on the blocking pool, not on an executor thread
                // that queries and the accept loop need.
                let watch = watch.clone();
                let (back, read) = rt::spawn_blocking(move || {
                    let file = watch.file().expect("the scanner follows an open file");
                    let read = p.batch(bulk, file, &watch, len);
                    (p, read)
                })
                .await;
                p = back;
                read?
            } else {
                // A tail-follow read: a few page-cache bytes, cheaper than a thread hop.
                p.batch(bulk, file, watch, len)?
            };
            let Some(fed) = read else {
                // The log ended before the length the watcher published: it changed after
                // the watcher last looked. Rebuilding at once would read that same stale
                // length, come up short again and go round without ever waiting (on the
                // watcher's own thread, where woken tasks are polled, the watcher would
                // never get to look). So wait until the watcher has seen the change.
                watcher_caught_up(watch, epoch, len).await;
                // Unless the file is really shorter (or the watcher saw a change), it was a
                // short read: LazyFS, FUSE and network file systems return nothing for
                // bytes `fstat` already counts, typically just appended. Keep what was
                // split and read again after a pause, rather than rebuild the index.
                let now_len = file.metadata().map_err(|e| ctx(watch, "stat of", e))?.len();
                if watch.epoch() != epoch || now_len < len {
                    return truncated();
                }
                let since = *short_since.get_or_insert_with(|| {
                    log::info!(
                        path:% = watch.path().display(), offset = p.splitter.offset(), length = len;
                        "short read: bytes the log holds are not readable yet; reading again"
                    );
                    Instant::now()
                });
                if since.elapsed() >= SHORT_READ_PATIENCE {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "reading {} at byte {}: nothing could be read for {:?} though the \
                             log is {now_len} bytes long",
                            watch.path().display(),
                            p.splitter.offset(),
                            SHORT_READ_PATIENCE
                        ),
                    ));
                }
                async_io::Timer::after(SHORT_READ_PAUSE).await;
                continue 'outer;
            };
            short_since = None;
            // Publish and persist once per batch.
            let end = p.splitter.boundary();
            index.update(|s| {
                s.starts.extend_from_slice(&p.new_starts);
                s.count = p.count;
                s.end = end;
                s.error = fed.as_ref().err().cloned();
            });
            store.append(&p.new_starts, file)?;
            p.new_starts.clear();
            if store.sync_due().is_some_and(|at| at <= Instant::now()) {
                store.settle(file).await?.sync(file).await?;
            }
            if let Err(e) = fed {
                log::error!(
                    path:% = watch.path().display(), offset = end, messages = p.count;
                    "indexing stopped: {e}"
                );
                store.settle(file).await?.sync(file).await?;
                let changed = watch.wait_until(|w| w.epoch() != epoch);
                future::or(changed, index.wait_suspect(generation)).await;
                return Ok(stale().unwrap_or("the log changed").to_string());
            }
            // A cold build of a big log must not starve the accept loop and queries.
            if !caught_up && Instant::now() >= progress_at {
                progress_at = Instant::now() + PROGRESS_EVERY;
                let done = p.splitter.offset();
                let rate = (done - from) as f64 / started.elapsed().as_secs_f64();
                log::info!(
                    path:% = watch.path().display(), offset = done, length = len,
                    messages = p.count;
                    "building the index: {} of {} MiB, {:.0} MiB/s, about {:.0} s to go",
                    done >> 20, len >> 20, rate / f64::from(1 << 20),
                    (len - done) as f64 / rate.max(1.0)
                );
            }
            future::yield_now().await;
        }
        if !caught_up {
            caught_up = true;
            index.update(|s| s.caught_up = true);
            let entries = store.entries();
            log::info!(
                path:% = watch.path().display(), messages = p.count,
                offset = p.splitter.boundary(), entries = entries,
                seconds = started.elapsed().as_secs_f64();
                "index is up to date, following the log"
            );
        }
        // Sleep until the log grows, a lookup flags the index, a sync is due, or the index
        // file being created exists.
        let woke = async {
            let grew = watch.wait_for_growth(p.splitter.offset(), epoch);
            future::or(grew, index.wait_suspect(generation)).await;
            Woke::Log
        };
        let due = store.sync_due();
        let sync = async {
            match due {
                Some(at) => {
                    async_io::Timer::at(at).await;
                    Woke::Sync
                }
                None => future::pending().await,
            }
        };
        let creating = store.is_creating();
        let created = async {
            match creating {
                true => Woke::Created(store.settle(file).await.map(|_| ())),
                false => future::pending().await,
            }
        };
        match future::or(woke, future::or(sync, created)).await {
            Woke::Log => {}
            Woke::Sync => store.settle(file).await?.sync(file).await?,
            Woke::Created(made) => made?,
        }
    }
}

/// How long a scanner whose read came up short waits for the watcher to publish the
/// change before it rebuilds anyway (a rewrite the watcher cannot tell from the old log
/// leaves its epoch and length alone).
const SHORT_READ_WAIT: Duration = Duration::from_millis(100);

/// How long reads of bytes the log holds may keep coming up empty before the scanner gives
/// up with an error, and the pause between two tries.
const SHORT_READ_PATIENCE: Duration = Duration::from_secs(5);
const SHORT_READ_PAUSE: Duration = Duration::from_millis(10);

/// Waits until the watcher has published an epoch other than `epoch` or a length other
/// than `len`, or [`SHORT_READ_WAIT`] has passed.
async fn watcher_caught_up(watch: &FileWatch, epoch: u64, len: u64) {
    let moved = watch.wait_until(|w| w.epoch() != epoch || w.len() != len);
    let timeout = async {
        async_io::Timer::after(SHORT_READ_WAIT).await;
    };
    future::or(moved, timeout).await;
}

/// The index file: open, or being created on the blocking pool (a rebuild), with the
/// entries found meanwhile.
enum Pending {
    Creating(shared::rt::Task<io::Result<Option<Store>>>, Vec<u64>),
    Ready(Store),
}

impl Pending {
    /// Appends entries to the file, or keeps them until it exists.
    fn append(&mut self, offsets: &[u64], log: &File) -> io::Result<()> {
        match self {
            Pending::Ready(store) => store.append(offsets, log),
            Pending::Creating(_, kept) => {
                kept.extend_from_slice(offsets);
                Ok(())
            }
        }
    }

    /// Waits until the file exists and holds the entries kept meanwhile.
    async fn settle(&mut self, log: &File) -> io::Result<&mut Store> {
        if let Pending::Creating(task, kept) = self {
            // Only the newest ticket is awaited, and it cannot be superseded meanwhile.
            let mut store = task.await?.ok_or_else(|| {
                io::Error::other("the index file was superseded while it was created")
            })?;
            store.append(kept, log)?;
            *self = Pending::Ready(store);
        }
        match self {
            Pending::Ready(store) => Ok(store),
            Pending::Creating(..) => unreachable!("replaced just above"),
        }
    }

    fn is_creating(&self) -> bool {
        matches!(self, Pending::Creating(..))
    }

    /// Entries written, or kept for the file being created.
    fn entries(&self) -> u64 {
        match self {
            Pending::Ready(store) => store.persisted(),
            Pending::Creating(_, kept) => kept.len() as u64,
        }
    }

    /// When a sync is due (never while the file is being created: nothing to sync yet).
    fn sync_due(&self) -> Option<Instant> {
        match self {
            Pending::Ready(store) => store.sync_due(),
            Pending::Creating(..) => None,
        }
    }
}

/// What woke an idle scanner.
enum Woke {
    /// The log grew or changed, or a lookup flagged the index.
    Log,
    /// A sync is due.
    Sync,
    /// The index file being created exists now (or could not be made).
    Created(io::Result<()>),
}

/// Where the scanner is in the log, and what it found since the last publication.
struct Progress {
    splitter: Splitter,
    stride: u64,
    /// Complete messages.
    count: u64,
    /// Message ends still to pass before the next entry.
    until_entry: u64,
    /// Entries found since the last publication.
    new_starts: Vec<u64>,
    buf: Vec<u8>,
}

impl Progress {
    /// Splits the next batch: on every core when far behind a delimiter framing
    /// ([`crate::bulk`]), else one thread's preads. None if the log ended early.
    fn batch(
        &mut self,
        bulk: Option<Bulk>,
        file: &File,
        watch: &FileWatch,
        len: u64,
    ) -> io::Result<Option<Result<(), FramingError>>> {
        match bulk {
            Some(bulk) if len - self.splitter.offset() >= bulk::MIN_BYTES => {
                Ok(self.bulk_batch(bulk, file, watch, len)?.map(Ok))
            }
            _ => self.read_batch(file, watch, len),
        }
    }

    /// Splits up to [`BATCH`] bytes, up to `len`, in cache-sized `pread`s. None if the log
    /// ended early (it was truncated); a framing error stops the batch where it happened.
    fn read_batch(
        &mut self,
        file: &File,
        watch: &FileWatch,
        len: u64,
    ) -> io::Result<Option<Result<(), FramingError>>> {
        let batch_end = len.min(self.splitter.offset() + BATCH);
        let stride = self.stride;
        while self.splitter.offset() < batch_end {
            let pos = self.splitter.offset();
            let skip = self.splitter.payload_remaining().min(len - pos);
            let (count, until_entry, new_starts) =
                (&mut self.count, &mut self.until_entry, &mut self.new_starts);
            if skip >= CHUNK as u64 {
                // A long payload: no need to read it, only its end matters.
                self.splitter.skip_payload(skip, |e| {
                    *count += 1;
                    *until_entry -= 1;
                    if *until_entry == 0 {
                        new_starts.push(e);
                        *until_entry = stride;
                    }
                });
                continue;
            }
            let want = (batch_end - pos).min(CHUNK as u64) as usize;
            let n = index::read_at(file, &mut self.buf[..want], pos)
                .map_err(|e| ctx(watch, &format!("reading at byte {pos} of"), e))?;
            if n == 0 {
                return Ok(None);
            }
            match self
                .splitter
                .feed_sparse(&self.buf[..n], stride, until_entry, |e| new_starts.push(e))
            {
                Ok(done) => *count += done,
                Err(e) => return Ok(Some(Err(e))),
            }
        }
        Ok(Some(Ok(())))
    }

    /// Splits up to [`bulk::BATCH`] bytes, up to `len`, on several threads ([`crate::bulk`]).
    /// None if the log ended early (it was truncated).
    fn bulk_batch(
        &mut self,
        bulk: Bulk,
        file: &File,
        watch: &FileWatch,
        len: u64,
    ) -> io::Result<Option<()>> {
        let pos = self.splitter.offset();
        let to = len.min(pos + bulk::BATCH);
        let scanned = bulk
            .scan(file, pos, to, &mut self.until_entry, &mut self.new_starts)
            .map_err(|e| ctx(watch, &format!("reading bytes {pos}..{to} of"), e))?;
        Ok(scanned.map(|s| {
            self.count += s.completed;
            self.splitter.skip_scanned(to, s.last_end);
        }))
    }
}

/// Replaces what queries are answered from by `entries` (a new generation, returned): the
/// log as far as the last entry, nothing after it yet.
fn publish(index: &Index, entries: Vec<u64>) -> u64 {
    let stride = index.params.k();
    index.update(|s| {
        s.generation += 1;
        s.count = entries.len() as u64 * stride;
        s.end = entries.last().copied().unwrap_or(0);
        s.starts = std::iter::once(0).chain(entries).collect();
        s.error = None;
        s.ready = true;
        s.generation
    })
}

fn ctx_path(path: &Path, what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

fn ctx(watch: &FileWatch, what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", watch.path().display()))
}
