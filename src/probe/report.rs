//! What `sensorlink probe` prints: live lines and the summary, as text or one JSON object
//! per line (`--json`), and the `sensorlink_link` reading `--store` sends.

use std::io::Write;

use serde_json::json;

use super::args::ProbeConfig;
use super::session::Live;
use super::stats::{Spread, Summary};
use crate::protocol::{FieldValue, Reading};

/// Said beside every one-way figure.
pub const CLOCK_NOTE: &str = "one-way delays assume the client's and the server's clocks are \
     synchronised (exact when both share one clock, e.g. on one machine)";

/// Said when no reply came at all.
pub const NO_REPLY: &str =
    "no reply: server down, UDP blocked, the server runs with --udp off, or the token was refused";

/// Said when the server's count went down: it evicted the session from its table.
pub const EVICTED_NOTE: &str = "the server evicted this session from its bounded table during \
     the run (its count restarted), so the split of the loss into upstream and downstream is \
     unknown; the total loss stands";

/// Said when the server's rate limit dropped probes.
pub const RATE_LIMITED_NOTE: &str = "the server's rate limit (--udp-rate-per-ip) dropped some \
     probes: they are not network loss; use a longer --interval";

/// Said when no count request was answered at the end.
pub const UNCONFIRMED_NOTE: &str = "the server's final count was not confirmed (count requests \
     or their replies lost): the split rests on the counts in the replies, and probes answered \
     after the last reply that came are booked upstream";

/// The opening line.
///
/// # Errors
/// Writing failed.
pub fn start(out: &mut impl Write, config: &ProbeConfig, session: u64) -> std::io::Result<()> {
    if config.json {
        let value = json!({
            "event": "start",
            "addr": config.target.to_string(),
            "count": config.count,
            "interval_ms": config.interval.as_secs_f64() * 1e3,
            "size": config.size,
            "signed": config.signer.is_some(),
            "session": format!("{session:016x}"),
        });
        writeln!(out, "{value}")
    } else {
        writeln!(
            out,
            "probing {} over UDP: {} probes of {} bytes every {}{}",
            config.target,
            config.count,
            config.size,
            humantime::format_duration(config.interval),
            if config.signer.is_some() {
                ", signed"
            } else {
                ""
            }
        )
    }
}

/// One live line.
///
/// # Errors
/// Writing failed.
pub fn live(out: &mut impl Write, json: bool, live: &Live) -> std::io::Result<()> {
    if json {
        let mut value = serde_json::to_value(live).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.insert("event".into(), "live".into());
        }
        writeln!(out, "{value}")
    } else {
        let rtt = live
            .rtt_p50_ms
            .map_or_else(|| "-".to_string(), |ms| format!("{ms:.3} ms"));
        writeln!(
            out,
            "{:>4}s  sent {:>7}  received {:>7}  rtt p50 {:>10}  loss {:.2} %",
            live.second, live.sent, live.received, rtt, live.loss_percent
        )
    }
}

/// The summary (JSON: `{"event":"summary","summary":{…}}`).
///
/// # Errors
/// Writing failed.
pub fn summary(
    out: &mut impl Write,
    config: &ProbeConfig,
    summary: &Summary,
    extra: &Extra,
) -> std::io::Result<()> {
    if config.json {
        let mut value = serde_json::to_value(summary).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.insert("duration_s".into(), json!(extra.duration_s));
            object.insert("send_errors".into(), json!(extra.send_errors));
            object.insert("port_unreachable".into(), json!(extra.unreachable));
            object.insert("clock_note".into(), json!(CLOCK_NOTE));
        }
        return writeln!(out, "{}", json!({"event": "summary", "summary": value}));
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<18}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}",
        "(ms)", "min", "mean", "median", "p99", "max", "stddev"
    )?;
    let rows: [(&str, &Option<Spread>); 6] = [
        ("RTT", &summary.rtt_ms),
        ("send delay", &summary.send_delay_ms),
        ("receive delay", &summary.receive_delay_ms),
        ("IPDV (jitter)", &summary.ipdv_ms),
        ("send IPDV", &summary.send_ipdv_ms),
        ("receive IPDV", &summary.receive_ipdv_ms),
    ];
    for (name, spread) in rows {
        match spread {
            Some(s) => writeln!(
                out,
                "{name:<18}{:>10.3}{:>10.3}{:>10.3}{:>10.3}{:>10.3}{:>10.3}",
                s.min, s.mean, s.median, s.p99, s.max, s.stddev
            )?,
            None => writeln!(out, "{name:<18}{:>10}", "-")?,
        }
    }
    writeln!(
        out,
        "sent {}, received {} ({:.2} % loss); server received {}",
        summary.sent, summary.received, summary.loss_percent, summary.server_received
    )?;
    let split = match (
        summary.lost_up,
        summary.loss_up_percent,
        summary.lost_down,
        summary.loss_down_percent,
    ) {
        (Some(up), Some(up_pc), Some(down), Some(down_pc)) => {
            format!("loss upstream {up} ({up_pc:.2} %), downstream {down} ({down_pc:.2} %)")
        }
        _ => "loss upstream and downstream unknown".to_string(),
    };
    writeln!(
        out,
        "{split}; rate-limited by the server {}; duplicates {}, reordered {}, late sends {}",
        summary.rate_limited, summary.duplicates, summary.reordered, summary.late_sends
    )?;
    if summary.session_evicted {
        writeln!(out, "note: {EVICTED_NOTE}")?;
    }
    if summary.rate_limited > 0 {
        writeln!(out, "note: {RATE_LIMITED_NOTE}")?;
    }
    if !summary.server_count_confirmed && summary.received > 0 {
        writeln!(out, "note: {UNCONFIRMED_NOTE}")?;
    }
    writeln!(out, "note: {CLOCK_NOTE}")?;
    if summary.received == 0 {
        writeln!(out, "{NO_REPLY}")?;
    }
    Ok(())
}

