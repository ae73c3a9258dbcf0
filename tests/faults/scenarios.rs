//! The TCP scenarios: delay, jitter, loss, outages and a stopped server, each measured by
//! `sensorlink client --json` against the condition the link injected.

use std::time::Duration;

use crate::link::Conditions;
use crate::procs::{run_client, Server};
use crate::stats::{rel_diff, triangle_quantile, triangle_stddev};
use crate::table::{record, show, Row};
use crate::Lab;

/// Bound on one client run: a liveness guard, far above any scenario's length.
const RUN_BOUND: Duration = Duration::from_secs(90);

/// Client flags every run shares: no link reports (they would add readings of their own).
const QUIET: [&str; 2] = ["--link-report", "0"];

fn args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut all = QUIET.to_vec();
    all.extend_from_slice(extra);
    all
}

#[test]
fn delay_20ms_each_way_is_the_median_rtt() {
    let Some(lab) = Lab::new("delay") else { return };
    let server = Server::start(&lab.net, &[]);
    // The same link, programs and machine with no delay: what the path itself costs.
    let base = run_client(
        &lab.net,
        &server.addr,
        "base",
        &args(&["-i", "20ms", "-c", "100"]),
        RUN_BOUND,
    );
    let overhead = base.rtt_ms("p50_us");
    lab.link.set(Conditions::delay_ms(20));
    let run = run_client(
        &lab.net,
        &server.addr,
        "delay",
        &args(&["-i", "50ms", "-c", "200"]),
        RUN_BOUND,
    );
    let median = run.rtt_ms("p50_us");
    let expected = 40.0 + overhead;
    eprintln!("{}", lab.link.describe());
    let (srtt, base_srtt, min_rtt) = (
        run.tcp("srtt_ms"),
        base.tcp("srtt_ms"),
        run.tcp("min_rtt_ms"),
    );
    let server_view = server.sensor(&lab.net, "delay");
    let server_min = server_view["tcp"]["min_rtt_ms"].as_f64();
    let row = Row {
        injected: "20 ms".into(),
        measured: format!(
            "client RTT median {median:.2} ms (baseline {overhead:.2} ms), min {:.2} ms; kernel srtt {srtt:.2} ms (baseline {base_srtt:.2} ms), min RTT {min_rtt:.2} ms; server's kernel min RTT {:.2} ms, srtt {:.2} ms",
            run.rtt_ms("min_us"),
            server_min.unwrap_or(f64::NAN),
            server_view["tcp"]["srtt_ms"].as_f64().unwrap_or(f64::NAN)
        ),
        checked: "median = 40 ms + baseline ± 5 %; 40 ms ≤ srtt ≤ the client's max RTT; min ≥ 40 ms (client, its kernel, the server's kernel)".into(),
    };
    show("1 delay", &row);
    assert_eq!(run.count("acked"), 200, "{}", run.summary);
    // The relay never releases a packet early: no round trip can beat 2 × 20 ms.
    assert!(
        run.rtt_ms("min_us") >= 40.0,
        "min below the injected 40 ms: {}",
        run.summary
    );
    // "Within a few percent": 5 %, as the jitter scenario's median. At 3 % the check failed
    // about one run in four on this 2-core VM, with the relay itself releasing packets
    // 10–27 ms late in those runs (its `released late by at most` figure above) and the
    // no-delay baseline swinging from 1.6 to 4 ms: the emulator's error, not the client's.
    assert!(
        rel_diff(median, expected) <= 0.05,
        "median {median:.3} ms, expected {expected:.3} ms (40 + baseline) within 5 %"
    );
    // The kernel sees the delay too (it is below TCP). Its srtt is a moving average (gain
    // 1/8) of its latest samples, each a round trip the client also timed (the reply carries
    // the ACK), so it lies within the client's RTTs: at least 40 ms, at most their max. Not
    // within 5 % of the median: one packet the relay released 10 ms late moves the average
    // for several samples (45.2 ms against a 43.2 ms median in one CI run; the old
    // "40 ms + the baseline connection's srtt" failed too when one delayed ACK left that
    // baseline at 9.7 ms).
    let max = run.rtt_ms("max_us");
    assert!(
        (40.0..=max).contains(&srtt),
        "kernel srtt {srtt:.3} ms outside the client's round trips [40 ms, max {max:.3} ms]"
    );
    assert!(
        min_rtt >= 40.0,
        "kernel min RTT {min_rtt:.3} ms below the injected 40 ms"
    );
    // The server's kernel sees it from the other end: its minimum cannot beat 40 ms either.
    // (Its srtt is shown, not compared: whether the client's kernel ACKs a reply at once
    // or delays the ACK until its next segment is that kernel's choice, and a delayed ACK
    // is in the server's samples.)
    let server_min = server_min
        .unwrap_or_else(|| panic!("the server's tcp figures for the sensor: {server_view}"));
    assert!(
        server_min >= 40.0,
        "server's kernel min RTT {server_min:.3} ms below 40 ms"
    );
    record("1 delay", row);
}

