//! `bench --charts DIR`: SVG pictures of what the run measured, for BENCHMARKS.md.
//!
//! One file per chart the sections collected ([`Chart`]): latency CDFs (one curve per
//! server, latency on a log axis, so the floors and tailsrv can be compared at every
//! percentile, not just p50 and p99) and throughput bars (tailsrv beside its same-run
//! baselines). Drawn with plotters' SVG backend only: no font files or bitmap codecs are
//! needed, the SVG names a font family and the viewer draws the text.

use std::path::Path;

use plotters::prelude::*;

use crate::report::Chart;
use crate::run::Result;

const SIZE: (u32, u32) = (820, 460);

/// Colours by series order: tailsrv first, then its baselines.
const COLOURS: [RGBColor; 5] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
];

/// Writes every chart as `DIR/NAME.svg`.
pub fn write(dir: &Path, charts: &[Chart]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    for chart in charts {
        let (name, drawn) = match chart {
            Chart::Cdf {
                name,
                title,
                series,
            } => (name, cdf(&dir.join(format!("{name}.svg")), title, series)),
            Chart::Bars {
                name,
                title,
                unit,
                groups,
            } => (
                name,
                bars(&dir.join(format!("{name}.svg")), title, unit, groups),
            ),
        };
        drawn.map_err(|e| format!("drawing chart {name}: {e}"))?;
    }
    Ok(())
}

type Drawn = std::result::Result<(), Box<dyn std::error::Error>>;

/// Latency CDFs: x = latency (µs, log scale), y = fraction of deliveries at or below it.
fn cdf(path: &Path, title: &str, series: &[(String, Vec<u64>)]) -> Drawn {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let us = |ns: u64| (ns.max(1) as f64) / 1000.0;
    let lo = series
        .iter()
        .filter_map(|(_, v)| v.first())
        .map(|&v| us(v))
        .fold(f64::MAX, f64::min)
        .max(1.0);
    let hi = series
        .iter()
        .filter_map(|(_, v)| v.last())
        .map(|&v| us(v))
        .fold(lo * 10.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((lo * 0.9..hi * 1.1).log_scale(), 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("append → delivery latency (µs, log scale)")
        .y_desc("fraction of deliveries")
        .draw()?;
    for (i, (label, v)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        // At most ~2,000 points per curve: evenly spaced ranks, plus the last one.
        let step = (v.len() / 2000).max(1);
        let n = v.len() as f64;
        let points = v
            .iter()
            .enumerate()
            .filter(|(k, _)| k % step == 0 || *k + 1 == v.len())
            .map(|(k, &ns)| (us(ns), (k + 1) as f64 / n));
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
            .label(label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Grouped bars: one group per figure (a client count), one bar per server in it.
fn bars(path: &Path, title: &str, unit: &str, groups: &[(String, Vec<(String, f64)>)]) -> Drawn {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let width = groups
        .iter()
        .map(|(_, b)| b.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let top = groups
        .iter()
        .flat_map(|(_, b)| b.iter().map(|(_, v)| *v))
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE)
        * 1.15;
    let slots = groups.len() * (width + 1);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..slots as f64, 0.0..top)?;
    let names: Vec<String> = groups.iter().map(|(g, _)| g.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(slots)
        .x_label_formatter(&|x| {
            // The group's name under the middle of its bars.
            let slot = x.round() as usize;
            let (g, k) = (slot / (width + 1), slot % (width + 1));
            match names.get(g) {
                Some(name) if k == width / 2 => name.clone(),
                _ => String::new(),
            }
        })
        .y_desc(unit)
        .draw()?;
    let mut labels: Vec<String> = Vec::new();
    for (g, (_, bars)) in groups.iter().enumerate() {
        for (k, (label, value)) in bars.iter().enumerate() {
            let index = match labels.iter().position(|l| l == label) {
                Some(i) => i,
                None => {
                    labels.push(label.clone());
                    labels.len() - 1
                }
            };
            let colour = COLOURS[index % COLOURS.len()];
            let x0 = (g * (width + 1) + k) as f64 + 0.1;
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x0, 0.0), (x0 + 0.8, *value)],
                colour.filled(),
            )))?;
        }
    }
    for (i, label) in labels.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())?
            .label(label.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
