//! What every connection of a collator shares ([`Ctx`]): the settings, the body budget, the
//! files and their writers (in directory mode started when a request first names a file,
//! through the restart check, [`crate::recover`]), the count of live connections, and the
//! shutdown: [`Ctx::drain`] stops the readers, closes the writers and waits for the answers.
//!
//! It is its own module so that the connections ([`crate::conn`]) and the server's life
//! ([`crate::server`]) both depend on it, and not on each other.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_listener::Event;
use proto::collate::End;
use proto::{Code, Mode, Refusal};
use shared::rt;
use shared::tree::Tree;

use crate::budget::Budget;
use crate::recover;
use crate::writer::{FileWriter, Settings};

/// What every connection shares.
#[derive(Debug)]
pub struct Ctx {
    /// The writers' settings.
    pub settings: Settings,
    /// How long a header may take once started (and the first one from the connection),
    /// and how long a body may stall.
    pub header_timeout: Duration,
    /// The memory budget for request bodies (`--max-pending`).
    pub budget: Arc<Budget>,
    files: Files,
    fatal: async_channel::Sender<io::Error>,
    /// Connections alive, and the event of one ending.
    live: AtomicUsize,
    ended: Event,
    /// Set at SIGTERM: connections stop reading.
    stopping: std::sync::atomic::AtomicBool,
    stop: Event,
}

/// The files the collator writes.
#[derive(Debug)]
pub enum Files {
    /// Single-file mode: its writer, started before listening.
    One(FileWriter),
    /// Directory mode: a writer per file, started when a request first names it.
    Dir {
        /// The directory and its rule of which paths may be written.
        tree: Tree,
        /// Where the journals go (outside the directory).
        journal_dir: PathBuf,
        /// The writers started so far, by real path.
        writers: Arc<Mutex<HashMap<PathBuf, FileWriter>>>,
        /// The lock on the directory, held for the collator's life.
        _lock: File,
    },
}

impl Ctx {
    /// The shared context of a collator writing `files`; fatal write errors go to `fatal`.
    pub fn new(
        settings: Settings,
        header_timeout: Duration,
        files: Files,
        fatal: async_channel::Sender<io::Error>,
    ) -> Arc<Ctx> {
        Arc::new(Ctx {
            budget: Budget::new(settings.max_pending),
            settings,
            header_timeout,
            files,
            fatal,
            live: AtomicUsize::new(0),
            ended: Event::new(),
            stopping: Default::default(),
            stop: Event::new(),
        })
    }

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
            let journal = logfile::sibling(&journal_dir.join(&rel), ".collator");
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
            let w = recover::open_writer(
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

    /// SIGTERM: connections stop reading, writers write and sync what is queued, and every
    /// connection writes its answers and closes (given a few seconds).
    pub async fn drain(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop.notify(usize::MAX);
        let writers = self.writers();
        let n = writers.len();
        rt::spawn_blocking(move || {
            for w in writers {
                w.close();
            }
        })
        .await;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let listener = self.ended.listen();
            if self.live.load(Ordering::SeqCst) == 0 {
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

/// Gives memory freed by closed connections back to the system (glibc keeps freed heap
/// memory otherwise): called when the last connection closes.
fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
