use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use proto::framing::{Framing, DEFAULT_MAX_MESSAGE};

/// Keeps a message-number to byte-offset index of a log that tailsrv serves, and answers
/// lookups on its own port.
///
/// Protocol: one request per line, one answer per line (a number or `error: CODE: reason`):
/// `offset-of N` (where message N starts; N = count gives where the next one will),
/// `count` (complete messages), `message-at B` (the message containing byte B). Try
/// `echo count | nc localhost PORT`.
///
/// Given a directory and --index-dir, it indexes the files tailsrv would serve from that
/// directory (same `.ignore` rules), each from the first query that names it: `offset-of
/// PATH N`, `count PATH`, `message-at PATH B` (the number is the last word, so paths may
/// contain spaces).
#[derive(Parser, Debug)]
#[command(name = "tailsrv-indexer", version, about, long_about)]
struct Args {
    #[command(flatten)]
    listen: shared::server::ListenArgs,

    /// How messages are delimited: `\n`, a zero byte, a 4-byte big-endian length prefix, or
    /// a protobuf-style varint length prefix.
    #[arg(long, default_value = "newline",
          value_parser = cli::framing())]
    framing: Framing,

    /// The index file [default: FILE.idx beside the log].
    #[arg(long, value_name = "PATH", conflicts_with = "index_dir")]
    index: Option<PathBuf>,

    /// Directory mode: where the index files go (IDXDIR/<path>.idx), outside the indexed
    /// directory. Created if needed.
    #[arg(long, value_name = "IDXDIR")]
    index_dir: Option<PathBuf>,

    /// Longest message a length prefix may announce; a longer one is taken as corruption and
    /// stops indexing there.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_MESSAGE)]
    max_message: u64,

    /// One index entry (12 bytes) every this many messages: larger makes the index smaller
    /// and lookups scan further.
    #[arg(long, value_name = "K", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    stride: u32,

    /// Memory (MiB) for decoded strides, shared by all indexes: a lookup in a stride already
    /// decoded does not read the log. About 4 bytes per message held; 0 disables it.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    cache_mib: u64,

    /// Threads that split a newline or NUL log far behind its index (a cold build, or
    /// catching up after a restart) [default: one per core].
    #[arg(long, value_name = "N")]
    scan_threads: Option<usize>,

    /// Directory mode: refuse files with more than one hard link, as `tailsrv
    /// --refuse-hardlinks` does (use the same setting for both).
    #[arg(long)]
    refuse_hardlinks: bool,

    #[command(flatten)]
    log: cli::LogArgs,

    /// The log file to index (it need not exist yet), or with --index-dir a directory whose
    /// files are indexed.
    path: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    args.log.init();
    let source = match args.index_dir {
        Some(index_dir) if args.path.is_dir() => indexer::Source::Dir {
            root: args.path,
            index_dir,
        },
        Some(_) => {
            log::error!(
                "--index-dir is for directory mode, and {} is not a directory",
                args.path.display()
            );
            return ExitCode::from(2);
        }
        None if args.path.is_dir() => {
            log::error!(
                "{} is a directory: directory mode needs --index-dir IDXDIR (where the index \
                 files go, outside the directory)",
                args.path.display()
            );
            return ExitCode::from(2);
        }
        None => {
            let index = args.index.unwrap_or_else(|| {
                let mut p = args.path.clone().into_os_string();
                p.push(".idx");
                PathBuf::from(p)
            });
            if let Ok(meta) = std::fs::metadata(&args.path) {
                if !meta.is_file() {
                    log::error!(
                        "{} is not a regular file (a FIFO, socket or device): the indexer \
                         indexes a regular file, or with --index-dir a directory",
                        args.path.display()
                    );
                    return ExitCode::from(2);
                }
            }
            if let Err(e) = indexer::check_index(&index) {
                log::error!("{e}");
                return ExitCode::from(2);
            }
            indexer::Source::File {
                path: args.path,
                index,
            }
        }
    };
    let config = indexer::Config {
        source,
        addr: args.listen.addr(),
        params: indexer::Params {
            framing: args.framing,
            stride: args.stride,
            max_message: args.max_message,
        },
        cache_bytes: args.cache_mib.saturating_mul(1 << 20),
        refuse_hardlinks: args.refuse_hardlinks,
        scan_threads: args
            .scan_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
    };
    match indexer::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
