//! The picture of a load run (`sensorlink bench --report FILE`): a header with the report's
//! figures; readings acked per second; ack latency p50/p99/max per second.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{axis_max, chart, font, header, write_picture, Drawn, PlotError};
use crate::bench::timeline::Second;

/// Write the picture of a load run to `path` (`.svg` or `.png`): `lines` are the header,
/// `seconds` the run per second.
///
/// # Errors
/// See [`super::write_picture`].
pub fn write(path: &Path, lines: &[String], seconds: &[Second]) -> Result<(), PlotError> {
    write_picture(
        path,
        |root| draw(&root, lines, seconds),
        |root| draw(&root, lines, seconds),
    )
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    lines: &[String],
    seconds: &[Second],
) -> Result<(), PlotError> {
    let body = header(root, lines)?;
    let height = body.dim_in_pixel().1;
    let (upper, lower) = body.split_vertically(height / 2);
    let end_s = axis_max(seconds.last().map_or(0.0, |s| s.t_s + s.width_s), 0.001);
    draw_rate(&upper, seconds, end_s)?;
    draw_latency(&lower, seconds, end_s)?;
    root.present().drawn()
}

fn draw_rate<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    seconds: &[Second],
    end_s: f64,
) -> Result<(), PlotError> {
    let top = axis_max(
        seconds.iter().map(|s| s.readings_per_s).fold(0.0, f64::max),
        1.0,
    );
    let mut chart = chart(
        area,
        "readings acked per second",
        (0f64..end_s, 0f64..top),
        ("time since the measurement began (s)", "readings/s"),
        80,
        true,
    )?;
    chart
        .draw_series(seconds.iter().map(|s| {
            Rectangle::new(
                [(s.t_s, 0.0), (s.t_s + s.width_s, s.readings_per_s)],
                BLUE.mix(0.55).filled(),
            )
        }))
        .drawn()?;
    Ok(())
}

/// Which figure of a [`Second`] a line shows.
type Percentile = fn(&Second) -> Option<f64>;

fn draw_latency<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    seconds: &[Second],
    end_s: f64,
) -> Result<(), PlotError> {
    let top_ms = axis_max(
        seconds.iter().filter_map(|s| s.max_us).fold(0.0, f64::max) / 1e3,
        0.01,
    );
    let mut chart = chart(
        area,
        "ack latency per second",
        (0f64..end_s, 0f64..top_ms),
        ("time since the measurement began (s)", "latency (ms)"),
        80,
        false,
    )?;
    // p50 and p99 in the client picture's colours for them; none is a client event's
    // colour (timeout orange, loss red, reconnect purple), so the two pictures read alike.
    let series: [(&str, Percentile, RGBColor); 3] = [
        ("p50", |s| s.p50_us, RGBColor(0, 140, 0)),
        ("p99", |s| s.p99_us, RGBColor(200, 0, 0)),
        ("max", |s| s.max_us, RGBColor(90, 90, 90)),
    ];
    for (name, value, color) in series {
        let points: Vec<(f64, f64)> = seconds
            .iter()
            .filter_map(|s| value(s).map(|us| (s.t_s + s.width_s / 2.0, us / 1e3)))
            .collect();
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .drawn()?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .drawn()?;
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
