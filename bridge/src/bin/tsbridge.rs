//! `tsbridge`: a tailsrv log into a NATS JetStream stream and back, exactly once. A thin
//! front end: flags here, the logic in the `bridge` library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use client::follow::{self, Retry};
use proto::framing::Framing;

const AFTER_HELP: &str = "\
Exit status: 0 stopped by SIGINT/SIGTERM, or at the end with --exit-at-end; 1 NATS (or tailsrv) \
unreachable for --give-up-after, or the tailsrv stream refused or lost for good; 2 bad command \
line; 3 the output file cannot be opened, locked, written or synced; 4 the stream is missing, \
does not take the subject, or holds what the bridge cannot continue (other subjects, another \
log, a gap); 5 a message cannot be carried (malformed in the log, over max_payload, a \
delimiter inside for a delimiter framing); 6 NATS refused the credentials; 8 (to-jetstream) \
retention deleted the byte where the stream says the log continues and --on-gone is fail \
(the message names that byte and the log start; --on-gone earliest publishes from the log \
start and logs the bytes skipped).";

/// Bridge a tailsrv log and a NATS JetStream stream, exactly once, both ways.
#[derive(Parser, Debug)]
#[command(name = "tsbridge", version, after_long_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,

    #[command(flatten, next_help_heading = "Logging (any subcommand)")]
    log: cli::LogArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Follow a tailsrv log and publish each message to a JetStream stream, resuming from
    /// what the stream holds (no local state).
    ToJetstream(ToArgs),
    /// Append a JetStream stream's messages to a local file, resuming from what the file
    /// holds.
    FromJetstream(FromArgs),
}

#[derive(Args, Debug)]
struct NatsArgs {
    /// NATS servers, comma-separated (nats://HOST:PORT or HOST:PORT).
    #[arg(long, value_name = "URLS", default_value = "nats://127.0.0.1:4222")]
    nats: String,

    /// The JetStream stream.
    #[arg(long)]
    stream: String,

    /// NATS user (with --password).
    #[arg(long, requires = "password")]
    user: Option<String>,

    /// NATS password (with --user).
    #[arg(long, requires = "user")]
    password: Option<String>,

    /// NATS token.
    #[arg(long)]
    token: Option<String>,

    /// NATS credentials file (JWT and nkey seed).
    #[arg(long, value_name = "FILE")]
    creds: Option<PathBuf>,

    /// Give up after this many seconds without progress while NATS is unreachable or
    /// failing ("inf": never).
    #[arg(long, value_name = "SECS", default_value = "300")]
    give_up_after: String,

    /// Stop (exit 0) once everything there was at start has been carried.
    #[arg(long)]
    exit_at_end: bool,
}

#[derive(Args, Debug)]
struct ToArgs {
    #[command(flatten)]
    nats: NatsArgs,

    /// The subject every message is published to (literal; the stream must take it).
    #[arg(long)]
    subject: String,

    /// How the log is cut into messages (newline, nul, u32be, varint).
    #[arg(long, default_value = "newline")]
    framing: Framing,

    /// Longest message accepted from the log, in bytes (a longer length prefix is corruption).
    #[arg(long, value_name = "BYTES", default_value_t = proto::framing::DEFAULT_MAX_MESSAGE)]
    max_message: u64,

    /// The log's identity, in every message id (LOG:OFFSET), checked against the stream's
    /// last message. Default: the identity the stream's messages already carry; for a new
    /// stream the --path in directory mode, else the subject (never the address, so the same
    /// log reached through another address or a replica is the same log).
    #[arg(long, value_name = "ID")]
    log_id: Option<String>,

    /// Follow this file of a tailsrv in directory mode.
    #[arg(long)]
    path: Option<String>,

    /// Create the stream (subject --subject, --replicas, --duplicate-window) if it does not
    /// exist.
    #[arg(long)]
    create_stream: bool,

    /// Replicas of a stream created with --create-stream.
    #[arg(long, default_value_t = 1, requires = "create_stream")]
    replicas: usize,

    /// Dedupe window of a stream created with --create-stream, in seconds.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 120,
        requires = "create_stream"
    )]
    duplicate_window: u64,

    /// Publishes awaiting their ack at once, at most.
    #[arg(long, default_value_t = 1024)]
    window: usize,

    /// Where to start when the stream holds nothing of this log yet.
    #[arg(long, value_name = "N")]
    from_byte: Option<u64>,

    /// Give up on tailsrv after this many seconds without a working server ("inf": never).
    #[arg(long, value_name = "SECS", default_value = "inf")]
    tailsrv_give_up_after: String,

    #[command(flatten)]
    on_gone: cli::OnGoneArgs,

    /// The tailsrv to follow; a comma-separated list fails over at the exact byte.
    #[arg(value_name = "HOST:PORT")]
    server: String,
}

