//! The collator's life: lock and recover what it writes, serve producers on the shared
//! skeleton ([`shared::server`]), and on SIGTERM drain: stop taking requests, write and
//! answer everything in flight, sync, exit 0.
//!
//! Single-file mode opens, locks and recovers the file before listening, so a second
//! collator on the same file fails at once with a clear error. Directory mode locks the
//! directory itself the same way, and each file when a request first names it (checked with
//! tailsrv's rule, [`shared::tree`]; created if it does not exist yet).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_listener::Event;
use proto::collate::End;
use proto::{Code, Mode, Refusal};
use shared::rt;
use shared::server::Server;
use shared::tree::Tree;
use shared::watch::OnGone;

use crate::segmented::{self, Active};
use crate::watermark::{self, Watermark};
use crate::writer::{FileWriter, Opened, Settings, Sync};
use crate::{conn, dedupe, recover, Config, Target};

/// What every connection shares.
#[derive(Debug)]
pub struct Ctx {
    /// The writers' settings.
    pub settings: Settings,
    /// How long a header may take once started (and the first one from the connection),
    /// and how long a body may stall.
    pub header_timeout: Duration,
    /// The memory budget for request bodies (`--max-pending`).
    pub budget: Arc<conn::Budget>,
    files: Files,
    fatal: async_channel::Sender<io::Error>,
    /// Connections alive, and the event of one ending.
    live: AtomicUsize,
    ended: Event,
    /// Set at SIGTERM: connections stop reading.
    stopping: std::sync::atomic::AtomicBool,
    stop: Event,
}

#[derive(Debug)]
enum Files {
    One(FileWriter),
    Dir {
        tree: Tree,
        journal_dir: PathBuf,
        writers: Arc<Mutex<HashMap<PathBuf, FileWriter>>>,
        /// The lock on the directory, held for the collator's life.
        _lock: File,
    },
}

impl Ctx {
    /// Whether requests name their file.
    pub fn mode(&self) -> Mode {
        match self.files {
            Files::One(_) => Mode::File,
            Files::Dir { .. } => Mode::Dir,
        }
    }

    /// The writer of the file a request names (directory mode) or of the file. With
    /// `create` false, a file that does not exist yet gives `None`.
    pub async fn writer(
        &self,
        path: Option<&[u8]>,
        create: bool,
    ) -> Result<Option<FileWriter>, Refusal> {
        let Files::Dir {
            tree,
            journal_dir,
            writers,
            ..
        } = &self.files
        else {
            let Files::One(w) = &self.files else {
                unreachable!()
            };
            return Ok(Some(w.clone()));
        };
        let requested = path.unwrap_or_default().to_vec();
        let (tree, journal_dir, writers) = (tree.clone(), journal_dir.clone(), writers.clone());
        let settings = self.settings.clone();
        let fatal = self.fatal.clone();
        rt::spawn_blocking(move || {
            let real = tree
                .resolve(&requested)
                .map_err(|r| r.to_refusal(&requested))?;
            let mut map = writers.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(w) = map.get(&real) {
                return Ok(Some(w.clone()));
            }
            if !create && !real.exists() {
                return Ok(None);
            }
            let rel = real.strip_prefix(tree.root()).unwrap_or(&real).to_owned();
            let mut journal = journal_dir.join(&rel).into_os_string();
            journal.push(".collator");
            let journal = PathBuf::from(journal);
            let io_refusal = |e: io::Error| {
                Refusal::new(
                    if e.kind() == io::ErrorKind::WouldBlock {
                        Code::Busy
                    } else {
                        Code::Io
                    },
                    format!("{:?}: {e}", String::from_utf8_lossy(&requested)),
                )
            };
            if let Some(parent) = journal.parent() {
                std::fs::create_dir_all(parent).map_err(io_refusal)?;
            }
            let w = open_writer(
                &real,
                &journal,
                None,
                &settings,
                fatal,
                |f| {
                    tree.check_opened(f)
                        .map_err(|r| io::Error::other(r.to_refusal(&requested).reason))
                },
                None,
            )
            .map_err(io_refusal)?;
            map.insert(real, w.clone());
            Ok(Some(w))
        })
        .await
    }

    /// The end to answer `end` with for a file that does not exist yet.
    pub fn empty_end(&self) -> End {
        End {
            offset: 0,
            msgno: 0,
            framing: self.settings.framing,
        }
    }