#[test]
fn jitter_20ms_plus_minus_10ms_each_way_shows_in_mdev_and_p99() {
    let Some(lab) = Lab::new("jitter") else {
        return;
    };
    let server = Server::start(&lab.net, &[]);
    let base = run_client(
        &lab.net,
        &server.addr,
        "base",
        &args(&["-i", "20ms", "-c", "100"]),
        RUN_BOUND,
    );
    let (overhead, base_mdev, base_max) = (
        base.rtt_ms("p50_us"),
        base.rtt_ms("mdev_us"),
        base.rtt_ms("max_us"),
    );
    let a = 10.0;
    lab.link.set(Conditions {
        jitter: Duration::from_millis(10),
        ..Conditions::delay_ms(20)
    });
    // 50 ms apart, readings and replies are further apart than the jitter's 20 ms span, so
    // keeping order seldom holds a packet back (the relay counts it when it does), and the
    // round trip is 40 ms + the sum of two U(−10, +10) ms: a triangle on [−20, +20] ms.
    let late_before = lab.link.lateness();
    let run = run_client(
        &lab.net,
        &server.addr,
        "jitter",
        &args(&["-i", "50ms", "-c", "300"]),
        RUN_BOUND,
    );
    eprintln!("{}", lab.link.describe());
    // The emulator's own error: on a loaded machine its threads release packets late (tens
    // of ms once, with two helpers building), which adds to every figure below. It is
    // measured (per packet, both ways) and added to what is expected; on a quiet machine it
    // is a few µs and changes nothing.
    let late = lab.link.lateness().since(late_before);
    let (late_mean, late_sd) = (late.mean_ms(), late.variance_ms2().sqrt());
    let (median, mdev, p99, min, max) = (
        run.rtt_ms("p50_us"),
        run.rtt_ms("mdev_us"),
        run.rtt_ms("p99_us"),
        run.rtt_ms("min_us"),
        run.rtt_ms("max_us"),
    );
    // The path's own spread adds in quadrature; a baseline's mdev under 4 ms adds under
    // 11 %, inside the tolerance. (Not added in: one stall in the short baseline would
    // make its mdev, and so the expectation, large.)
    let expected_mdev = (triangle_stddev(a).powi(2) + late.variance_ms2()).sqrt();
    // The sample's p99 lies between the distribution's 95th percentile and its top (300
    // samples: the 297th of them), plus what the path itself adds. (The max is not
    // bounded: one stall of a program under test on a busy machine would exceed it.)
    let p99_lo = 40.0 + overhead + triangle_quantile(a, 0.95);
    let p99_hi = 40.0 + triangle_quantile(a, 1.0) + base_max + late.max_ms();
    // The shape, not just two moments: the client's own RTTs (its `ack` events), less
    // 40 ms and the baseline, at five quantiles against the triangle's. With 300 samples a
    // quantile's standard error is under 0.8 ms here; 3 ms is about four of them.
    let mut rtts: Vec<f64> = run
        .events_of("ack")
        .iter()
        .filter_map(|ack| ack["rtt_us"].as_f64())
        .map(|us| us / 1e3 - 40.0 - overhead - late_mean)
        .collect();
    rtts.sort_by(f64::total_cmp);
    let quantiles: Vec<(f64, f64, f64)> = [0.1, 0.25, 0.5, 0.75, 0.9]
        .into_iter()
        .map(|q| {
            // NaN (no acks at all) shows in the row; the count assertion then fails.
            let measured = rtts
                .get(((rtts.len().max(1) - 1) as f64 * q).round() as usize)
                .copied()
                .unwrap_or(f64::NAN);
            (q, measured, triangle_quantile(a, q))
        })
        .collect();
    let shape: Vec<String> = quantiles
        .iter()
        .map(|(_, measured, expected)| format!("{measured:+.1}/{expected:+.1}"))
        .collect();
    // 3 ms is about four standard errors of a quantile of 300 samples; the emulator's
    // lateness spreads each one by its own standard deviation more.
    let quantile_tolerance = 3.0 + late_sd;
    let row = Row {
        injected: "20 ms ± 10 ms (uniform)".into(),
        measured: format!(
            "median {median:.2} ms, mdev {mdev:.2} ms, p99 {p99:.2} ms, min/max {min:.2}/{max:.2} ms (baseline median {overhead:.2}, mdev {base_mdev:.2} ms; emulator lateness mean {late_mean:.2}, sd {late_sd:.2} ms); p10/p25/p50/p75/p90 − 40 ms − baseline − lateness, measured/triangle: {} ms",
            shape.join(", ")
        ),
        checked: format!(
            "mdev = {expected_mdev:.2} ms ± 15 %; p99 in [{p99_lo:.2}, {p99_hi:.2}] ms; median = 40 ms + baseline + lateness ± 5 %; quantiles ± {quantile_tolerance:.1} ms"
        ),
    };
    show("2 jitter", &row);
    assert_eq!(run.count("acked"), 300, "{}", run.summary);
    assert!(
        min >= 40.0 + triangle_quantile(a, 0.0),
        "min {min:.3} ms below 20 ms"
    );
    assert!(
        // Up to the baseline's own variance more: a noisy baseline (mdev 4.7 and 5.8 ms in two
        // failed runs, each with a run mdev of 9.95 ms) says the path itself stalled then.
        mdev >= expected_mdev * 0.85
            && mdev <= (expected_mdev.powi(2) + base_mdev.powi(2)).sqrt() * 1.15,
        "mdev {mdev:.3} ms, expected {expected_mdev:.3} ms (√(2·10²/3 + lateness variance)) within 15 %, plus up to the baseline's variance ({base_mdev:.3} ms)"
    );
    assert!(
        (p99_lo..=p99_hi).contains(&p99),
        "p99 {p99:.3} ms outside [{p99_lo:.3}, {p99_hi:.3}] ms"
    );
    assert!(
        rel_diff(median, 40.0 + overhead + late_mean) <= 0.05,
        "median {median:.3} ms, expected {:.3} ms within 5 %",
        40.0 + overhead + late_mean
    );
    for (q, measured, expected) in quantiles {
        assert!(
            (measured - expected).abs() <= quantile_tolerance,
            "quantile {q}: {measured:+.2} ms, the triangle's {expected:+.2} ms (± {quantile_tolerance:.1} ms)"
        );
    }
    record("2 jitter", row);
}