/// Figures of the run that are not the link's.
#[derive(Debug, Clone, Copy)]
pub struct Extra {
    pub duration_s: f64,
    pub send_errors: u64,
    pub unreachable: bool,
}

/// The `--store` reading: measurement `sensorlink_link`, tags `sensor` (if any) and
/// `probe=udp`. It carries the fields a client's link report has (`interval_s`, `sent`,
/// `lost`, `rtt_p50_ms`, `rtt_p99_ms`, `rtt_max_ms`: the dashboard shows them) and the
/// probe's own (`lost_up`, `loss_down_percent`, `probe_rtt_*_ms`, …; PROTOCOL.md).
pub fn reading(
    config: &ProbeConfig,
    summary: &Summary,
    duration_s: f64,
    timestamp_ns: i64,
) -> Reading {
    let count = |v: u64| FieldValue::Int(i64::try_from(v).unwrap_or(i64::MAX));
    // Microseconds: more digits than the timers resolve would be noise.
    let ms = |v: f64| FieldValue::Float((v * 1e3).round() / 1e3);
    let mut fields = vec![
        ("interval_s".to_string(), ms(duration_s)),
        ("sent".to_string(), count(summary.sent)),
        ("received".to_string(), count(summary.received)),
        (
            "lost".to_string(),
            count(summary.sent.saturating_sub(summary.received)),
        ),
    ];
    if let Some(rtt) = &summary.rtt_ms {
        fields.push(("rtt_p50_ms".to_string(), ms(rtt.median)));
        fields.push(("rtt_p99_ms".to_string(), ms(rtt.p99)));
        fields.push(("rtt_max_ms".to_string(), ms(rtt.max)));
    }
    fields.extend([
        (
            "probe_interval_ms".to_string(),
            ms(config.interval.as_secs_f64() * 1e3),
        ),
        (
            "server_received".to_string(),
            count(summary.server_received),
        ),
        ("rate_limited".to_string(), count(summary.rate_limited)),
        ("duplicates".to_string(), count(summary.duplicates)),
        ("reordered".to_string(), count(summary.reordered)),
    ]);
    // The split is omitted when unknown (the server evicted the session mid-run).
    if let (Some(up), Some(down)) = (summary.lost_up, summary.lost_down) {
        fields.push(("lost_up".to_string(), count(up)));
        fields.push(("lost_down".to_string(), count(down)));
    }
    if let (Some(up), Some(down)) = (summary.loss_up_percent, summary.loss_down_percent) {
        fields.push(("loss_up_percent".to_string(), ms(up)));
        fields.push(("loss_down_percent".to_string(), ms(down)));
    }
    let mut spread = |prefix: &str, spread: &Option<Spread>, all: bool| {
        if let Some(s) = spread {
            fields.push((format!("{prefix}_p50_ms"), ms(s.median)));
            fields.push((format!("{prefix}_p99_ms"), ms(s.p99)));
            if all {
                fields.push((format!("{prefix}_min_ms"), ms(s.min)));
                fields.push((format!("{prefix}_mean_ms"), ms(s.mean)));
                fields.push((format!("{prefix}_max_ms"), ms(s.max)));
                fields.push((format!("{prefix}_stddev_ms"), ms(s.stddev)));
            }
        }
    };
    spread("probe_rtt", &summary.rtt_ms, true);
    spread("probe_send_delay", &summary.send_delay_ms, false);
    spread("probe_receive_delay", &summary.receive_delay_ms, false);
    spread("probe_ipdv", &summary.ipdv_ms, false);
    let mut tags = Vec::new();
    if let Some(sensor) = &config.sensor {
        tags.push(("sensor".to_string(), sensor.clone()));
    }
    tags.push(("probe".to_string(), "udp".to_string()));
    Reading {
        measurement: crate::client::link::LINK_MEASUREMENT.to_string(),
        tags,
        fields,
        timestamp_ns: Some(timestamp_ns),
    }
}