#[derive(Args, Debug)]
struct FromArgs {
    #[command(flatten)]
    nats: NatsArgs,

    /// The durable consumer's name (the bridge owns it: it is reset on every start).
    #[arg(long, default_value = "tsbridge")]
    durable: String,

    /// The framing each message gets in the file (newline, nul, u32be, varint).
    #[arg(long, default_value = "newline")]
    framing: Framing,

    /// "data": fdatasync before acking; "none": ack after the write.
    #[arg(long, default_value = "none", value_parser = ["none", "data"])]
    sync: String,

    /// The stream sequence of the file's first message.
    #[arg(long, value_name = "SEQ", default_value_t = 1)]
    origin_seq: u64,

    /// Messages written, synced and acked together, at most.
    #[arg(long, default_value_t = 256)]
    batch: usize,

    /// The output file (created if missing).
    file: PathBuf,
}

fn seconds(what: &str, s: &str) -> Result<Option<Duration>, String> {
    if s == "inf" {
        return Ok(None);
    }
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| Some(Duration::from_secs_f64(v)))
        .ok_or_else(|| format!("{what} {s:?} is not a number of seconds or \"inf\""))
}

fn nats_options(a: &NatsArgs) -> Result<bridge::nats::Options, String> {
    let servers = client::parse_servers(&a.nats);
    if servers.is_empty() {
        return Err("--nats names no server".into());
    }
    Ok(bridge::nats::Options {
        servers,
        user: a.user.clone().zip(a.password.clone()),
        token: a.token.clone(),
        creds: a.creds.clone(),
        give_up_after: seconds("--give-up-after", &a.give_up_after)?,
    })
}

fn to_options(a: ToArgs) -> Result<bridge::to_js::Options, String> {
    bridge::nats::check_subject(&a.subject)?;
    let servers = client::parse_servers(&a.server);
    if servers.is_empty() {
        return Err("no tailsrv server given".into());
    }
    for s in &servers {
        follow::check_address("server", s)?;
    }
    if a.window == 0 {
        return Err("--window must be at least 1".into());
    }
    if let Some(log_id) = &a.log_id {
        if log_id.is_empty() || log_id.chars().any(|c| c.is_control()) {
            return Err(format!(
                "--log-id {log_id:?} must be non-empty, without control characters"
            ));
        }
    }
    let default_log_id = a.path.clone().unwrap_or_else(|| a.subject.clone());
    let retry = match seconds("--tailsrv-give-up-after", &a.tailsrv_give_up_after)? {
        None => Retry::Forever,
        Some(d) => Retry::GiveUpAfter(d),
    };
    let mut follow = follow::Config::new(servers, retry);
    follow.path = a.path.clone();
    follow.on_gone = a.on_gone.on_gone;
    Ok(bridge::to_js::Options {
        nats: nats_options(&a.nats)?,
        follow,
        framing: a.framing,
        max_message: a.max_message,
        stream: a.nats.stream,
        subject: a.subject,
        log_id: a.log_id.clone(),
        default_log_id,
        create: a.create_stream.then_some(bridge::nats::Create {
            replicas: a.replicas,
            duplicate_window: Duration::from_secs(a.duplicate_window),
        }),
        window: a.window,
        from_byte: a.from_byte,
        exit_at_end: a.nats.exit_at_end,
        progress: std::io::stderr().is_terminal(),
    })
}

fn from_options(a: FromArgs) -> Result<bridge::from_js::Options, String> {
    if a.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    if a.origin_seq == 0 {
        return Err("--origin-seq starts at 1 (stream sequences do)".into());
    }
    Ok(bridge::from_js::Options {
        nats: nats_options(&a.nats)?,
        stream: a.nats.stream,
        durable: a.durable,
        file: a.file,
        framing: a.framing,
        sync_data: a.sync == "data",
        origin: a.origin_seq,
        batch: a.batch,
        exit_at_end: a.nats.exit_at_end,
        progress: std::io::stderr().is_terminal(),
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.log.init();
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal ends the process at once.
        let registered =
            signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, stop.clone())
                .and_then(|_| signal_hook::flag::register(sig, stop.clone()));
        if let Err(e) = registered {
            log::error!("cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            log::error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.cmd {
        Cmd::ToJetstream(a) => match to_options(a) {
            Ok(opts) => runtime.block_on(bridge::to_js::run(opts, stop)),
            Err(e) => Err(bridge::Error::Usage(e)),
        },
        Cmd::FromJetstream(a) => match from_options(a) {
            Ok(opts) => runtime.block_on(bridge::from_js::run(opts, &stop)),
            Err(e) => Err(bridge::Error::Usage(e)),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}
