//! Segmented logs ([`logfile::segments`]): one log kept as a directory of segments, indexed
//! as one log with global message numbers and byte offsets, while retention deletes its
//! oldest segments.
//!
//! Why per-segment indexes: retention deletes a whole segment, and its index must go with
//! it, without rewriting anything else. So every segment has an index of its own, with
//! offsets local to the segment (the same file format and [`Index`] as a plain log), and the
//! segment's name gives its origin: global base offset and first message number. A query is
//! routed by those names to the one segment that holds the answer; the index adds the
//! origin back ([`Index::of`]). Index files go to `INDEXDIR/<segment name>.idx` (by default
//! `LOGDIR.idx`, beside the log as `FILE.idx` is beside a plain file), never inside LOGDIR,
//! where tailsrv serves from.
//!
//! The life of a segment here:
//! - the active one (the last) is followed like a plain log: the same [`scanner`], through
//!   one [`FileWatch`];
//! - the log's directory is watched ([`DirWatch`], one inotify watch): when the next segment
//!   appears, the active one is sealed at the next one's base. Its scanner runs on until it
//!   has indexed it to that end, and then the segment becomes a sealed index: no watch, no
//!   descriptor (a lookup that misses the stride cache opens it by path), its index file
//!   synced and final. Its message count must be the one the names promise (the next first
//!   message minus its own); if not, its queries answer `bad-log`, never a wrong number;
//! - when retention deletes segments, the listing shows a later start: their indexes are
//!   dropped and their index files removed. Queries below the start answer `gone`, naming
//!   where the log starts now; one that races with the deletion finds the segment's file gone
//!   and answers `gone` too.
//!
//! On start, the sealed segments' index files are reused without rescanning: each is checked
//! as a plain log's index is on restart (its header, inode and first bytes, a sample of
//! strides re-split), and only the messages after its last entry (fewer than K) are split
//! to confirm the count. A sealed segment with no usable index is split once, on the
//! blocking pool. Only the active segment is followed and caught up with. Index files of
//! segments deleted while the indexer was down are removed.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use futures_lite::future;
use logfile::segments::{Log, Segment, SegmentName};
use proto::query::{Place, Question};
use proto::{Code, Refusal};
use shared::rt;
use shared::watch::{DirWatch, Follower};

use crate::cache::StrideCache;
use crate::index::{self, Bytes, Index, Params, Scratch, State};
use crate::query::Reply;
use crate::scanner;
use crate::store::{self, Identity, Opened, Store};

/// Suffix of a segment's index file, after the segment's own file name.
const IDX: &str = ".idx";

/// A segmented log being indexed: its segments, each with its index once loaded.
pub struct Segmented {
    dir: PathBuf,
    index_dir: PathBuf,
    params: Params,
    cache: Option<Arc<StrideCache>>,
    threads: usize,
    follower: Follower,
    table: RwLock<Table>,
}

/// What queries are routed by.
struct Table {
    /// Where the log starts: its oldest segment's name.
    start: SegmentName,
    /// The segments, oldest first; the last is the active one.
    segments: Vec<Entry>,
}

struct Entry {
    name: SegmentName,
    /// None while it is loading.
    index: Option<Arc<Index>>,
}

