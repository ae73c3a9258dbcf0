//! Framing: tells legacy peers from line peers, and cuts a byte stream into frames with a
//! bounded buffer. Pure; the connection loop owns the socket.

use bytes::BytesMut;

use super::{ProtocolError, Reading};

/// What the first bytes of a connection say about its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    /// A newline-terminated protocol (line mode).
    Line,
    /// The seed's newline-less `ping` messages.
    Legacy,
    /// Not enough bytes yet to tell.
    NeedMore,
}

/// Decide the mode from the first bytes. See PROTOCOL.md "Telling the modes apart".
pub fn sniff(_buf: &[u8]) -> Sniff {
    unimplemented!()
}

/// One decoded line-mode frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Reading(Reading),
    Ping(Option<String>),
    Sync(String),
    /// A line that could not be used; `line` is its 1-based number on this connection.
    Invalid {
        line: u64,
        error: ProtocolError,
    },
}

/// Cuts newline-terminated lines off a buffer; never holds more than the line limit.
#[derive(Debug)]
pub struct LineDecoder {
    _max_line_bytes: usize,
}

impl LineDecoder {
    pub fn new(max_line_bytes: usize) -> Self {
        LineDecoder {
            _max_line_bytes: max_line_bytes,
        }
    }

    /// The next frame, consuming its bytes from `buf`; `None` means "read more".
    pub fn decode(&mut self, _buf: &mut BytesMut) -> Option<Frame> {
        unimplemented!()
    }

    /// Lines seen so far (1-based number of the last line).
    pub fn line_count(&self) -> u64 {
        unimplemented!()
    }

    /// At end of stream: the last line even without its newline.
    pub fn decode_eof(&mut self, _buf: &mut BytesMut) -> Option<Frame> {
        unimplemented!()
    }
}
