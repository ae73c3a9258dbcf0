//! The engine's reconnect loop over the server addresses: connect to the address the
//! [`Rotation`] names, run the connection, and on a failure move to the next address (at
//! once after a failed connect, after a short jitter when a live connection dropped) or,
//! after a whole round failed, back off (see [`crate::client::failover`]). Readings in
//! flight go back to the queue and are resent on whichever server comes next. While offline
//! the engine keeps taking values (and link reports), so nothing waits on the network.

use std::time::Duration;

use tokio::time::Instant;

use super::super::disconnect::DisconnectKind;
use super::super::failover::{self, Failure, Rotation};
use super::super::session::{open, Opened, Session};
use super::super::sleep_until_opt;
use super::super::transport::{Connector, TransportError};
use super::{Disconnect, Engine};
use crate::client::ClientError;

impl<S: Session> Engine<'_, S> {
    /// The reconnect loop; `connectors[i]` opens connections to server `i`.
    pub(super) async fn deliver<C: Connector>(
        &mut self,
        connectors: &mut [C],
    ) -> Result<(), ClientError> {
        // Spread a fleet over the list: each sensor starts on its own address.
        let first = failover::first_address(self.config.sensor.as_deref(), connectors.len());
        let mut rotation = Rotation::new(connectors.len(), first, self.config.max_backoff);
        let mut last_error = None;
        // Token refusals in a row (`addr: why`): fatal once every address refused (a round).
        let mut auth_refusals: Vec<String> = Vec::new();
        loop {
            self.output_ok()?;
            if self.finished_offline() {
                break;
            }
            self.acked_on_connection = false;
            let index = rotation.current();
            let Some(connector) = connectors.get_mut(index) else {
                break;
            };
            let Some(connected) = self.connect_or_stop(index, connector).await else {
                // The drain ended while connecting: what is pending is reported lost.
                last_error.get_or_insert_with(|| "stopped while connecting".to_string());
                break;
            };
            match connected {
                Ok((conn, connect_time, ping, socket)) => {
                    auth_refusals.clear();
                    if self.first_connect.is_none() {
                        self.first_connect = Some(connect_time);
                    } else {
                        self.reconnects += 1;
                        self.measure.reconnected();
                    }
                    let after = self.servers.connected(index);
                    self.printer.connected(
                        self.servers.addr(index),
                        connect_time,
                        ping,
                        self.reconnects,
                        self.state.pending_user(),
                        &after,
                    );
                    self.socket = socket;
                    self.sample_kernel();
                    let up_since = Instant::now();
                    let end = self.session_loop(conn).await;
                    self.close_kernel();
                    let Disconnect::Retry(reason, kind) = end? else {
                        break;
                    };
                    self.disconnects.count(kind);
                    self.disconnected();
                    self.servers.failed(index, kind, reason.clone());
                    // A server that accepts (or even acks) and then fails must not be
                    // hammered: only a connection that carried an ack and stayed up a
                    // while starts a new round (and a fresh backoff).
                    let worked = failover::worked(self.acked_on_connection, up_since.elapsed());
                    let step = rotation.failed(Failure::Dropped { worked });
                    self.printer.disconnected(
                        self.servers.addr(index),
                        self.servers.next(step.index),
                        &reason,
                        kind,
                        step.delay,
                    );
                    if !self.wait_offline(step.delay).await? {
                        break;
                    }
                }
                Err(err) => {
                    let kind = DisconnectKind::of_transport(&err, true);
                    self.disconnects.count(kind);
                    self.servers.failed(index, kind, err.to_string());
                    // One collector with a stale token file must not stop a client that
                    // others accept; when all refuse, every reconnect would be refused too.
                    if let TransportError::AuthFailed(why) = &err {
                        auth_refusals.push(format!("{}: {why}", self.servers.addr(index)));
                        if auth_refusals.len() >= self.servers.len() {
                            return Err(self.auth_failed(why, &auth_refusals));
                        }
                    } else {
                        auth_refusals.clear();
                    }
                    let step = rotation.failed(Failure::Connect);
                    // Never connected at all: the servers are unreachable once a whole round
                    // failed after the connect timeout, or a stop came and every address
                    // was tried since.
                    if self.stop.is_cancelled() {
                        self.start_draining();
                    }
                    let gave_up = (step.round_over
                        && self.started.elapsed() >= self.config.connect_timeout)
                        || (self.stop.is_cancelled() && !self.untried_in_drain());
                    if self.first_connect.is_none() && gave_up {
                        return Err(self.unreachable(err.to_string()));
                    }
                    last_error = Some(err.to_string());
                    tracing::debug!(
                        cause = %err, delay = ?step.delay, kind = kind.as_str(),
                        server = self.servers.addr(index), "connect failed"
                    );
                    // Before the first connection a lone server's failures are not printed
                    // (the run ends "unreachable" if it never answers); with several, each
                    // move to the next address is.
                    if self.first_connect.is_some() || self.servers.len() > 1 {
                        self.printer.disconnected(
                            self.servers.addr(index),
                            self.servers.next(step.index),
                            &format!("connect failed: {err}"),
                            kind,
                            step.delay,
                        );
                    }
                    if !self.wait_offline(step.delay).await? {
                        break;
                    }
                }
            }
        }
        if self.first_connect.is_none() {
            let cause = last_error.unwrap_or_else(|| "no connection was attempted".to_string());
            return Err(self.unreachable(cause));
        }
        Ok(())
    }

    /// Every address refused the token (`each`: `addr: why` per address; one address:
    /// `why`, by it): the error names them.
    fn auth_failed(&self, why: &str, each: &[String]) -> ClientError {
        ClientError::AuthFailed(match self.servers.len() {
            1 => format!("{why} (by {})", self.servers.names()),
            _ => format!("every server refused the token: {}", each.join("; ")),
        })
    }

    /// No address could be reached: each one's last error (one address: `cause`).
    fn unreachable(&self, cause: String) -> ClientError {
        let cause = match self.servers.len() {
            1 => cause,
            _ => self.servers.unreachable_cause().unwrap_or(cause),
        };
        ClientError::Unreachable {
            addr: self.servers.names(),
            cause,
        }
    }
    /// [`open`] a connection to address `index`, unless the drain ends first (`None`). A
    /// stop while connecting starts the drain, so a stop never waits for a whole connect
    /// timeout. An attempt begun while draining, to an address not yet tried since the
    /// drain began, is bounded by the connect timeout only: every address gets one try
    /// before the drain gives up. One cut by the drain while another address is still
    /// untried is a connect timeout of this one (the next is tried).
    pub(super) async fn connect_or_stop<C: Connector>(
        &mut self,
        index: usize,
        connector: &mut C,
    ) -> Option<Result<Opened<C::Stream, S::Decoder>, TransportError>> {
        let stop = self.stop.clone();
        let mut draining_since = self.draining_since;
        let now = Instant::now();
        let owed_a_try = draining_since.is_some_and(|since| !self.tried_since(index, since));
        if let Some(at) = self.tried_at.get_mut(index) {
            *at = Some(now);
        }
        let connecting = open(&self.session, self.config.connect_timeout, connector);
        tokio::pin!(connecting);
        let opened = loop {
            let drain_deadline = self.drain_deadline().filter(|_| !owed_a_try);
            tokio::select! {
                opened = &mut connecting => break Some(opened),
                _ = sleep_until_opt(drain_deadline) => break None,
                _ = stop.cancelled(), if draining_since.is_none() => {
                    draining_since = Some(Instant::now());
                    self.draining_since = draining_since;
                }
            }
        };
        if owed_a_try && matches!(opened, Some(Ok(_))) {
            self.drain_grace_until = Some(Instant::now() + self.config.drain_timeout);
        }
        if let (Some(since), false, Some(at)) =
            (draining_since, owed_a_try, self.tried_at.get_mut(index))
        {
            // Begun before the drain (or again within it): in progress as the drain ran,
            // that was this address's try.
            *at = Some(at.map_or(since, |at| at.max(since)));
        }
        match opened {
            None if self.untried_in_drain() => {
                Some(Err(TransportError::TimedOut { what: "connect" }))
            }
            opened => opened,
        }
    }

    /// While offline: keep accepting readings until `delay` passes. `false` = stop now.
    /// While draining, an address not yet tried since the drain began cuts the wait to
    /// what is left of the drain (and the drain's end then tries it, not stops).
    pub(super) async fn wait_offline(&mut self, delay: Duration) -> Result<bool, ClientError> {
        let delay_until = Instant::now() + delay;
        loop {
            let owed_a_try = self.untried_in_drain();
            let until = match self.drain_deadline() {
                Some(deadline) if owed_a_try => delay_until.min(deadline),
                _ => delay_until,
            };
            self.mark_events();
            self.give_turn();
            self.last_link_report(false).await?;
            // Nothing left to deliver (or the drain is over): no point in waiting.
            if self.finished_offline() {
                return Ok(false);
            }
            let drain_deadline = self.drain_deadline().filter(|_| !owed_a_try);
            let link_due = self.link_due();
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return Ok(true),
                _ = sleep_until_opt(drain_deadline) => return Ok(false),
                value = self.values.recv(), if self.values_open => {
                    // Offline, nothing is in flight: never a connection to close.
                    self.on_value(value).await?;
                }
                // Reports go on while offline: they tell of the outage once delivered.
                _ = sleep_until_opt(link_due) => {
                    self.link_report(false).await?;
                }
                // The producer stops on its own; what it already sent is still taken.
                _ = self.stop.cancelled(), if self.draining_since.is_none() => self.start_draining(),
            }
            self.output_ok()?;
        }
    }
}
