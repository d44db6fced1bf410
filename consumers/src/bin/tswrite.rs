//! tswrite: messages on stdin appended through a tailsrv-collator, one `BYTE MSG` line per
//! message on stdout. With `--id P --state FILE` a killed tswrite, restarted on the same
//! input, continues the same producer session: it skips what was acknowledged and retries
//! what was in doubt with the same sequence numbers, so every message is written once.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use client::state::{fnv1a, ProducerState, ProducerStateFile, FNV_START};
use client::writer::{clock_seq, Config, Error, Event, Writer};
use proto::framing::{Decoder, Framing};

const AFTER_HELP: &str = "\
Output: one line per input message, in input order: `BYTE MSG` (the byte offset where it \
starts and its message number, the indexer's) once it is acknowledged, or `error: REASON` \
if it was handed back. Blank lines are skipped (an empty message cannot be written).

Acknowledged messages the collator then lost (a power loss under --sync interval/write/none) \
are written again (the last --keep-acked bytes acknowledged, 16 MiB, are kept for that) and logged on stderr: \
`rewritten: input messages A..B now start at byte OFFSET, message MSGNO`; older ones are \
reported: `lost: input messages A..B: ...` (0-based input numbers, B excluded).

--state FILE (with --id): the session (id, next sequence number) and how much of the input \
is acknowledged (messages, bytes, a hash of those bytes) are saved there (atomically, every \
32 acknowledged requests or 100 ms, and at the end). A restart with the same FILE reads and \
checks that much of stdin without sending it, then retries the requests in doubt with their \
sequence numbers: the collator answers what it already wrote with the original position. \
Lines are printed for the messages after the saved point only. Stdin shorter than the saved \
point, or different within it, is refused (exit 5) before anything is sent.

Exit status: 0 every message acknowledged; 1 some messages were refused, their fate is \
unknown, or they were lost after an ack (each has its `error:` line); 2 bad command line; 3 \
no collator reachable (every message not acknowledged has its `error:` line); 4 reading \
stdin failed (an I/O error, a message over --max-message, a malformed length prefix, or stdin \
ending inside a length-prefixed message: the messages before it are still written) or writing \
stdout failed; 5 the state file is corrupt, in use or unwritable, or stdin \
is not the input it was saved for.";

/// Append the messages on stdin to a log through a tailsrv-collator and print where each
/// landed.
///
/// Messages are batched (--batch-bytes, --linger-ms, and whenever stdin has nothing more
/// to read yet), pipelined, and with --id retried after a lost connection without
/// duplicates, failing over along the server list.
#[derive(Parser, Debug)]
#[command(name = "tswrite", version, after_long_help = AFTER_HELP)]
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

    /// Save the session and the acknowledged input position in FILE, and resume from it.
    #[arg(long, value_name = "FILE", requires = "id")]
    state: Option<PathBuf>,

    /// Bytes of acknowledged batches kept to write them again if the collator loses them
    /// (a power loss under --sync interval/write/none); a loss beyond them is reported.
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20)]
    keep_acked: usize,

    /// Longest message (the collator's --max-message). A longer one on stdin, or a length
    /// prefix announcing one, stops tswrite (exit 4) before anything is allocated for it.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    max_message: u64,

    #[command(flatten)]
    log: cli::LogArgs,

    /// Collators, comma-separated, tried in order: HOST:PORT[,HOST:PORT...].
    servers: String,
}

/// How much of stdin was consumed, and its hash.
#[derive(Debug, Clone, Copy)]
struct Pos {
    bytes: u64,
    hash: u64,
}

impl Pos {
    fn eat(&mut self, b: &[u8]) {
        self.bytes += b.len() as u64;
        self.hash = fnv1a(self.hash, b);
    }
}

/// What the writer's handler passes to the main loop.
enum Note {
    /// The output line of message I (of this run).
    Line(u64, String),
    /// Messages before I are resolved and the next request is S.
    Checkpoint(u64, u64),
    /// Messages I..I+N (of this run), lost by the collator after their ack, were written
    /// again at byte B as message number M on.
    Rewritten(u64, u64, u64, u64),
    /// Messages I..I+N (of this run), or earlier requests (N = 0), were lost after their ack.
    Lost(u64, u64, String),
}

