//! Logging for every binary (tailsrv, tailsrv-indexer, tscat, tsmirror): one line per record
//! on **stderr** — readable text on a terminal, one JSON object per line otherwise
//! (`--log-format` overrides) — or the systemd journal with `--journald` in builds with the
//! `systemd` feature. The level comes from `-v`/`-q` when given, else `RUST_LOG`, else the
//! program's default (`info`; tscat's is `warn`).
//!
//! Records carry their context as key-values (`path`, `client`, `offset`, ...): `key=value`
//! after the message in text, fields of the object in JSON, values rendered with `Display`.
//!
//! A log line never stops the program: each line is built in memory and written with one
//! `write_all` on the locked stderr, and a failed write (a closed pipe, a full disk) is
//! dropped. `listening on ADDR` is logged with the [`ANNOUNCE`] target, which the level filter
//! always lets through, so scripts learn a `-p 0` port even with `-q`.
//!
//! This replaces femme, which wrote to stdout (data, for tscat) and unwrapped its write
//! errors, so `tailsrv ... | head -1` died at its next log line.

use std::fmt::{self, Write as _};
use std::io::{IsTerminal, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use log::kv::{Error as KvError, Key, Value, VisitSource, VisitValue};
use log::{Level, LevelFilter, Log, Metadata, Record};

/// The target of records printed whatever the level (`listening on ADDR`):
/// `log::info!(target: logging::ANNOUNCE, ...)`.
pub const ANNOUNCE: &str = "announce";

/// How lines on stderr look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `2026-11-26T00:47:32.123Z INFO  message key=value ...`
    Text,
    /// `{"time":"2026-11-26T00:47:32.123Z","level":"info","msg":"message","key":"value"}`
    Json,
}

/// The logging flags every binary takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// More log output (-v debug, -vv trace). Overrides RUST_LOG.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Less log output (-q warnings and errors only, -qq errors only; a server's
    /// `listening on` line is always printed). Overrides RUST_LOG.
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "verbose")]
    pub quiet: u8,
    /// Log line format on stderr [default: text when stderr is a terminal, else json].
    #[arg(long, value_enum, value_name = "FORMAT", global = true)]
    pub log_format: Option<LogFormat>,
    /// Send logs to the systemd journal instead of stderr (needs a build with the `systemd`
    /// feature).
    #[arg(long, global = true)]
    pub journald: bool,
}

impl LogArgs {
    /// The level these flags (or `RUST_LOG`) ask for, `info` if nothing does.
    pub fn level(&self) -> LevelFilter {
        self.level_or(LevelFilter::Info)
    }

    /// The level these flags (or `RUST_LOG`) ask for, `default` if nothing does.
    pub fn level_or(&self, default: LevelFilter) -> LevelFilter {
        if self.verbose > 0 || self.quiet > 0 {
            let steps = [
                LevelFilter::Off,
                LevelFilter::Error,
                LevelFilter::Warn,
                LevelFilter::Info,
                LevelFilter::Debug,
                LevelFilter::Trace,
            ];
            let i = (3 + self.verbose as i32 - self.quiet as i32).clamp(1, 5) as usize;
            return steps[i];
        }
        std::env::var("RUST_LOG")
            .ok()
            .and_then(|v| parse_rust_log(&v))
            .unwrap_or(default)
    }

    /// The format asked for, or the automatic choice: text for a person at a terminal, JSON
    /// for a pipe, a file or a supervisor.
    pub fn format(&self) -> LogFormat {
        self.log_format.unwrap_or_else(|| {
            if std::io::stderr().is_terminal() {
                LogFormat::Text
            } else {
                LogFormat::Json
            }
        })
    }

    /// Installs the logger at `info` unless the flags say otherwise. Call once, first thing in
    /// `main`. Exits with status 2 on `--journald` in a build without the `systemd` feature.
    pub fn init(&self) {
        self.init_with_default(LevelFilter::Info)
    }

