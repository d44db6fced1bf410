use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// tail -f as a TCP server: streams an append-only file to every client, from the byte
/// offset it asks for, and keeps following the file as it grows.
///
/// Protocol: the client sends one line, `N` (from byte N; waits until the file is that long)
/// or `-N` (the last N bytes; `-0` is the current end), then only reads. Try
/// `echo 0 | nc localhost PORT`.
///
/// Given a directory, tailsrv serves every regular file under it that no `.ignore` file
/// excludes. The line is then `list` (the servable paths, one per line), `stream PATH`
/// (follow PATH from its end) or `stream PATH from byte N` / `from byte -N`.
///
/// Given a segmented log's directory (it holds the marker `tailsrv-log`), tailsrv serves it
/// as one log: N is a global offset, and a start that retention deleted is refused with
/// `error: gone: ...` naming the log start.
#[derive(Parser, Debug)]
#[command(name = "tailsrv", version, about, long_about)]
struct Args {
    #[command(flatten)]
    listen: shared::server::ListenArgs,

    /// When the file is moved or deleted, keep serving what it holds (and what is still
    /// appended to it) instead of exiting.
    #[arg(long)]
    linger_after_file_is_gone: bool,

    /// Seconds a client has to send its complete header line.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    header_timeout: f64,

    /// Most clients served at once; a client over the limit is told `error: busy: too many clients`.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    max_clients: usize,

    /// Directory mode: refuse files with more than one hard link. The path rule follows
    /// symlinks to check where a file really is, but a hard link inside the directory to a
    /// file outside it looks like any other file; this closes that hole.
    #[arg(long)]
    refuse_hardlinks: bool,

    /// Stream only what is on disk: up to the synced length a tailsrv-collator in `--sync
    /// data` (or `interval=MS`) mode publishes in FILE.synced. Single-file mode.
    #[arg(long)]
    serve_up_to_synced: bool,

    #[command(flatten)]
    log: cli::LogArgs,

    /// The file to serve (it need not exist yet), a segmented log's directory, or a
    /// directory whose files are served [default: the current directory].
    path: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    args.log.init();
    let header_timeout = match Duration::try_from_secs_f64(args.header_timeout) {
        Ok(d) if !d.is_zero() => d,
        _ => {
            log::error!("--header-timeout must be a positive number of seconds");
            return ExitCode::from(2);
        }
    };
    let path = match args.path {
        Some(path) => path,
        None => {
            log::info!("no PATH given: serving the current directory");
            PathBuf::from(".")
        }
    };
    // Only a regular file (or one that does not exist yet) or a directory can be served: a
    // FIFO would block the server in open(2), a device would never end.
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() || meta.is_dir() => {}
        Ok(meta) => {
            log::error!(
                "{} is {}: tailsrv serves a regular file or a directory",
                path.display(),
                shared::tree::kind_of(&meta)
            );
            return ExitCode::from(2);
        }
        Err(_) => {}
    }
    let config = tailsrv::Config {
        path,
        addr: args.listen.addr(),
        linger: args.linger_after_file_is_gone,
        header_timeout,
        max_clients: args.max_clients,
        refuse_hardlinks: args.refuse_hardlinks,
        serve_up_to_synced: args.serve_up_to_synced,
    };
    match tailsrv::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