    /// Counts a live connection until the guard is dropped.
    pub fn connection(self: &Arc<Ctx>) -> Live {
        self.live.fetch_add(1, Ordering::SeqCst);
        Live(self.clone())
    }

    /// Whether the collator is shutting down.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Completes when the collator starts shutting down.
    pub async fn stopping(&self) {
        loop {
            let l = self.stop.listen();
            if self.is_stopping() {
                return;
            }
            l.await;
        }
    }

    fn writers(&self) -> Vec<FileWriter> {
        match &self.files {
            Files::One(w) => vec![w.clone()],
            Files::Dir { writers, .. } => writers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned()
                .collect(),
        }
    }
}

/// A live connection (see [`Ctx::connection`]).
#[derive(Debug)]
pub struct Live(Arc<Ctx>);

impl Drop for Live {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.ended.notify(usize::MAX);
            trim();
        }
    }
}

/// Opens `path` for writing (created if absent), takes its exclusive lock, recovers its
/// tail with the journal at `journal`, rewrites the journal, and starts its writer. With
/// `segment`, `path` is a segmented log's active segment: only it is checked, and offsets
/// are the log's (see [`crate::segmented`]).
pub(crate) fn open_writer(
    path: &Path,
    journal: &Path,
    watermark: Option<&Path>,
    settings: &Settings,
    fatal: async_channel::Sender<io::Error>,
    check: impl FnOnce(&File) -> io::Result<()>,
    segment: Option<Active>,
) -> io::Result<FileWriter> {
    let ctx = |what: &str, e: io::Error| {
        io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| ctx("opening", e))?;
    check(&file)?;
    logfile::lock_exclusive(&file, path, "collator")?;
    let started = Instant::now();
    let loaded = dedupe::load(journal)?;
    // The file's first byte in the log, and the messages before it; the journal's offsets
    // are the log's, the restart check's the file's.
    let (base, before) = segment
        .as_ref()
        .map_or((0, 0), |s| (s.name().base, s.name().first_message));
    let local = segmented::Local::of(&loaded, base);
    // A crash leaves at most one group: bounded by the queue and one request.
    let max_cut = settings.max_pending + settings.max_request + settings.max_message + (1 << 20);
    // A marker is read whatever the settings: it is how the last run described its groups.
    let marked = recover::marked_end(&file).map_err(|e| ctx("recovering", e))?;
    let verified = match marked {
        Some(end) => Some(end),
        None => recover::verified_end(&file, &local.groups, local.checkpoint, max_cut)
            .map_err(|e| ctx("recovering", e))?,
    };
    let r = recover::recover(
        &file,
        settings.framing,
        settings.max_message,
        &local.batches,
        max_cut,
        verified,
    )
    .map_err(|e| ctx("recovering", e))?;
    let (end, count) = (base + r.end, before + r.count);
    let producers = loaded.producers(end);
    // In `data` mode, where the file system has extended attributes, the last group is
    // described by one on the file (synced with the data: one sync per group); elsewhere by
    // journal records.
    // The attribute saves a second sync per group, which only `data` mode has; elsewhere a
    // journal record (a small write, no sync) is cheaper than setting it.
    let marker = if !settings.xattr || settings.sync != Sync::Data {
        // A marker left by an earlier run is removed below, once the new checkpoint is on
        // disk (it would be stale once groups are journalled).
        false
    } else {
        match recover::write_marker(&file, r.end, r.end, 0) {
            Ok(()) => true,
            Err(e) => {
                log::info!(
                    path:% = path.display();
                    "no extended attribute on {} ({e}): write groups are journalled instead \
                     (a second fdatasync per group, in parallel)",
                    path.display()
                );
                false
            }
        }
    };
    // The checkpoint the new journal starts with must be on disk, the cut included.
    file.sync_all().map_err(|e| ctx("syncing", e))?;
    let journal = dedupe::Journal::rewrite(journal, &producers, end)?;
    if !marker {
        // Not before: until the checkpoint above was on disk, an earlier `data` run's marker
        // was all that described its groups, and a crash in between (a restart in another
        // `--sync` mode) would have cut them all back to the old checkpoint.
        let _ = rustix::fs::fremovexattr(&file, recover::MARKER);
    }
    log::info!(
        path:% = path.display(), offset = end, messages = count, cut = r.cut;
        "writing {} from byte {} (message {}), checked in {:.3}s",
        path.display(), end, count, started.elapsed().as_secs_f64()
    );
    let watermark = match watermark {
        // Only what is on disk (synced above) is published.
        Some(w) => Some(Watermark::create(w, end)?),
        None => None,
    };
    // A segmented log's writer is named by its directory: its segments come and go.
    let name = segment.as_ref().map_or(path, Active::dir).to_owned();
    let opened = Opened {
        file,
        journal,
        end,
        count,
        producers,
        watermark,
        marker,
        base,
        segment,
    };
    FileWriter::start(&name, opened, settings.clone(), fatal)
}

