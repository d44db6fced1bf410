//! The bench's plan: resolve the flags into sizes, prepare the machine (open-file limit, the
//! data file), run each chosen section, print the table.
//!
//! A section that fails prints an `error:` row and the run goes on: one broken section should
//! not hide the others' numbers. Everything a section starts is stopped by its own guards.

use std::path::PathBuf;
use std::time::Duration;

use crate::data::DataFile;
use crate::report::{Row, Table};
use crate::Args;

pub type Result<T> = std::result::Result<T, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    Fanout,
    Latency,
    Idle,
    Storm,
    Indexer,
    Slow,
    Collator,
    Bridge,
    Segments,
    CollatorVs,
}

/// The flags with the `--quick` defaults filled in.
pub struct Plan {
    pub file_bytes: u64,
    pub fanout_clients: Vec<usize>,
    pub followers: Vec<usize>,
    pub rate: u32,
    pub latency_secs: f64,
    /// Latency rounds (tailsrv and the floors in turns); medians are reported.
    pub latency_rounds: usize,
    /// `--trace FILE`: tailsrv's latency trace for the 1-follower breakdown.
    pub trace: Option<PathBuf>,
    pub idle_followers: usize,
    pub idle_secs: f64,
    pub storm_clients: usize,
    pub storm_threads: usize,
    pub query_secs: f64,
    pub depth: usize,
    pub reps: usize,
    pub client_threads: usize,
    /// The open-file limit this process (and every server it starts) runs with.
    pub nofile: u64,
    pub dir: PathBuf,
    /// `--baseline-bin DIR`: another build's binaries, for section `collator-vs`.
    pub baseline_bin: Option<PathBuf>,
}

impl Plan {
    /// Most connections one side may hold with `nofile` descriptors, leaving room for the
    /// listener, the file, the epoll fds and the runtime's own.
    pub fn max_conns(&self) -> usize {
        self.nofile.saturating_sub(64) as usize
    }

    /// `n` capped by the open-file limit, with a note for the table when it had to be.
    pub fn cap(&self, n: usize, table: &mut Table) -> usize {
        let max = self.max_conns();
        if n > max {
            table.note(format!(
                "open-file limit {} caps {n} connections to {max}: raise the hard limit \
                 (`ulimit -Hn`, /etc/security/limits.conf) to measure {n}",
                self.nofile
            ));
            max
        } else {
            n
        }
    }
}

pub fn run(args: &Args) -> Result<()> {
    let quick = args.quick;
    // Raised before any server starts: children inherit it.
    raise_hard_fd_limit();
    let nofile = tests::raise_fd_limit();
    let scratch = tempfile::Builder::new()
        .prefix("tailsrv-bench-")
        .tempdir_in(args.dir.clone().unwrap_or_else(std::env::temp_dir))
        .map_err(|e| format!("creating scratch dir: {e}"))?;
    let plan = Plan {
        file_bytes: args.file_mib.unwrap_or(if quick { 128 } else { 1024 }) << 20,
        fanout_clients: args.fanout_clients.clone(),
        followers: args.followers.clone(),
        rate: args.rate.max(1),
        latency_secs: args.latency_secs.unwrap_or(if quick { 2.0 } else { 10.0 }),
        latency_rounds: args
            .latency_rounds
            .unwrap_or(if quick { 1 } else { 3 })
            .max(1),
        trace: args.trace.clone(),
        idle_followers: args.idle_followers,
        idle_secs: args.idle_secs.unwrap_or(if quick { 2.0 } else { 5.0 }),
        storm_clients: args.storm_clients,
        storm_threads: args.storm_threads.max(1),
        query_secs: args.query_secs.unwrap_or(if quick { 1.0 } else { 3.0 }),
        depth: args.depth.max(1),
        reps: args.reps.unwrap_or(if quick { 1 } else { 3 }).max(1),
        client_threads: args.client_threads.max(1),
        nofile,
        dir: scratch.path().to_owned(),
        baseline_bin: args.baseline_bin.clone(),
    };
    let mut table = Table::default();
    table.note(format!(
        "open-file limit {nofile} (raised to the hard limit; servers inherit it)"
    ));

    let needs_data = args.sections.iter().any(|s| {
        matches!(
            s,
            Section::Fanout
                | Section::Indexer
                | Section::Slow
                | Section::Collator
                | Section::Segments
        )
    });
    let data = if needs_data {
        eprintln!(
            "bench: writing {} MiB of log lines to {}",
            plan.file_bytes >> 20,
            plan.dir.display()
        );
        Some(DataFile::create(
            &plan.dir.join("data.log"),
            plan.file_bytes,
        )?)
    } else {
        None
    };

    for &section in &args.sections {
        eprintln!("bench: section {section:?}");
        let data = data.as_ref();
        let result = match section {
            Section::Fanout => crate::fanout::fanout(&plan, data.expect("data"), &mut table),
            Section::Latency => crate::latency::latency(&plan, &mut table),
            Section::Idle => crate::latency::idle(&plan, &mut table),
            Section::Storm => crate::storm::storm(&plan, &mut table),
            Section::Indexer => crate::indexer::indexer(&plan, data.expect("data"), &mut table),
            Section::Slow => crate::fanout::slow(&plan, data.expect("data"), &mut table),
            Section::Collator => crate::collator::collator(&plan, data.expect("data"), &mut table),
            Section::Bridge => crate::bridge::bridge(&plan, &mut table),
            Section::Segments => crate::segments::segments(&plan, data.expect("data"), &mut table),
            Section::CollatorVs => crate::collator::versus_build(&plan, &mut table),
        };
        if section == Section::Collator && result.is_ok() {
            collator_chart(&mut table);
        }
        if let Err(e) = result {
            eprintln!("bench: section {section:?} failed: {e}");
            table.push(Row::new(&format!("{section:?}").to_lowercase(), "error").value(e));
        }
    }
    table.print();
    if let Some(dir) = &args.charts {
        crate::charts::write(dir, &table.charts)?;
        eprintln!("bench: charts written to {}", dir.display());
    }
    Ok(())
}

