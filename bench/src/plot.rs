//! `--plot FILE.svg`: load against server CPU, loss and p99 latency, one line per target; with
//! shaped downlinks, what each target sent and what got through over the schedule's time.

use crate::report::TargetReport;
use plotters::prelude::*;
use std::path::Path;

/// One point of a ramp or capacity search.
#[derive(Debug, Clone)]
pub struct LoadPoint {
    pub target: String,
    /// Forwarded packets per second (the load).
    pub pps_out: f64,
    pub report: TargetReport,
}

const COLORS: [RGBColor; 4] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
];

/// Draws three panels (CPU %, loss %, p99 ms) against packets/s out.
pub fn draw(path: &Path, points: &[LoadPoint]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((3, 1));
    let mut targets: Vec<&str> = points.iter().map(|p| p.target.as_str()).collect();
    targets.dedup();
    targets.sort_unstable();
    targets.dedup();
    let max_x = points.iter().map(|p| p.pps_out).fold(1.0, f64::max) * 1.05;
    type Metric = (&'static str, fn(&TargetReport) -> f64);
    let metrics: [Metric; 3] = [
        ("server CPU % of one core", |r| r.server_cpu_pct),
        ("loss %", |r| r.loss_pct),
        ("p99 latency ms", |r| r.latency_p99_ms),
    ];
    for (panel, (label, value)) in panels.iter().zip(metrics) {
        let max_y = points
            .iter()
            .map(|p| value(&p.report))
            .fold(0.0, f64::max)
            .max(1.0)
            * 1.1;
        let mut chart = ChartBuilder::on(panel)
            .caption(label, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..max_x, 0.0..max_y)?;
        chart
            .configure_mesh()
            .x_desc("forwarded packets/s")
            .y_desc(label)
            .draw()?;
        for (i, t) in targets.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let mut series: Vec<(f64, f64)> = points
                .iter()
                .filter(|p| p.target == *t)
                .map(|p| (p.pps_out, value(&p.report)))
                .collect();
            series.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(series.clone(), color.stroke_width(2)))?
                .label(*t)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart.draw_series(
                series
                    .iter()
                    .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// With shaped downlinks: two panels over the schedule's time — what the server sent each
/// receiver, and what got through its link — one line per target, the capacity as a step.
pub fn draw_downlinks(path: &Path, reports: &[TargetReport]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((2, 1));
    let Some(first) = reports.iter().find(|r| !r.downlink_phases.is_empty()) else {
        return Ok(());
    };
    // The capacity as a step line, and each target's bins laid end to end.
    let mut capacity = Vec::new();
    let mut t = 0.0;
    for p in &first.downlink_phases {
        capacity.push((t, p.capacity_kbps as f64));
        t += p.seconds;
        capacity.push((t, p.capacity_kbps as f64));
    }
    let series = |r: &TargetReport, through: bool| -> Vec<(f64, f64)> {
        let mut out = Vec::new();
        let mut start = 0.0;
        for p in &r.downlink_phases {
            let bins = if through {
                &p.through_kbps_bins
            } else {
                &p.sent_kbps_bins
            };
            for (i, v) in bins.iter().enumerate() {
                out.push((start + (i as f64 + 0.5) * 0.25, *v));
            }
            start += p.seconds;
        }
        out
    };
    let max_y = reports
        .iter()
        .flat_map(|r| series(r, false))
        .map(|(_, y)| y)
        .chain(capacity.iter().map(|c| c.1))
        .fold(1.0, f64::max)
        * 1.1;
    for (panel, (label, through)) in panels.iter().zip([
        ("sent to each receiver, kbit/s (250 ms bins)", false),
        ("through its shaped link, kbit/s", true),
    ]) {
        let mut chart = ChartBuilder::on(panel)
            .caption(label, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..t, 0.0..max_y)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("kbit/s")
            .draw()?;
        chart
            .draw_series(LineSeries::new(capacity.clone(), BLACK.stroke_width(1)))?
            .label("capacity")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
        for (i, r) in reports.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(series(r, through), color.stroke_width(2)))?
                .label(r.target.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
