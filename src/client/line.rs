//! The line-mode [`Session`]: each reading as one line of line protocol followed by
//! `sync <seq>`; the server's `ack <seq>` covers every reading sent before it on the
//! connection, and `error <line> <reason>` reports a refused line (or, for a `sync` line, a
//! store that failed: the reading is resent on a new connection).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use super::output::ServerTimes;
use super::session::{Event, Session};
use super::transport::{self, Connection, ReplyDecoder, TransportError};
use crate::protocol::control::{AuthSecret, Reply};
use crate::protocol::{ilp, FieldValue, Reading};

/// Line mode for one sensor: readings of `measurement` tagged `sensor=<sensor>`, or
/// untagged (the token's sensor) when `sensor` is `None`.
#[derive(Debug, Clone)]
pub(crate) struct LineSession {
    pub measurement: String,
    pub sensor: Option<String>,
    /// `--token`: sent as `auth <token>` before the opening `ping`.
    pub token: Option<AuthSecret>,
}

impl LineSession {
    /// Lines before the first reading: the opening `ping`, and `auth` before it.
    fn opening_lines(&self) -> u64 {
        1 + u64::from(self.token.is_some())
    }
}

impl Session for LineSession {
    type Decoder = ReplyDecoder;
    const LEGACY: bool = false;

    fn decoder(&self) -> ReplyDecoder {
        ReplyDecoder::default()
    }

    async fn handshake<S: AsyncRead + AsyncWrite + Send>(
        &self,
        conn: &mut Connection<S, ReplyDecoder>,
        timeout: Duration,
    ) -> Result<(), TransportError> {
        transport::line_handshake(conn, self.token.as_ref(), timeout).await
    }

    fn window(&self) -> usize {
        usize::MAX
    }

    fn reading(&self, value: FieldValue, timestamp_ns: i64) -> Reading {
        Reading {
            measurement: self.measurement.clone(),
            tags: sensor_tag(self.sensor.as_deref()),
            fields: vec![("value".to_string(), value)],
            timestamp_ns: Some(timestamp_ns),
        }
    }

    fn encode(&self, seq: u64, reading: &Reading, out: &mut Vec<u8>) {
        use std::io::Write as _;
        ilp::encode(reading, out);
        // Writing into a Vec cannot fail.
        let _ = writeln!(out, "sync {seq}");
    }

    /// After `h` opening lines (`ping`, and `auth` before it), reading `k` is line
    /// `2k + h - 1` and its `sync` line `2k + h`.
    fn reading_of_line(&self, line: u64) -> Option<u64> {
        let h = self.opening_lines();
        (line > h).then(|| (line - h).div_ceil(2))
    }

    fn interpret(&self, reply: Reply, _oldest_in_flight: Option<u64>) -> Event {
        match reply {
            Reply::Pong(_) | Reply::AuthOk(_) => Event::Ignore,
            Reply::Ack(ack) => {
                let Ok(token) = ack.token.parse::<u64>() else {
                    tracing::warn!(token = %ack.token, "ack for a token we never sent");
                    return Event::Ignore;
                };
                // Both are "of `readings`": a server claiming more is not believed past that.
                let duplicates = ack.duplicates.min(ack.readings);
                let conflicts = ack.conflicts.min(ack.readings - duplicates);
                Event::Ack {
                    token,
                    rejected: ack.readings == 0 && ack.rejected > 0,
                    duplicates,
                    conflicts,
                    times: ServerTimes {
                        store_us: ack.store_us,
                        commit_us: ack.commit_us,
                    },
                    raw: None,
                }
            }
            // After the opening lines each reading is two lines, the reading and its `sync`:
            // the second one is a `sync` (the server's store failed).
            Reply::Error { line, reason }
                if line > self.opening_lines() + 1
                    && (line - self.opening_lines()).is_multiple_of(2) =>
            {
                Event::SyncFailed { line, reason }
            }
            Reply::Error { line, reason } => Event::Rejected { line, reason },
        }
    }
}

/// The tags of a reading of `sensor`: none for `None` (the server uses the token's sensor).
pub(crate) fn sensor_tag(sensor: Option<&str>) -> Vec<(String, String)> {
    sensor
        .map(|name| ("sensor".to_string(), name.to_string()))
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(token: bool) -> LineSession {
        LineSession {
            measurement: "m".into(),
            sensor: Some("s".into()),
            token: token.then(|| AuthSecret::new("sl_abcd1234_x")),
        }
    }

    fn error(line: u64) -> Reply {
        Reply::Error {
            line,
            reason: "r".into(),
        }
    }

    /// `auth` shifts every line by one: errors still name the right reading, and a `sync`'s
    /// error is still told from a reading's.
    #[test]
    fn line_numbers_follow_the_opening_lines() {
        let plain = session(false);
        assert_eq!(plain.reading_of_line(1), None);
        assert_eq!(plain.reading_of_line(2), Some(1));
        assert_eq!(plain.reading_of_line(4), Some(2));
        assert!(matches!(
            plain.interpret(error(2), None),
            Event::Rejected { line: 2, .. }
        ));
        assert!(matches!(
            plain.interpret(error(3), None),
            Event::SyncFailed { line: 3, .. }
        ));

        let authed = session(true);
        assert_eq!(authed.reading_of_line(2), None);
        assert_eq!(authed.reading_of_line(3), Some(1));
        assert_eq!(authed.reading_of_line(4), Some(1));
        assert_eq!(authed.reading_of_line(5), Some(2));
        assert!(matches!(
            authed.interpret(error(3), None),
            Event::Rejected { line: 3, .. }
        ));
        assert!(matches!(
            authed.interpret(error(4), None),
            Event::SyncFailed { line: 4, .. }
        ));
        assert!(matches!(
            authed.interpret(error(5), None),
            Event::Rejected { line: 5, .. }
        ));
        assert!(matches!(
            authed.interpret(Reply::AuthOk("abcd1234".into()), None),
            Event::Ignore
        ));
    }
}
