use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use client::writer::{Config, Error, Event, Writer};
use proto::framing::Framing;

const AFTER_HELP: &str = "\
Output: one line per input message, in input order: `BYTE MSG` (the byte offset where it \
starts and its message number, the indexer's) once it is acknowledged, or `error: REASON` \
if it was handed back. Blank lines are skipped (an empty message cannot be written).

Exit status: 0 every message acknowledged; 1 some messages were refused or their fate is \
unknown (each has its `error:` line); 2 bad command line; 3 no collator reachable (every \
message not acknowledged has its `error:` line); 4 reading stdin or writing stdout failed.";

/// Append the messages on stdin to a log through a tailsrv-collator and print where each
/// landed.
///
/// Messages are batched (--batch-bytes, --linger-ms, and whenever stdin has nothing more
/// to read yet), pipelined, and with --id retried after a lost connection without
/// duplicates, failing over along the server list.
#[derive(Parser, Debug)]
#[command(version, after_long_help = AFTER_HELP)]
struct Args {
    /// How messages are delimited on stdin: lines (the default), NUL-terminated, or
    /// length-prefixed (u32be, varint). The collator frames them in its file's framing.
    #[arg(long, default_value = "newline",
          value_parser = cli::framing())]
    framing: Framing,

    /// The file, for a collator in directory mode.
    #[arg(long, value_name = "PATH")]
    path: Option<String>,

    /// A batch is sent once it holds this many bytes.
    #[arg(long, value_name = "N", default_value_t = 64 << 10)]
    batch_bytes: usize,

    /// ...or once its first message waited this long.
    #[arg(long, value_name = "MS", default_value_t = 5)]
    linger_ms: u64,

    /// Producer id: retries after a lost connection write nothing twice.
    #[arg(long, value_name = "P")]
    id: Option<String>,

    /// Seconds to keep trying to reach a collator before giving up.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    retry_secs: u64,

    /// Longest message (the collator's --max-message).
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    max_message: u64,

    #[command(flatten)]
    log: cli::LogArgs,

    /// Collators, comma-separated, tried in order: HOST:PORT[,HOST:PORT...].
    servers: String,
}

/// Reads the next message from stdin in `framing`; `None` at the end.
fn next_message(input: &mut impl BufRead, framing: Framing) -> io::Result<Option<Vec<u8>>> {
    match framing {
        Framing::Newline | Framing::Nul => {
            let d = framing.delimiter().unwrap_or(b'\n');
            let mut m = Vec::new();
            if input.read_until(d, &mut m)? == 0 {
                return Ok(None);
            }
            if m.last() == Some(&d) {
                m.pop();
            }
            Ok(Some(m))
        }
        Framing::U32Be => {
            let mut len = [0u8; 4];
            match input.read_exact(&mut len) {
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
                r => r?,
            }
            let mut m = vec![0; u32::from_be_bytes(len) as usize];
            input.read_exact(&mut m)?;
            Ok(Some(m))
        }
        Framing::Varint => {
            let mut len = 0u64;
            for i in 0..10 {
                let mut b = [0u8; 1];
                if input.read(&mut b)? == 0 {
                    return if i == 0 {
                        Ok(None)
                    } else {
                        Err(io::ErrorKind::UnexpectedEof.into())
                    };
                }
                len |= u64::from(b[0] & 0x7f) << (7 * i);
                if b[0] & 0x80 == 0 {
                    let mut m = vec![0; len as usize];
                    input.read_exact(&mut m)?;
                    return Ok(Some(m));
                }
            }
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "malformed varint prefix",
            ))
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    args.log.init_with_default(log::LevelFilter::Warn);
    let config = Config {
        servers: client::parse_servers(&args.servers),
        path: args.path,
        producer: args.id,
        batch_bytes: args.batch_bytes.max(1),
        linger: Duration::from_millis(args.linger_ms),
        max_message: args.max_message,
        retry_for: Duration::from_secs(args.retry_secs),
        ..Config::default()
    };
    // Lines owed to stdout, by message number, printed in order.
    let mut owed: BTreeMap<u64, String> = BTreeMap::new();
    let mut printed = 0u64;
    let mut failed = false;
    let mut out = io::BufWriter::new(io::stdout().lock());
    let mut out_error = None;
    let mut emit = |owed: &mut BTreeMap<u64, String>, printed: &mut u64| {
        while let Some(line) = owed.remove(printed) {
            if let Err(e) = writeln!(out, "{line}") {
                out_error.get_or_insert(e);
            }
            *printed += 1;
        }
        let _ = out.flush();
    };
    let (tx, rx) = std::sync::mpsc::channel::<(u64, String)>();
    let mut writer = Writer::new(config, move |event| match event {
        Event::Acked {
            first,
            ack,
            offsets,
        } => {
            for (i, off) in offsets.iter().enumerate() {
                let _ = tx.send((first + i as u64, format!("{off} {}", ack.msgno + i as u64)));
            }
        }
        Event::Failed {
            first,
            messages,
            error,
        } => {
            for i in 0..messages.len() as u64 {
                let _ = tx.send((first + i, format!("error: {error}")));
            }
        }
    });
    let mut input = BufReader::with_capacity(256 << 10, io::stdin().lock());
    let mut index = 0u64;
    let mut status = 0u8;
    loop {
        // Nothing more to read without waiting: send what is batched first.
        if input.buffer().is_empty() {
            if let Err(e) = writer.flush() {
                log::error!("{e}");
                status = 3;
                break;
            }
        }
        while let Ok((i, line)) = rx.try_recv() {
            failed |= line.starts_with("error:");
            owed.insert(i, line);
        }
        emit(&mut owed, &mut printed);
        let message = match next_message(&mut input, args.framing) {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                log::error!("reading stdin: {e}");
                status = 4;
                break;
            }
        };
        if message.is_empty() && args.framing == Framing::Newline {
            continue;
        }
        match writer.write(&message) {
            Ok(()) => index += 1,
            Err(Error::Unreachable(why)) => {
                log::error!("no collator reachable: {why}");
                status = 3;
                break;
            }
            Err(e) => {
                // Refused before sending: it takes its number and its error line.
                owed.insert(index, format!("error: {e}"));
                failed = true;
                index += 1;
            }
        }
    }
    if status == 0 {
        if let Err(e) = writer.flush() {
            log::error!("{e}");
            status = 3;
        }
    }
    drop(writer);
    for (i, line) in rx.try_iter() {
        failed |= line.starts_with("error:");
        owed.insert(i, line);
    }
    emit(&mut owed, &mut printed);
    if status == 0 && out_error.is_some() {
        status = 4;
    }
    if status == 0 && failed {
        status = 1;
    }
    ExitCode::from(status)
}
