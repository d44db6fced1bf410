//! The indexer's own life: bind, follow the log (or the directory), accept query clients,
//! stop.
//!
//! Single-file mode: four things run side by side until the first of them ends: the file
//! watcher (which ends when the log is moved or deleted: the index of a file that is gone is
//! of no use), the scanner (which only ends on an I/O error), the accept loop, and the signal
//! handler. Directory mode: the same without a scanner of its own (each indexed file gets one
//! from [`crate::directory`]), and the watcher keeps going when a file is gone, since that
//! only ends that file's index.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use async_io::Async;
use async_signal::{Signal, Signals};
use futures_lite::{future, StreamExt};
use shared::framing::Framing;
use shared::watch::{OnGone, Watcher};
use shared::{logging, net};

use crate::cache::StrideCache;
use crate::directory::{Directory, Settings};
use crate::index::Index;
use crate::query::{self, Indexed};
use crate::scanner;

/// What to index.
#[derive(Debug, Clone)]
pub enum Source {
    /// One log, its index at `index`.
    File { path: PathBuf, index: PathBuf },
    /// The files of a directory, on demand, their indexes under `index_dir`.
    Dir { root: PathBuf, index_dir: PathBuf },
}

/// Everything `tailsrv-indexer` is told on its command line.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: Source,
    /// Where to listen for queries.
    pub addr: SocketAddr,
    pub framing: Framing,
    /// Longest message a length prefix may announce.
    pub max_message: u64,
    /// One index entry every `stride` messages.
    pub stride: u32,
    /// Memory for decoded strides ([`crate::cache`]), shared by every index; 0 disables it.
    pub cache_bytes: u64,
    /// Threads that split a newline or NUL log far behind its index ([`crate::bulk`]).
    pub scan_threads: usize,
}

/// Runs the indexer until SIGINT/SIGTERM, until an I/O error, or (single-file mode) until
/// the log is gone.
pub fn run(config: Config) -> io::Result<()> {
    async_std::task::block_on(serve(config))
}

/// The indexer as a future.
pub async fn serve(config: Config) -> io::Result<()> {
    let mut signals = Signals::new([Signal::Term, Signal::Int])?;
    let watcher = Watcher::new()?;
    let cache = StrideCache::new(config.cache_bytes, u64::from(config.stride)).map(Arc::new);
    let (indexed, scan, on_gone): (Indexed, Pin<Box<dyn Future<Output = _> + Send>>, _) =
        match &config.source {
            Source::File { path, index } => {
                let file = watcher.follower().follow(path)?;
                let ix = Arc::new(Index::new(
                    config.framing,
                    u64::from(config.stride),
                    config.max_message,
                    file.clone(),
                    cache,
                ));
                log::info!(
                    path:% = path.display(), index:% = index.display(),
                    framing:% = config.framing, stride = config.stride;
                    "indexing"
                );
                let scanned = ix.clone();
                let index_path = index.clone();
                let threads = config.scan_threads;
                // Its own task: the scanner's reads are blocking, and must not hold up accepting.
                let scan = async_std::task::spawn(async move {
                    scanner::run(scanned, file, &index_path, threads).await
                });
                (Indexed::File(ix), Box::pin(scan), OnGone::Stop)
            }
            Source::Dir { root, index_dir } => {
                let settings = Settings {
                    framing: config.framing,
                    stride: config.stride,
                    max_message: config.max_message,
                    scan_threads: config.scan_threads,
                };
                let dir = Directory::new(root, index_dir, watcher.follower(), settings, cache)?;
                log::info!(
                    dir:% = dir.root().display(), index_dir:% = dir.index_dir().display(),
                    framing:% = config.framing, stride = config.stride;
                    "indexing the files of a directory, each from its first query on"
                );
                let idle = future::pending::<io::Result<()>>();
                (Indexed::Dir(Arc::new(dir)), Box::pin(idle), OnGone::Linger)
            }
        };
    let listener = net::listen(config.addr)?;
    logging::notify_ready();

    let follow = async {
        // Only single-file mode stops here: in directory mode `run` returns only on error.
        let gone = watcher.run(on_gone).await?;
        if let Source::File { path, .. } = &config.source {
            log::info!(path:% = path.display(); "file was {gone}, shutting down");
        }
        Ok(())
    };
    let stop = async {
        if let Some(Ok(sig)) = signals.next().await {
            log::info!("received {sig:?}, shutting down");
        }
        Ok(())
    };
    let accept = accept_loop(&listener, &indexed);
    future::or(future::or(accept, scan), future::or(follow, stop)).await
}

/// Accepts query clients forever, each on its own task.
async fn accept_loop(listener: &Async<TcpListener>, indexed: &Indexed) -> io::Result<()> {
    net::accept_forever(listener, |stream, peer| {
        async_std::task::spawn(query::serve(stream, peer, indexed.clone()));
    })
    .await
}
