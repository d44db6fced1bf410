//! The logger: one line per record on **stderr**, or the systemd journal with `--journald`
//! in builds with the `systemd` feature; and systemd readiness.
//!
//! A log line never stops the program: each line is built in memory ([`crate::line`]) and
//! written with one `write_all` on the locked stderr, and a failed write (a closed pipe, a
//! full disk) is dropped. `listening on ADDR` is logged with the [`ANNOUNCE`] target, which
//! the level filter always lets through, so scripts learn a `-p 0` port even with `-q`.

use std::io::Write as _;
use std::time::SystemTime;

use log::{LevelFilter, Log, Metadata, Record};

use crate::flags::LogFormat;
use crate::line::format_line;
use crate::LogArgs;

/// The target of records printed whatever the level (`listening on ADDR`):
/// `log::info!(target: logging::ANNOUNCE, ...)`.
pub const ANNOUNCE: &str = "announce";

impl LogArgs {
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
    // The package that builds each binary with its `systemd` feature.
    let package = match program {
        Some("tailsrv-indexer") => "tailsrv-indexer",
        Some("tailsrv-collator") => "tailsrv-collator",
        Some("tscat" | "tsmirror" | "tswrite") => "tailsrv-consumers",
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
    use log::Level;

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
}
