//! The one table the bench prints: each figure beside its same-run baseline, the ratio, the
//! target and whether it is met.
//!
//! Markdown, so a run can be pasted into BENCHMARKS.md as is. Notes (limits that capped a
//! size, tools that were missing) follow the table, because a figure without them misleads.

/// One line of the table.
pub struct Row {
    section: String,
    figure: String,
    value: String,
    baseline: String,
    ratio: String,
    target: String,
    status: String,
}

impl Row {
    pub fn new(section: &str, figure: &str) -> Row {
        Row {
            section: section.to_owned(),
            figure: figure.to_owned(),
            value: String::new(),
            baseline: String::new(),
            ratio: String::new(),
            target: String::new(),
            status: String::new(),
        }
    }

    pub fn value(mut self, v: impl Into<String>) -> Row {
        self.value = v.into();
        self
    }

    pub fn baseline(mut self, b: impl Into<String>) -> Row {
        self.baseline = b.into();
        self
    }

    pub fn ratio(mut self, r: f64) -> Row {
        self.ratio = if r.is_finite() {
            format!("{r:.2}×")
        } else {
            "-".into()
        };
        self
    }

    pub fn section(&self) -> &str {
        &self.section
    }

    pub fn figure(&self) -> &str {
        &self.figure
    }

    pub fn cell_value(&self) -> &str {
        &self.value
    }

    pub fn cell_baseline(&self) -> &str {
        &self.baseline
    }

    /// The target, and whether this run met it.
    pub fn target(mut self, t: impl Into<String>, met: bool) -> Row {
        self.target = t.into();
        self.status = if met { "met" } else { "MISSED" }.into();
        self
    }
}

#[derive(Default)]
pub struct Table {
    rows: Vec<Row>,
    notes: Vec<String>,
    /// What `--charts DIR` draws (crate::charts), collected by the sections as they run.
    pub charts: Vec<Chart>,
}

/// One picture of what a section measured.
pub enum Chart {
    /// Latency CDFs: one curve per (server, sorted latencies in ns).
    Cdf {
        name: String,
        title: String,
        series: Vec<(String, Vec<u64>)>,
    },
    /// Throughput bars: per group (a client count, a size), tailsrv's bar beside its
    /// baselines' ((label, value) each, in `unit`).
    Bars {
        name: String,
        title: String,
        unit: String,
        groups: Vec<(String, Vec<(String, f64)>)>,
    },
}

impl Table {
    pub fn rows(&self) -> impl Iterator<Item = &Row> {
        self.rows.iter()
    }

    pub fn chart(&mut self, chart: Chart) {
        self.charts.push(chart);
    }

    pub fn push(&mut self, row: Row) {
        eprintln!(
            "bench:   {} / {}: {} (baseline {}) {}",
            row.section, row.figure, row.value, row.baseline, row.status
        );
        self.rows.push(row);
    }

    pub fn note(&mut self, note: String) {
        eprintln!("bench:   note: {note}");
        self.notes.push(note);
    }

    pub fn print(&self) {
        let header = [
            "section", "figure", "tailsrv", "baseline", "ratio", "target", "status",
        ];
        let cells: Vec<[&str; 7]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    &r.section[..],
                    &r.figure,
                    &r.value,
                    &r.baseline,
                    &r.ratio,
                    &r.target,
                    &r.status,
                ]
            })
            .collect();
        let mut width = header.map(|h| h.chars().count());
        for row in &cells {
            for (w, c) in width.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cols: [&str; 7]| {
            let padded: Vec<String> = cols
                .iter()
                .zip(width)
                .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
                .collect();
            println!("| {} |", padded.join(" | "));
        };
        line(header);
        let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
        println!("|-{}-|", rule.join("-|-"));
        for row in cells {
            line(row);
        }
        if !self.notes.is_empty() {
            println!();
            for n in &self.notes {
                println!("- {n}");
            }
        }
    }
}

/// Bytes per second as GiB/s.
pub fn gibps(bytes: u64, secs: f64) -> String {
    format!("{:.2} GiB/s", bytes as f64 / secs / (1u64 << 30) as f64)
}

/// A duration in nanoseconds, in the unit that reads best.
pub fn nanos(n: u64) -> String {
    if n >= 1_000_000_000 {
        format!("{:.2} s", n as f64 / 1e9)
    } else if n >= 1_000_000 {
        format!("{:.2} ms", n as f64 / 1e6)
    } else {
        format!("{:.0} µs", n as f64 / 1e3)
    }
}

/// The value at quantile `q` of an ascending slice (nearest rank).
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
