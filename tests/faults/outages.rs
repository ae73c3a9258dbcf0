//! Outages of the link and a stopped server: both make replies late, but only the link's
//! makes the kernel retransmit, and the client must say which one happened.

use std::time::Duration;

use crate::link::Conditions;
use crate::netns::NetnsPair;
use crate::procs::{Client, ClientRun, Server, PATIENCE};
use crate::scenarios::assert_stored_once;
use crate::table::{record, show, Row};
use crate::Lab;

/// Bound on one client run: a liveness guard, far above any scenario's length.
const RUN_BOUND: Duration = Duration::from_secs(90);

/// What one faulted run measured.
struct Faulted {
    run: ClientRun,
    /// Segments the client's namespace retransmitted during the run.
    retrans: u64,
    /// Its retransmission timer expiries (`TCPTimeouts`): only a peer that stops
    /// acknowledging (a dead link) lets the ≥ 200 ms RTO run out.
    timeouts: u64,
    /// Its tail-loss probes (`TCPLossProbes`): sent after about 2 × srtt without an ACK,
    /// which a late delayed ACK can also cause.
    loss_probes: u64,
}

/// The client namespace's (retransmitted segments, timer expiries, loss probes).
fn tcp_counts(net: &NetnsPair) -> (u64, u64, u64) {
    (
        net.retrans_segs(&net.client),
        net.tcp_ext(&net.client, "TCPTimeouts"),
        net.tcp_ext(&net.client, "TCPLossProbes"),
    )
}

/// Runs a client (`count` readings, 100 ms apart, `flags`), and once it has `warmup` acks,
/// applies `fault` for `length`, then `heal`; the client must still exit 0 (nothing lost).
#[allow(clippy::too_many_arguments)]
fn faulted_run(
    net: &NetnsPair,
    server: &Server,
    sensor: &str,
    count: u32,
    flags: &[&str],
    length: Duration,
    fault: impl FnOnce(),
    heal: impl FnOnce(),
) -> Faulted {
    let before = tcp_counts(net);
    let count = count.to_string();
    let mut args = vec!["--link-report", "0", "-i", "100ms", "-c", &count];
    args.extend_from_slice(flags);
    let client = Client::start(net, &server.addr, sensor, &args);
    client.wait_for("ack", 10, PATIENCE);
    fault();
    // The fault's length is the injected condition itself, not a wait for something.
    std::thread::sleep(length);
    heal();
    let run = client.finish(RUN_BOUND);
    run.assert_success();
    let after = tcp_counts(net);
    Faulted {
        run,
        retrans: after.0 - before.0,
        timeouts: after.1 - before.1,
        loss_probes: after.2 - before.2,
    }
}

#[test]
fn outage_shorter_than_the_reply_timeout_delays_readings_and_loses_none() {
    let Some(lab) = Lab::new("outage") else {
        return;
    };
    let mut server = Server::start(&lab.net, &[]);
    lab.link.set(Conditions::delay_ms(20));
    let link = &lab.link;
    // The flow resumes at the first retransmission after the heal. Backed off, each
    // retransmission comes at twice the time since the send of the one before, plus an RTO
    // (PTO + RTO·(2^k − 1)): the one after the heal within 2 × 5 s + RTO of the send. RTO is
    // srtt + 4·rttvar ≥ 200 ms, well under 1 s here even with stalls; the reply takes one
    // round trip more. So 2 × 5 s + 2 × 1 s = 12 s bounds the late reply: 15 s leaves room.
    let Faulted { run, retrans, .. } = faulted_run(
        &lab.net,
        &server,
        "outage",
        120,
        &["--timeout", "15s"],
        Duration::from_secs(5),
        || link.set_outage(true),
        || link.set_outage(false),
    );
    server.stop();
    let values = server.store.values("outage");
    eprintln!("{}", lab.link.describe());
    let max = run.rtt_ms("max_us");
    let reported = run.tcp("retransmits") as u64;
    let row = Row {
        injected: "20 ms; outage 5 s (reply timeout 15 s)".into(),
        measured: format!(
            "max RTT {max:.0} ms, timeouts {}, disconnects {}, reconnects {}, retransmitted segments {reported} (namespace {retrans}); {}/120 acked, {} stored",
            run.count("timeouts"),
            run.summary["disconnects"],
            run.count("reconnects"),
            run.count("acked"),
            values.values().sum::<usize>()
        ),
        checked: "late, not lost: no timeout or disconnect, max RTT ≥ 4.9 s, retransmits > 0, stored exactly once".into(),
    };
    show("4a outage 5 s", &row);
    assert_eq!(run.count("acked"), 120, "{}", run.summary);
    assert_eq!(run.count("lost"), 0, "{}", run.summary);
    // The reply timeout is above the backoff bound derived above: late, not timed out.
    assert_eq!(run.count("timeouts"), 0, "{}", run.summary);
    assert_eq!(run.count("reconnects"), 0, "{}", run.summary);
    assert_stored_once(&values, 120);
    // A reading sent within 100 ms of the outage's start waits it out.
    assert!(
        max >= 4_900.0,
        "max RTT {max:.0} ms: nothing waited out the 5 s outage"
    );
    assert!(retrans > 0, "the client's kernel retransmitted nothing");
    assert!(
        reported > 0 && reported <= retrans,
        "client reported {reported} retransmitted segments, its namespace {retrans}"
    );
    assert_eq!(
        run.summary["disconnects"]
            .as_object()
            .map(|kinds| kinds.values().filter(|n| n.as_u64() != Some(0)).count()),
        Some(0),
        "disconnects: {}",
        run.summary
    );
    record("4a outage 5 s", row);
}

