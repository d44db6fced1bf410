//! One status line on a terminal, redrawn every second: messages, rate, lag.

use std::io::Write;
use std::time::{Duration, Instant};

/// The status line; does nothing when stderr is not a terminal.
#[derive(Debug)]
pub(crate) struct Progress {
    enabled: bool,
    started: Instant,
    last_draw: Instant,
    last_count: u64,
    drawn: bool,
}

impl Progress {
    pub(crate) fn new(enabled: bool) -> Progress {
        let now = Instant::now();
        Progress {
            enabled,
            started: now,
            last_draw: now,
            last_count: 0,
            drawn: false,
        }
    }

    /// Redraws if a second has passed. `lag` is already worded ("12 KiB behind").
    pub(crate) fn tick(&mut self, count: u64, lag: &str) {
        if !self.enabled || self.last_draw.elapsed() < Duration::from_secs(1) {
            return;
        }
        let secs = self.last_draw.elapsed().as_secs_f64();
        let rate = (count - self.last_count) as f64 / secs;
        self.last_draw = Instant::now();
        self.last_count = count;
        self.drawn = true;
        let total = self.started.elapsed().as_secs();
        let _ = write!(
            std::io::stderr(),
            "\r\x1b[K{count} messages, {rate:.0}/s, {lag} ({total} s)"
        );
    }

    /// Ends the line so that logs that follow start on their own.
    pub(crate) fn finish(&mut self) {
        if self.drawn {
            let _ = writeln!(std::io::stderr());
            self.drawn = false;
        }
    }
}
