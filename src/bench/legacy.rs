//! Legacy mode: one connection's session in the seed's bytes, one message in flight:
//! `ping / ('<time>', <n>)`, then wait for `pong`. Replies are read as the seed read them,
//! through the transport's [`LegacyReplyDecoder`].

use std::sync::atomic::Ordering;

use tokio::time::Instant;

use crate::client::sleep_until_opt;
use crate::client::transport::{Connection, LegacyReplyDecoder};
use crate::protocol::{legacy, FieldValue};

use super::pace::{count_share, Pacer};
use super::report::{ConnResult, ErrorKind};
use super::{Phase, Shared, ACK_TIMEOUT};

/// Legacy mode: one `ping / ('<time>', <n>)` at a time, each answered by `pong`.
pub(super) async fn session<S>(
    shared: &Shared,
    index: usize,
    conn: Connection<S, LegacyReplyDecoder>,
    phase: Phase,
    result: &mut ConnResult,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    let (mut reader, mut writer) = conn;
    let s = &shared.settings;
    let live = &shared.live;
    let quota = s.count.map(|n| count_share(n, s.connections, index));
    let pacer = Pacer::new(s.rate_per_conn, phase.go, index, s.connections);
    let mut message = Vec::with_capacity(64);
    let mut sent = 0u64;
    loop {
        let now = Instant::now();
        if shared.stop.is_cancelled()
            || phase.stop_at.is_some_and(|t| now >= t)
            || quota.is_some_and(|q| sent >= q)
        {
            break;
        }
        if let Some(p) = pacer.filter(|p| p.due(now) <= sent) {
            tokio::select! {
                _ = tokio::time::sleep_until(p.when_due(sent + 1)) => {}
                _ = sleep_until_opt(phase.stop_at) => {}
                _ = shared.stop.cancelled() => {}
            }
            continue;
        }
        message.clear();
        let us = shared.legacy_next_us.fetch_add(1, Ordering::Relaxed);
        let Some(time) = chrono::DateTime::from_timestamp_micros(us) else {
            result.error(live, ErrorKind::Protocol, || "clock out of range".into());
            break;
        };
        let local = time.with_timezone(&chrono::Local).naive_local();
        legacy::encode_reading_value(local, &FieldValue::Int(sent as i64), &mut message);
        let at = Instant::now();
        writer.queue(&message);
        let exchange = async {
            writer.push_all().await?;
            reader.read_reply().await
        };
        let pong = tokio::time::timeout(ACK_TIMEOUT, exchange).await;
        sent += 1;
        match pong {
            Ok(Ok(pong)) if pong[..] == legacy::PONG[..] => {
                let now = Instant::now();
                live.acked.fetch_add(1, Ordering::Relaxed);
                if now >= phase.measure_from {
                    result.rtt.record(now, now - at, 1);
                    result.readings += 1;
                    result.bytes += message.len() as u64;
                    result.last_ack = Some(now);
                }
            }
            Ok(Ok(other)) => {
                result.unacked += 1;
                result.error(live, ErrorKind::Protocol, || {
                    format!("expected pong, got {:?}", String::from_utf8_lossy(&other))
                });
                break;
            }
            Ok(Err(err)) => {
                result.unacked += 1;
                result.error(live, ErrorKind::Disconnect, || {
                    format!("legacy exchange: {err}")
                });
                break;
            }
            Err(_) => {
                result.unacked += 1;
                result.error(live, ErrorKind::Timeout, || {
                    format!("no pong within {}", humantime::format_duration(ACK_TIMEOUT))
                });
                break;
            }
        }
    }
}