impl Segmented {
    /// Opens the segmented log at `dir` (checked by [`Log::open`]), with its index files in
    /// `index_dir` (created if needed; refused inside `dir`).
    pub fn new(
        dir: &Path,
        index_dir: &Path,
        follower: Follower,
        params: Params,
        cache: Option<Arc<StrideCache>>,
        threads: usize,
    ) -> io::Result<Segmented> {
        let log = Log::open(dir)?;
        fs::create_dir_all(index_dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("creating the index directory {}: {e}", index_dir.display()),
            )
        })?;
        let real = |p: &Path| {
            fs::canonicalize(p)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))
        };
        if real(index_dir)?.starts_with(real(dir)?) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the index directory {} is inside the segmented log {}: tailsrv serves from \
                     there; choose --index outside it",
                    index_dir.display(),
                    dir.display()
                ),
            ));
        }
        let table = Table {
            start: log.start(),
            segments: log
                .segments()
                .iter()
                .map(|s| Entry {
                    name: s.name,
                    index: None,
                })
                .collect(),
        };
        Ok(Segmented {
            dir: dir.to_owned(),
            index_dir: index_dir.to_owned(),
            params,
            cache,
            threads,
            follower,
            table: RwLock::new(table),
        })
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the segments' index files are.
    pub fn index_dir(&self) -> &Path {
        &self.index_dir
    }

    fn index_path(&self, name: SegmentName) -> PathBuf {
        self.index_dir.join(format!("{}{IDX}", name.file_name()))
    }

    /// Answers one question about the log.
    pub fn ask(&self, question: Question, scratch: &mut Scratch) -> Reply {
        let (start, index) = {
            let t = self.table.read().unwrap_or_else(|p| p.into_inner());
            let pick = |i: usize| t.segments[i].index.clone();
            let index = match question {
                Question::Start => {
                    return Reply::Place(Ok(Place {
                        offset: t.start.base,
                        message: t.start.first_message,
                    }))
                }
                Question::Count | Question::End => pick(t.segments.len() - 1),
                Question::OffsetOf(n) if n < t.start.first_message => {
                    return Reply::Number(Err(gone(&format!("message {n}"), t.start)))
                }
                Question::MessageAt(b) if b < t.start.base => {
                    return Reply::Number(Err(gone(&format!("byte {b}"), t.start)))
                }
                Question::OffsetOf(n) => {
                    pick(t.segments.partition_point(|s| s.name.first_message <= n) - 1)
                }
                Question::MessageAt(b) => {
                    pick(t.segments.partition_point(|s| s.name.base <= b) - 1)
                }
            };
            (t.start, index)
        };
        let Some(index) = index else {
            return Reply::Number(Err(Refusal::new(
                Code::Loading,
                "the index of the segment that holds it is still loading",
            )));
        };
        let reply = crate::query::ask(question, &index, scratch);
        // A segment deleted under the lookup: say where the log starts now.
        let regone = |r: Refusal| match r.code {
            Code::Gone => {
                let now = self.table.read().map(|t| t.start).unwrap_or(start);
                gone("it", now)
            }
            _ => r,
        };
        match reply {
            Reply::Number(a) => Reply::Number(a.map_err(regone)),
            Reply::Place(a) => Reply::Place(a.map_err(regone)),
        }
    }

    /// Keeps the indexes current until an I/O error: follows the active segment, seals it
    /// when the next one appears, drops what retention deletes.
    pub async fn run(self: Arc<Self>) -> io::Result<()> {
        let listing = self.follower.watch_entries(&self.dir)?;
        // Read before listing: a change after it is never missed.
        let mut seen = listing.changes();
        let mut log = Log::open(&self.dir)?;
        self.sweep(&log);
        // The sealed segments load beside the active one's scan: a restart is as quick as
        // catching up with the active segment.
        let sealed: Vec<(Segment, SegmentName)> = log
            .segments()
            .windows(2)
            .map(|w| (w[0].clone(), w[1].name))
            .collect();
        let me = self.clone();
        let loading = rt::spawn(async move {
            for (segment, next) in sealed {
                if let Err(e) = me.load_sealed(segment.clone(), next).await {
                    log::error!(path:% = segment.path.display(); "indexing a sealed segment failed: {e}");
                }
            }
        });
        drop(loading);
        loop {
            let active = log.active().clone();
            log = self.follow_active(&active, &listing, &mut seen).await?;
            // Segments sealed since: the one just followed is done; any between it and
            // the new active one (several rolls at once) are indexed now.
            let names: Vec<(Segment, SegmentName)> = log
                .segments()
                .windows(2)
                .filter(|w| w[0].name > active.name)
                .map(|w| (w[0].clone(), w[1].name))
                .collect();
            for (segment, next) in names {
                self.load_sealed(segment, next).await?;
            }
        }
    }

    /// Follows `active` until a listing shows it sealed and it is indexed to its end; then
    /// installs it as sealed and returns that listing.
    async fn follow_active(
        &self,
        active: &Segment,
        listing: &DirWatch,
        seen: &mut u64,
    ) -> io::Result<Log> {
        let watch = self.follower.follow(&active.path)?;
        let index = Arc::new(Index::of(
            self.params,
            Bytes::Followed(watch.clone()),
            active.name,
            self.cache.clone(),
            State::default(),
        ));
        self.install(active.name, index.clone());
        log::info!(
            segment:% = active.path.display(), base = active.name.base,
            first_message = active.name.first_message;
            "following the active segment"
        );
        let index_path = self.index_path(active.name);
        let mut scan = Box::pin(scanner::run(
            index.clone(),
            watch.clone(),
            &index_path,
            self.threads,
        ));
        let sealed = async {
            loop {
                listing.wait_changed(*seen).await;
                *seen = listing.changes();
                let log = Log::open(&self.dir)?;
                self.apply(&log);
                if log.active().name != active.name {
                    return Ok::<_, io::Error>(log);
                }
            }
        };
        let log = future::or(
            async { Err(scan.as_mut().await.err().unwrap_or_else(ended)) },
            sealed,
        )
        .await?;
        let Some(next) = log
            .segments()
            .iter()
            .find(|s| s.name > active.name)
            .map(|s| s.name)
        else {
            return Err(io::Error::other(format!(
                "the active segment {} was deleted",
                active.path.display()
            )));
        };
        let len = next.base - active.name.base;
        // Indexed to the sealed end, or stopped by the log's content.
        let done = index
            .wait_for(|s| s.ready && (s.end >= len || s.error.is_some() || s.failed.is_some()));
        future::or(
            async { Err(scan.as_mut().await.err().unwrap_or_else(ended)) },
            async {
                done.await;
                Ok(())
            },
        )
        .await?;
        // Stopped: the segment is whole, and no write to its index file is in flight.
        drop(scan);
        let state = index.snapshot();
        let entries: Vec<u64> = state.starts[1..].to_vec();
        let path = active.path.clone();
        let name = active.name;
        let params = self.params;
        // The scanner's file holds every entry; made durable before it is final.
        let file = watch.file().expect("followed").try_clone()?;
        let index_path = index_path.clone();
        let checked = rt::spawn_blocking(move || -> io::Result<Result<State, String>> {
            let id = Identity {
                params,
                ino: store::inode(&file)?,
            };
            match Store::open(&index_path, id, &file)? {
                Opened::Resumed(mut store, on_disk) if on_disk == entries => {
                    store.sync_blocking(&file)?;
                }
                _ => log::warn!(index:% = index_path.display(); "the sealed segment's index file is behind; it is redone on the next start"),
            }
            Ok(sealed_state(&params, name, next, &state))
        })
        .await?;
        self.seal(name, &path, checked);
        Ok(log)
    }

    /// Installs the index of the sealed segment `name` at `path`, from `state` or broken.
    fn seal(&self, name: SegmentName, path: &Path, state: Result<State, String>) {
        let state = state.unwrap_or_else(|why| {
            log::error!(segment:% = path.display(); "{why}");
            State {
                ready: true,
                broken: Some(why),
                ..State::default()
            }
        });
        let index = Index::of(
            self.params,
            Bytes::Sealed(path.to_owned()),
            name,
            self.cache.clone(),
            state,
        );
        self.install(name, Arc::new(index));
    }

    /// Puts `index` in the table for segment `name`, if it is still part of the log.
    fn install(&self, name: SegmentName, index: Arc<Index>) {
        let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
        match t.segments.binary_search_by_key(&name, |e| e.name) {
            Ok(i) => t.segments[i].index = Some(index),
            Err(i) if name >= t.start => t.segments.insert(
                i,
                Entry {
                    name,
                    index: Some(index),
                },
            ),
            Err(_) => {}
        }
    }

    /// Takes in a new listing: new segments (without an index yet), a later start (the
    /// deleted segments' indexes dropped and their files removed).
    fn apply(&self, log: &Log) {
        let dropped: Vec<SegmentName> = {
            let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
            t.start = log.start();
            let keep = t.segments.partition_point(|e| e.name < log.start());
            let dropped = t.segments.drain(..keep).map(|e| e.name).collect();
            for s in log.segments() {
                if let Err(i) = t.segments.binary_search_by_key(&s.name, |e| e.name) {
                    t.segments.insert(
                        i,
                        Entry {
                            name: s.name,
                            index: None,
                        },
                    );
                }
            }
            dropped
        };
        for name in dropped {
            log::info!(base = name.base, first_message = name.first_message; "retention deleted a segment, dropping its index");
            self.remove_index_file(name);
        }
    }

    /// Removes the index files of segments before the log's start (deleted while the
    /// indexer was down). Only files named like a segment's index are touched.
    fn sweep(&self, log: &Log) {
        let Ok(dir) = fs::read_dir(&self.index_dir) else {
            return;
        };
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(name) = name
                .to_str()
                .and_then(|n| n.strip_suffix(IDX))
                .and_then(SegmentName::parse)
            else {
                continue;
            };
            if name < log.start() {
                self.remove_index_file(name);
            }
        }
    }

    fn remove_index_file(&self, name: SegmentName) {
        let path = self.index_path(name);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                log::warn!(index:% = path.display(); "cannot remove the index file: {e}")
            }
            _ => {}
        }
    }

    /// Loads (or builds) the index of the sealed segment `segment`, which ends where `next`
    /// starts, and installs it. A segment deleted meanwhile is skipped.
    async fn load_sealed(&self, segment: Segment, next: SegmentName) -> io::Result<()> {
        let params = self.params;
        let index_path = self.index_path(segment.name);
        let (name, path) = (segment.name, segment.path.clone());
        let loaded =
            rt::spawn_blocking(move || index_sealed(&params, &segment, next, &index_path)).await?;
        if let Some(state) = loaded {
            self.seal(name, &path, state);
        }
        Ok(())
    }
}

