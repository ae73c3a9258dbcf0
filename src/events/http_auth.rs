//! The HTTP side's refused requests: why (a bounded label) and the event that logs and
//! counts one (`sensorlink_http_auth_refused_total{reason}`).

use super::{logging, Event, Telemetry};

/// Why a request to a guarded route was refused (the `reason` label). The message is safe
/// to send and log: it never holds the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpRefusal {
    /// No `Authorization` header.
    Missing,
    /// Not `Bearer <token>`, two headers, or not a token's shape.
    Malformed,
    /// No such token (or its secret does not match).
    Unknown,
    Revoked,
    /// A valid token without the `read` scope: 403.
    NoReadScope,
}

impl HttpRefusal {
    /// In declaration order, so `reason as usize` indexes it.
    pub const ALL: [HttpRefusal; 5] = [
        HttpRefusal::Missing,
        HttpRefusal::Malformed,
        HttpRefusal::Unknown,
        HttpRefusal::Revoked,
        HttpRefusal::NoReadScope,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HttpRefusal::Missing => "missing",
            HttpRefusal::Malformed => "malformed",
            HttpRefusal::Unknown => "unknown",
            HttpRefusal::Revoked => "revoked",
            HttpRefusal::NoReadScope => "no_read_scope",
        }
    }

    /// The `error` of the JSON answer.
    pub fn message(self) -> &'static str {
        match self {
            HttpRefusal::Missing => "a token is required: send Authorization: Bearer <token>",
            HttpRefusal::Malformed => "malformed token or Authorization header",
            HttpRefusal::Unknown => "unknown token",
            HttpRefusal::Revoked => "this token is revoked",
            HttpRefusal::NoReadScope => {
                "this token may not read (a read token is made with `sensorlink token new --read`)"
            }
        }
    }
}

/// A request to `/api/*` or `/metrics` was refused for want of a read token.
pub struct HttpAuthRefused<'a> {
    pub reason: HttpRefusal,
    /// The request's path (never its query or headers: those may hold secrets).
    pub path: &'a str,
    /// Who asked (`None` only for a request that did not come through the accept loop).
    pub peer: Option<std::net::SocketAddr>,
}

impl Event for HttpAuthRefused<'_> {
    fn emit_to(self, t: &Telemetry) {
        let reason = self.reason.as_str();
        // A token-guessing client is known by its address (the token is never logged).
        let peer = tracing::field::display(
            self.peer
                .map_or_else(|| "unknown".to_string(), |peer| peer.to_string()),
        );
        if self.reason == HttpRefusal::Missing {
            // Every first visit of the dashboard asks once without a token: not news.
            tracing::debug!(reason, path = %self.path, %peer, "http request refused: no read token");
        } else if logging::allow_refused_connection() {
            // Shares the refused-connection budget: a scan must not flood the log.
            tracing::warn!(reason, path = %self.path, %peer, "http request refused: no read token");
        }
        t.http_auth_refused[self.reason as usize].increment(1);
    }
}
