//! `bench`: the numbers behind "low latency, high throughput, minimal resources".
//!
//! Starts the real release binaries (found next to this executable) on 127.0.0.1, drives them
//! with its own epoll-driven clients and prints one markdown table. Every figure stands beside
//! a baseline measured in the same run (a blocking sendfile server, a trivial responder,
//! `wc -l`, redis), because on a shared, noisy machine only the ratio is worth comparing.
//!
//! Run: `cargo build --release --workspace && target/release/bench [--quick] [--sections ...]`.
//! The sections live in this crate's modules, one each; this file only parses flags.

use std::process::ExitCode;

use clap::Parser;

mod baseline;
mod bridge;
mod charts;
mod collator;
mod data;
mod fanout;
mod fleet;
mod indexer;
mod latency;
mod procs;
mod report;
mod run;
mod segments;
mod storm;

/// Benchmarks tailsrv and tailsrv-indexer against same-run baselines; prints one table.
#[derive(Parser, Debug, Clone)]
#[command(about, long_about)]
pub struct Args {
    /// Small sizes and short windows: the whole suite in about a minute.
    #[arg(long)]
    quick: bool,

    /// Sections to run, comma-separated:
    /// fanout,latency,idle,storm,indexer,slow,collator,bridge,segments,collator-vs.
    /// `collator-vs` needs --baseline-bin.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fanout,latency,idle,storm,indexer,slow,collator,bridge,segments"
    )]
    sections: Vec<run::Section>,

    /// Size of the data file in MiB (real data, written once, reused by every section).
    /// Default 1024, or 128 with --quick.
    #[arg(long, value_name = "MIB")]
    file_mib: Option<u64>,

    /// Client counts for the fan-out section.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
    fanout_clients: Vec<usize>,

    /// Follower counts for the latency section.
    #[arg(long, value_delimiter = ',', default_value = "1,1000,10000")]
    followers: Vec<usize>,

    /// Lines per second the latency writer appends.
    #[arg(long, default_value_t = 100)]
    rate: u32,

    /// Seconds the latency writer runs per follower count. Default 10, or 2 with --quick.
    #[arg(long, value_name = "SECS")]
    latency_secs: Option<f64>,

    /// Latency rounds: tailsrv, the one-thread floor and the thread-per-client floor take
    /// turns this many times; each figure is the median over rounds. Default 3, or 1 with
    /// --quick.
    #[arg(long, value_name = "N")]
    latency_rounds: Option<usize>,

    /// Write tailsrv's latency trace to FILE during the 1-follower latency run and print the
    /// append → delivery breakdown (needs tailsrv built with
    /// `--features shared/latency-trace`).
    #[arg(long, value_name = "FILE")]
    trace: Option<std::path::PathBuf>,

    /// Write SVG charts of what was measured into DIR (created if needed).
    #[arg(long, value_name = "DIR")]
    charts: Option<std::path::PathBuf>,

    /// Followers connected for the idle-cost section.
    #[arg(long, default_value_t = 10_000)]
    idle_followers: usize,

    /// Seconds of quiet over which idle CPU is measured. Default 5, or 2 with --quick.
    #[arg(long, value_name = "SECS")]
    idle_secs: Option<f64>,

    /// Clients in the connect storm.
    #[arg(long, default_value_t = 5_000)]
    storm_clients: usize,

    /// Client threads that open the storm's connections (each its own connect loop).
    #[arg(long, default_value_t = 1)]
    storm_threads: usize,

    /// Seconds each offset-of throughput run lasts. Default 3, or 1 with --quick.
    #[arg(long, value_name = "SECS")]
    query_secs: Option<f64>,

    /// Requests in flight per connection in the offset-of runs (pipelining depth).
    #[arg(long, default_value_t = 64)]
    depth: usize,

    /// Repetitions of each throughput figure (the best is kept). Default 3, or 1 with --quick.
    #[arg(long)]
    reps: Option<usize>,

    /// Client threads (each one epoll loop) for many-connection runs.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,

    /// Another build's release directory (`target/release` of an older commit): section
    /// `collator-vs` runs its `tailsrv-collator` in turns with this build's.
    #[arg(long, value_name = "DIR")]
    baseline_bin: Option<std::path::PathBuf>,

    /// Where to create the scratch directory (default: the system temp dir).
    #[arg(long, value_name = "DIR")]
    dir: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run::run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}
