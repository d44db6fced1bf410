//! The in-memory index and the three lookups the query protocol offers.
//!
//! The scanner task ([`crate::scanner`]) is the only writer; every query connection reads.
//! What queries need is small and kept under one lock: the start offset of every K-th
//! message, the count of complete messages, where the next message starts, and the framing
//! error indexing stopped at, if any. A lookup copies what it needs under the lock and then
//! gets from the nearest entry to the exact message: from the [`crate::cache`] of decoded
//! strides, or by reading the stride (at most K messages) with `pread`, outside the lock, and
//! caching it. Answers are only ever given for complete messages the scanner has already
//! seen, and a lookup that raced with a rebuild is refused rather than answered from a file
//! that changed under it. A lookup that finds the log no longer splits where the index says
//! (it was rewritten in a way the watcher cannot see, see `shared::watch`) is refused too,
//! and flags the index's generation as suspect: the scanner, which waits on that flag as
//! well as on the log, rebuilds the index from the start.
//!
//! An index covers one file. For a segmented log that is one segment, and the index speaks
//! the log's global numbers: its [`SegmentName`] origin (the segment's base offset and
//! first message number) is added to every answer and every number in a refusal, so a
//! router ([`crate::segmented`]) only picks the segment. The active segment is followed
//! through its [`FileWatch`]; a sealed one is read by path, opened only for a lookup that
//! misses the cache, so sealed segments cost neither a watch nor a descriptor.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use event_listener::Event;
use logfile::segments::SegmentName;
use proto::framing::{Framing, FramingError, Splitter};
use proto::query::{Answer, Place, PlaceAnswer};
use proto::{Code, Refusal};
use shared::watch::FileWatch;

use crate::cache::{Key, StrideCache};

/// What the scanner has established about the log.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// Bumped by every (re)build, so a lookup can tell that the index changed under it.
    pub generation: u64,
    /// `starts[j]` is the offset where message `j*K` starts; `starts[0] == 0`.
    pub starts: Vec<u64>,
    /// Complete messages.
    pub count: u64,
    /// Where message `count` starts (the end of the last complete message).
    pub end: u64,
    /// Why indexing stopped at `end`, if it did.
    pub error: Option<FramingError>,
    /// Whether the log exists and the index has been loaded.
    pub ready: bool,
    /// Whether the scanner has reached the end of the log at least once since it started.
    pub caught_up: bool,
    /// Why this index can no longer be kept (an I/O error on the log or the index file).
    pub failed: Option<String>,
    /// Why the file does not hold what the log says it holds (a sealed segment whose
    /// messages are not the ones its name and the next one's promise).
    pub broken: Option<String>,
}

/// Where an index reads the bytes it covers.
pub enum Bytes {
    /// A file followed as it grows (a plain log, or a segmented log's active segment).
    Followed(FileWatch),
    /// A sealed segment, which never changes: opened by path when a lookup must read it.
    /// Gone from its path means deleted by retention.
    Sealed(PathBuf),
}

/// The index shared by the scanner and the query connections.
pub struct Index {
    /// How the log is split and how dense the index is.
    pub params: Params,
    /// Process-unique, names this index's strides in the shared cache.
    id: u64,
    cache: Option<Arc<StrideCache>>,
    bytes: Bytes,
    /// Where the indexed file starts in the log's global numbers (zero but for a segment).
    origin: SegmentName,
    state: RwLock<State>,
    /// Notified after every update, for [`Index::wait_caught_up`].
    changed: Event,
    /// The generation a lookup found not to match the log (0: none), and its wake-up.
    suspect: AtomicU64,
    suspected: Event,
}

/// How a log is split and indexed: one value from the command line to the index file's
/// header, so a setting cannot change type or meaning on the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// How messages are delimited.
    pub framing: Framing,
    /// One index entry every `stride` messages (K).
    pub stride: u32,
    /// Longest message a length prefix may announce.
    pub max_message: u64,
}

