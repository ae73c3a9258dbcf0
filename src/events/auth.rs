//! The events of token authentication on the sensor port (`--auth`): an `auth` line
//! answered, a legacy peer refused. Neither ever carries a token, only its public id.

use std::net::SocketAddr;

use super::{AuthResult, Event, Telemetry};
use crate::server::logging;

/// An `auth` line was answered (`sensorlink_auth_total{result}`). Never carries the token:
/// only its id, and only when the token was well-formed.
pub struct AuthChecked<'a> {
    pub peer: SocketAddr,
    pub token_id: Option<&'a str>,
    pub result: AuthResult,
    /// Why it was refused (the refusal's text: safe to log).
    pub refusal: Option<&'a str>,
}

impl Event for AuthChecked<'_> {
    fn emit_to(self, t: &Telemetry) {
        let id = self.token_id.unwrap_or("-");
        match self.result {
            AuthResult::Ok => tracing::debug!(peer = %self.peer, token_id = id, "authenticated"),
            AuthResult::Off => {
                tracing::debug!(peer = %self.peer, "auth sent, but auth is not enabled")
            }
            // A guesser must not flood the log: the rejected-line budget applies.
            _ if logging::allow_rejected_line() => tracing::warn!(
                peer = %self.peer,
                token_id = id,
                reason = self.refusal.unwrap_or(self.result.as_str()),
                "auth failed"
            ),
            _ => {}
        }
        t.auth[self.result as usize].increment(1);
    }
}

/// A legacy (seed) peer came from outside every `--allow-legacy` network while `--auth` is
/// on; it is closed at once (`connections_closed_total{reason="legacy_not_allowed"}`).
pub struct LegacyNotAllowed {
    pub peer: SocketAddr,
}

impl Event for LegacyNotAllowed {
    fn emit_to(self, _: &Telemetry) {
        if logging::allow_refused_connection() {
            tracing::warn!(peer = %self.peer, "legacy peer refused: auth is on and its address is not in --allow-legacy");
        }
    }
}