fn ended() -> io::Error {
    io::Error::other("the scanner ended")
}

/// `what` is below the log's start.
fn gone(what: &str, start: SegmentName) -> Refusal {
    Refusal::new(
        Code::Gone,
        format!(
            "{what} was deleted by retention: the log starts at message {} (byte {})",
            start.first_message, start.base
        ),
    )
}

/// The state a sealed segment `name`, ending where `next` starts, answers from, given what
/// its scanner found; an error if it is not what the names promise.
fn sealed_state(
    params: &Params,
    name: SegmentName,
    next: SegmentName,
    state: &State,
) -> Result<State, String> {
    let len = next.base - name.base;
    let count = next.first_message - name.first_message;
    let k = params.k();
    if let Some(e) = &state.error {
        return Err(format!(
            "segment {}: indexing stopped at byte {} after {} messages: {e}",
            name.file_name(),
            name.base + state.end,
            name.first_message + state.count
        ));
    }
    if state.end != len || state.count != count || state.starts.len() as u64 != count / k + 1 {
        return Err(format!(
            "segment {} holds {} messages in {} bytes, its name and the next one's say {count} in \
             {len}: the log's framing is not {} or the segment was damaged",
            name.file_name(),
            state.count,
            state.end,
            params.framing
        ));
    }
    Ok(State {
        generation: 1,
        starts: state.starts.clone(),
        count,
        end: len,
        error: None,
        ready: true,
        caught_up: true,
        failed: None,
        broken: None,
    })
}