#[test]
fn outage_longer_than_the_reply_timeout_reconnects_and_replays_exactly_once() {
    let Some(lab) = Lab::new("long outage") else {
        return;
    };
    let mut server = Server::start(&lab.net, &[]);
    lab.link.set(Conditions::delay_ms(20));
    let spool = tempfile::tempdir().expect("a temporary directory");
    let spool_dir = spool
        .path()
        .to_str()
        .expect("a UTF-8 temporary path")
        .to_string();
    let link = &lab.link;
    let Faulted { run, retrans, .. } = faulted_run(
        &lab.net,
        &server,
        "long",
        150,
        &[
            "--timeout",
            "2s",
            "--max-backoff",
            "1s",
            "--spool",
            &spool_dir,
        ],
        Duration::from_secs(8),
        || link.set_outage(true),
        || link.set_outage(false),
    );
    server.stop();
    let values = server.store.values("long");
    eprintln!("{}", lab.link.describe());
    let reasons: std::collections::BTreeSet<String> = run
        .events_of("disconnected")
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
        .collect();
    let (timeouts, reconnects) = (run.count("timeouts"), run.count("reconnects"));
    let kinds = run.disconnect_kinds();
    let reported = run.tcp("retransmits") as u64;
    let row = Row {
        injected: "20 ms; outage 8 s (reply timeout 2 s, spool)".into(),
        measured: format!(
            "timeouts {timeouts}, disconnects {}, reconnects {reconnects}, resent {}, retransmitted segments {reported} (namespace {retrans}), kinds {kinds:?}, reasons {reasons:?}; {} of 150 stored",
            run.summary["disconnects"],
            run.count("resent"),
            values.len()
        ),
        checked: "a reply timeout, connect timeouts, each disconnect with its kind and reason; reconnect, replay; stored exactly once".into(),
    };
    show("4b outage 8 s", &row);
    assert!(timeouts >= 1, "no reply timeout: {}", run.summary);
    assert!(reconnects >= 1, "no reconnect: {}", run.summary);
    assert!(
        !reasons.is_empty() && !reasons.contains(""),
        "disconnects without a reason: {reasons:?}"
    );
    assert_eq!(run.count("lost"), 0, "{}", run.summary);
    assert!(run.count("resent") > 0, "nothing resent: {}", run.summary);
    assert_stored_once(&values, 150);
    assert!(retrans > 0, "the client's kernel retransmitted nothing");
    // The reply timeout made it reconnect (counted in `timeouts`, its event's kind
    // `reply_timeout`); the connects tried while the link was still dead timed out.
    assert!(kinds.contains("reply_timeout"), "kinds {kinds:?}");
    assert!(run.disconnects("connect_timeout") >= 1, "{}", run.summary);
    assert!(
        reported > 0,
        "client reported no retransmission: {}",
        run.summary
    );
    record("4b outage 8 s", row);
}