/// Descriptors wanted: 10,000 followers and, for the latency floor, both ends of 10,000
/// connections in the bench, with room to spare.
const WANTED_FDS: u64 = 32_768;

/// Raises the hard open-file limit to [`WANTED_FDS`] when allowed (root, or CAP_SYS_RESOURCE);
/// otherwise leaves it, and the sizes it cannot hold are capped with a note.
fn raise_hard_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.maximum.is_some_and(|max| max < WANTED_FDS) {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: lim.current,
                maximum: Some(WANTED_FDS),
            },
        );
    }
}

/// Seconds as a `Duration`, for the float flags.
pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.001))
}

/// The collator's write throughput beside its raw-disk baselines and JetStream, as bars, from the rows its
/// section pushed (collator.rs keeps to the table; the figures are the leading numbers of
/// its value and baseline cells).
fn collator_chart(table: &mut Table) {
    let lead = |s: &str| -> Option<f64> {
        let end = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        s[..end].parse().ok()
    };
    let groups: Vec<(String, Vec<(String, f64)>)> = table
        .rows()
        .filter(|r| r.section() == "collator" && r.cell_value().ends_with("msg/s"))
        .filter_map(|r| {
            let ours = lead(r.cell_value())?;
            let base = lead(r.cell_baseline());
            let mut bars = vec![("collator".to_string(), ours)];
            if let Some(b) = base {
                let what = r.cell_baseline().split_once(' ').map_or("", |(_, w)| w);
                // "N msg/s JetStream sync publish" is the peer, anything else a raw loop.
                let label = match what.strip_prefix("msg/s ") {
                    Some(peer) => peer.to_string(),
                    None => format!("raw {what}"),
                };
                bars.push((label, b));
            }
            Some((r.figure().replace(", 1 msg/request", ""), bars))
        })
        .collect();
    if !groups.is_empty() {
        table.chart(crate::report::Chart::Bars {
            name: "collator".into(),
            title: "Collator: appends per second beside the disk's raw loop".into(),
            unit: "messages/s".into(),
            groups,
        });
    }
}

/// `a` and `b` measured `rounds` times each, taking turns, who goes first alternating (so
/// neither always runs on the cache or disk state the other left): every sample of each, in
/// round order.
pub fn in_turns(
    rounds: usize,
    mut a: impl FnMut() -> Result<f64>,
    mut b: impl FnMut() -> Result<f64>,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let (mut xs, mut ys) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for round in 0..rounds {
        if round % 2 == 0 {
            xs.push(a()?);
            ys.push(b()?);
        } else {
            ys.push(b()?);
            xs.push(a()?);
        }
    }
    Ok((xs, ys))
}
