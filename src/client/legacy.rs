//! `sensorlink client --legacy`: the seed client's exact bytes and timing.
//!
//! Connect, send `ping`, wait for any reply (the connect time); then for each value send
//! `ping / ('<local time>', <value>)` and wait for any reply (the round trip). A reply that
//! does not come within the timeout is `Packet loss`, as the seed printed. Unlike the seed,
//! the connection is then re-opened (a late `pong` would otherwise be taken for the next
//! reply) and the reading is sent again with its original timestamp.

use std::time::{Duration, Instant};

use chrono::TimeZone as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::output::{Printer, RunTotals, Summary};
use super::state::ClientState;
use super::stats::RttStats;
use super::{sleep_until_opt, Backoff, ClientConfig};
use crate::cli::Outcome;
use crate::protocol::legacy::{encode_reading_value, PING};
use crate::protocol::{FieldValue, Reading};

/// The seed read replies with `recv(1024)`.
const RECV_BYTES: usize = 1024;

async fn connect(config: &ClientConfig) -> std::io::Result<(TcpStream, Duration)> {
    let start = Instant::now();
    let mut stream = tokio::time::timeout(config.timeout, TcpStream::connect(&config.addr))
        .await
        .map_err(|_| timed_out("connect"))??;
    stream.set_nodelay(true)?;
    stream.write_all(PING).await?;
    let mut reply = [0u8; RECV_BYTES];
    let n = tokio::time::timeout(config.timeout, stream.read(&mut reply))
        .await
        .map_err(|_| timed_out("first pong"))??;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "server closed the connection",
        ));
    }
    Ok((stream, start.elapsed()))
}

fn timed_out(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{what} timed out"))
}

/// The seed's message for a reading: its timestamp as local time, its value.
fn message(reading: &Reading) -> Vec<u8> {
    let ts = reading.timestamp_ns.unwrap_or_else(crate::timefmt::now_ns);
    let local = chrono::Local.timestamp_nanos(ts).naive_local();
    let value = reading
        .fields
        .first()
        .map(|(_, v)| v.clone())
        .unwrap_or(FieldValue::Int(0));
    let mut out = Vec::with_capacity(64);
    encode_reading_value(local, &value, &mut out);
    out
}

/// Run the legacy exchange until the values end (and are delivered) or Ctrl-C.
pub async fn run(
    config: &ClientConfig,
    printer: Printer,
    mut values: mpsc::Receiver<(FieldValue, i64)>,
    stop: CancellationToken,
) -> Outcome {
    let started = Instant::now();
    let mut state = ClientState::new(config.max_pending);
    let mut rtt = RttStats::new();
    let mut backoff = Backoff::new(config.max_backoff);
    let mut first_connect = None;
    let mut reconnects = 0u64;
    let mut values_open = true;
    let mut draining_since: Option<Instant> = None;
    let produce = |state: &mut ClientState, value: FieldValue, ts: i64| {
        let produced = state.produce(Reading {
            measurement: crate::protocol::legacy::LEGACY_MEASUREMENT.to_string(),
            tags: Vec::new(),
            fields: vec![("value".to_string(), value)],
            timestamp_ns: Some(ts),
        });
        if let Some(dropped) = produced.dropped {
            printer.dropped(dropped, "more than --max-pending readings unacknowledged");
        }
    };
    'run: loop {
        if !values_open {
            let since = *draining_since.get_or_insert_with(Instant::now);
            if state.pending() == 0 || since.elapsed() >= config.timeout {
                break;
            }
        }
        let mut stream = match connect(config).await {
            Ok((stream, connect_time)) => {
                backoff.reset();
                if first_connect.is_none() {
                    first_connect = Some(connect_time);
                } else {
                    reconnects += 1;
                }
                printer.connected(
                    &config.addr,
                    connect_time,
                    None,
                    reconnects,
                    state.pending(),
                );
                stream
            }
            Err(err) => {
                if first_connect.is_none()
                    && (started.elapsed() >= config.timeout || stop.is_cancelled())
                {
                    eprintln!("sensorlink: cannot reach {}: {err}", config.addr);
                    return Outcome::Unusable;
                }
                let delay = backoff.next_delay();
                if first_connect.is_some() {
                    printer.disconnected(&format!("connect failed: {err}"), delay);
                }
                let until = tokio::time::Instant::now() + delay;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => continue 'run,
                        value = values.recv(), if values_open => match value {
                            Some((value, ts)) => produce(&mut state, value, ts),
                            None => values_open = false,
                        },
                        _ = stop.cancelled(), if values_open => values_open = false,
                    }
                    if !values_open {
                        continue 'run;
                    }
                }
            }
        };
        loop {
            let now = Instant::now();
            if let Some(next) = state.next_to_send(now) {
                let (seq, bytes) = (next.seq, message(&next.reading));
                let exchange = async {
                    stream.write_all(&bytes).await?;
                    let mut reply = [0u8; RECV_BYTES];
                    let n = stream.read(&mut reply).await?;
                    if n == 0 {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "server closed the connection",
                        ));
                    }
                    Ok(reply[..n].to_vec())
                };
                match tokio::time::timeout(config.timeout, exchange).await {
                    Ok(Ok(reply)) => {
                        for acked in state.on_ack(seq, false, Instant::now()) {
                            rtt.record(acked.rtt);
                            printer.legacy_reply(acked.seq, &acked.reading, &reply, acked.rtt);
                        }
                    }
                    Ok(Err(err)) => {
                        state.on_disconnect();
                        let delay = backoff.next_delay();
                        printer.disconnected(&err.to_string(), delay);
                        tokio::time::sleep(delay).await;
                        continue 'run;
                    }
                    Err(_) => {
                        state.check_timeouts(Instant::now(), Duration::ZERO);
                        printer.lost(seq, config.timeout, true);
                        state.on_disconnect();
                        continue 'run;
                    }
                }
                continue;
            }
            if !values_open {
                continue 'run;
            }
            let drain = draining_since.map(|s| tokio::time::Instant::from_std(s + config.timeout));
            tokio::select! {
                value = values.recv() => match value {
                    Some((value, ts)) => produce(&mut state, value, ts),
                    None => values_open = false,
                },
                _ = stop.cancelled() => values_open = false,
                _ = sleep_until_opt(drain) => continue 'run,
            }
        }
    }
    if first_connect.is_none() {
        eprintln!("sensorlink: cannot reach {}", config.addr);
        return Outcome::Unusable;
    }
    for seq in state.give_up() {
        printer.lost_at_exit(seq, false);
    }
    let summary = Summary::of(RunTotals {
        addr: &config.addr,
        counters: state.counters(),
        pending: state.pending() as u64,
        replayed: 0,
        started,
        first_connect,
        reconnects,
        rtt: rtt.summary(),
        server_us: None,
    });
    printer.summary(&summary);
    summary.outcome()
}