/// Opens the state file and skips the acknowledged input; exit code 5 on any problem.
fn resume(
    path: &std::path::Path,
    id: &str,
    input: &mut impl BufRead,
) -> Result<(ProducerStateFile, ProducerState), String> {
    let mut file = ProducerStateFile::open(path).map_err(|e| e.to_string())?;
    let saved = match file.saved() {
        Some(s) => s.clone(),
        None => {
            // A new session, saved before anything is sent so a restart continues it.
            let s = ProducerState {
                id: id.to_owned(),
                seq: clock_seq(),
                messages: 0,
                bytes: 0,
                input_hash: FNV_START,
            };
            file.save(&s).map_err(|e| e.to_string())?;
            return Ok((file, s));
        }
    };
    if saved.id != id {
        return Err(format!(
            "state file {} is for producer {:?}, not {id:?}",
            path.display(),
            saved.id
        ));
    }
    let mut pos = Pos {
        bytes: 0,
        hash: FNV_START,
    };
    let mut buf = vec![0u8; 64 << 10];
    while pos.bytes < saved.bytes {
        let want = (saved.bytes - pos.bytes).min(buf.len() as u64) as usize;
        let n = input
            .read(&mut buf[..want])
            .map_err(|e| format!("reading stdin: {e}"))?;
        if n == 0 {
            return Err(format!(
                "stdin ends at byte {}, before the {} bytes state file {} says were \
                 acknowledged: not the input it was saved for",
                pos.bytes,
                saved.bytes,
                path.display()
            ));
        }
        pos.eat(&buf[..n]);
    }
    if pos.hash != saved.input_hash {
        return Err(format!(
            "the first {} bytes of stdin differ from the input state file {} was saved for",
            saved.bytes,
            path.display()
        ));
    }
    Ok((file, saved))
}

