//! The server skeleton every tailsrv process is built on: listen flags, signals, the watcher,
//! the accept loop, and how they end — written once.
//!
//! A server sets up what it serves first (so a bad path or index fails before anything
//! listens), then [`Server::run`] binds, logs `listening on ADDR`, tells systemd it is ready,
//! and runs until the first of these ends:
//! - SIGINT or SIGTERM (exit 0); SIGHUP is logged and ignored, so a closed terminal or a
//!   log-rotation script does not kill the server;
//! - the watcher, which returns when a single followed file is moved or deleted (with
//!   [`OnGone::Stop`]);
//! - the server's own background work (the indexer's scanner), on error;
//! - the accept loop, which only fails if the listener does.
//!
//! Returning ends the process, which closes every client socket.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;

use async_signal::{Signal, Signals};
use futures_lite::{future, StreamExt};

use crate::net;
use crate::watch::{OnGone, Watcher};

/// The listening flags every server takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ListenArgs {
    /// TCP port to listen on (0 picks a free one; the `listening on` log line names it).
    #[arg(short, long)]
    pub port: u16,

    /// Address to bind: an IPv4 or IPv6 address (`::` takes both families) or a host name
    /// such as `localhost` (its first address). Loopback unless given: serving other
    /// machines is a choice (`--bind 0.0.0.0`, `--bind ::`).
    #[arg(long, default_value = "127.0.0.1", value_parser = parse_bind)]
    pub bind: IpAddr,
}

/// An address, or a name resolved to its first address.
fn parse_bind(text: &str) -> Result<IpAddr, String> {
    if let Ok(ip) = text.parse() {
        return Ok(ip);
    }
    use std::net::ToSocketAddrs;
    match (text, 0).to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .map(|a| a.ip())
            .ok_or_else(|| format!("{text:?} resolves to no address")),
        Err(e) => Err(format!(
            "{text:?} is neither an IP address nor a known host name: {e}"
        )),
    }
}

impl ListenArgs {
    /// The socket address these flags name.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.port)
    }
}

/// A server between set-up and serving: its signal handler and its file watcher.
#[derive(Debug)]
pub struct Server {
    signals: Signals,
    watcher: Watcher,
}

impl Server {
    /// Installs the signal handlers (first: a SIGTERM that arrives right after the port is
    /// announced must stop the server cleanly, not kill it) and starts a watcher.
    pub fn new() -> io::Result<Server> {
        Ok(Server {
            signals: Signals::new([Signal::Term, Signal::Int, Signal::Hup])?,
            watcher: Watcher::new()?,
        })
    }

    /// The watcher every followed file of this server goes through.
    pub fn watcher(&self) -> &Watcher {
        &self.watcher
    }

    /// Binds `addr` and serves until a signal, the watcher or `work` ends (see the module
    /// docs). `on_accept` gets each accepted connection; `served` names what is served in
    /// the shutdown log line.
    pub async fn run(
        self,
        addr: SocketAddr,
        served: &Path,
        on_gone: OnGone,
        work: impl Future<Output = io::Result<()>>,
        on_accept: impl FnMut(TcpStream, SocketAddr),
    ) -> io::Result<()> {
        let Server {
            mut signals,
            watcher,
        } = self;
        let listener = net::listen(addr)?;
        cli::notify_ready();
        let follow = async {
            let gone = watcher.run(on_gone).await?;
            log::info!(path:% = served.display(); "file was {gone}, shutting down");
            Ok(())
        };
        let stop = async {
            while let Some(sig) = signals.next().await {
                match sig {
                    Ok(Signal::Hup) => log::info!("received SIGHUP: ignored (nothing to reload)"),
                    Ok(sig) => {
                        log::info!("received {sig:?}, shutting down");
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        };
        let accept = net::accept_forever(&listener, on_accept);
        future::or(future::or(accept, work), future::or(follow, stop)).await
    }
}
