//! A logger for programs whose stdout is data (`tscat`): one plain line per record on stderr,
//! `PROGRAM: LEVEL: message key=value ...`, so logs never mix into the stream being printed.
//! femme (used by the servers) writes to stdout, hence this small separate logger.

use std::io::Write;

use log::kv::{Key, Value, VisitSource};
use log::{LevelFilter, Log, Metadata, Record};

struct StderrLog {
    program: &'static str,
}

impl Log for StderrLog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = format!(
            "{}: {}: {}",
            self.program,
            record.level().as_str().to_lowercase(),
            record.args()
        );
        struct Kv<'a>(&'a mut String);
        impl<'kvs> VisitSource<'kvs> for Kv<'_> {
            fn visit_pair(
                &mut self,
                key: Key<'kvs>,
                value: Value<'kvs>,
            ) -> Result<(), log::kv::Error> {
                self.0.push_str(&format!(" {key}={value}"));
                Ok(())
            }
        }
        let _ = record.key_values().visit(&mut Kv(&mut line));
        line.push('\n');
        // One write per line, so concurrent lines do not interleave mid-line.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Installs the stderr logger at `level`, lines prefixed with `program`.
pub fn init(program: &'static str, level: LevelFilter) {
    if log::set_boxed_logger(Box::new(StderrLog { program })).is_ok() {
        log::set_max_level(level);
    }
}