fn main() -> ExitCode {
    let args = Args::parse();
    args.log.init_with_default(log::LevelFilter::Warn);
    let mut input = BufReader::with_capacity(256 << 10, io::stdin().lock());
    let mut state = match (&args.state, &args.id) {
        (Some(path), Some(id)) => match resume(path, id, &mut input) {
            Ok(s) => Some(s),
            Err(e) => {
                log::error!("{e}");
                return ExitCode::from(5);
            }
        },
        _ => None,
    };
    // Where this run starts in the input, and the checkpoint saved last.
    let (base, mut pos) = match &state {
        Some((_, s)) => (
            s.messages,
            Pos {
                bytes: s.bytes,
                hash: s.input_hash,
            },
        ),
        None => (
            0,
            Pos {
                bytes: 0,
                hash: FNV_START,
            },
        ),
    };
    let config = Config {
        servers: client::parse_servers(&args.servers),
        path: args.path,
        producer: args.id,
        batch_bytes: args.batch_bytes.max(1),
        linger: Duration::from_millis(args.linger_ms),
        max_message: args.max_message,
        retry_for: Duration::from_secs(args.retry_secs),
        resume_seq: state.as_ref().map(|(_, s)| s.seq),
        keep_acked: args.keep_acked,
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
    let (tx, rx) = std::sync::mpsc::channel::<Note>();
    let mut writer = Writer::new(config, move |event| match event {
        Event::Acked {
            first,
            ack,
            offsets,
            seq,
        } => {
            for (i, off) in offsets.iter().enumerate() {
                let line = format!("{off} {}", ack.msgno + i as u64);
                let _ = tx.send(Note::Line(first + i as u64, line));
            }
            if let Some(s) = seq {
                let _ = tx.send(Note::Checkpoint(first + offsets.len() as u64, s + 1));
            }
        }
        Event::Failed {
            first,
            messages,
            error,
        } => {
            for i in 0..messages.len() as u64 {
                let _ = tx.send(Note::Line(first + i, format!("error: {error}")));
            }
        }
        Event::Rewritten {
            first,
            ack,
            offsets,
        } => {
            let _ = tx.send(Note::Rewritten(
                first,
                offsets.len() as u64,
                offsets.first().copied().unwrap_or(ack.offset),
                ack.msgno,
            ));
        }
        Event::Lost {
            first,
            count,
            error,
        } => {
            let _ = tx.send(Note::Lost(first, count, error.to_string()));
        }
    });
    // For each message of this run not yet checkpointed: (index + 1, input position after it).
    let mut marks: VecDeque<(u64, Pos)> = VecDeque::new();
    let mut latest = state.as_ref().map(|(_, s)| s.clone());
    let mut unsaved = 0u32;
    let mut saved_at = Instant::now();
    let mut index = 0u64;
    let mut status = 0u8;
    let mut stdin_failed = false;
    // Messages are read whole, within --max-message: a length prefix over it (a corrupt one,
    // or the wrong --framing) is an error before anything is allocated for it.
    let mut input = Decoder::new(input, args.framing, args.max_message);
    // Takes the handler's notes: output lines, checkpoints (saved when due), losses.
    let take = |note: Note,
                owed: &mut BTreeMap<u64, String>,
                failed: &mut bool,
                marks: &mut VecDeque<(u64, Pos)>,
                latest: &mut Option<ProducerState>,
                unsaved: &mut u32| match note {
        Note::Line(i, line) => {
            *failed |= line.starts_with("error:");
            owed.insert(i, line);
        }
        Note::Checkpoint(upto, seq) => {
            while marks.front().is_some_and(|m| m.0 < upto) {
                marks.pop_front();
            }
            if let (Some(&(i, p)), Some(l)) = (marks.front(), latest.as_mut()) {
                if i == upto {
                    marks.pop_front();
                    l.seq = seq;
                    l.messages = base + upto;
                    l.bytes = p.bytes;
                    l.input_hash = p.hash;
                    *unsaved += 1;
                }
            }
        }
        Note::Rewritten(first, count, offset, msgno) => {
            log::warn!(
                "rewritten: input messages {}..{} now start at byte {offset}, message \
                 {msgno} (acknowledged before, then lost by the collator: the positions \
                 printed for them earlier are void)",
                base + first,
                base + first + count
            );
        }
        Note::Lost(first, count, why) => {
            *failed = true;
            if count == 0 {
                log::error!("lost: earlier requests: {why}");
            } else {
                log::error!(
                    "lost: input messages {}..{}: {why}",
                    base + first,
                    base + first + count
                );
            }
        }
    };
    let save = |state: &mut Option<(ProducerStateFile, ProducerState)>,
                latest: &Option<ProducerState>|
     -> Result<(), String> {
        match (state, latest) {
            (Some((file, _)), Some(l)) => file.save(l).map_err(|e| e.to_string()),
            _ => Ok(()),
        }
    };
    loop {
        // Nothing more to read without waiting: send what is batched first.
        if input.get_ref().buffer().is_empty() {
            if let Err(e) = writer.flush() {
                log::error!("{e}");
                status = 3;
                break;
            }
        }
        for note in rx.try_iter() {
            take(
                note,
                &mut owed,
                &mut failed,
                &mut marks,
                &mut latest,
                &mut unsaved,
            );
        }
        if unsaved >= 32 || (unsaved > 0 && saved_at.elapsed() >= Duration::from_millis(100)) {
            if let Err(e) = save(&mut state, &latest) {
                log::error!("{e}");
                status = 5;
                break;
            }
            unsaved = 0;
            saved_at = Instant::now();
        }
        emit(&mut owed, &mut printed);
        let message = match input.next_message() {
            Ok(Some(m)) => {
                pos.eat(m.framed());
                m.payload()
            }
            Ok(None) => break,
            Err(e) => {
                // What was read before is still written and answered.
                log::error!("reading stdin: {e}");
                stdin_failed = true;
                break;
            }
        };
        if message.is_empty() && args.framing == Framing::Newline {
            continue;
        }
        if state.is_some() {
            marks.push_back((index + 1, pos));
        }
        match writer.write(message) {
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
    let owed_to_retry = writer.owed_to_retry();
    drop(writer);
    for note in rx.try_iter() {
        take(
            note,
            &mut owed,
            &mut failed,
            &mut marks,
            &mut latest,
            &mut unsaved,
        );
    }
    emit(&mut owed, &mut printed);
    if let Err(e) = save(&mut state, &latest) {
        log::error!("{e}");
        status = 5;
    }
    if status == 0 && owed_to_retry > 0 {
        log::error!(
            "stdin ended inside a request the previous run wrote ({owed_to_retry} of its \
             messages missing): not the input the state file was saved for"
        );
        status = 5;
    }
    if status == 0 && (stdin_failed || out_error.is_some()) {
        status = 4;
    }
    if status == 0 && failed {
        status = 1;
    }
    ExitCode::from(status)
}
