//! The picture of a client run (`sensorlink client --report FILE`): a header with the
//! summary's figures; the RTT of every acked reading over time (min/max per time bucket, see
//! [`crate::client::samples`]) with timeouts, losses and reconnects as vertical lines; the
//! RTT histogram with p50/p90/p99 marked.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{axis_max, chart, font, header, write_picture, Drawn, PlotError};
use crate::client::output::Summary;
use crate::client::samples::Mark;
use crate::client::stats::fmt_ms;
use crate::client::RunPicture;

/// Bars of the histogram.
const BINS: usize = 40;

/// Write the picture of a client run to `path` (`.svg` or `.png`).
///
/// # Errors
/// See [`super::write_picture`].
pub fn write(path: &Path, summary: &Summary, picture: &RunPicture) -> Result<(), PlotError> {
    write_picture(
        path,
        |root| draw(&root, summary, picture),
        |root| draw(&root, summary, picture),
    )
}

/// The header's lines: what the text summary says, in three lines.
pub fn header_lines(summary: &Summary) -> Vec<String> {
    let s = summary;
    let rtt = &s.rtt;
    let mut lines = vec![
        format!(
            "sensorlink client → {}   ({:.1} s)",
            s.addr,
            s.duration_ms / 1e3
        ),
        format!(
            "{} sent, {} acked, {} lost ({:.1}% loss), {} timeouts, {} reconnects, \
             link reports: {} sent, {} acked",
            s.sent,
            s.acked,
            s.lost,
            s.loss_percent,
            s.timeouts,
            s.reconnects,
            s.link_reports_sent,
            s.link_reports_acked
        ),
    ];
    if rtt.count > 0 {
        lines.push(format!(
            "rtt min/avg/max/mdev = {}/{}/{}/{} ms    p50/p90/p99/p99.9 = {}/{}/{}/{} ms",
            fmt_ms(rtt.min_us),
            fmt_ms(rtt.avg_us),
            fmt_ms(rtt.max_us),
            fmt_ms(rtt.mdev_us),
            fmt_ms(rtt.p50_us),
            fmt_ms(rtt.p90_us),
            fmt_ms(rtt.p99_us),
            fmt_ms(rtt.p999_us),
        ));
    } else {
        lines.push("no round trip measured".to_string());
    }
    lines
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    summary: &Summary,
    picture: &RunPicture,
) -> Result<(), PlotError> {
    let body = header(root, &header_lines(summary))?;
    let height = body.dim_in_pixel().1;
    let (upper, lower) = body.split_vertically(height * 11 / 20);
    draw_timeline(&upper, summary, picture)?;
    draw_histogram(&lower, summary, picture)?;
    root.present().drawn()
}

