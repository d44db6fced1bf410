//! The indexer's own life: set up what is indexed, then hand over to the skeleton
//! ([`shared::server`]), which binds, accepts query clients and stops.
//!
//! Single-file mode: the scanner runs beside the accept loop (it only ends on an I/O error,
//! which stops the indexer), and the log being moved or deleted stops the indexer: the index
//! of a file that is gone is of no use. A segmented log: [`crate::segmented`] follows its
//! segments, and only an I/O error (the log's directory gone among them) stops it. Directory mode: each indexed file gets its own
//! scanner from [`crate::directory`], and a file that is gone only ends its own index.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use futures_lite::future;
use shared::rt;
use shared::server::Server;
use shared::watch::OnGone;

use crate::cache::StrideCache;
use crate::directory::{Directory, Settings};
use crate::index::{Index, Params};
use crate::query::{self, Indexed};
use crate::scanner;
use crate::segmented::Segmented;

/// What to index.
#[derive(Debug, Clone)]
pub enum Source {
    /// One log, its index at `index`.
    File {
        /// The log.
        path: PathBuf,
        /// Its index file.
        index: PathBuf,
    },
    /// A segmented log (`logfile::segments`), its segments' indexes in `index_dir`.
    Segmented {
        /// The log's directory (it holds the marker).
        dir: PathBuf,
        /// Where the segments' index files go (outside `dir`).
        index_dir: PathBuf,
    },
    /// The files of a directory, on demand, their indexes under `index_dir`.
    Dir {
        /// The indexed directory.
        root: PathBuf,
        /// Where the index files go (outside `root`).
        index_dir: PathBuf,
    },
}

impl Source {
    fn path(&self) -> &std::path::Path {
        match self {
            Source::File { path, .. } => path,
            Source::Segmented { dir, .. } => dir,
            Source::Dir { root, .. } => root,
        }
    }
}

/// Everything `tailsrv-indexer` is told on its command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// What to index.
    pub source: Source,
    /// Where to listen for queries.
    pub addr: SocketAddr,
    /// Framing, stride and message limit of every index.
    pub params: Params,
    /// Memory for decoded strides ([`crate::cache`]), shared by every index; 0 disables it.
    pub cache_bytes: u64,
    /// Threads that split a newline or NUL log far behind its index ([`crate::bulk`]).
    pub scan_threads: usize,
    /// Directory mode: refuse files with more than one hard link.
    pub refuse_hardlinks: bool,
}

/// Checks, before anything listens, that `index` can be the index file: absent (and its
/// directory writable) or a regular file that is empty or starts with the index magic
/// number. The scanner opens it only once the log exists, which may be much later.
pub fn check_index(index: &Path) -> Result<(), String> {
    let shown = index.display();
    match std::fs::metadata(index) {
        Ok(meta) if !meta.is_file() => {
            return Err(format!("--index {shown} is not a regular file"));
        }
        Ok(meta) => {
            let mut head = Vec::with_capacity(crate::store::HEADER_LEN as usize);
            File::open(index)
                .and_then(|f| f.take(crate::store::HEADER_LEN).read_to_end(&mut head))
                .map_err(|e| format!("--index {shown}: cannot read it: {e}"))?;
            if !head.is_empty() && !crate::store::is_ours(index, &head, meta.len()) {
                return Err(format!(
                    "--index {shown} exists but is not a tailsrv-indexer index (no magic \
                     number); refusing to overwrite it: remove it or choose another --index"
                ));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("--index {shown}: {e}")),
    }
    // The index is written as INDEX.tmp and renamed into place: the directory must take it.
    let mut tmp = index.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .and_then(|_| std::fs::remove_file(&tmp))
        .map_err(|e| format!("--index {shown}: cannot create files beside it: {e}"))
}

/// Runs the indexer until SIGINT/SIGTERM, until an I/O error, or (single-file mode) until
/// the log is gone.
pub fn run(config: Config) -> io::Result<()> {
    rt::block_on(serve(config))
}

async fn serve(config: Config) -> io::Result<()> {
    let server = Server::new()?;
    let params = config.params;
    let cache = StrideCache::new(config.cache_bytes, params.k()).map(Arc::new);
    type Work = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;
    let (indexed, scan, on_gone): (Indexed, Work, _) = match &config.source {
        Source::File { path, index } => {
            let file = server.watcher().follower().follow(path)?;
            let ix = Arc::new(Index::new(params, file.clone(), cache));
            log::info!(
                path:% = path.display(), index:% = index.display(),
                framing:% = params.framing, stride = params.stride;
                "indexing"
            );
            let scanned = ix.clone();
            let index_path = index.clone();
            let threads = config.scan_threads;
            // Its own task: the scanner's reads must not hold up accepting.
            let scan =
                rt::spawn(async move { scanner::run(scanned, file, &index_path, threads).await });
            (Indexed::File(ix), Box::pin(scan), OnGone::Stop)
        }
        Source::Segmented { dir, index_dir } => {
            let log = Arc::new(Segmented::new(
                dir,
                index_dir,
                server.watcher().follower(),
                params,
                cache,
                config.scan_threads,
            )?);
            log::info!(
                dir:% = log.dir().display(), index_dir:% = log.index_dir().display(),
                framing:% = params.framing, stride = params.stride;
                "indexing a segmented log"
            );
            let scan = rt::spawn(log.clone().run());
            // Segments come and go: the watcher must not stop for one.
            (Indexed::Segmented(log), Box::pin(scan), OnGone::Linger)
        }
        Source::Dir { root, index_dir } => {
            let settings = Settings {
                params,
                scan_threads: config.scan_threads,
                refuse_hardlinks: config.refuse_hardlinks,
            };
            let follower = server.watcher().follower();
            let dir = Directory::new(root, index_dir, follower, settings, cache)?;
            log::info!(
                dir:% = dir.root().display(), index_dir:% = dir.index_dir().display(),
                framing:% = params.framing, stride = params.stride;
                "indexing the files of a directory, each from its first query on"
            );
            let idle = future::pending::<io::Result<()>>();
            (Indexed::Dir(Arc::new(dir)), Box::pin(idle), OnGone::Linger)
        }
    };
    let on_accept = |stream, peer| {
        rt::spawn(query::serve(stream, peer, indexed.clone()));
    };
    server
        .run(config.addr, config.source.path(), on_gone, scan, on_accept)
        .await
}