    /// [`LogArgs::init`] with another default level (tscat: `warn`).
    pub fn init_with_default(&self, default: LevelFilter) {
        let level = self.level_or(default);
        let format = self.format();
        let mut sink = Sink::Stderr(format);
        let mut journal_error = None;
        if self.journald {
            match journal() {
                Ok(journal) => sink = journal,
                Err(e) => journal_error = Some(e),
            }
        }
        // The logger filters by level itself (so that ANNOUNCE records pass); the global
        // maximum must let `info` records reach it.
        if log::set_boxed_logger(Box::new(Logger { level, sink })).is_ok() {
            log::set_max_level(level.max(LevelFilter::Info));
        }
        if let Some(e) = journal_error {
            log::warn!("cannot log to the journal ({e}), logging to stderr");
        }
    }
}

/// Reads the level out of a `RUST_LOG` value: `debug`, or the last `target=level` directive.
fn parse_rust_log(value: &str) -> Option<LevelFilter> {
    value
        .split(',')
        .filter_map(|d| d.rsplit('=').next())
        .filter_map(|l| l.trim().parse().ok())
        .next_back()
}

/// Where records go.
enum Sink {
    Stderr(LogFormat),
    #[cfg(feature = "systemd")]
    Journal(systemd_journal_logger::JournalLog),
}

#[cfg(feature = "systemd")]
fn journal() -> std::io::Result<Sink> {
    systemd_journal_logger::JournalLog::new().map(Sink::Journal)
}

/// Without the `systemd` feature `--journald` is a usage error (exit 2, like clap's), with
/// the command that builds a binary that has it.
#[cfg(not(feature = "systemd"))]
fn journal() -> std::io::Result<Sink> {
    let program = std::env::current_exe().ok();
    let program = program
        .as_deref()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str());
    // tscat and tsmirror are binaries of the tailsrv package.
    let package = match program {
        Some("tailsrv-indexer") => "tailsrv-indexer",
        _ => "tailsrv",
    };
    let _ = writeln!(
        std::io::stderr(),
        "error: --journald needs a build with the systemd feature: \
         cargo build --release -p {package} --features systemd"
    );
    std::process::exit(2);
}

/// The logger: a level filter that lets [`ANNOUNCE`] through, in front of a [`Sink`].
struct Logger {
    level: LevelFilter,
    sink: Sink,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level || metadata.target() == ANNOUNCE
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        match &self.sink {
            Sink::Stderr(format) => {
                let line = format_line(*format, record, SystemTime::now());
                // One write per line, so lines of different threads never interleave; an
                // error (EPIPE: nobody reads; ENOSPC) is dropped: logging never stops us.
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
            #[cfg(feature = "systemd")]
            Sink::Journal(journal) => journal.log(record),
        }
    }

    fn flush(&self) {}
}

/// One record as one line (newline included) in `format`, stamped `now`.
pub fn format_line(format: LogFormat, record: &Record<'_>, now: SystemTime) -> String {
    let mut line = String::with_capacity(128);
    let time = Rfc3339(now);
    // Writing to a String only fails if a Display impl does; what was written stays, and the
    // line is closed properly below either way.
    match format {
        LogFormat::Text => {
            let _ = write!(line, "{time} {:<5} ", record.level());
            let _ = write!(TextEscape(&mut line), "{}", record.args());
            let _ = record.key_values().visit(&mut TextFields(&mut line));
        }
        LogFormat::Json => {
            let level = match record.level() {
                Level::Error => "error",
                Level::Warn => "warn",
                Level::Info => "info",
                Level::Debug => "debug",
                Level::Trace => "trace",
            };
            let _ = write!(line, r#"{{"time":"{time}","level":"{level}","msg":""#);
            let _ = write!(JsonEscape(&mut line), "{}", record.args());
            line.push('"');
            let _ = record.key_values().visit(&mut JsonFields(&mut line));
            line.push('}');
        }
    }
    line.push('\n');
    line
}

/// Text: control characters (a newline in an error) escaped, so a record stays one line.
struct TextEscape<'a>(&'a mut String);

