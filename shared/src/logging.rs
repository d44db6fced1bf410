//! Logging set-up shared by every binary: femme on stdout (pretty in debug builds, ndjson in
//! release builds), or the systemd journal with `--journald` when built with the `systemd`
//! feature. The level comes from `-v`/`-q` when given, else `RUST_LOG`, else `info`.
//!
//! Log lines carry their context as key-values (`path`, `client`, `offset`, ...), which the
//! ndjson output turns into JSON fields.

use log::LevelFilter;

/// The logging flags every binary takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// More log output (-v debug, -vv trace). Overrides RUST_LOG.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Less log output (-q warnings and errors only, -qq errors only). Overrides RUST_LOG.
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "verbose")]
    pub quiet: u8,
    /// Send logs to the systemd journal instead of stdout.
    #[cfg(feature = "systemd")]
    #[arg(long)]
    pub journald: bool,
}

impl LogArgs {
    /// The level these flags (or `RUST_LOG`) ask for.
    pub fn level(&self) -> LevelFilter {
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
            .unwrap_or(LevelFilter::Info)
    }

    /// Installs the logger. Call once, first thing in `main`.
    pub fn init(&self) {
        let level = self.level();
        #[cfg(feature = "systemd")]
        if self.journald {
            match systemd_journal_logger::JournalLog::new() {
                Ok(journal) => {
                    if journal.install().is_ok() {
                        log::set_max_level(level);
                        return;
                    }
                }
                Err(e) => eprintln!("cannot log to the journal ({e}), logging to stdout"),
            }
        }
        femme::with_level(level);
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
    }
}