impl Params {
    /// K as the lookups compute with it.
    pub fn k(&self) -> u64 {
        u64::from(self.stride)
    }
}

/// Buffers a lookup reuses: one per query connection, so a lookup allocates nothing.
#[derive(Default)]
pub struct Scratch {
    buf: Vec<u8>,
    starts: Vec<u32>,
}

/// Longest read a lookup does at once.
const LOOKUP_READ: usize = 64 << 10;

/// Where a lookup found its stride: entry `j` at `from`, the stride ending at `to` (the next
/// entry, or where the complete messages end), under `generation`.
struct Stride {
    generation: u64,
    j: u64,
    from: u64,
    to: u64,
    /// Whether `to` is entry `j + 1`, so the stride holds exactly K messages.
    complete: bool,
}

impl Index {
    /// The index of a plain file, followed through `watch`; the scanner fills it.
    pub fn new(params: Params, watch: FileWatch, cache: Option<Arc<StrideCache>>) -> Self {
        Index::of(
            params,
            Bytes::Followed(watch),
            SegmentName::FIRST,
            cache,
            State::default(),
        )
    }

    /// The index of the file `bytes`, which starts at `origin` in the log, answering from
    /// `state` (a sealed segment's, whole; a default one for the scanner to fill).
    pub fn of(
        params: Params,
        bytes: Bytes,
        origin: SegmentName,
        cache: Option<Arc<StrideCache>>,
        state: State,
    ) -> Self {
        static IDS: AtomicU64 = AtomicU64::new(1);
        Index {
            params,
            id: IDS.fetch_add(1, Ordering::Relaxed),
            cache,
            bytes,
            origin,
            state: RwLock::new(state),
            changed: Event::new(),
            suspect: AtomicU64::new(0),
            suspected: Event::new(),
        }
    }

    /// Whether a lookup found that the log no longer matches `generation` of the index.
    pub fn is_suspect(&self, generation: u64) -> bool {
        self.suspect.load(Ordering::Acquire) == generation
    }

    /// Waits until a lookup finds that the log no longer matches `generation`.
    pub async fn wait_suspect(&self, generation: u64) {
        loop {
            if self.is_suspect(generation) {
                return;
            }
            let listener = self.suspected.listen();
            if self.is_suspect(generation) {
                return;
            }
            listener.await;
        }
    }

    /// Flags `generation` as not matching the log (if it is still the current one), so
    /// the scanner rebuilds.
    fn flag(&self, generation: u64) {
        if self.read(|s| s.generation) == generation
            && self.suspect.swap(generation, Ordering::AcqRel) != generation
        {
            log::warn!(generation = generation; "a lookup found that the log no longer matches the index");
            self.suspected.notify(usize::MAX);
        }
    }

    /// The followed file; None for a sealed segment.
    pub fn watch(&self) -> Option<&FileWatch> {
        match &self.bytes {
            Bytes::Followed(w) => Some(w),
            Bytes::Sealed(_) => None,
        }
    }

    /// A copy of what the scanner has established.
    pub fn snapshot(&self) -> State {
        self.read(State::clone)
    }

