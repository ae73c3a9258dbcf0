//! The seed's frozen byte behaviour: `ping`, `ping / ('<local time>', <n>)`, answered by `pong`.
//!
//! The seed client sends `ping` (4 bytes, no newline), waits for `pong`, then keeps sending
//! Python's `f"ping / {(str(datetime.now()), count)}"`, e.g.
//! `ping / ('2026-11-24 11:46:25.123456', 102)`, also without a newline. Messages are
//! framed by their content: a reading ends at the first `)` after `ping / (`.
//!
//! The time is naive local time; it is read in the server's time zone.

use bytes::{Buf, BytesMut};
use chrono::{NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Timelike};

use super::{FieldValue, ProtocolError, Reading};

pub const PING: &[u8] = b"ping";
pub const PONG: &[u8] = b"pong";

/// Measurement name given to legacy readings.
pub const LEGACY_MEASUREMENT: &str = "legacy";
/// Field name given to a legacy reading's value.
pub const LEGACY_FIELD: &str = "value";

/// How long a bare `ping` waits for more bytes before it is answered as a ping: a reading
/// cut right after its `ping` arrives whole well within it on any link the seed ran on,
/// and it is short next to the seed client's wait for `pong`. The default of the server's
/// hidden `--legacy-ping-quiet` (tests lengthen it so a slow machine cannot split them).
pub const LEGACY_PING_QUIET: std::time::Duration = std::time::Duration::from_millis(100);

/// How a reading message starts.
const READING_PREFIX: &[u8] = b"ping / (";

/// One legacy message.
#[derive(Debug, Clone, PartialEq)]
pub enum LegacyMessage {
    /// A bare `ping`: keep-alive, not a reading.
    Ping,
    /// `ping / ('2026-11-24 11:46:25.123456', 102)`.
    Reading(Reading),
    /// Anything else; still answered `pong`, as the seed did, but counted as rejected.
    Invalid(ProtocolError),
}

/// Cuts legacy messages off a buffer.
#[derive(Debug)]
pub struct LegacyDecoder {
    max_bytes: usize,
}

impl LegacyDecoder {
    pub fn new(max_bytes: usize) -> Self {
        LegacyDecoder { max_bytes }
    }

    /// The next message, consuming its bytes from `buf`; `None` means "read more".
    pub fn decode(&mut self, buf: &mut BytesMut) -> Option<LegacyMessage> {
        if buf.is_empty() {
            return None;
        }
        if buf.starts_with(READING_PREFIX) {
            return match memchr::memchr(b')', &buf[READING_PREFIX.len()..]) {
                Some(i) => {
                    let msg = buf.split_to(READING_PREFIX.len() + i + 1);
                    Some(parse_reading_message(&msg))
                }
                None if buf.len() > self.max_bytes => {
                    buf.clear();
                    Some(LegacyMessage::Invalid(ProtocolError::LineTooLong {
                        limit: self.max_bytes,
                    }))
                }
                None => None,
            };
        }
        if buf.starts_with(PING) {
            let rest = &buf[PING.len()..];
            // `ping` alone, or `ping /`, may be a reading cut by TCP: answering it now would
            // turn the rest into garbage and the reading into two `pong`s and nothing stored.
            // So wait until the next bytes tell, or (for a bare `ping`, which the seed client
            // sends alone and then waits on) until the connection has been quiet for
            // [`LEGACY_PING_QUIET`]: see [`LegacyDecoder::decode_quiet`].
            if READING_PREFIX[PING.len()..].starts_with(rest) {
                return None;
            }
            buf.advance(PING.len());
            return Some(LegacyMessage::Ping);
        }
        if PING.starts_with(buf) {
            return None;
        }
        // Garbage: skip to the next `ping`; keep a trailing partial `ping` (it may be the
        // start of the next message split across reads).
        let cut = memchr::memmem::find(&buf[1..], PING)
            .map(|i| i + 1)
            .unwrap_or_else(|| buf.len() - partial_ping_suffix(buf));
        let junk = buf.split_to(cut.max(1));
        Some(LegacyMessage::Invalid(ProtocolError::InvalidLegacy(
            format!("expected \"ping\", got {}", preview(&junk)),
        )))
    }

