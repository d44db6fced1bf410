//! The server's own life: bind, accept, stop.
//!
//! Three things run side by side until the first of them ends: the accept loop, the file
//! watcher (which ends when a single served file is moved or deleted, unless we linger), and
//! the signal handler. Returning from [`run`] ends the process, which closes every client
//! socket.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_io::Async;
use async_signal::{Signal, Signals};
use futures_lite::{future, StreamExt};
use shared::tree::Tree;
use shared::watch::{OnGone, Watcher};
use shared::{logging, net};

use crate::client::{self, Served};

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
}

/// Runs the server until SIGINT/SIGTERM, or until the file is gone (single-file mode without
/// `linger`).
pub fn run(config: Config) -> io::Result<()> {
    async_std::task::block_on(serve(config))
}

/// The server as a future, for callers that bring their own executor.
pub async fn serve(config: Config) -> io::Result<()> {
    // Signals first: a SIGTERM that arrives right after we announce the port must stop us
    // cleanly, not kill us.
    let mut signals = Signals::new([Signal::Term, Signal::Int])?;
    let watcher = Watcher::new()?;
    // A directory is served as a tree of files; anything else (even a path that does not
    // exist yet) as a single file.
    let served = if config.path.is_dir() {
        let tree = Tree::new(&config.path)?;
        log::info!(dir:% = tree.root().display(); "serving the files of a directory");
        Served::Dir {
            tree: Arc::new(tree),
            follower: watcher.follower(),
        }
    } else {
        Served::File(watcher.follower().follow(&config.path)?)
    };
    let listener = net::listen(config.addr)?;
    logging::notify_ready();

    // In directory mode a file that goes away only ends its own followers.
    let on_gone = match served {
        Served::File(_) if !config.linger => OnGone::Stop,
        _ => OnGone::Linger,
    };
    let follow = async {
        let gone = watcher.run(on_gone).await?;
        log::info!(path:% = config.path.display(); "file was {gone}, shutting down");
        Ok(())
    };
    let stop = async {
        if let Some(Ok(sig)) = signals.next().await {
            log::info!("received {sig:?}, shutting down");
        }
        Ok(())
    };
    let accept = accept_loop(&listener, &served, &config);
    future::or(accept, future::or(follow, stop)).await
}

/// Accepts clients forever, each on its own task, turning away those over `--max-clients`.
async fn accept_loop(
    listener: &Async<std::net::TcpListener>,
    served: &Served,
    config: &Config,
) -> io::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    net::accept_forever(listener, |stream, peer| {
        if active.load(Ordering::Relaxed) >= config.max_clients {
            log::debug!(client:% = peer; "refused: too many clients");
            async_std::task::spawn(client::refuse_raw(stream, "too many clients"));
            return;
        }
        let slot = Slot::take(&active);
        let served = served.clone();
        let timeout = config.header_timeout;
        async_std::task::spawn(async move {
            client::serve(stream, peer, served, timeout).await;
            drop(slot);
        });
    })
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