/// Runs the collator until SIGINT/SIGTERM (drained, `Ok`) or a fatal write error.
pub fn run(config: Config) -> io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc parameter. A fixed mmap threshold turns glibc's
    // dynamic one off, which would otherwise rise with the first large body freed and keep
    // every later body's memory in the heap after it is freed.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
    rt::block_on(serve(config))
}

/// Gives memory freed by closed connections back to the system (glibc keeps freed heap
/// memory otherwise): called when the last connection closes.
fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

async fn serve(config: Config) -> io::Result<()> {
    let server = Server::new()?;
    let (fatal_tx, fatal_rx) = async_channel::bounded::<io::Error>(16);
    let (files, served) = match &config.target {
        Target::File(path) => {
            // The synced length is worth publishing only where syncs happen as writes go.
            let synced_path = matches!(config.settings.sync, Sync::Data | Sync::Interval(_))
                .then(|| watermark::path_for(path));
            let mut journal = path.clone().into_os_string();
            journal.push(".collator");
            let w = open_writer(
                path,
                Path::new(&journal),
                synced_path.as_deref(),
                &config.settings,
                fatal_tx.clone(),
                |_| Ok(()),
                None,
            )?;
            (Files::One(w), path.clone())
        }
        Target::Segmented {
            dir,
            rolling,
            retention,
        } => {
            let w = segmented::open(
                dir,
                *rolling,
                *retention,
                &config.settings,
                fatal_tx.clone(),
            )?;
            (Files::One(w), dir.clone())
        }
        Target::Dir { root, journal_dir } => {
            let tree = Tree::new(root)?;
            let lock = File::open(tree.root())?;
            logfile::lock_exclusive(&lock, tree.root(), "collator")?;
            std::fs::create_dir_all(journal_dir)?;
            let journal_dir = std::fs::canonicalize(journal_dir)?;
            if journal_dir.starts_with(tree.root()) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "--journal-dir must be outside the directory (tailsrv would serve the journals)",
                ));
            }
            (
                Files::Dir {
                    tree,
                    journal_dir,
                    writers: Arc::default(),
                    _lock: lock,
                },
                root.clone(),
            )
        }
    };
    let ctx = Arc::new(Ctx {
        settings: config.settings.clone(),
        header_timeout: config.header_timeout,
        budget: conn::Budget::new(config.settings.max_pending),
        files,
        fatal: fatal_tx,
        live: AtomicUsize::new(0),
        ended: Event::new(),
        stopping: Default::default(),
        stop: Event::new(),
    });
    let work = async {
        match fatal_rx.recv().await {
            Ok(e) => Err(e),
            Err(_) => std::future::pending().await,
        }
    };
    let accept_ctx = ctx.clone();
    let result = server
        .run(
            config.addr,
            &served,
            OnGone::Linger,
            work,
            move |stream, peer| {
                let ctx = accept_ctx.clone();
                drop(rt::spawn(conn::serve(ctx, stream, peer)));
            },
        )
        .await;
    // An error is a failed sync: the writer already refused everything pending.
    result?;
    drain(&ctx).await;
    Ok(())
}

/// SIGTERM: connections stop reading, writers write and sync what is queued, and every
/// connection writes its answers and closes (given a few seconds).
async fn drain(ctx: &Arc<Ctx>) {
    ctx.stopping.store(true, Ordering::SeqCst);
    ctx.stop.notify(usize::MAX);
    let writers = ctx.writers();
    let n = writers.len();
    rt::spawn_blocking(move || {
        for w in writers {
            w.close();
        }
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let listener = ctx.ended.listen();
        if ctx.live.load(Ordering::SeqCst) == 0 {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            log::warn!("gave up waiting for producers to read their answers");
            break;
        }
        futures_lite::future::or(listener, async {
            async_io::Timer::after(left).await;
        })
        .await;
    }
    log::info!("drained {n} file(s): everything queued is written and answered");
}
