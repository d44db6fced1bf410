//! The server's own life: set up what is served, then hand over to the skeleton
//! ([`shared::server`]), which binds, accepts and stops.
//!
//! Each accepted client gets its own task ([`crate::client`]); clients over `--max-clients`
//! are told `error: busy: ...` and closed. In single-file mode the server stops when the file
//! is moved or deleted (unless told to linger); in directory mode that only ends the file's
//! own followers. A segmented log's directory is served as one log with the single-file
//! grammar; retention deleting its old segments is part of its life, never a reason to stop.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::future;
use shared::rt;
use shared::segments::{Logs, SegmentedLog};
use shared::server::Server;
use shared::tree::Tree;
use shared::watch::{FileWatch, OnGone};

use crate::client::{self, Served};
use crate::synced::Synced;

/// Everything `tailsrv` is told on its command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file to serve, or a directory whose files are served.
    pub path: PathBuf,
    /// Where to listen.
    pub addr: SocketAddr,
    /// Keep serving after the file is moved or deleted.
    pub linger: bool,
    /// How long a client has to send its header line.
    pub header_timeout: Duration,
    /// Most clients at once.
    pub max_clients: usize,
    /// Directory mode: refuse files with more than one hard link.
    pub refuse_hardlinks: bool,
    /// Stream only up to the synced length a tailsrv-collator publishes in `FILE.synced`.
    pub serve_up_to_synced: bool,
}

/// Runs the server until SIGINT/SIGTERM, or until the file is gone (single-file mode without
/// `linger`).
pub fn run(config: Config) -> io::Result<()> {
    rt::block_on(serve(config))
}

/// The server as a future.
async fn serve(config: Config) -> io::Result<()> {
    let server = Server::new()?;
    // A directory is served as a tree of files; anything else (even a path that does not
    // exist yet) as a single file.
    let served = if logfile::segments::is_segmented(&config.path) {
        let log = SegmentedLog::open(&server.watcher().follower(), &config.path)?;
        log::info!(dir:% = log.dir().display(); "serving a segmented log");
        Served::Log(log)
    } else if config.path.is_dir() {
        let tree = Tree::new(&config.path)?.refusing_hardlinks(config.refuse_hardlinks);
        log::info!(dir:% = tree.root().display(); "serving the files of a directory");
        Served::Dir {
            tree: Arc::new(tree),
            logs: Arc::new(Logs::new(server.watcher().follower())),
        }
    } else {
        let file = server.watcher().follower().follow(&config.path)?;
        log::info!(path:% = config.path.display(); "serving a file");
        Served::File(file)
    };
    let synced = match &served {
        Served::File(data) if config.serve_up_to_synced => {
            let sidecar_path = proto::watermark::path_for(&config.path);
            let sidecar = server.watcher().follower().follow(&sidecar_path)?;
            let synced = Arc::new(Synced::new(sidecar.clone()));
            drop(rt::spawn(warn_if_unpublished(
                data.clone(),
                sidecar,
                sidecar_path,
            )));
            Some(synced)
        }
        Served::Dir { .. } | Served::Log(_) if config.serve_up_to_synced => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "--serve-up-to-synced is for a single file (not a directory or segmented log)",
            ))
        }
        _ => None,
    };
    let on_gone = match served {
        Served::File(_) if !config.linger => OnGone::Stop,
        _ => OnGone::Linger,
    };
    let active = Arc::new(AtomicUsize::new(0));
    let on_accept = |stream, peer| {
        if active.load(Ordering::Relaxed) >= config.max_clients {
            log::debug!(client:% = peer; "refused: too many clients");
            rt::spawn(client::refuse_busy(stream));
            return;
        }
        let slot = Slot::take(&active);
        let served = served.clone();
        let timeout = config.header_timeout;
        let synced = synced.clone();
        rt::spawn(async move {
            client::serve(stream, peer, served, timeout, synced).await;
            drop(slot);
        });
    };
    let no_work = future::pending();
    server
        .run(config.addr, &config.path, on_gone, no_work, on_accept)
        .await
}

/// One client counted against `--max-clients`, released when the client's task ends.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(active: &Arc<AtomicUsize>) -> Slot {
        active.fetch_add(1, Ordering::Relaxed);
        Slot(active.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long `--serve-up-to-synced` waits for a first synced length before it warns.
pub const UNPUBLISHED_WARNING_AFTER: Duration = Duration::from_secs(5);

/// With `--serve-up-to-synced` nothing is sent until the collator publishes a synced length,
/// and a collator in `--sync write` or `none` mode never does: rather than serve nothing
/// in silence, warn once (checked every [`UNPUBLISHED_WARNING_AFTER`]) while the file holds
/// bytes and its sidecar none.
async fn warn_if_unpublished(data: FileWatch, sidecar: FileWatch, path: std::path::PathBuf) {
    loop {
        async_io::Timer::after(UNPUBLISHED_WARNING_AFTER).await;
        if !sidecar.is_empty() {
            return;
        }
        if !data.is_empty() {
            log::warn!(
                sidecar:% = path.display(), bytes = data.len();
                "--serve-up-to-synced: the file holds bytes but no synced length has been \
                 published, so nothing is served; is the collator running with --sync data or \
                 --sync interval=MS? (--sync write and none never publish one)"
            );
            return;
        }
    }
}
