//! Events of the UDP probe reflector (`crate::probe::reflector`): one counter per datagram,
//! by what became of it. No log line per datagram: a flood must not flood the log too.

use metrics::Counter;

use super::table::names::{UDP_PROBES, UDP_TABLE_EVICTED};
use super::{Event, Telemetry};

/// The reflector's counters, registered once.
#[derive(Debug)]
pub(super) struct UdpHandles {
    /// `result` = [`ProbeResult::ALL`].
    probes: [Counter; ProbeResult::ALL.len()],
    /// `table` = [`UdpTable::ALL`].
    evicted: [Counter; UdpTable::ALL.len()],
}

impl UdpHandles {
    pub(super) fn register() -> Self {
        UdpHandles {
            probes: ProbeResult::ALL
                .map(|result| metrics::counter!(UDP_PROBES, "result" => result.as_str())),
            evicted: UdpTable::ALL
                .map(|table| metrics::counter!(UDP_TABLE_EVICTED, "table" => table.as_str())),
        }
    }
}

/// What became of one datagram on the UDP side (the `result` label of
/// `sensorlink_udp_probes_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeResult {
    /// Reflected.
    Answered,
    /// Shorter than a reply: answering would amplify, so it is dropped.
    TooShort,
    /// Not a probe of ours (magic, version, kind, flags or token id).
    Malformed,
    /// `--auth` is on and the probe carries no signature.
    Unsigned,
    /// Signed with an unknown or revoked token, or a wrong MAC.
    BadMac,
    /// Over the source address's `--udp-rate-per-ip`.
    RateLimited,
    /// The reply could not be sent.
    SendFailed,
}

impl ProbeResult {
    /// In declaration order: the handles are indexed by `as usize`.
    pub const ALL: [ProbeResult; 7] = [
        ProbeResult::Answered,
        ProbeResult::TooShort,
        ProbeResult::Malformed,
        ProbeResult::Unsigned,
        ProbeResult::BadMac,
        ProbeResult::RateLimited,
        ProbeResult::SendFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProbeResult::Answered => "answered",
            ProbeResult::TooShort => "too_short",
            ProbeResult::Malformed => "malformed",
            ProbeResult::Unsigned => "unsigned",
            ProbeResult::BadMac => "bad_mac",
            ProbeResult::RateLimited => "rate_limited",
            ProbeResult::SendFailed => "send_failed",
        }
    }
}

/// One datagram handled by the reflector.
pub struct UdpProbeHandled {
    pub result: ProbeResult,
}

impl Event for UdpProbeHandled {
    fn emit_to(self, t: &Telemetry) {
        t.udp.probes[self.result as usize].increment(1);
    }
}

/// A bounded table of the reflector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpTable {
    /// Per-session records: an evicted session counts from 0 again.
    Sessions,
    /// Per-address token buckets: an evicted address starts with a full burst.
    Buckets,
}

impl UdpTable {
    /// In declaration order: the handles are indexed by `as usize`.
    pub const ALL: [UdpTable; 2] = [UdpTable::Sessions, UdpTable::Buckets];

    pub fn as_str(self) -> &'static str {
        match self {
            UdpTable::Sessions => "sessions",
            UdpTable::Buckets => "buckets",
        }
    }
}

/// The reflector evicted the least recently used entry of a full table.
pub struct UdpTableEvicted {
    pub table: UdpTable,
}

impl Event for UdpTableEvicted {
    fn emit_to(self, t: &Telemetry) {
        t.udp.evicted[self.table as usize].increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_in_declaration_order() {
        for (index, result) in ProbeResult::ALL.iter().enumerate() {
            assert_eq!(*result as usize, index, "{result:?}");
        }
        for (index, table) in UdpTable::ALL.iter().enumerate() {
            assert_eq!(*table as usize, index, "{table:?}");
        }
    }
}
