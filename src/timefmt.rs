//! Time helpers shared by server, client and query: epoch nanoseconds and human formats.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_nanos()).unwrap_or(i64::MAX)
}

/// RFC 3339 in UTC with nanoseconds, e.g. `2026-11-24T11:46:25.123456789Z`.
pub fn rfc3339_ns(ts_ns: i64) -> String {
    let dt = chrono::DateTime::from_timestamp_nanos(ts_ns);
    dt.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}
