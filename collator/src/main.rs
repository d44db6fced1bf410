use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use collator::{Config, Settings, SyncMode, Target};
use proto::framing::Framing;

/// Appends whole messages from producers to a log and answers where each landed:
/// `ok OFFSET MSGNO COUNT`. The file's only writer, beside tailsrv and tailsrv-indexer.
///
/// Protocol (text headers, pipelined, answers in order): `msg LEN` + LEN bytes (one
/// message), `batch COUNT LEN` + LEN framed bytes, `lines` (then one message per line until
/// FIN), `end` (`end OFFSET MSGNO FRAMING`). Optional ` id P seq S` for idempotent retries,
/// and ` to PATH` in directory mode. Try `(echo lines; seq 3) | nc -N localhost PORT`.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    #[command(flatten)]
    listen: shared::server::ListenArgs,

    /// How messages are framed in the file.
    #[arg(long, default_value = "newline",
          value_parser = cli::framing())]
    framing: Framing,

    /// When a request is acknowledged: `none` (queued), `write` (after write(2)), `data`
    /// (after fdatasync, group commit), `interval=MS` (after write; synced every MS).
    #[arg(long, default_value = "write", value_name = "MODE")]
    sync: SyncMode,

    /// Longest message, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    max_message: u64,

    /// Longest request body (a batch), in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20)]
    max_request: u64,

    /// Bytes of request bodies held in memory (being read, queued or written, all files
    /// together; also per file's queue) before producers are made to wait (a connection may
    /// hold a quarter of it, at least one request).
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    max_pending: u64,

    /// Seconds a producer has for a request header (its first right after connecting; later
    /// ones from their first byte), and the longest a body may stall.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    header_timeout: u64,

    /// In `--sync data`, describe each write group with a journal record (a second, parallel
    /// fdatasync per group) instead of an extended attribute of the file (used where the
    /// file system has them): for tools or file systems that lose extended attributes.
    #[arg(long)]
    no_xattr: bool,

    /// Directory mode: where the journals go (outside DIR). Created if needed.
    #[arg(long, value_name = "JDIR")]
    journal_dir: Option<PathBuf>,

    #[command(flatten)]
    log: cli::LogArgs,

    /// The log to append to (created if absent), or a directory whose files requests name.
    path: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    args.log.init();
    let target = match (args.journal_dir, args.path.is_dir()) {
        (Some(journal_dir), true) => Target::Dir {
            root: args.path,
            journal_dir,
        },
        (None, true) => {
            log::error!(
                "{} is a directory: directory mode needs --journal-dir JDIR (outside it)",
                args.path.display()
            );
            return ExitCode::from(2);
        }
        (Some(_), false) => {
            log::error!("--journal-dir is for directory mode");
            return ExitCode::from(2);
        }
        (None, false) => Target::File(args.path),
    };
    if args.max_message == 0 || args.max_request < args.max_message {
        log::error!("--max-request must be at least --max-message, and both above 0");
        return ExitCode::from(2);
    }
    let config = Config {
        target,
        addr: args.listen.addr(),
        settings: Settings {
            framing: args.framing,
            sync: args.sync,
            max_message: args.max_message,
            max_request: args.max_request,
            max_pending: args.max_pending.max(1),
            xattr: !args.no_xattr,
        },
        header_timeout: Duration::from_secs(args.header_timeout.max(1)),
    };
    match collator::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