    /// Whether `buf` is a bare `ping` held back by [`LegacyDecoder::decode`] until the
    /// next bytes or a quiet period tell whether a reading follows.
    pub fn holds_ping(buf: &[u8]) -> bool {
        buf == PING
    }

    /// After [`LEGACY_PING_QUIET`] with no new bytes: a held bare `ping` is a ping.
    pub fn decode_quiet(&mut self, buf: &mut BytesMut) -> Option<LegacyMessage> {
        if Self::holds_ping(buf) {
            buf.clear();
            return Some(LegacyMessage::Ping);
        }
        None
    }

    /// At end of stream: a leftover bare `ping` is a ping; any other incomplete rest is
    /// invalid.
    pub fn decode_eof(&mut self, buf: &mut BytesMut) -> Option<LegacyMessage> {
        if let Some(msg) = self.decode(buf) {
            return Some(msg);
        }
        if let Some(msg) = self.decode_quiet(buf) {
            return Some(msg);
        }
        if buf.is_empty() {
            return None;
        }
        let rest = buf.split();
        Some(LegacyMessage::Invalid(ProtocolError::InvalidLegacy(
            format!("incomplete message at end of stream: {}", preview(&rest)),
        )))
    }
}

/// Length of the longest proper prefix of `ping` that `buf` ends with.
fn partial_ping_suffix(buf: &[u8]) -> usize {
    (1..PING.len())
        .rev()
        .find(|&n| buf.len() > n && buf.ends_with(&PING[..n]))
        .unwrap_or(0)
}

/// A short, printable rendering of some bytes for an error message.
fn preview(bytes: &[u8]) -> String {
    const MAX: usize = 32;
    let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]);
    let more = if bytes.len() > MAX { "…" } else { "" };
    format!("{shown:?}{more}")
}

fn invalid(msg: impl Into<String>) -> LegacyMessage {
    LegacyMessage::Invalid(ProtocolError::InvalidLegacy(msg.into()))
}

/// `ping / (<ws>'<time>'<ws>,<ws><value><ws>)`, the whole message.
fn parse_reading_message(msg: &[u8]) -> LegacyMessage {
    let Some(inner) = msg
        .strip_prefix(READING_PREFIX)
        .and_then(|m| m.strip_suffix(b")"))
    else {
        return invalid("not a reading message");
    };
    let Ok(inner) = std::str::from_utf8(inner) else {
        return LegacyMessage::Invalid(ProtocolError::InvalidUtf8);
    };
    match parse_tuple(inner) {
        Ok((timestamp_ns, value)) => LegacyMessage::Reading(Reading {
            measurement: LEGACY_MEASUREMENT.to_owned(),
            // The server knows the sensor (from the connection) and adds it.
            tags: Vec::new(),
            fields: vec![(LEGACY_FIELD.to_owned(), value)],
            timestamp_ns: Some(timestamp_ns),
        }),
        Err(reason) => invalid(reason),
    }
}

fn parse_tuple(inner: &str) -> Result<(i64, FieldValue), String> {
    let s = inner.trim_start();
    let quote = match s.chars().next() {
        Some(q @ ('\'' | '"')) => q,
        _ => return Err("expected a quoted time".into()),
    };
    let s = &s[1..];
    let end = s.find(quote).ok_or("unterminated time string")?;
    let time = parse_time(&s[..end])?;
    let s = s[end + 1..].trim_start();
    let value = s
        .strip_prefix(',')
        .ok_or("expected \",\" after the time")?
        .trim();
    if value.is_empty() {
        return Err("missing value".into());
    }
    let value = parse_value(value)?;
    let ts = chrono::Local
        .from_local_datetime(&time)
        // In a DST fold the wall time happens twice; the first is the likelier reading.
        .earliest()
        .ok_or_else(|| format!("time {time} does not exist in the local time zone"))?
        .timestamp_nanos_opt()
        .ok_or("time out of range")?;
    Ok((ts, value))
}

