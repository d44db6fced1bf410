use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;
use client::{follow::Retry, mirror};

const AFTER_HELP: &str = "\
Run a tailsrv (and a tailsrv-indexer) on FILE for a hot standby, or for a second tier of a \
fan-out tree; consumers list it after the primary (tscat --servers PRIMARY,REPLICA).

Exit status: 0 stopped by SIGINT/SIGTERM; 1 FILE cannot be opened or appended to; 2 bad \
command line; 3 FILE is locked by another tsmirror.";

/// Keep FILE a byte-identical replica of the file a remote tailsrv serves.
///
/// Appends the remote stream to FILE, resuming from FILE's current length (the length IS the
/// position, so a crash loses nothing that reached the file and repeats nothing). Holds an
/// exclusive lock on FILE, reconnects forever with capped backoff, and uses TCP keepalive to
/// notice a server that vanished.
#[derive(Parser, Debug)]
#[command(version, after_long_help = AFTER_HELP)]
struct Args {
    #[command(flatten)]
    log: shared::logging::LogArgs,

    /// The tailsrv to mirror; a comma-separated list fails over to the next.
    #[arg(value_name = "HOST:PORT")]
    server: String,

    /// The replica file (created if missing).
    file: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    args.log.init();
    let servers = client::parse_servers(&args.server);
    if servers.is_empty() {
        log::error!("no server given");
        return ExitCode::from(2);
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let registered =
            signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, stop.clone())
                .and_then(|_| signal_hook::flag::register(sig, stop.clone()));
        if let Err(e) = registered {
            log::error!("cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    }
    match mirror::run(servers, &args.file, Retry::Forever, stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!(path:% = args.file.display(); "{e}");
            ExitCode::from(e.exit_code())
        }
    }
}
