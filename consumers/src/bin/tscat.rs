use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use client::{cat, follow::Retry, StartAt};
use proto::framing::{Framing, DEFAULT_MAX_MESSAGE};

const AFTER_HELP: &str = "\
Checkpoints (--state): the position saved never passes what the output's reader has taken: \
when stdout is a pipe, what still sits in the pipe (asked of the kernel, FIONREAD) is not \
counted. Saved every 256 KiB or 1 s of output and whenever the stream pauses. A clean stop \
saves exactly what the reader took: the reader closing the output (what was left in the \
pipe is not counted), a limit (--exit-at-end, --count, --bytes: tscat waits for the reader \
to empty the pipe first), SIGINT/SIGTERM (after up to 1 s for the reader to empty the pipe; \
what it then still holds may be repeated). After kill -9 or a crash, at most the output since \
the last checkpoint is repeated: under 384 KiB (256 KiB plus one 64 KiB read plus a 64 KiB \
pipe; with a larger pipe, its size instead; with a framing and messages over 64 KiB, plus one \
message). Nothing is ever skipped, provided the reader processes what it reads from the pipe \
(`head -n` reads ahead in blocks and drops the rest: use --count).

Exit status: 0 stopped by SIGINT/SIGTERM, output closed, or a limit reached; 1 no server reachable (after \
retries, or at once with --no-retry) or the stream was lost and cannot be resumed; 2 bad \
command line; 3 state file corrupt, unwritable or in use; 4 indexer unreachable or it \
refused the request; 5 malformed message in the stream (with --framing); 6 writing the \
output failed; 7 the server refused the request and asking again cannot help (with --path: \
the path is not served, e.g. excluded by an .ignore file or outside the directory; or the \
server is in the other mode: a directory needs --path, a single file takes none); 8 \
retention deleted the position to resume from (a segmented log answered gone) and --on-gone \
is fail: the message names the position (the state file's checkpoint) and the log start.

--on-gone earliest continues from the log start instead and logs the bytes skipped (with \
--framing and --indexer, also the first message number still held).";

/// Follow a tailsrv stream and print it to stdout, surviving restarts of the server and of
/// tscat itself without gaps or duplicates.
///
/// Connects to the first server that answers, asks for the stream from the chosen start, and
/// on any failure reconnects (capped exponential backoff) at the exact byte reached, failing
/// over along the server list. With --framing only whole messages are printed. Logs go to
/// stderr; stdout is data.
#[derive(Parser, Debug)]
#[command(name = "tscat", version, after_long_help = AFTER_HELP)]
struct Args {
    /// Start at byte N (the default is 0, the start of the file).
    #[arg(long, value_name = "N", group = "start")]
    from_byte: Option<u64>,

    /// Start with the last N bytes. tailsrv resolves this and confirms the offset, so the
    /// stream resumes exactly after a lost connection; --framing needs --indexer (which
    /// turns it into a message boundary).
    #[arg(long, value_name = "N", group = "start")]
    last: Option<u64>,

    /// Start at the current end of the file (same caveats as --last).
    #[arg(long, group = "start")]
    from_end: bool,

    /// Start with the last N lines, as `tail -n N` (newline-terminated; an unfinished last
    /// line counts as one). tailsrv scans back from the end (at most 16 MiB) and confirms
    /// the offset; no indexer needed, and it is a message boundary for --framing newline.
    #[arg(short = 'n', long = "lines", value_name = "N", group = "start")]
    lines: Option<u64>,

    /// Start at message N (0-based), located by asking --indexer.
    #[arg(long, value_name = "N", group = "start", requires = "indexer")]
    from_message: Option<u64>,

    /// A tailsrv-indexer of the same file, for --from-message (and to resolve --last and
    /// --from-end to absolute message boundaries).
    #[arg(long, value_name = "HOST:PORT")]
    indexer: Option<String>,

    /// Follow this file of a tailsrv serving a directory (relative to it, as `list` shows
    /// it); the indexer, if any, must index the same directory.
    #[arg(long, value_name = "PATH")]
    path: Option<String>,

    /// Print whole messages only, cut with this framing.
    #[arg(long, value_parser = cli::framing())]
    framing: Option<Framing>,

    /// With --framing: a length prefix over this many bytes is a malformed stream.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_MESSAGE)]
    max_message: u64,

    /// Save the position in FILE and resume from it when it exists (then the start flags only
    /// apply to the first run).
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,

    /// More servers of the same file (replicas), comma-separated, tried in order.
    #[arg(long, value_name = "HOST:PORT,...")]
    servers: Option<String>,

    /// Do not reconnect: fail as soon as no server answers or the connection is lost.
    #[arg(long)]
    no_retry: bool,

    /// Print what the file holds and exit 0: stop at the file's length when the first server
    /// confirmed the stream (the end as it was when tscat started; later growth is left for
    /// the next run). With --framing, only the messages that end by then.
    #[arg(long)]
    exit_at_end: bool,

    /// Stop after N messages (needs --framing) and exit 0.
    #[arg(long, value_name = "N", requires = "framing")]
    count: Option<u64>,

    /// Stop after N bytes from the start of this run and exit 0 (with --framing, the whole
    /// messages that end within them).
    #[arg(long, value_name = "N")]
    bytes: Option<u64>,

    /// Give up after this many seconds without a working server ("inf": never).
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 300.0,
        conflicts_with = "no_retry"
    )]
    give_up_after: f64,

    #[command(flatten)]
    on_gone: cli::OnGoneArgs,

    #[command(flatten)]
    log: cli::LogArgs,

    /// The tailsrv to follow (put first in the server list).
    server: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Logs go to stderr (stdout is data); warnings only unless asked (-v, RUST_LOG).
    args.log.init_with_default(log::LevelFilter::Warn);
    match run(args) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(args: Args) -> Result<cat::Stopped, cat::Error> {
    let usage = |s: &str| cat::Error::Usage(s.to_owned());
    let mut servers: Vec<String> = args.server.into_iter().collect();
    servers.extend(
        args.servers
            .as_deref()
            .map(client::parse_servers)
            .unwrap_or_default(),
    );
    if servers.is_empty() {
        return Err(usage(
            "no server given: tscat HOST:PORT or --servers HOST:PORT,...",
        ));
    }
    let retry = if args.no_retry {
        Retry::Never
    } else if args.give_up_after == f64::INFINITY {
        Retry::Forever
    } else {
        Retry::GiveUpAfter(
            Duration::try_from_secs_f64(args.give_up_after)
                .map_err(|_| usage("--give-up-after must be a number of seconds or inf"))?,
        )
    };
    let start = match (args.from_byte, args.last, args.from_end, args.from_message) {
        _ if args.lines.is_some() => StartAt::LastLines(args.lines.unwrap_or(0)),
        (_, Some(n), _, _) => StartAt::Last(n),
        (_, _, true, _) => StartAt::End,
        (_, _, _, Some(n)) => StartAt::Message(n),
        (n, _, _, _) => StartAt::Byte(n.unwrap_or(0)),
    };
    for server in &servers {
        client::follow::check_address("server", server).map_err(|e| usage(&e))?;
    }
    if let Some(ix) = &args.indexer {
        client::follow::check_address("indexer", ix).map_err(|e| usage(&e))?;
    }
    if let Some(path) = &args.path {
        // A newline would end the request early; tailsrv refuses the other controls anyway.
        if path.is_empty() || path.chars().any(char::is_control) {
            return Err(usage(
                "--path must be a non-empty path without control characters",
            ));
        }
    }
    let config = cat::Config {
        servers,
        path: args.path,
        start,
        indexer: args.indexer,
        framing: args.framing,
        max_message: args.max_message,
        state: args.state,
        retry,
        exit_at_end: args.exit_at_end,
        max_bytes: args.bytes,
        max_messages: args.count,
        on_gone: args.on_gone.on_gone,
    };

    let stop = tailsrv_consumers::stop_flag().map_err(cat::Error::Output)?;

    // Unbuffered stdout: a write that returned is with the reader (or in the pipe to it,
    // which `Output` accounts for), so it may be checkpointed.
    let mut out = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .map(cat::Output::new)
        .map_err(cat::Error::Output)?;
    cat::run(&config, &mut out, stop)
}