/// `YYYY-MM-DD HH:MM:SS[.f]` with 1..=9 fraction digits; `T` may replace the space.
fn parse_time(s: &str) -> Result<NaiveDateTime, String> {
    let bad = || format!("invalid time {}", preview(s.as_bytes()));
    let b = s.as_bytes();
    if b.len() < 19 {
        return Err(bad());
    }
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        b[range].iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    let seps_ok = b[4] == b'-'
        && b[7] == b'-'
        && (b[10] == b' ' || b[10] == b'T')
        && b[13] == b':'
        && b[16] == b':';
    let (Some(y), Some(mo), Some(d), Some(h), Some(mi), Some(sec), true) = (
        num(0..4),
        num(5..7),
        num(8..10),
        num(11..13),
        num(14..16),
        num(17..19),
        seps_ok,
    ) else {
        return Err(bad());
    };
    let nanos = match &b[19..] {
        [] => 0,
        [b'.', frac @ ..] if (1..=9).contains(&frac.len()) => {
            let n = num(20..b.len()).ok_or_else(bad)?;
            // Scale to nanoseconds: `.5` is 500 ms.
            n * 10u32.pow(9 - frac.len() as u32)
        }
        _ => return Err(bad()),
    };
    let date = NaiveDate::from_ymd_opt(y as i32, mo, d).ok_or_else(bad)?;
    // Seconds stop at 59: Python has no leap seconds, chrono would read 60 as one.
    let time = (sec < 60)
        .then(|| NaiveTime::from_hms_nano_opt(h, mi, sec, nanos))
        .flatten()
        .ok_or_else(bad)?;
    Ok(date.and_time(time))
}

/// A Python literal as `repr` writes it: int, float, bool or str.
fn parse_value(s: &str) -> Result<FieldValue, String> {
    match s {
        "True" => return Ok(FieldValue::Bool(true)),
        "False" => return Ok(FieldValue::Bool(false)),
        _ => {}
    }
    let b = s.as_bytes();
    if let Some(&q @ (b'\'' | b'"')) = b.first() {
        return parse_py_string(&s[1..], char::from(q)).map(FieldValue::Str);
    }
    let digits = s.strip_prefix('-').unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit()) {
        return s
            .parse()
            .map(FieldValue::Int)
            .map_err(|_| format!("integer out of range: {}", preview(b)));
    }
    let number_like = matches!(b.first(), Some(c) if c.is_ascii_digit() || *c == b'-' || *c == b'.')
        && b.iter()
            .all(|&c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-'));
    match s.parse::<f64>() {
        Ok(v) if number_like && v.is_finite() => Ok(FieldValue::Float(v)),
        _ => Err(format!("unsupported value {}", preview(b))),
    }
}

/// Body of a Python string literal after its opening `quote`, up to the closing one,
/// which must end the value.
fn parse_py_string(s: &str, quote: char) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        if c == quote {
            return if i + c.len_utf8() == s.len() {
                Ok(out)
            } else {
                Err("unexpected text after string value".into())
            };
        }
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some((_, e)) = chars.next() else { break };
        let hex_len = match e {
            'x' => 2,
            'u' => 4,
            'U' => 8,
            _ => 0,
        };
        if hex_len > 0 {
            let hex: String = chars.by_ref().take(hex_len).map(|(_, c)| c).collect();
            let code = (hex.len() == hex_len)
                .then(|| u32::from_str_radix(&hex, 16).ok())
                .flatten()
                .and_then(char::from_u32)
                .ok_or("invalid escape in string value")?;
            out.push(code);
            continue;
        }
        match e {
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            '\\' | '\'' | '"' => out.push(e),
            // Python keeps unknown escapes as written.
            _ => {
                out.push('\\');
                out.push(e);
            }
        }
    }
    Err("unterminated string value".into())
}

/// Append the seed client's reading message for local time `time` and value `counter`.
pub fn encode_reading(time: NaiveDateTime, counter: i64, out: &mut Vec<u8>) {
    encode_reading_value(time, &FieldValue::Int(counter), out);
}

