//! Control lines (`ping`, `sync`) and the server's replies (`pong`, `ack`, `error`).

use super::ProtocolError;

/// A control line sent by a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ping(Option<String>),
    Sync(String),
}

/// The answer to a `sync`: everything before it on this connection is stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ack {
    pub token: String,
    /// Readings accepted since the previous `sync` on this connection.
    pub readings: u64,
    /// Lines rejected since the previous `sync` on this connection.
    pub rejected: u64,
    /// Microseconds from the receipt of the batch's first reading to its commit.
    pub store_us: Option<u64>,
    /// Microseconds the store's transaction took to commit.
    pub commit_us: Option<u64>,
}

/// A line the server sends in line mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Pong(Option<String>),
    Ack(Ack),
    Error { line: u64, reason: String },
}

/// Whether a line is a control line rather than a reading (control lines contain no `=`).
pub fn is_control(_line: &[u8]) -> bool {
    unimplemented!()
}

/// Parse a control line (without its line ending).
pub fn parse_command(_line: &str) -> Result<Command, ProtocolError> {
    unimplemented!()
}

impl Reply {
    /// Append the reply with its `\n`.
    pub fn encode(&self, _out: &mut Vec<u8>) {
        unimplemented!()
    }

    /// Parse a reply line (without its line ending); unknown `key=value` pairs are ignored.
    pub fn parse(_line: &str) -> Result<Reply, ProtocolError> {
        unimplemented!()
    }
}