#[test]
fn five_percent_loss_each_way_is_retransmitted_and_stored_once() {
    let Some(lab) = Lab::new("loss") else { return };
    let mut server = Server::start(&lab.net, &[]);
    lab.link.set(Conditions {
        loss: 0.05,
        ..Conditions::delay_ms(20)
    });
    let run = run_client(
        &lab.net,
        &server.addr,
        "loss",
        &args(&["-i", "50ms", "-c", "300"]),
        RUN_BOUND,
    );
    let retrans = lab.net.retrans_segs(&lab.net.client);
    let server_view = server.sensor(&lab.net, "loss");
    server.stop();
    // The server's side of it: it resent the replies the link dropped. Read after its
    // figure and after it stopped: its closing sample can include a reply resent late
    // (the client's last ACK or FIN lost), and the namespace's count only grows.
    let server_retrans = lab.net.retrans_segs(&lab.net.server);
    let values = server.store.values("loss");
    let (lost_up, lost_down) = lab.link.lost();
    eprintln!("{}", lab.link.describe());
    let (p50, p99, max) = (
        run.rtt_ms("p50_us"),
        run.rtt_ms("p99_us"),
        run.rtt_ms("max_us"),
    );
    let spikes = run
        .events_of("ack")
        .iter()
        .filter(|ack| ack["rtt_us"].as_f64().is_some_and(|us| us >= 80_000.0))
        .count();
    let reported = run.tcp("retransmits") as u64;
    let server_reported = server_view["tcp"]["retransmits"].as_u64();
    let row = Row {
        injected: "20 ms, 5 % loss".into(),
        measured: format!(
            "relay dropped {lost_up} up / {lost_down} down; client reports {reported} retransmitted segments (its namespace {retrans}), the server {} (its namespace {server_retrans}); RTT median {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms, {spikes} readings ≥ 80 ms; {}/300 acked, {} stored",
            server_reported.map_or("none".to_string(), |n| n.to_string()),
            run.count("acked"),
            values.values().sum::<usize>()
        ),
        checked: "p99 ≥ 80 ms (2 round trips: loss detected, then resent); 0 < each side's reported retransmits ≤ its namespace's; every reading stored exactly once".into(),
    };
    show("3 loss", &row);
    assert_eq!(run.count("acked"), 300, "{}", run.summary);
    assert_eq!(run.count("lost"), 0, "{}", run.summary);
    assert_stored_once(&values, 300);
    assert!(lost_up > 0 && lost_down > 0, "the relay dropped nothing");
    // Over TCP a lost segment is a delay, not a loss: the sender learns of it no sooner
    // than one round trip after sending it (a SACK of a later segment; otherwise a probe or
    // retransmission timer of 2 × srtt or ≥ 200 ms), and the resent copy takes another.
    // So a reading hit by a loss takes at least two injected round trips: 80 ms.
    assert!(p99 >= 80.0, "p99 {p99:.3} ms: no retransmission spike");
    assert!(retrans > 0, "the client's kernel retransmitted nothing");
    // What the client reports is its connections' share of what its namespace counted
    // (a segment resent after the client read its counters is in the namespace's only).
    assert!(
        reported > 0 && reported <= retrans,
        "client reported {reported} retransmitted segments, its namespace counted {retrans}"
    );
    let server_reported = server_reported
        .unwrap_or_else(|| panic!("the server's tcp figures for the sensor: {server_view}"));
    assert!(
        server_reported > 0 && server_reported <= server_retrans,
        "server reported {server_reported} retransmitted segments, its namespace {server_retrans}"
    );
    record("3 loss", row);
}

/// Every value stored exactly once, and `n` of them.
pub fn assert_stored_once(values: &std::collections::BTreeMap<i64, usize>, n: usize) {
    let twice: Vec<_> = values.iter().filter(|(_, &count)| count != 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    assert_eq!(values.len(), n, "stored readings");
}
