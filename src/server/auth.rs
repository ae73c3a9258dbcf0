//! One connection's authentication (`--auth`): the token it presented with `auth`, what
//! that token may write, and when the connection must be closed for it.
//!
//! No I/O here: [`super::connection`] asks [`ConnAuth`] at three points (an `auth` line, each
//! reading, a legacy peer's first bytes) and closes the connection once
//! [`ConnAuth::close_reason`] says so. Without `--auth` every reading is admitted as before.
//!
//! The stored sensor comes from the token, never from the peer's address: a reading names a
//! sensor the token may write, or carries none and gets the token's one sensor. Legacy peers
//! cannot present a token: with `--auth` they are admitted only from `--allow-legacy`
//! networks (the network is the credential), keyed by their address as before.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::auth::cidr::Cidr;
use crate::auth::{token, Authority, Grant, Refusal};
use crate::events::{AuthChecked, AuthResult, CloseReason, Event as _, Telemetry};
use crate::protocol::control::{AuthSecret, AUTH_FAILED_PREFIX, AUTH_OFF_REASON};
use crate::protocol::{ProtocolError, Reading};

/// Readings refused for want of a token plus refused `auth` lines a connection may send
/// before it is closed: a client that forgot its token learns it from the first error, and
/// a guesser gets only this many tries per connection (the connect rate bounds the rest).
pub const MAX_AUTH_STRIKES: u32 = 3;

/// One connection's authentication state.
#[derive(Debug)]
pub(super) struct ConnAuth {
    /// The tokens in force; `None`: no `--auth`, everything is admitted.
    authority: Option<Arc<Authority>>,
    /// What the last accepted `auth` granted.
    grant: Option<Arc<Grant>>,
    strikes: u32,
    /// Set once the connection must end (it reads nothing more after that).
    close: Option<CloseReason>,
}

impl ConnAuth {
    pub(super) fn new(authority: Option<Arc<Authority>>) -> Self {
        ConnAuth {
            authority,
            grant: None,
            strikes: 0,
            close: None,
        }
    }

    /// Why the connection must close now, if it must.
    pub(super) fn close_reason(&self) -> Option<CloseReason> {
        self.close
    }

    /// Answer `auth <token>`: the token's id, or the `error` reply's reason. A refused token
    /// also drops the one accepted before (a peer switching tokens gets the new one or none).
    pub(super) fn authenticate(
        &mut self,
        secret: &AuthSecret,
        peer: SocketAddr,
        telemetry: &Telemetry,
    ) -> Result<String, String> {
        let Some(authority) = &self.authority else {
            AuthChecked {
                peer,
                token_id: None,
                result: AuthResult::Off,
                refusal: None,
            }
            .emit_to(telemetry);
            return Err(AUTH_OFF_REASON.to_owned());
        };
        // Only a well-formed token's id is ever shown; the rest of it never is.
        let token_id = token::id_of(secret.expose());
        match authority.verify(secret.expose()) {
            Ok(grant) => {
                AuthChecked {
                    peer,
                    token_id,
                    result: AuthResult::Ok,
                    refusal: None,
                }
                .emit_to(telemetry);
                let id = grant.id().to_owned();
                self.grant = Some(grant);
                Ok(id)
            }
            Err(refusal) => {
                let reason = refusal.to_string();
                AuthChecked {
                    peer,
                    token_id,
                    result: AuthResult::of(&refusal),
                    refusal: Some(&reason),
                }
                .emit_to(telemetry);
                self.grant = None;
                self.strike();
                Err(format!("{AUTH_FAILED_PREFIX}{reason}"))
            }
        }
    }

    /// Whether this connection may store `reading`; an untagged reading gets the token's
    /// sensor as its `sensor` tag, so the store keys it by the token, not by the address.
    ///
    /// # Errors
    /// No token yet ([`ProtocolError::Unauthenticated`], a strike), a sensor or measurement
    /// outside the token's scope ([`ProtocolError::NotPermitted`]), or the token revoked by a
    /// reload ([`ProtocolError::AuthFailed`]; the connection is then closed).
    pub(super) fn admit(&mut self, reading: &mut Reading) -> Result<(), ProtocolError> {
        let Some(authority) = &self.authority else {
            return Ok(());
        };
        let Some(grant) = &mut self.grant else {
            self.strike();
            return Err(ProtocolError::Unauthenticated);
        };
        if !grant.is_current() {
            match authority.refresh(grant) {
                Ok(fresh) => *grant = fresh,
                Err(refusal) => return Err(self.revoked(&refusal)),
            }
        }
        let tag = reading.tag("sensor");
        let sensor = grant
            .sensor_for(&reading.measurement, tag)
            .map_err(|scope| ProtocolError::NotPermitted(scope.to_string()))?;
        if tag.is_none() {
            let sensor = sensor.to_owned();
            reading.tags.push(("sensor".to_owned(), sensor));
        }
        Ok(())
    }

    /// Whether a legacy (seed) peer from `ip` may go on; if not, the connection closes.
    pub(super) fn legacy_allowed(&mut self, ip: IpAddr, allow: &[Cidr]) -> bool {
        if self.authority.is_none() || allow.iter().any(|net| net.contains(ip)) {
            return true;
        }
        self.close = Some(CloseReason::LegacyNotAllowed);
        false
    }

    fn strike(&mut self) {
        self.strikes += 1;
        if self.strikes >= MAX_AUTH_STRIKES {
            self.close.get_or_insert(CloseReason::AuthFailed);
        }
    }

    fn revoked(&mut self, refusal: &Refusal) -> ProtocolError {
        tracing::warn!(cause = %refusal, "token no longer valid; closing connection");
        self.grant = None;
        self.close = Some(CloseReason::TokenRevoked);
        ProtocolError::AuthFailed(refusal.to_string())
    }
}

/// Re-read the tokens file (SIGHUP) and log what changed; on an error the tokens in force
/// stay. Connections holding a token revoked, removed or changed see it at their next
/// reading ([`ConnAuth::admit`]). What the SIGHUP listener registers as `what="auth"`.
///
/// # Errors
/// The file cannot be read or is invalid (the previous tokens stay in force).
pub fn reload_auth(authority: &Authority) -> anyhow::Result<()> {
    match authority.reload() {
        Ok(summary) => {
            tracing::info!(file = %authority.path().display(), %summary, "tokens reloaded");
            Ok(())
        }
        Err(err) => {
            tracing::error!(file = %authority.path().display(), cause = %format!("{err:#}"), "tokens not reloaded; the previous ones stay in force");
            Err(err)
        }
    }
}