impl fmt::Write for TextEscape<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            if c.is_control() {
                self.0.extend(c.escape_debug());
            } else {
                self.0.push(c);
            }
        }
        Ok(())
    }
}

/// Text: ` key=value` per pair; a value that is empty or has blanks, quotes, `=` or control
/// characters is quoted (`path="/var/log/my app.log"`).
struct TextFields<'a>(&'a mut String);

impl<'kvs> VisitSource<'kvs> for TextFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), KvError> {
        let mut shown = String::new();
        if value.visit(TextValue(&mut shown)).is_err() {
            let _ = write!(shown, "{value}");
        }
        let plain = !shown.is_empty()
            && !shown
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '=');
        let _ = write!(self.0, " {key}=");
        if plain {
            self.0.push_str(&shown);
        } else {
            self.0.push('"');
            for c in shown.chars() {
                if c.is_control() || c == '"' || c == '\\' {
                    self.0.extend(c.escape_debug());
                } else {
                    self.0.push(c);
                }
            }
            self.0.push('"');
        }
        Ok(())
    }
}

/// A value for text: its `Display`, `none` for an absent one.
struct TextValue<'a>(&'a mut String);

impl<'v> VisitValue<'v> for TextValue<'_> {
    fn visit_any(&mut self, value: Value<'_>) -> Result<(), KvError> {
        let _ = write!(self.0, "{value}");
        Ok(())
    }

    fn visit_null(&mut self) -> Result<(), KvError> {
        self.0.push_str("none");
        Ok(())
    }
}

/// JSON string contents: `"`, `\` and control characters escaped.
struct JsonEscape<'a>(&'a mut String);

impl fmt::Write for JsonEscape<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            match c {
                '"' => self.0.push_str("\\\""),
                '\\' => self.0.push_str("\\\\"),
                '\n' => self.0.push_str("\\n"),
                '\r' => self.0.push_str("\\r"),
                '\t' => self.0.push_str("\\t"),
                c if c.is_control() => {
                    // U+0080..U+009F are control characters too; all fit in one \uXXXX.
                    let _ = write!(self.0, "\\u{:04x}", c as u32);
                }
                c => self.0.push(c),
            }
        }
        Ok(())
    }
}

/// JSON: `,"key":value` per pair.
struct JsonFields<'a>(&'a mut String);

impl<'kvs> VisitSource<'kvs> for JsonFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), KvError> {
        self.0.push_str(",\"");
        let _ = JsonEscape(self.0).write_str(key.as_str());
        self.0.push_str("\":");
        let mark = self.0.len();
        if value.visit(JsonValue(self.0)).is_err() {
            self.0.truncate(mark);
            let _ = JsonValue(self.0).visit_any(value);
        }
        Ok(())
    }
}

/// A JSON value: numbers and booleans as such, `null` for an absent value, anything else as
/// the string its `Display` gives.
struct JsonValue<'a>(&'a mut String);

impl JsonValue<'_> {
    fn string(&mut self, s: impl fmt::Display) {
        self.0.push('"');
        let _ = write!(JsonEscape(self.0), "{s}");
        self.0.push('"');
    }
}

impl<'v> VisitValue<'v> for JsonValue<'_> {
    fn visit_any(&mut self, value: Value<'_>) -> Result<(), KvError> {
        self.string(value);
        Ok(())
    }

    fn visit_null(&mut self) -> Result<(), KvError> {
        self.0.push_str("null");
        Ok(())
    }

    fn visit_u64(&mut self, value: u64) -> Result<(), KvError> {
        let _ = write!(self.0, "{value}");
        Ok(())
    }

    fn visit_i64(&mut self, value: i64) -> Result<(), KvError> {
        let _ = write!(self.0, "{value}");
        Ok(())
    }

    fn visit_u128(&mut self, value: u128) -> Result<(), KvError> {
        let _ = write!(self.0, "{value}");
        Ok(())
    }

    fn visit_i128(&mut self, value: i128) -> Result<(), KvError> {
        let _ = write!(self.0, "{value}");
        Ok(())
    }

    fn visit_f64(&mut self, value: f64) -> Result<(), KvError> {
        if value.is_finite() {
            let _ = write!(self.0, "{value}");
        } else {
            self.string(value);
        }
        Ok(())
    }

    fn visit_bool(&mut self, value: bool) -> Result<(), KvError> {
        let _ = write!(self.0, "{value}");
        Ok(())
    }

    fn visit_str(&mut self, value: &str) -> Result<(), KvError> {
        self.string(value);
        Ok(())
    }

    fn visit_char(&mut self, value: char) -> Result<(), KvError> {
        self.string(value);
        Ok(())
    }
}