    /// Runs `f` on the state under the write lock (the scanner's only way in).
    pub fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let out = {
            let mut guard = self.state.write().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        };
        self.changed.notify(usize::MAX);
        out
    }

    /// Waits until the scanner has caught up with the log once (or failed), at most
    /// `timeout`. Returns whether it caught up. A fresh index's first query uses it, so that
    /// it is answered from the whole log rather than from the first megabyte scanned.
    pub async fn wait_caught_up(&self, timeout: Duration) -> bool {
        let wait = async {
            self.wait_for(|s| s.caught_up || s.failed.is_some()).await;
            true
        };
        let give_up = async {
            async_io::Timer::after(timeout).await;
            false
        };
        futures_lite::future::or(wait, give_up).await && self.read(|s| s.caught_up)
    }

    /// Waits until `done` holds of the state (checked after every update).
    pub async fn wait_for(&self, done: impl Fn(&State) -> bool) {
        loop {
            if self.read(&done) {
                return;
            }
            let listener = self.changed.listen();
            if self.read(&done) {
                return;
            }
            listener.await;
        }
    }

    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        let guard = self.state.read().unwrap_or_else(|p| p.into_inner());
        f(&guard)
    }

    /// `count`: complete messages.
    pub fn count(&self) -> Answer {
        self.end().map(|p| p.message)
    }

    /// `end`: where the next message will start, and its number (the count), read together.
    pub fn end(&self) -> PlaceAnswer {
        self.read(|s| {
            not_ready(s)?;
            if let Some(e) = &s.error {
                return Err(self.stopped(s, e));
            }
            Ok(Place {
                offset: self.origin.base + s.end,
                message: self.origin.first_message + s.count,
            })
        })
    }

    /// `start`: where the indexed file starts (0 0 for a plain file: nothing is deleted).
    pub fn start(&self) -> PlaceAnswer {
        self.read(|s| {
            not_ready(s)?;
            Ok(Place {
                offset: self.origin.base,
                message: self.origin.first_message,
            })
        })
    }

    /// `offset-of N`: where message `n` starts; `n == count` is where the next one will.
    /// `n` is the log's number: at or past the origin's first message.
    pub fn offset_of(&self, n: u64, scratch: &mut Scratch) -> Answer {
        let global = n;
        let n = n
            .checked_sub(self.origin.first_message)
            .expect("routed to the segment that holds it");
        let found = self.read(|s| {
            not_ready(s)?;
            if n > s.count || (n == s.count && s.error.is_some()) {
                return Err(match &s.error {
                    Some(e) => self.stopped(s, e),
                    None => Refusal::new(
                        Code::NotYet,
                        format!(
                            "message {global} does not exist yet (there are {} complete messages)",
                            self.origin.first_message + s.count
                        ),
                    ),
                });
            }
            if n == s.count {
                return Ok(Err(s.end));
            }
            Ok(Ok(self.stride_of(s, (n / self.params.k()) as usize)))
        })?;
        let base = self.origin.base;
        let st = match found {
            Err(end) => return Ok(base + end),
            Ok(st) => st,
        };
        // Message n is the i-th of its stride; its start is where the one before it ends.
        let i = (n - st.j * self.params.k()) as usize;
        if i == 0 {
            return Ok(base + st.from);
        }
        if let Some(rel) = self.cached(&st, scratch, |starts| starts[i - 1]) {
            return rel.map(|rel| base + st.from + u64::from(rel));
        }
        let mut seen = 0;
        let mut found = None;
        self.scan(st.generation, st.from, st.to, &mut scratch.buf, |e| {
            seen += 1;
            if seen == i {
                found = Some(e);
            }
            found.is_some()
        })?;
        self.confirm(st.generation, found).map(|o| base + o)
    }

    /// `message-at B`: the number of the message that contains byte `b`. `b` is the log's
    /// offset: at or past the origin's base.
    pub fn message_at(&self, b: u64, scratch: &mut Scratch) -> Answer {
        let global = b;
        let b = b
            .checked_sub(self.origin.base)
            .expect("routed to the segment that holds it");
        let st = self.read(|s| {
            not_ready(s)?;
            if b >= s.end {
                return Err(match &s.error {
                    Some(e) => self.stopped(s, e),
                    None => Refusal::new(
                        Code::NotYet,
                        format!(
                            "byte {global} is not in a complete message yet (complete messages end at byte {})",
                            self.origin.base + s.end
                        ),
                    ),
                });
            }
            let j = s.starts.partition_point(|&o| o <= b) - 1;
            Ok(self.stride_of(s, j))
        })?;
        let first = self.origin.first_message + st.j * self.params.k();
        // The messages of the stride that start at or before b, the first one included.
        let rel = b - st.from;
        let counted = self.cached(&st, scratch, |starts| {
            starts.partition_point(|&s| u64::from(s) <= rel) as u64
        });
        if let Some(before) = counted {
            return before.map(|before| first + before);
        }
        let mut number = first;
        let mut found = None;
        self.scan(st.generation, st.from, st.to, &mut scratch.buf, |e| {
            if e > b {
                found = Some(number);
            }
            number += 1;
            found.is_some()
        })?;
        self.confirm(st.generation, found)
    }

    /// Where stride `j` lies, as `s` knows it.
    fn stride_of(&self, s: &State, j: usize) -> Stride {
        let next = s.starts.get(j + 1).copied();
        Stride {
            generation: s.generation,
            j: j as u64,
            from: s.starts[j],
            to: next.unwrap_or(s.end),
            complete: next.is_some(),
        }
    }

    /// Runs `f` on the inner starts of a complete stride (relative to its entry, K-1 of
    /// them), from the cache or decoded from the log and cached. None when there is no cache,
    /// the stride is not complete, or it is too long to cache: the caller scans instead.
    fn cached<T>(
        &self,
        st: &Stride,
        scratch: &mut Scratch,
        f: impl FnOnce(&[u32]) -> T,
    ) -> Option<Result<T, Refusal>> {
        let cache = self.cache.as_ref()?;
        if !st.complete || st.to - st.from > u64::from(u32::MAX) {
            return None;
        }
        let key = Key {
            index: self.id,
            generation: st.generation,
            stride: st.j,
        };
        let mut f = Some(f);
        if let Some(x) = cache.with(key, |starts| (f.take().expect("called once"))(starts)) {
            return Some(Ok(x));
        }
        let f = f.expect("not called on a miss");
        Some(self.decode(st, scratch).map(|()| {
            cache.insert(key, &scratch.starts);
            f(&scratch.starts)
        }))
    }

    /// Splits a complete stride into `scratch.starts`. It must hold exactly K messages and
    /// end at the next entry, or the log changed and nothing is cached.
    fn decode(&self, st: &Stride, scratch: &mut Scratch) -> Result<(), Refusal> {
        let Scratch { buf, starts } = scratch;
        starts.clear();
        let mut last = st.from;
        let mut ends = 0;
        self.scan(st.generation, st.from, st.to, buf, |e| {
            ends += 1;
            last = e;
            if ends < self.params.k() {
                starts.push((e - st.from) as u32);
            }
            false
        })?;
        let whole = ends == self.params.k() && last == st.to;
        self.confirm(st.generation, whole.then_some(0)).map(|_| ())
    }

    /// Reads messages from `from` (a boundary) up to `end` (a boundary) as `generation`
    /// knows them, calling `on_end` with each end offset until it returns true. A log that
    /// ends early or does not split there no longer matches the index.
    fn scan(
        &self,
        generation: u64,
        from: u64,
        end: u64,
        buf: &mut Vec<u8>,
        on_end: impl FnMut(u64) -> bool,
    ) -> Result<(), Refusal> {
        let opened;
        let file = match &self.bytes {
            Bytes::Followed(watch) => match watch.file() {
                Some(file) => file,
                None => return Err(Refusal::new(Code::Loading, "the log file is not open yet")),
            },
            Bytes::Sealed(path) => {
                opened = File::open(path).map_err(|e| match e.kind() {
                    io::ErrorKind::NotFound => Refusal::new(
                        Code::Gone,
                        "retention deleted the segment that held it just now",
                    ),
                    _ => {
                        log::warn!(path:% = path.display(); "lookup: cannot open the segment: {e}");
                        Refusal::new(Code::Io, format!("opening a segment failed: {e}"))
                    }
                })?;
                &opened
            }
        };
        scan(
            file,
            self.params.framing,
            self.params.max_message,
            from,
            end,
            buf,
            on_end,
        )
        .map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData => {
                log::debug!(offset = from; "lookup: {e}");
                self.mismatch(generation)
            }
            _ => {
                log::warn!(offset = from; "lookup failed: {e}");
                Refusal::new(
                    Code::Io,
                    format!(
                        "reading the log failed at byte {}: {e}",
                        self.origin.base + from
                    ),
                )
            }
        })
    }

    /// An answer found by scanning, if the index was not rebuilt meanwhile.
    fn confirm(&self, generation: u64, found: Option<u64>) -> Answer {
        match found {
            Some(x) if self.read(|s| s.generation) == generation => Ok(x),
            _ => Err(self.mismatch(generation)),
        }
    }

    /// The refusal for a lookup under `generation` that found no answer where the index
    /// said one was: the index was rebuilt meanwhile, or the log changed under it (which
    /// flags the generation for a rebuild).
    fn mismatch(&self, generation: u64) -> Refusal {
        if self.read(|s| s.generation) != generation {
            return Refusal::new(Code::Rebuilding, "the index is being rebuilt; ask again");
        }
        if let Bytes::Sealed(path) = &self.bytes {
            // No scanner rebuilds a sealed segment: it was never to change.
            log::error!(path:% = path.display(); "a sealed segment no longer matches its index");
            return Refusal::new(
                Code::BadLog,
                format!(
                    "the sealed segment {} was modified: it no longer splits where its index says",
                    path.display()
                ),
            );
        }
        self.flag(generation);
        Refusal::new(
            Code::Rebuilding,
            "the log no longer matches the index; it will be rebuilt",
        )
    }
}

