//! The legacy [`Session`] (`sensorlink client --legacy`): the seed client's exact bytes.
//!
//! Connect, send `ping`, wait for any reply (the connect time); then for each value send
//! `ping / ('<local time>', <value>)` and wait for any reply (the round trip): one reading in
//! flight at a time, and whatever bytes come back are its reply. A reply that does not come
//! within the timeout is `Packet loss`, as the seed printed. Unlike the seed, the connection
//! is then re-opened (a late `pong` would otherwise be taken for the next reply) and the
//! reading is sent again with its original timestamp. The reconnect loop is the engine's.

use std::time::Duration;

use bytes::Bytes;
use chrono::TimeZone as _;
use tokio::io::{AsyncRead, AsyncWrite};

use super::output::ServerTimes;
use super::session::{Event, Session};
use super::transport::{self, Connection, LegacyReplyDecoder, TransportError};
use crate::protocol::legacy::{encode_reading_value, LEGACY_MEASUREMENT, PING};
use crate::protocol::{FieldValue, Reading};

/// The seed's exchange: stop and wait, any reply acknowledges the reading in flight.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LegacySession;

impl Session for LegacySession {
    type Decoder = LegacyReplyDecoder;
    const LEGACY: bool = true;

    fn decoder(&self) -> LegacyReplyDecoder {
        LegacyReplyDecoder
    }

    async fn handshake<S: AsyncRead + AsyncWrite + Send>(
        &self,
        conn: &mut Connection<S, LegacyReplyDecoder>,
        timeout: Duration,
    ) -> Result<(), TransportError> {
        // The seed took any answer to its `ping` as the server being there.
        transport::handshake(conn, PING, timeout).await.map(drop)
    }

    fn window(&self) -> usize {
        1
    }

    fn reading(&self, value: FieldValue, timestamp_ns: i64) -> Reading {
        Reading {
            measurement: LEGACY_MEASUREMENT.to_string(),
            tags: Vec::new(),
            fields: vec![("value".to_string(), value)],
            timestamp_ns: Some(timestamp_ns),
        }
    }

    /// The seed's message for a reading: its timestamp as local time, its value.
    fn encode(&self, _seq: u64, reading: &Reading, out: &mut Vec<u8>) {
        let ts = reading.timestamp_ns.unwrap_or_else(crate::timefmt::now_ns);
        let local = chrono::Local.timestamp_nanos(ts).naive_local();
        let value = reading
            .fields
            .first()
            .map(|(_, v)| v.clone())
            .unwrap_or(FieldValue::Int(0));
        encode_reading_value(local, &value, out);
    }

    fn interpret(&self, reply: Bytes, oldest_in_flight: Option<u64>) -> Event {
        match oldest_in_flight {
            Some(token) => Event::Ack {
                token,
                rejected: false,
                duplicates: 0,
                conflicts: 0,
                times: ServerTimes::default(),
                raw: Some(reply),
            },
            // Bytes nobody waits for (a late `pong`): the seed would have taken them for the
            // next reading's reply; we do not.
            None => Event::Ignore,
        }
    }
}
