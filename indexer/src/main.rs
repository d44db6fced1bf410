use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use proto::framing::{Framing, DEFAULT_MAX_MESSAGE};

/// Keeps a message-number to byte-offset index of a log that tailsrv serves, and answers
/// lookups on its own port.
///
/// Protocol: one request per line, one answer per line (a number or `error: CODE: reason`):
/// `offset-of N` (where message N starts; N = count gives where the next one will),
/// `count` (complete messages), `message-at B` (the message containing byte B), `start` and
/// `end` (`OFFSET MSGNO` of the log's start and end). Try `echo count | nc localhost PORT`.
///
/// Given a segmented log's directory (it holds the marker `tailsrv-log`), it indexes the log
/// as one, with global numbers across its segments; below the start, answers are `gone`.
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
    /// [default: newline, or what a segmented log's marker says]
    #[arg(long, value_parser = cli::framing())]
    framing: Option<Framing>,

    /// The index file [default: FILE.idx beside the log]; for a segmented log, the directory
    /// of its segments' index files [default: LOGDIR.idx beside it].
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

    /// The log file to index (it need not exist yet), a segmented log's directory (it holds
    /// the marker `tailsrv-log`), or with --index-dir a directory whose files are indexed.
    path: PathBuf,
}

/// `PATH` + `suffix`, beside it.
fn beside(path: &std::path::Path, suffix: &str) -> PathBuf {
    let mut p = path.to_owned().into_os_string();
    p.push(suffix);
    PathBuf::from(p)
}

fn main() -> ExitCode {
    let args = Args::parse();
    args.log.init();
    let segmented = logfile::segments::is_segmented(&args.path);
    let mut framing = args.framing.unwrap_or(Framing::Newline);
    if segmented {
        match segment_framing(&args.path, args.framing) {
            Ok(f) => framing = f,
            Err(e) => {
                log::error!("{e}");
                return ExitCode::from(2);
            }
        }
    }
    let source = match args.index_dir {
        Some(_) if segmented => {
            log::error!(
                "{} is a segmented log, indexed as one log: drop --index-dir (its segments' \
                 indexes go to --index DIR, default {})",
                args.path.display(),
                beside(&args.path, ".idx").display()
            );
            return ExitCode::from(2);
        }
        None if segmented => indexer::Source::Segmented {
            index_dir: args.index.unwrap_or_else(|| beside(&args.path, ".idx")),
            dir: args.path,
        },
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
            let index = args.index.unwrap_or_else(|| beside(&args.path, ".idx"));
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
            framing,
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

/// The framing of the segmented log at `dir`: what its marker says, which `--framing` must
/// not contradict (the segments' names count messages in the writer's framing).
fn segment_framing(dir: &std::path::Path, given: Option<Framing>) -> Result<Framing, String> {
    let log = logfile::segments::Log::open(dir).map_err(|e| e.to_string())?;
    let Some(name) = &log.marker().framing else {
        return Ok(given.unwrap_or(Framing::Newline));
    };
    let marked: Framing = name.parse().map_err(|e| {
        format!(
            "{}: its marker names the framing {name:?}, which this indexer does not know: {e}",
            dir.display()
        )
    })?;
    match given {
        Some(f) if f != marked => Err(format!(
            "--framing {f} contradicts the segmented log {}, whose marker says framing {marked}",
            dir.display()
        )),
        _ => Ok(marked),
    }
}
