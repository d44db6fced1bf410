//! The flags every binary shares, so a flag means the same everywhere: the log flags
//! ([`LogArgs`]: `-v`/`-q`, `--log-format`, `--journald`, and the level they choose with
//! `RUST_LOG` as the fallback), `--framing` ([`framing`]) and the consumers' `--on-gone`
//! ([`OnGoneArgs`]). The listen flags are the servers' own (`shared::server`).

use std::io::IsTerminal;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use client::follow::OnGone;
use log::LevelFilter;
use proto::Framing;

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
}

/// Reads the level out of a `RUST_LOG` value: `debug`, or the last `target=level` directive.
fn parse_rust_log(value: &str) -> Option<LevelFilter> {
    value
        .split(',')
        .filter_map(|d| d.rsplit('=').next())
        .filter_map(|l| l.trim().parse().ok())
        .next_back()
}

/// `--framing newline|nul|u32be|varint`, with the names listed in `--help`.
pub fn framing() -> impl TypedValueParser<Value = Framing> {
    PossibleValuesParser::new(Framing::NAMES).try_map(|s| s.parse::<Framing>())
}

/// `--on-gone fail|earliest`, the flag tscat, tsmirror and tsbridge to-jetstream share.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct OnGoneArgs {
    /// When retention deleted the position to resume from (the servers answer `gone`):
    /// `fail` exits 8 naming the position and the log start; `earliest` continues from the
    /// log start and logs the bytes skipped (Kafka's auto.offset.reset none / earliest).
    #[arg(
        long,
        value_name = "POLICY",
        default_value = "fail",
        value_parser = PossibleValuesParser::new(OnGone::NAMES).try_map(|s| s.parse::<OnGone>())
    )]
    pub on_gone: OnGone,
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
        let a = LogArgs {
            log_format: Some(LogFormat::Json),
            ..Default::default()
        };
        assert_eq!(a.format(), LogFormat::Json);
    }
}