fn not_ready(s: &State) -> Result<(), Refusal> {
    if let Some(why) = &s.failed {
        return Err(Refusal::new(Code::Io, format!("indexing failed: {why}")));
    }
    if let Some(why) = &s.broken {
        return Err(Refusal::new(Code::BadLog, why.clone()));
    }
    match s.ready {
        true => Ok(()),
        false => Err(Refusal::new(
            Code::Loading,
            "the log file does not exist yet, or its index is still loading",
        )),
    }
}

impl Index {
    fn stopped(&self, s: &State, e: &FramingError) -> Refusal {
        Refusal::new(
            Code::BadLog,
            format!(
                "indexing stopped at byte {} after {} complete messages: {e}",
                self.origin.base + s.end,
                self.origin.first_message + s.count
            ),
        )
    }
}

/// Splits the log from `from` (a message boundary) up to `end` with `pread` into `buf`,
/// calling `on_end` with every message end until it returns true or `end` is reached.
///
/// Payloads of length-prefixed messages are skipped without reading them. A framing error or
/// a file shorter than `end` is an error: the caller said those bytes hold whole messages.
pub fn scan(
    file: &File,
    framing: Framing,
    max_message: u64,
    from: u64,
    end: u64,
    buf: &mut Vec<u8>,
    mut on_end: impl FnMut(u64) -> bool,
) -> io::Result<()> {
    let mut splitter = Splitter::at(framing, max_message, from);
    // Usually `end` is the next entry, K short messages away: one read covers it.
    let size = (end - from).clamp(1, LOOKUP_READ as u64) as usize;
    if buf.len() < size {
        buf.resize(size, 0);
    }
    let mut done = false;
    while !done && splitter.offset() < end {
        let pos = splitter.offset();
        let skip = splitter.payload_remaining().min(end - pos);
        if skip > LOOKUP_READ as u64 {
            splitter.skip_payload(skip, |e| done = on_end(e));
            continue;
        }
        let want = (end - pos).min(buf.len() as u64) as usize;
        let n = read_at(file, &mut buf[..want], pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the log ends at byte {pos}, before the indexed end {end}"),
            ));
        }
        splitter
            .feed(&buf[..n], |e| {
                if !done {
                    done = on_end(e);
                }
            })
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    }
    Ok(())
}

/// `pread` that retries on EINTR.
pub fn read_at(file: &File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    loop {
        match file.read_at(buf, pos) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}
