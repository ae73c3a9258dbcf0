//! How a client run ends: a closed stdout (`| head`), SIGTERM, and a server that accepts
//! and closes at once (the backoff must grow, and both modes must give up and report).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::*;

/// The lines `out` gives, read on their own thread, so the test waits for each with a bound
/// (`recv_timeout`) instead of blocking on a read that may never return.
fn lines_of(out: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = BufReader::new(out);
        loop {
            let mut line = String::new();
            match out.read_line(&mut line) {
                Ok(1..) if tx.send(line).is_ok() => {}
                _ => return,
            }
        }
    });
    rx
}

/// Wait for `child` to exit within [`PATIENCE`]; kills it and panics otherwise.
fn wait_exit(child: &mut Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: the client did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `sensorlink client ... | head -3`: once the reader is gone, the client stops with exit 0
/// instead of running on and printing into the void.
#[test]
fn closed_stdout_ends_the_client_with_exit_0() {
    let server = Server::start(&[]);
    let mut child = bin()
        .args(["client", &server.addr.to_string(), "--interval", "10ms"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client");
    // `head -3`: read three lines, then close the pipe's read end (the thread ends).
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, head) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut stdout = BufReader::new(stdout);
        for _ in 0..3 {
            let mut line = String::new();
            if stdout.read_line(&mut line).is_err() || tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut first = Vec::new();
    for _ in 0..3 {
        match head.recv_timeout(PATIENCE) {
            Ok(line) => first.push(line),
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("fewer than 3 lines from the client ({err}): {first:?}");
            }
        }
    }
    assert!(first[2].starts_with("seq=1 value=102 acked"), "{first:?}");
    let status = wait_exit(&mut child, "closed stdout");
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.is_empty(),
        "a closed stdout is not an error: {stderr}"
    );
}

/// SIGTERM is handled like Ctrl-C: pending readings are delivered, the summary printed and
/// the spool flushed (a new run on it has nothing to replay).
#[test]
fn sigterm_prints_the_summary_and_flushes_the_spool() {
    let server = Server::start(&[]);
    let spool = tempfile::tempdir().expect("temp dir");
    let spool_dir = spool.path().join("q");
    let mut child = bin()
        .args([
            "client",
            &server.addr.to_string(),
            "--interval",
            "10ms",
            "--json",
        ])
        .arg("--spool")
        .arg(&spool_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client");
    let stdout = lines_of(child.stdout.take().expect("piped stdout"));
    let mut lines = Vec::new();
    while !lines
        .iter()
        .any(|l: &String| l.contains(r#""event":"ack""#))
    {
        match stdout.recv_timeout(PATIENCE) {
            Ok(line) => lines.push(line),
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no ack from the client ({err}): {lines:?}");
            }
        }
    }
    // SAFETY: kill(2) on our own child's PID, not yet reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = wait_exit(&mut child, "SIGTERM");
    assert_eq!(status.code(), Some(0), "killed by the signal? {status:?}");
    // The client has exited: its stdout ends (the reader thread hangs up) within the bound.
    let mut rest = String::new();
    loop {
        match stdout.recv_timeout(PATIENCE) {
            Ok(line) => rest.push_str(&line),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(err) => panic!("stdout did not end after the exit ({err}): {rest}"),
        }
    }
    let all = lines.concat() + &rest;
    let summary = summary(all.as_bytes());
    let sent = summary["sent"].as_u64().expect("sent");
    assert!(sent >= 1, "{summary}");
    assert_eq!(summary["acked"].as_u64(), Some(sent), "{summary}");
    assert_eq!(summary["pending"], 0, "{summary}");

    let out = run(bin()
        .args(["client", &server.addr.to_string(), "--count", "1", "--json"])
        .arg("--spool")
        .arg(&spool_dir));
    assert_eq!(out.status.code(), Some(0));
    let opened = json_lines(&out.stdout)
        .into_iter()
        .find(|e| e["event"] == "spool")
        .expect("a spool event");
    assert_eq!(opened["replaying"], 0, "{opened}");
}

/// A listener that answers the first bytes of each connection with `pong` and closes it:
/// a failing store, or a balancer with no backend. Counts the connections it accepted.
fn accept_and_close() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("bound address");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 256];
            if matches!(conn.read(&mut buf), Ok(n) if n > 0) {
                let _ = conn.write_all(b"pong\n");
            }
        }
    });
    (addr, accepted)
}

/// Both modes back off for real against it (only an ack resets the backoff), give up once
/// the drain timeout has passed after the source ended, and report every reading lost.
/// See: issue 8, "Reconnects that back off for real".
#[test]
fn accept_and_close_server_gets_growing_delays_and_the_loss_is_reported() {
    for legacy in [false, true] {
        let (addr, accepted) = accept_and_close();
        let mut cmd = bin();
        cmd.args([
            "client",
            &addr.to_string(),
            "--count",
            "3",
            "--interval",
            "10ms",
        ])
        .args(["--timeout", "3s", "--json"]);
        if legacy {
            cmd.arg("--legacy");
        }
        let out = run(&mut cmd);
        let summary = summary(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "legacy={legacy}: {summary}");
        assert_eq!(summary["sent"], 3, "legacy={legacy}: {summary}");
        assert_eq!(summary["lost"], 3, "legacy={legacy}: {summary}");
        // Waits of at least 50, 100, 200, 400, 800, 1600 ms fit at most 7 connections in
        // the 3 s drain; a backoff reset on every connect made 30 or more.
        let accepted = accepted.load(Ordering::SeqCst);
        assert!(
            (2..=8).contains(&accepted),
            "legacy={legacy}: {accepted} connections"
        );
    }
}