/// Append `ping / ('<time>', <repr(value)>)` as Python would write it for `value`.
///
/// Strings are written with `)` as `\x29` (the same Python string): the message ends at
/// its first `)`, so a literal one would cut it short.
pub fn encode_reading_value(time: NaiveDateTime, value: &FieldValue, out: &mut Vec<u8>) {
    use std::io::Write;
    // Python's str(datetime) shows microseconds only when there are some; finer digits are
    // lost. `% 1e9` folds chrono's leap-second representation back into range.
    let micros = (time.nanosecond() % 1_000_000_000) / 1000;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "ping / ('{}", time.format("%Y-%m-%d %H:%M:%S"));
    if micros != 0 {
        let _ = write!(out, ".{micros:06}");
    }
    out.extend_from_slice(b"', ");
    let _ = match value {
        FieldValue::Int(v) => write!(out, "{v}"),
        FieldValue::UInt(v) => write!(out, "{v}"),
        FieldValue::Float(v) => {
            write_py_float(*v, out);
            Ok(())
        }
        FieldValue::Bool(v) => out.write_all(if *v { b"True" } else { b"False" }),
        FieldValue::Str(s) => {
            out.push(b'\'');
            for c in s.chars() {
                match c {
                    '\\' => out.extend_from_slice(b"\\\\"),
                    '\'' => out.extend_from_slice(b"\\'"),
                    '\n' => out.extend_from_slice(b"\\n"),
                    '\r' => out.extend_from_slice(b"\\r"),
                    '\t' => out.extend_from_slice(b"\\t"),
                    ')' => out.extend_from_slice(b"\\x29"),
                    c => {
                        let mut tmp = [0u8; 4];
                        out.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
                    }
                }
            }
            out.write_all(b"'")
        }
    };
    out.push(b')');
}

