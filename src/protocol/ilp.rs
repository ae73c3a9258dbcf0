//! InfluxDB line protocol: parse one line into a [`Reading`], encode a [`Reading`] as a line.

use super::{ProtocolError, Reading};

/// Parse one line (without `\n` / `\r\n`).
pub fn parse(_line: &[u8]) -> Result<Reading, ProtocolError> {
    unimplemented!()
}

/// Append `reading` as one line, `\n` included.
pub fn encode(_reading: &Reading, _out: &mut Vec<u8>) {
    unimplemented!()
}