/// RTT over time, and the events as vertical lines.
fn draw_timeline<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    summary: &Summary,
    picture: &RunPicture,
) -> Result<(), PlotError> {
    let points = picture.samples.points();
    let end_s = axis_max(summary.duration_ms / 1e3, 0.001);
    let top_ms = axis_max(summary.rtt.max_us / 1e3, 0.01);
    let mut chart = chart(
        area,
        "round-trip time of each acked reading",
        (0f64..end_s, 0f64..top_ms),
        ("time since start (s)", "RTT (ms)"),
        70,
        false,
    )?;
    // The line is broken where no reading was acked for longer than the reply timeout (an
    // outage), rather than drawn straight across it.
    let gap_s = picture.reply_timeout.as_secs_f64();
    let mut segments: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut last_t = f64::NEG_INFINITY;
    for p in &points {
        if p.t_s - last_t > gap_s || segments.is_empty() {
            segments.push(Vec::new());
        }
        last_t = p.t_s;
        if let Some(segment) = segments.last_mut() {
            segment.push((p.t_s, p.rtt_us / 1e3));
        }
    }
    for (i, segment) in segments.iter().enumerate() {
        let series = chart
            .draw_series(LineSeries::new(
                segment.iter().copied(),
                BLUE.stroke_width(1),
            ))
            .drawn()?;
        if i == 0 {
            series
                .label(format!("RTT ({} samples)", picture.samples.count()))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        }
        chart
            .draw_series(segment.iter().map(|&p| Circle::new(p, 2, BLUE.filled())))
            .drawn()?;
    }
    let marks = [
        (Mark::Timeout, "timeout", RGBColor(230, 140, 0)),
        (Mark::Loss, "loss", RED),
        (Mark::Reconnect, "reconnect", RGBColor(130, 0, 160)),
    ];
    for (mark, name, color) in marks {
        let times = picture.samples.marks(mark);
        if times.is_empty() {
            continue;
        }
        let total = match mark {
            Mark::Timeout => summary.timeouts,
            Mark::Loss => summary.lost,
            Mark::Reconnect => summary.reconnects,
        };
        chart
            .draw_series(
                times.iter().map(|t| {
                    PathElement::new(vec![(*t, 0.0), (*t, top_ms)], color.stroke_width(2))
                }),
            )
            .drawn()?
            .label(format!("{name} ({total})"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(font(13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .drawn()
}

/// Histogram bars: `(from_ms, to_ms, count)`, linear over `[min, max]`, or over
/// `[min, 1.5 × p99]` when a long tail would squash every bar into the first (the samples
/// beyond are counted apart).
pub fn bins(recorded_us: &[(f64, u64)], p99_us: f64) -> (Vec<(f64, f64, u64)>, u64) {
    let (Some(first), Some(last)) = (recorded_us.first(), recorded_us.last()) else {
        return (Vec::new(), 0);
    };
    let lo = first.0;
    let mut hi = last.0;
    if hi > 3.0 * p99_us && p99_us > lo {
        hi = 1.5 * p99_us;
    }
    let width = ((hi - lo) / BINS as f64).max(1e-3);
    let mut counts = vec![0u64; BINS];
    let mut beyond = 0;
    for &(us, n) in recorded_us {
        if us > hi {
            beyond += n;
            continue;
        }
        let index = (((us - lo) / width) as usize).min(BINS - 1);
        counts[index] += n;
    }
    let bars = counts
        .into_iter()
        .enumerate()
        .map(|(i, n)| {
            let from = lo + width * i as f64;
            (from / 1e3, (from + width) / 1e3, n)
        })
        .collect();
    (bars, beyond)
}

fn draw_histogram<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    summary: &Summary,
    picture: &RunPicture,
) -> Result<(), PlotError> {
    let rtt = &summary.rtt;
    let (bars, beyond) = bins(&picture.rtt.recorded_us(), rtt.p99_us);
    let from_ms = bars.first().map_or(0.0, |b| b.0);
    let to_ms = axis_max(bars.last().map_or(0.0, |b| b.1), from_ms + 0.01);
    let top = axis_max(bars.iter().map(|b| b.2).max().unwrap_or(0) as f64, 1.0);
    let caption = if beyond > 0 {
        format!(
            "RTT histogram ({beyond} samples beyond the right edge, up to {} ms)",
            fmt_ms(rtt.max_us)
        )
    } else {
        "RTT histogram".to_string()
    };
    let mut chart = chart(
        area,
        &caption,
        (from_ms..to_ms, 0f64..top),
        ("RTT (ms)", "readings"),
        70,
        true,
    )?;
    chart
        .draw_series(bars.iter().filter(|b| b.2 > 0).map(|&(from, to, n)| {
            Rectangle::new([(from, 0.0), (to, n as f64)], BLUE.mix(0.55).filled())
        }))
        .drawn()?;
    if rtt.count == 0 {
        return Ok(());
    }
    // Colours of their own: the events' colours above mean timeouts, losses, reconnects.
    let percentiles = [
        ("p50", rtt.p50_us, RGBColor(0, 140, 0)),
        ("p90", rtt.p90_us, RGBColor(0, 150, 200)),
        ("p99", rtt.p99_us, RGBColor(200, 0, 0)),
    ];
    for (name, us, color) in percentiles {
        let ms = us / 1e3;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(ms, 0.0), (ms, top)],
                color.stroke_width(2),
            )))
            .drawn()?
            .label(format!("{name}: {} ms", fmt_ms(us)))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(font(13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .drawn()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_cover_every_sample_and_cut_a_long_tail() {
        let recorded: Vec<(f64, u64)> = (1..=100).map(|us| (us as f64 * 10.0, 1)).collect();
        let (bars, beyond) = bins(&recorded, 990.0);
        assert_eq!(bars.len(), BINS);
        assert_eq!(beyond, 0);
        assert_eq!(bars.iter().map(|b| b.2).sum::<u64>(), 100);
        // One sample far out: the bars stop at 1.5 × p99 and it is counted apart.
        let mut tail = recorded.clone();
        tail.push((1e6, 1));
        let (bars, beyond) = bins(&tail, 990.0);
        assert_eq!(beyond, 1);
        assert!(
            (bars[BINS - 1].1 - 1.485).abs() < 1e-9,
            "{:?}",
            bars[BINS - 1]
        );
        assert!(bins(&[], 0.0).0.is_empty());
    }
}