/// Loads the index file of the sealed `segment` (ending at `next`), checks it and splits
/// what it lacks (the messages after its last entry, or all of them); None if the segment
/// was deleted meanwhile. On the blocking pool.
fn index_sealed(
    params: &Params,
    segment: &Segment,
    next: SegmentName,
    index_path: &Path,
) -> io::Result<Option<Result<State, String>>> {
    let file = match File::open(&segment.path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(logfile::context(&segment.path, "opening", e)),
    };
    let len = next.base - segment.name.base;
    let id = Identity {
        params: *params,
        ino: store::inode(&file)?,
    };
    let shown = index_path.display();
    let (mut store, mut entries) = match Store::open(index_path, id, &file)? {
        Opened::Resumed(mut store, mut entries) => {
            let keep = entries.partition_point(|&o| o <= len);
            entries.truncate(keep);
            store.keep(keep as u64)?;
            match scanner::verify(params, &file, &entries) {
                Ok(()) => (store, entries),
                Err(why) => {
                    log::warn!(index:% = shown; "rebuilding a sealed segment's index: it does not match the segment: {why}");
                    (Store::create(index_path, id, &file)?, Vec::new())
                }
            }
        }
        Opened::Created(store) => (store, Vec::new()),
        Opened::Rebuilt(store, why) => {
            log::warn!(index:% = shown; "rebuilding a sealed segment's index: {why}");
            (store, Vec::new())
        }
    };
    // Split from the last entry to the end: fewer than K messages for a whole index.
    let k = params.k();
    let from = entries.last().copied().unwrap_or(0);
    let mut count = entries.len() as u64 * k;
    let mut fresh = Vec::new();
    let mut buf = Vec::new();
    let split = index::scan(
        &file,
        params.framing,
        params.max_message,
        from,
        len,
        &mut buf,
        |e| {
            count += 1;
            if count.is_multiple_of(k) {
                fresh.push(e);
            }
            false
        },
    );
    if !fresh.is_empty() {
        store.append(&fresh, &file)?;
        store.sync_blocking(&file)?;
    }
    entries.extend_from_slice(&fresh);
    let state = State {
        starts: std::iter::once(0).chain(entries).collect(),
        count,
        end: len,
        ready: true,
        ..State::default()
    };
    Ok(Some(match split {
        Ok(()) => sealed_state(params, segment.name, next, &state),
        Err(e) => Err(format!(
            "segment {}: splitting bytes {from}..{len}: {e}",
            segment.name.file_name()
        )),
    }))
}
