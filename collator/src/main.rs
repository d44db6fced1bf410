use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use collator::{Config, Retention, Rolling, Settings, SyncMode, Target};
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

    /// Segmented log: start a new segment before a write that would make the active one
    /// longer than this (`64M`, `65536`; a larger write gets a segment of its own). Any
    /// --segment-* or --retain-* flag makes a new PATH a segmented log (a directory); a
    /// directory holding a segmented log's marker is opened as one with or without them.
    #[arg(long, value_name = "BYTES", value_parser = collator::parse_bytes)]
    segment_bytes: Option<u64>,

    /// Segmented log: start a new segment before a write once the active one is this many
    /// milliseconds old (checked at writes: an idle segment is not rolled).
    #[arg(long, value_name = "MS")]
    segment_ms: Option<u64>,

    /// Segmented log: delete the oldest segments while the log holds more than this (never
    /// the active one).
    #[arg(long, value_name = "BYTES", value_parser = collator::parse_bytes)]
    retain_bytes: Option<u64>,

    /// Segmented log: delete segments last written more than this many milliseconds ago
    /// (never the active one).
    #[arg(long, value_name = "MS")]
    retain_ms: Option<u64>,

    #[command(flatten)]
    log: cli::LogArgs,

    /// The log to append to (created if absent), or a directory whose files requests name.
    path: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    args.log.init();
    let rolling = Rolling {
        bytes: args.segment_bytes.filter(|&b| b > 0),
        age: args.segment_ms.map(Duration::from_millis),
    };
    let retention = Retention {
        bytes: args.retain_bytes,
        age: args.retain_ms.map(Duration::from_millis),
    };
    let segmented = rolling != Rolling::default() || retention.is_set();
    let target = match (args.journal_dir, args.path.is_dir()) {
        (Some(_), _) if segmented => {
            log::error!(
                "--segment-* and --retain-* are for a segmented log, not directory mode                  (--journal-dir)"
            );
            return ExitCode::from(2);
        }
        (None, _) if segmented || logfile::segments::is_segmented(&args.path) => {
            Target::Segmented {
                dir: args.path,
                rolling,
                retention,
            }
        }
        (Some(_), true) if logfile::segments::is_segmented(&args.path) => {
            log::error!(
                "{} is a segmented log, not a directory of files: drop --journal-dir",
                args.path.display()
            );
            return ExitCode::from(2);
        }
        (Some(journal_dir), true) => Target::Dir {
            root: args.path,
            journal_dir,
        },
        (None, true) => {
            log::error!(
                "{} is a directory: directory mode needs --journal-dir JDIR (outside it); a new \
                 segmented log needs --segment-bytes or another --segment-*/--retain-* flag",
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
