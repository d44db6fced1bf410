//! The logger: one line per record on **stderr**, or the systemd journal with `--journald`
//! in builds with the `systemd` feature ([`crate::systemd`]).
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
    crate::systemd::journal().map(Sink::Journal)
}

#[cfg(not(feature = "systemd"))]
fn journal() -> std::io::Result<Sink> {
    crate::systemd::no_journal()
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
