use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use client::{follow::Retry, mirror};

const AFTER_HELP: &str = "\
Run a tailsrv (and a tailsrv-indexer) on FILE for a hot standby, or for a second tier of a \
fan-out tree; consumers list it after the primary (tscat --servers PRIMARY,REPLICA).

FILE is created only once a server accepted the request. It is fdatasync'ed every \
--sync-bytes or --sync-ms, and on a clean stop. On start, a zero-filled tail that a machine \
crash can leave is cut: the zero bytes that end FILE, and within the last --sync-bytes + \
256 KiB, everything from the first 4 KiB-aligned all-zero block on (real zeros cut this way \
are fetched again). On a terminal, catching up a backlog of 64 MiB or more shows progress.

Exit status: 0 stopped by SIGINT/SIGTERM; 1 FILE cannot be opened, appended to or synced; 2 \
bad command line (also --on-gone earliest: see below); 3 FILE is locked by another tsmirror; \
4 every server refused the request for good (e.g. a directory-mode server without --path); 8 \
retention deleted FILE's length on the servers (a segmented log; the message names FILE's \
length and the log start).

--on-gone: a replica is a byte-identical prefix of the log, offsets included, so it can never \
skip what retention deleted: only `fail` is accepted; `earliest` is refused (exit 2). To start \
over, move FILE away and mirror into a new one with tscat --on-gone earliest, or catch the \
replica up from another replica that still holds the bytes (--servers order).";

/// Keep FILE a byte-identical replica of the file a remote tailsrv serves.
///
/// Appends the remote stream to FILE, resuming from FILE's current length (the length IS the
/// position, so a crash loses nothing that reached the file and repeats nothing). Holds an
/// exclusive lock on FILE, reconnects forever with capped backoff, and uses TCP keepalive to
/// notice a server that vanished.
#[derive(Parser, Debug)]
#[command(name = "tsmirror", version, after_long_help = AFTER_HELP)]
struct Args {
    /// fdatasync FILE once this many bytes were appended since the last sync (0: after every
    /// write). Also bounds what a machine crash can lose (and the tail checked on start).
    #[arg(long, value_name = "BYTES", default_value_t = 4 << 20)]
    sync_bytes: u64,

    /// fdatasync FILE once appended bytes have waited this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    sync_ms: u64,

    /// Mirror this file of a tailsrv serving a directory (relative to it, as `list` shows
    /// it); without it the server must serve a single file.
    #[arg(long, value_name = "PATH")]
    path: Option<String>,

    #[command(flatten)]
    on_gone: cli::OnGoneArgs,

    #[command(flatten)]
    log: cli::LogArgs,

    /// The tailsrv to mirror; a comma-separated list fails over to the next.
    #[arg(value_name = "HOST:PORT")]
    server: String,

    /// The replica file (created if missing).
    file: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    args.log.init();
    if args.on_gone.on_gone == client::follow::OnGone::Earliest {
        log::error!(
            "--on-gone earliest is refused: a replica must stay a byte-identical prefix of the \
             log and cannot skip what retention deleted (see --help)"
        );
        return ExitCode::from(2);
    }
    let servers = client::parse_servers(&args.server);
    if servers.is_empty() {
        log::error!("no server given");
        return ExitCode::from(2);
    }
    for server in &servers {
        if let Err(e) = client::follow::check_address("server", server) {
            log::error!("{e}");
            return ExitCode::from(2);
        }
    }
    if let Some(path) = &args.path {
        // A newline would end the request early; tailsrv refuses the other controls anyway.
        if path.is_empty() || path.chars().any(char::is_control) {
            log::error!("--path must be a non-empty path without control characters");
            return ExitCode::from(2);
        }
    }
    let opts = mirror::Options {
        path: args.path.clone(),
        sync_bytes: args.sync_bytes,
        sync_interval: Duration::from_millis(args.sync_ms),
        progress: std::io::stderr().is_terminal(),
    };
    let stop = match tailsrv_consumers::stop_flag() {
        Ok(stop) => stop,
        Err(e) => {
            log::error!("cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    match mirror::run(servers, &args.file, Retry::Forever, opts, stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!(path:% = args.file.display(); "{e}");
            ExitCode::from(e.exit_code())
        }
    }
}
