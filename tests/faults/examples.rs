//! The example runs of docs/measuring.md: `client` and `probe` in text mode (what a user
//! sees) on 20 ms and 5 % loss each way, and a client through a 3 s outage, each printed
//! with its command line and the injected condition. `#[ignore]`d: it checks only that
//! the runs succeed and print their summaries; the figures are checked by the other
//! scenarios. Run with
//! `SENSORLINK_REQUIRE_NETNS=1 cargo test --test faults -- --ignored --nocapture examples`.

use std::io::{BufRead, BufReader};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::link::Conditions;
use crate::netns::NetnsPair;
use crate::procs::{bin, Proc, Server, PATIENCE};
use crate::Lab;

/// Bound on one run: a liveness guard, far above any example's length.
const RUN_BOUND: Duration = Duration::from_secs(120);

/// A `sensorlink` command running in the client's namespace, its stdout collected.
struct TextRun {
    shown: String,
    proc: Proc,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl TextRun {
    /// Starts `sensorlink args…` in the client namespace and prints its command line.
    fn start(net: &NetnsPair, args: &[&str]) -> TextRun {
        let shown = format!("$ sensorlink {}", args.join(" "));
        println!("\n{shown}");
        let mut cmd = net.command(&net.client, bin());
        cmd.args(args).env("RUST_LOG", "sensorlink=warn");
        let (proc, stdout) = Proc::spawn(cmd);
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().expect("lines lock").push(line);
            }
        });
        TextRun {
            shown,
            proc,
            lines,
            reader: Some(reader),
        }
    }

    /// Waits (bounded) until `n` lines containing `text` have been printed.
    fn wait_for(&self, text: &str, n: usize) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let seen = self
                .lines
                .lock()
                .expect("lines lock")
                .iter()
                .filter(|line| line.contains(text))
                .count();
            if seen >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: never printed {n} lines with {text:?}; stderr:\n{}",
                self.shown,
                self.proc.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the exit, prints stdout and stderr, and asserts it exited 0 and printed
    /// `summary` (a line its summary always has).
    fn finish(mut self, summary: &str) -> String {
        let status = self.proc.wait(RUN_BOUND, &self.shown);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let out = self.lines.lock().expect("lines lock").join("\n");
        let err = self.proc.stderr();
        println!("{out}");
        if !err.is_empty() {
            println!("[stderr]\n{err}");
        }
        println!("[{status}]");
        assert!(status.success(), "{}: {status}; stderr:\n{err}", self.shown);
        assert!(
            out.contains(summary),
            "{}: no {summary:?} in its output",
            self.shown
        );
        out
    }
}

#[test]
#[ignore = "prints the example runs of docs/measuring.md; run by hand with --nocapture"]
fn runs_for_the_docs() {
    let Some(lab) = Lab::new("examples") else {
        return;
    };
    // Sampled every second (default 10 s), so its `/api/sensors` view is at most 1 s old.
    let server = Server::start(&lab.net, &["--tcp-info-interval", "1s"]);
    let addr = server.addr.as_str();
    let lossy = Conditions {
        loss: 0.05,
        ..Conditions::delay_ms(20)
    };
    lab.link.set(lossy);
    println!("\n=== injected: 20 ms delay and 5 % loss each way (seeded), server: SQLite --fsync os, --tcp-info-interval 1s ===");

    let client = TextRun::start(
        &lab.net,
        &[
            "client",
            addr,
            "--sensor",
            "lossy",
            "--interval",
            "50ms",
            "--count",
            "200",
            "--link-report",
            "5s",
        ],
    );
    let out = client.finish("sensorlink statistics");
    assert!(out.contains("200 sent, 200 acked, 0 lost"), "{out}");
    assert!(out.contains("kernel TCP:"), "{out}");
    println!("{}", lab.link.describe());
    let mut view = server.sensor(&lab.net, "lossy");
    assert!(
        view["tcp"]["srtt_ms"].is_number(),
        "no server-side tcp: {view}"
    );
    // The sparkline's points are the readings' values again: long, and not about the link.
    if let Some(entry) = view.as_object_mut() {
        entry.remove("spark");
    }
    println!(
        "\n[the server's /api/sensors entry for \"lossy\", without `spark`]\n{}",
        serde_json::to_string_pretty(&view).expect("a JSON value prints")
    );

    let probe = TextRun::start(
        &lab.net,
        &["probe", addr, "--count", "1000", "--interval", "10ms"],
    );
    let out = probe.finish("loss upstream");
    assert!(out.contains("sent 1000,"), "{out}");
    println!("{}", lab.link.describe());

    lab.link.set(Conditions::delay_ms(20));
    println!(
        "\n=== injected: 20 ms delay each way, no loss; after 10 acks an outage of 3 s (everything dropped) ==="
    );
    let client = TextRun::start(
        &lab.net,
        &[
            "client",
            addr,
            "--sensor",
            "outage",
            "--interval",
            "100ms",
            "--count",
            "60",
            "--timeout",
            "1s",
            "--max-backoff",
            "500ms",
            "--link-report",
            "0",
        ],
    );
    client.wait_for("acked time=", 10);
    lab.link.set_outage(true);
    // The outage's length is the injected condition itself, not a wait for something.
    std::thread::sleep(Duration::from_secs(3));
    lab.link.set_outage(false);
    let out = client.finish("sensorlink statistics");
    assert!(out.contains("60 acked, 0 lost"), "{out}");
    println!("{}", lab.link.describe());
}