/// Python's `repr(float)`: shortest round-trip digits, positional for exponents -4..=15
/// with at least one fraction digit (`21.0`), otherwise `1.5e+16` / `1e-05`.
fn write_py_float(v: f64, out: &mut Vec<u8>) {
    if v.is_nan() {
        out.extend_from_slice(b"nan");
        return;
    }
    if v.is_infinite() {
        out.extend_from_slice(if v > 0.0 { b"inf" } else { b"-inf" });
        return;
    }
    // `{:e}` gives the shortest round-trip digits, e.g. `-1.2345e-7`, `0e0`.
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: Vec<u8> = mantissa.bytes().filter(u8::is_ascii_digit).collect();
    out.extend_from_slice(sign.as_bytes());
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.extend_from_slice(&digits);
                out.extend(std::iter::repeat_n(b'0', int_len - digits.len()));
                out.extend_from_slice(b".0");
            } else {
                out.extend_from_slice(&digits[..int_len]);
                out.push(b'.');
                out.extend_from_slice(&digits[int_len..]);
            }
        } else {
            out.extend_from_slice(b"0.");
            out.extend(std::iter::repeat_n(b'0', (-exp - 1) as usize));
            out.extend_from_slice(&digits);
        }
    } else {
        if let Some((first, rest)) = digits.split_first() {
            out.push(*first);
            if !rest.is_empty() {
                out.push(b'.');
                out.extend_from_slice(rest);
            }
        }
        let exp_sign = if exp < 0 { '-' } else { '+' };
        let _ = std::io::Write::write_fmt(out, format_args!("e{exp_sign}{:02}", exp.abs()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dec() -> LegacyDecoder {
        LegacyDecoder::new(1024)
    }

    fn local_ns(s: &str) -> i64 {
        let t = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").expect("time");
        chrono::Local
            .from_local_datetime(&t)
            .earliest()
            .expect("local")
            .timestamp_nanos_opt()
            .expect("range")
    }

    fn reading(ts: i64, v: FieldValue) -> LegacyMessage {
        LegacyMessage::Reading(Reading {
            measurement: "legacy".into(),
            tags: vec![],
            fields: vec![("value".into(), v)],
            timestamp_ns: Some(ts),
        })
    }

    fn all(d: &mut LegacyDecoder, buf: &mut BytesMut) -> Vec<LegacyMessage> {
        std::iter::from_fn(|| d.decode(buf)).collect()
    }

    fn is_invalid(m: &Option<LegacyMessage>) -> bool {
        matches!(
            m,
            Some(LegacyMessage::Invalid(ProtocolError::InvalidLegacy(_)))
        )
    }

    /// A bare `ping` waits for the next bytes or a quiet period.
    #[test]
    fn bare_ping_is_answered_when_quiet() {
        let mut d = dec();
        let mut buf = BytesMut::from(&b"ping"[..]);
        assert_eq!(d.decode(&mut buf), None);
        assert!(LegacyDecoder::holds_ping(&buf));
        assert_eq!(d.decode_quiet(&mut buf), Some(LegacyMessage::Ping));
        assert!(buf.is_empty());
        assert_eq!(d.decode_quiet(&mut buf), None);
        // The next bytes can tell at once: another `ping`, or garbage.
        let mut buf = BytesMut::from(&b"pingping"[..]);
        assert_eq!(d.decode(&mut buf), Some(LegacyMessage::Ping));
        assert_eq!(d.decode(&mut buf), None);
        assert_eq!(&buf[..], b"ping");
        // `ping /` might still be a reading: a quiet period does not end it.
        let mut buf = BytesMut::from(&b"ping /"[..]);
        assert_eq!(d.decode(&mut buf), None);
        assert!(!LegacyDecoder::holds_ping(&buf));
        assert_eq!(d.decode_quiet(&mut buf), None);
    }

    // See: issue 10 ("Legacy framing: a reading cut by TCP right after `ping` is answered
    // twice with `pong` and not stored").
    #[test]
    fn reading_cut_after_ping_is_one_reading() {
        let message = b"ping / ('2026-11-24 11:46:25', 102)";
        let want = vec![reading(
            local_ns("2026-11-24 11:46:25"),
            FieldValue::Int(102),
        )];
        for cut in 1..message.len() {
            let mut d = dec();
            let mut buf = BytesMut::from(&message[..cut]);
            let mut got = all(&mut d, &mut buf);
            buf.extend_from_slice(&message[cut..]);
            got.extend(all(&mut d, &mut buf));
            assert_eq!(got, want, "cut at {cut}");
            assert!(buf.is_empty());
        }
        // One byte at a time.
        let mut d = dec();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in message {
            buf.extend_from_slice(&[b]);
            got.extend(all(&mut d, &mut buf));
        }
        assert_eq!(got, want);
    }

    #[test]
    fn seed_reading() {
        let mut d = dec();
        let mut buf = BytesMut::from(&b"ping / ('2026-11-24 11:46:25.123456', 102)"[..]);
        assert_eq!(
            d.decode(&mut buf),
            Some(reading(
                local_ns("2026-11-24 11:46:25.123456"),
                FieldValue::Int(102)
            ))
        );
        assert!(buf.is_empty());
        let mut buf = BytesMut::from(&b"ping / ('2026-11-24 11:46:25', -3)"[..]);
        assert_eq!(
            d.decode(&mut buf),
            Some(reading(
                local_ns("2026-11-24 11:46:25"),
                FieldValue::Int(-3)
            ))
        );
    }

    #[test]
    fn value_kinds_and_spacing() {
        let t = local_ns("2026-11-24 11:46:25.5");
        for (msg, v) in [
            (
                "ping / ('2026-11-24 11:46:25.5', 21.5)",
                FieldValue::Float(21.5),
            ),
            (
                "ping / ('2026-11-24T11:46:25.500', 1e3)",
                FieldValue::Float(1000.0),
            ),
            (
                "ping / (\"2026-11-24 11:46:25.500000000\",-2.0)",
                FieldValue::Float(-2.0),
            ),
            (
                "ping / ( '2026-11-24 11:46:25.5' ,  True )",
                FieldValue::Bool(true),
            ),
            (
                "ping / ('2026-11-24 11:46:25.5', False)",
                FieldValue::Bool(false),
            ),
            (
                "ping / ('2026-11-24 11:46:25.5', 'a\\'b\\\\c\\x29')",
                FieldValue::Str("a'b\\c)".into()),
            ),
            (
                "ping / ('2026-11-24 11:46:25.5', \"it's\")",
                FieldValue::Str("it's".into()),
            ),
        ] {
            let mut buf = BytesMut::from(msg.as_bytes());
            assert_eq!(dec().decode(&mut buf), Some(reading(t, v)), "{msg}");
        }
    }

    #[test]
    fn malformed_readings() {
        for msg in [
            "ping / ()",
            "ping / ('2026-11-24 11:46:25', )",
            "ping / ('2026-11-24 11:46:25' 1)",
            "ping / (2026-11-24 11:46:25, 1)",
            "ping / ('2026-11-24 11:46:25, 1)",
            "ping / ('2026-13-24 11:46:25', 1)",
            "ping / ('2026-11-24 24:00:00', 1)",
            "ping / ('2026-11-24 11:46:60', 1)",
            "ping / ('2026-11-24 11:46:25.', 1)",
            "ping / ('2026-11-24 11:46:25.1234567890', 1)",
            "ping / ('2026-11-24 11:46:25', 99999999999999999999)",
            "ping / ('2026-11-24 11:46:25', inf)",
            "ping / ('2026-11-24 11:46:25', nan)",
            "ping / ('2026-11-24 11:46:25', 1e999)",
            "ping / ('2026-11-24 11:46:25', None)",
            "ping / ('2026-11-24 11:46:25', 'abc)",
            "ping / ('2026-11-24 11:46:25', 'a'b)",
        ] {
            let mut buf = BytesMut::from(msg.as_bytes());
            let m = dec().decode(&mut buf);
            assert!(is_invalid(&m), "{msg}: {m:?}");
        }
        let mut buf = BytesMut::from(&b"ping / ('\xff', 1)"[..]);
        assert_eq!(
            dec().decode(&mut buf),
            Some(LegacyMessage::Invalid(ProtocolError::InvalidUtf8))
        );
    }

    #[test]
    fn split_arrivals() {
        let mut d = dec();
        let mut buf = BytesMut::from(&b"pi"[..]);
        assert_eq!(d.decode(&mut buf), None);
        buf.extend_from_slice(b"ng");
        // Exactly `ping`: held until the next bytes tell what it is.
        assert_eq!(d.decode(&mut buf), None);
        assert_eq!(d.decode_quiet(&mut buf), Some(LegacyMessage::Ping));
        buf.extend_from_slice(b"pi");
        assert_eq!(d.decode(&mut buf), None);
        buf.extend_from_slice(b"ng ");
        assert_eq!(d.decode(&mut buf), None);
        buf.extend_from_slice(b"/");
        assert_eq!(d.decode(&mut buf), None);
        buf.extend_from_slice(b" ('2026-11-24 11:46:25', 1");
        assert_eq!(d.decode(&mut buf), None);
        buf.extend_from_slice(b"02)");
        assert_eq!(
            d.decode(&mut buf),
            Some(reading(
                local_ns("2026-11-24 11:46:25"),
                FieldValue::Int(102)
            ))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn several_messages_in_one_buffer() {
        let mut d = dec();
        let mut buf = BytesMut::from(
            &b"pingping / ('2026-11-24 11:46:25', 1)ping / ('2026-11-24 11:46:26', 2)pingx"[..],
        );
        assert_eq!(
            all(&mut d, &mut buf),
            vec![
                LegacyMessage::Ping,
                reading(local_ns("2026-11-24 11:46:25"), FieldValue::Int(1)),
                reading(local_ns("2026-11-24 11:46:26"), FieldValue::Int(2)),
                LegacyMessage::Ping,
                LegacyMessage::Invalid(ProtocolError::InvalidLegacy(
                    "expected \"ping\", got \"x\"".into()
                )),
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn garbage() {
        let mut d = dec();
        let mut buf = BytesMut::from(&b"hello ping"[..]);
        assert!(is_invalid(&d.decode(&mut buf)));
        assert_eq!(&buf[..], b"ping");
        assert_eq!(d.decode_quiet(&mut buf), Some(LegacyMessage::Ping));
        // A partial `ping` at the end of garbage is kept for the next read.
        let mut buf = BytesMut::from(&b"xyzpi"[..]);
        assert!(is_invalid(&d.decode(&mut buf)));
        assert_eq!(&buf[..], b"pi");
        assert_eq!(d.decode(&mut buf), None);
        buf.extend_from_slice(b"ng");
        assert_eq!(d.decode_quiet(&mut buf), Some(LegacyMessage::Ping));
        let mut buf = BytesMut::from(&b"p"[..]);
        assert_eq!(d.decode(&mut buf), None);
        let mut buf = BytesMut::from(&b"px"[..]);
        assert!(is_invalid(&d.decode(&mut buf)));
        assert!(buf.is_empty());
        assert_eq!(d.decode(&mut BytesMut::new()), None);
    }

    #[test]
    fn too_long() {
        let mut d = LegacyDecoder::new(16);
        let mut buf = BytesMut::from(&b"ping / ('2026-11"[..]);
        assert_eq!(d.decode(&mut buf), None);
        buf.extend_from_slice(b"-");
        assert_eq!(
            d.decode(&mut buf),
            Some(LegacyMessage::Invalid(ProtocolError::LineTooLong {
                limit: 16
            }))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn at_eof() {
        let mut d = dec();
        let mut buf = BytesMut::from(&b"ping"[..]);
        assert_eq!(d.decode_eof(&mut buf), Some(LegacyMessage::Ping));
        assert_eq!(d.decode_eof(&mut buf), None);
        for rest in [&b"pi"[..], b"ping /", b"ping / ('2026"] {
            let mut buf = BytesMut::from(rest);
            assert!(is_invalid(&d.decode_eof(&mut buf)), "{rest:?}");
            assert!(buf.is_empty());
            assert_eq!(d.decode_eof(&mut buf), None);
        }
    }

    fn naive(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").expect("time")
    }

    fn enc_value(v: &FieldValue) -> String {
        let mut out = Vec::new();
        encode_reading_value(naive("2026-11-24 11:46:25"), v, &mut out);
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn encoding() {
        let mut out = Vec::new();
        encode_reading(naive("2026-11-24 11:46:25.123456789"), 102, &mut out);
        assert_eq!(out, b"ping / ('2026-11-24 11:46:25.123456', 102)");
        out.clear();
        encode_reading(naive("2026-11-24 11:46:25.000000999"), -1, &mut out);
        assert_eq!(out, b"ping / ('2026-11-24 11:46:25', -1)");
        out.clear();
        encode_reading(naive("2026-01-02 03:04:05.000100"), 0, &mut out);
        assert_eq!(out, b"ping / ('2026-01-02 03:04:05.000100', 0)");

        let floats = [
            (21.0, "21.0"),
            (-2.0, "-2.0"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (21.53, "21.53"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.2345678901234568e17, "1.2345678901234568e+17"),
            (1e300, "1e+300"),
            (123456.789, "123456.789"),
            (f64::INFINITY, "inf"),
        ];
        for (v, want) in floats {
            assert_eq!(
                enc_value(&FieldValue::Float(v)),
                format!("ping / ('2026-11-24 11:46:25', {want})")
            );
        }
        assert!(enc_value(&FieldValue::Bool(true)).ends_with(", True)"));
        assert!(enc_value(&FieldValue::UInt(7)).ends_with(", 7)"));
        assert!(enc_value(&FieldValue::Str("a'b\\c)d\n".into())).ends_with(r", 'a\'b\\c\x29d\n')"));
    }

    fn value() -> impl Strategy<Value = FieldValue> {
        prop_oneof![
            any::<f64>()
                .prop_filter("finite", |v| v.is_finite())
                .prop_map(FieldValue::Float),
            any::<i64>().prop_map(FieldValue::Int),
            any::<bool>().prop_map(FieldValue::Bool),
            any::<String>().prop_map(FieldValue::Str),
        ]
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(v in value(), micros in 0u32..1_000_000) {
            let t = naive("2026-11-24 11:46:25") + chrono::Duration::microseconds(micros.into());
            let mut out = Vec::new();
            encode_reading_value(t, &v, &mut out);
            let mut buf = BytesMut::from(&out[..]);
            let ts = chrono::Local.from_local_datetime(&t).earliest()
                .and_then(|t| t.timestamp_nanos_opt());
            let got = dec().decode(&mut buf);
            prop_assert!(buf.is_empty());
            if let Some(ts) = ts {
                prop_assert_eq!(got, Some(reading(ts, v)));
            }
        }

        #[test]
        fn decode_never_panics(
            bytes in prop::collection::vec(prop_oneof![
                any::<u8>(),
                prop::sample::select(b"ping / ('2026-11-24 11:46:25.1',)\"\\x".to_vec()),
            ], 0..80),
            max in 0usize..40,
        ) {
            let mut d = LegacyDecoder::new(max);
            let mut buf = BytesMut::from(&bytes[..]);
            let mut n = 0;
            while d.decode(&mut buf).is_some() {
                n += 1;
                prop_assert!(n <= bytes.len());
            }
            while d.decode_eof(&mut buf).is_some() {
                n += 1;
                prop_assert!(n <= bytes.len() + 1);
            }
            prop_assert!(buf.is_empty());
        }
    }
}