#[test]
fn stopped_server_and_dead_link_are_told_apart() {
    let Some(lab) = Lab::new("stopped") else {
        return;
    };
    let mut server = Server::start(&lab.net, &[]);
    lab.link.set(Conditions::delay_ms(20));
    let flags = ["--timeout", "1s", "--max-backoff", "500ms"];
    let pause = Duration::from_secs(3);
    // The server process is stopped, the link is fine: its kernel still acknowledges every
    // segment, so nothing is retransmitted; replies are merely late.
    let stopped = faulted_run(
        &lab.net,
        &server,
        "stopped",
        80,
        &flags,
        pause,
        || server.proc.signal(libc::SIGSTOP),
        || server.proc.signal(libc::SIGCONT),
    );
    // The same length of outage on the link, same flags: now segments are lost.
    let link = &lab.link;
    let cut = faulted_run(
        &lab.net,
        &server,
        "cut",
        80,
        &flags,
        pause,
        || link.set_outage(true),
        || link.set_outage(false),
    );
    server.stop();
    eprintln!("{}", lab.link.describe());
    let (stopped_reported, cut_reported) = (
        stopped.run.tcp("retransmits") as u64,
        cut.run.tcp("retransmits") as u64,
    );
    let describe = |faulted: &Faulted, reported: u64| {
        format!(
            "timeouts {}, retransmits {reported} (namespace {}: RTO expiries {}, loss probes {}), kinds {:?}",
            faulted.run.count("timeouts"),
            faulted.retrans,
            faulted.timeouts,
            faulted.loss_probes,
            faulted.run.disconnect_kinds()
        )
    };
    let row = Row {
        injected: "20 ms; server SIGSTOPped 3 s, then the link cut 3 s (reply timeout 1 s)".into(),
        measured: format!(
            "stopped: {}; cut: {}",
            describe(&stopped, stopped_reported),
            describe(&cut, cut_reported)
        ),
        checked: "both time out; RTO expiries == 0 and retransmits ≤ loss probes when stopped (client's figure and its namespace's); RTO expiries > 0 and retransmits > 0 when cut".into(),
    };
    show("5 stopped server vs outage", &row);
    for (name, faulted) in [("stopped", &stopped), ("cut", &cut)] {
        assert!(
            faulted.run.count("timeouts") >= 1,
            "{name}: no timeout: {}",
            faulted.run.summary
        );
        assert_eq!(
            faulted.run.count("lost"),
            0,
            "{name}: {}",
            faulted.run.summary
        );
        assert_stored_once(&server.store.values(name), 80);
    }
    // What only a dead link does: the retransmission timer (≥ 200 ms + srtt) runs out.
    // A stopped server's kernel still acknowledges every segment, at worst by its
    // delayed-ACK timer (≈ 40 ms, inflated to ≈ 80 ms while the process does not read):
    // always before the RTO. But that late ACK can come after a tail-loss probe, which
    // fires at 2·srtt + 2 ms (≈ 84 ms) with two segments in flight, and the probe resends
    // a segment. So a stopped server may show retransmits, but never more than its loss
    // probes, and never an RTO; a stopped server reported like a cut link (RTO
    // retransmissions) fails both.
    assert_eq!(
        stopped.timeouts, 0,
        "a stopped server ran the client's retransmission timer out"
    );
    assert!(
        stopped.retrans <= stopped.loss_probes,
        "a stopped server made the client's kernel retransmit beyond its loss probes"
    );
    assert!(
        cut.timeouts > 0 && cut.retrans > 0,
        "a dead link ran no retransmission timer out, or retransmitted nothing"
    );
    // And the client says so itself: its retransmits tell the two apart the same way.
    assert!(
        stopped_reported <= stopped.loss_probes,
        "stopped: client reported {stopped_reported} retransmits, beyond {} loss probes: {}",
        stopped.loss_probes,
        stopped.run.summary
    );
    assert!(cut_reported > 0, "cut: {}", cut.run.summary);
    record("5 stopped server vs outage", row);
}
