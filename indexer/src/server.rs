//! The indexer's own life: bind, follow the log, accept query clients, stop.
//!
//! Four things run side by side until the first of them ends: the file watcher (which ends
//! when the log is moved or deleted: the index of a file that is gone is of no use), the
//! scanner (which only ends on an I/O error), the accept loop, and the signal handler.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;

use async_io::Async;
use async_signal::{Signal, Signals};
use futures_lite::{future, StreamExt};
use shared::framing::Framing;
use shared::watch::{self, OnGone};
use shared::{logging, net};

use crate::index::Index;
use crate::{query, scanner};

/// Everything `tailsrv-indexer` is told on its command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// The log to index.
    pub path: PathBuf,
    /// Where the index lives.
    pub index_path: PathBuf,
    /// Where to listen for queries.
    pub addr: SocketAddr,
    pub framing: Framing,
    /// Longest message a length prefix may announce.
    pub max_message: u64,
    /// One index entry every `stride` messages.
    pub stride: u32,
}

/// Runs the indexer until SIGINT/SIGTERM, until the log is gone, or until an I/O error.
pub fn run(config: Config) -> io::Result<()> {
    async_std::task::block_on(serve(config))
}

/// The indexer as a future.
pub async fn serve(config: Config) -> io::Result<()> {
    let mut signals = Signals::new([Signal::Term, Signal::Int])?;
    let (file, watcher) = watch::watch(&config.path)?;
    let listener = net::listen(config.addr)?;
    logging::notify_ready();
    log::info!(
        path:% = config.path.display(), index:% = config.index_path.display(),
        framing:% = config.framing, stride = config.stride;
        "indexing"
    );
    let index = Arc::new(Index::new(
        config.framing,
        u64::from(config.stride),
        config.max_message,
        file.clone(),
    ));

    let follow = async {
        let gone = watcher.run(OnGone::Stop).await?;
        log::info!(path:% = config.path.display(); "file was {gone}, shutting down");
        Ok(())
    };
    let scan = {
        let index = index.clone();
        let index_path = config.index_path.clone();
        // Its own task: the scanner's reads are blocking, and must not hold up accepting.
        async_std::task::spawn(async move { scanner::run(index, file, &index_path).await })
    };
    let stop = async {
        if let Some(Ok(sig)) = signals.next().await {
            log::info!("received {sig:?}, shutting down");
        }
        Ok(())
    };
    let accept = accept_loop(&listener, &index);
    future::or(future::or(accept, scan), future::or(follow, stop)).await
}

/// Accepts query clients forever, each on its own task.
async fn accept_loop(listener: &Async<TcpListener>, index: &Arc<Index>) -> io::Result<()> {
    net::accept_forever(listener, |stream, peer| {
        async_std::task::spawn(query::serve(stream, peer, index.clone()));
    })
    .await
}