/// A time as RFC 3339 in UTC with milliseconds: `2026-11-26T00:47:32.123Z`.
struct Rfc3339(SystemTime);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let since = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let (year, month, day) = civil_from_days((secs / 86_400) as i64);
        let s = secs % 86_400;
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            s / 3600,
            s / 60 % 60,
            s % 60,
            since.subsec_millis()
        )
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of the 400-year era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of the year from March 1
    let mp = (5 * doy + 2) / 153; // month from March, [0, 11]
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Tells systemd the service is ready (a no-op when not run by systemd, or without the
/// `systemd` feature).
pub fn notify_ready() {
    #[cfg(feature = "systemd")]
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        log::debug!("sd_notify failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rust_log() {
        assert_eq!(parse_rust_log("debug"), Some(LevelFilter::Debug));
        assert_eq!(parse_rust_log("tailsrv=trace"), Some(LevelFilter::Trace));
        assert_eq!(parse_rust_log("nonsense"), None);
    }

    #[test]
    fn flags() {
        let a = LogArgs {
            verbose: 1,
            ..Default::default()
        };
        assert_eq!(a.level(), LevelFilter::Debug);
        let a = LogArgs {
            quiet: 9,
            ..Default::default()
        };
        assert_eq!(a.level(), LevelFilter::Error);
        let a = LogArgs {
            log_format: Some(LogFormat::Json),
            ..Default::default()
        };
        assert_eq!(a.format(), LogFormat::Json);
    }

    #[test]
    fn the_announce_target_passes_any_level() {
        let logger = Logger {
            level: LevelFilter::Error,
            sink: Sink::Stderr(LogFormat::Text),
        };
        let meta = |target, level| Metadata::builder().target(target).level(level).build();
        assert!(logger.enabled(&meta(ANNOUNCE, Level::Info)));
        assert!(logger.enabled(&meta("tailsrv::server", Level::Error)));
        assert!(!logger.enabled(&meta("tailsrv::server", Level::Warn)));
        assert!(!logger.enabled(&meta("shared::net", Level::Info)));
    }

    /// 2026-11-26T00:47:32.123Z
    fn when() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_795_654_052_123)
    }

    /// `format_line` of a record with `msg` (format arguments) and `kvs`.
    fn line(
        format: LogFormat,
        level: Level,
        msg: fmt::Arguments<'_>,
        kvs: &[(&str, Value<'_>)],
    ) -> String {
        let record = Record::builder()
            .args(msg)
            .level(level)
            .target("test")
            .key_values(&kvs)
            .build();
        format_line(format, &record, when())
    }

    #[test]
    fn timestamps() {
        let at = |secs: u64| Rfc3339(UNIX_EPOCH + Duration::from_secs(secs)).to_string();
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(1_000_000_000), "2001-09-09T01:46:40.000Z");
        assert_eq!(at(1_709_251_199), "2024-02-29T23:59:59.000Z");
        assert_eq!(at(4_102_444_800), "2100-01-01T00:00:00.000Z");
        assert_eq!(Rfc3339(when()).to_string(), "2026-11-26T00:47:32.123Z");
    }

    #[test]
    fn text_line() {
        let addr: std::net::SocketAddr = "127.0.0.1:4321".parse().unwrap();
        let got = line(
            LogFormat::Text,
            Level::Info,
            format_args!("listening on {addr}"),
            &[("addr", Value::from_display(&addr))],
        );
        assert_eq!(
            got,
            "2026-11-26T00:47:32.123Z INFO  listening on 127.0.0.1:4321 addr=127.0.0.1:4321\n"
        );
        let got = line(
            LogFormat::Text,
            Level::Warn,
            format_args!("two\nlines"),
            &[
                ("path", Value::from("/var/log/my app.log")),
                ("offset", Value::from(7u64)),
                ("gone", Value::null()),
                ("empty", Value::from("")),
            ],
        );
        assert_eq!(
            got,
            "2026-11-26T00:47:32.123Z WARN  two\\nlines path=\"/var/log/my app.log\" offset=7 \
             gone=none empty=\"\"\n"
        );
    }

    #[test]
    fn json_line() {
        let addr: std::net::SocketAddr = "127.0.0.1:4321".parse().unwrap();
        let got = line(
            LogFormat::Json,
            Level::Info,
            format_args!("listening on {addr}"),
            &[("addr", Value::from_display(&addr))],
        );
        assert_eq!(
            got,
            "{\"time\":\"2026-11-26T00:47:32.123Z\",\"level\":\"info\",\
             \"msg\":\"listening on 127.0.0.1:4321\",\"addr\":\"127.0.0.1:4321\"}\n"
        );
    }

    #[test]
    fn json_is_valid_and_keeps_every_field() {
        let path =
            std::path::PathBuf::from("/var/log/a \"quoted\"\\back\tslash\n\u{1}\u{7f}\u{85}é.log");
        let error = "no\r\nsuch file";
        let position: Option<u64> = Some(42);
        let missing: Option<u64> = None;
        let got = line(
            LogFormat::Json,
            Level::Error,
            format_args!("cannot open {}: {error}", path.display()),
            &[
                ("path", Value::from_display(&path.display())),
                ("offset", log::kv::ToValue::to_value(&position)),
                ("gone", log::kv::ToValue::to_value(&missing)),
                ("count", Value::from(-3i64)),
                ("ratio", Value::from(0.5f64)),
                ("nan", Value::from(f64::NAN)),
                ("ok", Value::from(true)),
                ("ch", Value::from('"')),
            ],
        );
        assert!(
            got.ends_with("}\n") && got.matches('\n').count() == 1,
            "{got:?}"
        );
        let v: serde_json::Value = serde_json::from_str(&got).expect("valid JSON");
        assert_eq!(v["time"], "2026-11-26T00:47:32.123Z");
        assert_eq!(v["level"], "error");
        let shown = path.display().to_string();
        assert_eq!(v["msg"], format!("cannot open {shown}: {error}"));
        assert_eq!(v["path"], shown.as_str());
        // Display, not Debug: the number itself, never `Some(42)`.
        assert_eq!(v["offset"], 42);
        assert_eq!(v["gone"], serde_json::Value::Null);
        assert_eq!(v["count"], -3);
        assert_eq!(v["ratio"], 0.5);
        assert_eq!(v["nan"], "NaN");
        assert_eq!(v["ok"], true);
        assert_eq!(v["ch"], "\"");
        assert_eq!(v.as_object().unwrap().len(), 11);
    }

    #[test]
    fn every_level_is_a_word() {
        for (level, word) in [
            (Level::Error, "error"),
            (Level::Warn, "warn"),
            (Level::Info, "info"),
            (Level::Debug, "debug"),
            (Level::Trace, "trace"),
        ] {
            let got = line(LogFormat::Json, level, format_args!("x"), &[]);
            let v: serde_json::Value = serde_json::from_str(&got).unwrap();
            assert_eq!(v["level"], word);
            let text = line(LogFormat::Text, level, format_args!("x"), &[]);
            assert_eq!(&text[25..31], format!("{:<5} ", level.as_str()));
        }
    }
}
