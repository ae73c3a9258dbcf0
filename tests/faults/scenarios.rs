//! The TCP scenarios: delay, jitter, loss, outages and a stopped server, each measured by
//! `sensorlink client --json` against the condition the link injected.

use std::time::Duration;

use crate::link::Conditions;
use crate::procs::{run_client, Server};
use crate::stats::rel_diff;
use crate::table::{record, Row};
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
    assert_eq!(run.count("acked"), 200, "{}", run.summary);
    // The relay never releases a packet early: no round trip can beat 2 × 20 ms.
    assert!(
        run.rtt_ms("min_us") >= 40.0,
        "min below the injected 40 ms: {}",
        run.summary
    );
    assert!(
        rel_diff(median, expected) <= 0.03,
        "median {median:.3} ms, expected {expected:.3} ms (40 + baseline) within 3 %"
    );
    record(
        "1 delay",
        Row {
            injected: "20 ms".into(),
            measured: format!(
                "client RTT median {median:.2} ms (baseline {overhead:.2} ms), min {:.2} ms",
                run.rtt_ms("min_us")
            ),
            checked: "median = 40 ms + baseline ± 3 %; min ≥ 40 ms".into(),
        },
    );
}
