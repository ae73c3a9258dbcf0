//! UDP probes on the emulated link: irtt (the reference) and `sensorlink probe`, 20 ms and
//! 5 % loss each way, against the injected values and each other.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use serde_json::Value;

use crate::link::Conditions;
use crate::netns::NetnsPair;
use crate::procs::Proc;
use crate::stats::{binomial_interval_percent, rel_diff};
use crate::table::{record, Row};
use crate::{have_tool, Lab};

/// irtt's port (its default) on the server side.
const IRTT_PORT: u16 = 2112;

/// Probe interval and length: 10 ms for 25 s is 2,500 probes, enough for a loss estimate
/// whose 99 % interval is about ± 1.1 points around 5 %.
const INTERVAL: &str = "10ms";
const DURATION: &str = "25s";

/// `irtt server` in the server namespace; killed on drop.
fn irtt_server(net: &NetnsPair) -> Proc {
    let mut cmd = net.command(&net.server, "irtt");
    let bind = format!("{}:{IRTT_PORT}", net.server_ip());
    cmd.args(["server", "-b", &bind, "-i", "0"]);
    let (proc, stdout) = Proc::spawn(cmd);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // It says "starting IPv4 server on ADDR" once it listens.
    loop {
        let line = rx
            .recv_timeout(crate::procs::PATIENCE)
            .unwrap_or_else(|_| panic!("irtt server did not start; stderr:\n{}", proc.stderr()));
        if line.contains("starting") {
            return proc;
        }
    }
}

/// Runs `irtt client` in the client namespace and returns its JSON `stats`.
fn irtt_client(net: &NetnsPair, interval: &str, duration: &str) -> Value {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let out = dir.path().join("irtt.json");
    let mut cmd = net.command(&net.client, "irtt");
    let addr = format!("{}:{IRTT_PORT}", net.server_ip());
    cmd.args([
        "client",
        "-Q",
        "-i",
        interval,
        "-d",
        duration,
        "--wait=1s",
        "-o",
    ])
    .arg(&out)
    .arg(&addr);
    let (mut proc, _stdout) = Proc::spawn(cmd);
    let status = proc.wait(Duration::from_secs(120), "irtt client");
    assert!(
        status.success(),
        "irtt client: {status}; stderr:\n{}",
        proc.stderr()
    );
    let text = std::fs::read_to_string(&out).expect("irtt wrote its JSON");
    let json: Value = serde_json::from_str(&text).expect("irtt's output is JSON");
    json["stats"].clone()
}

fn ns_to_ms(value: &Value) -> f64 {
    value
        .as_f64()
        .unwrap_or_else(|| panic!("a duration in ns: {value}"))
        / 1e6
}

fn uint(stats: &Value, key: &str) -> u64 {
    stats[key]
        .as_u64()
        .unwrap_or_else(|| panic!("irtt stats.{key}: {stats}"))
}

#[test]
fn irtt_on_20ms_and_5_percent_loss_each_way_measures_what_was_injected() {
    let Some(lab) = Lab::new("probes") else {
        return;
    };
    if !have_tool("probes", "irtt", "irtt") {
        return;
    }
    let _server = irtt_server(&lab.net);
    let base = irtt_client(&lab.net, INTERVAL, "2s");
    let overhead = ns_to_ms(&base["rtt"]["median"]);
    let injected = Conditions {
        loss: 0.05,
        ..Conditions::delay_ms(20)
    };
    lab.link.set(injected);
    let stats = irtt_client(&lab.net, INTERVAL, DURATION);
    eprintln!("{}", lab.link.describe());
    eprintln!("irtt stats: {stats}");
    let median = ns_to_ms(&stats["rtt"]["median"]);
    let expected = 40.0 + overhead;
    let sent = uint(&stats, "packets_sent");
    let server_received = uint(&stats, "server_packets_received");
    let up = stats["upstream_loss_percent"]
        .as_f64()
        .expect("upstream loss");
    let down = stats["downstream_loss_percent"]
        .as_f64()
        .expect("downstream loss");
    let (up_lo, up_hi) = binomial_interval_percent(sent, injected.loss, 0.99);
    let (down_lo, down_hi) = binomial_interval_percent(server_received, injected.loss, 0.99);
    assert!(sent >= 2000, "{sent} probes");
    // Only irtt crosses the link (IPv6 is off), so what it counts lost is what the relay
    // dropped, give or take its few control packets (open, close).
    let (relay_up, relay_down) = lab.link.lost();
    let (irtt_up, irtt_down) = (
        sent - server_received,
        server_received - uint(&stats, "packets_received"),
    );
    assert!(
        irtt_up.abs_diff(relay_up) <= 2 && irtt_down.abs_diff(relay_down) <= 2,
        "irtt lost {irtt_up} up / {irtt_down} down, the relay dropped {relay_up} / {relay_down}"
    );
    assert!(
        rel_diff(median, expected) <= 0.01,
        "irtt median {median:.3} ms, expected {expected:.3} ms (40 + baseline) within 1 %"
    );
    assert!(
        (up_lo..=up_hi).contains(&up),
        "irtt loss up {up:.2} % outside [{up_lo:.2}, {up_hi:.2}] %"
    );
    assert!(
        (down_lo..=down_hi).contains(&down),
        "irtt loss down {down:.2} % outside [{down_lo:.2}, {down_hi:.2}] %"
    );
    record(
        "6 probes (irtt)",
        Row {
            injected: "20 ms, 5 % loss".into(),
            measured: format!(
                "irtt: {sent} probes, RTT median {median:.2} ms (baseline {overhead:.2} ms), loss up {up:.2} % / down {down:.2} % (relay dropped {relay_up} / {relay_down})"
            ),
            checked: format!(
                "median = 40 ms + baseline ± 1 %; loss in binomial 99 % interval: up [{up_lo:.2}, {up_hi:.2}] %, down [{down_lo:.2}, {down_hi:.2}] %"
            ),
        },
    );
}
