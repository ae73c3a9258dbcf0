//! InfluxDB line protocol: parse one line into a [`Reading`], encode a [`Reading`] as a line.
//!
//! `measurement[,tag=value...] field=value[,field=value...] [timestamp]`
//!
//! Escaping follows InfluxDB: in the measurement a backslash escapes `,` and space; in tag
//! keys, tag values and field keys it escapes `,`, `=` and space; in string field values it
//! escapes `"` and `\`. A backslash before any other character is kept literally.
//!
//! Two additions, so that every name [`encode`] is given can come back unchanged (InfluxDB
//! itself cannot carry these, and reads our escapes as literal backslashes):
//! - in every name, `\\` is one backslash (as the InfluxDB 2 docs describe); [`encode`]
//!   doubles a backslash only where it would otherwise escape the next character or end the
//!   name, so names with ordinary backslashes (`C:\temp`) are written as InfluxDB expects;
//! - a measurement may start with `\#` or `\<tab>`, because an unescaped leading `#` makes the
//!   line a comment and leading tabs are skipped as whitespace.
//!
//! Leading spaces and tabs are skipped; sections are separated by one or more spaces. An
//! unescaped `=` in a measurement or tag value is taken literally (only keys end at `=`).
//!
//! The escaping rules themselves live in [`super::escape`], shared with the stores' series
//! keys and `sensorlink query`.
//!
//! Not representable at all: a string field containing `\n` (line framing has no escape for
//! it), non-finite floats, and empty names.

use std::collections::HashSet;

use super::escape::{
    escape_name, escape_string_field, is_escapable, is_leading_special, is_refused_control,
    is_string_escapable, stop_table, Backslash, Kind,
};
use super::{FieldValue, ProtocolError, Reading};

/// Parse one line (without `\n` / `\r\n`).
pub fn parse(line: &[u8]) -> Result<Reading, ProtocolError> {
    // Validating once up front lets the scanner slice `&str` at ASCII delimiters (always
    // char boundaries) instead of re-validating every name.
    let text = std::str::from_utf8(line).map_err(|_| ProtocolError::InvalidUtf8)?;
    Parser { text, b: line }
        .reading()
        .map_err(ProtocolError::InvalidReading)
}

/// Append `reading` as one line, `\n` included.
///
/// Non-finite floats and string fields containing `\n` produce a line that does not parse
/// back (see the module doc); [`Reading`]s built by [`parse`] never contain them.
pub fn encode(reading: &Reading, out: &mut Vec<u8>) {
    write_name(out, &reading.measurement, Kind::Measurement);
    for (key, value) in &reading.tags {
        out.push(b',');
        write_name(out, key, Kind::TagKey);
        out.push(b'=');
        write_name(out, value, Kind::TagValue);
    }
    for (i, (key, value)) in reading.fields.iter().enumerate() {
        out.push(if i == 0 { b' ' } else { b',' });
        write_name(out, key, Kind::FieldKey);
        out.push(b'=');
        write_value(value, out);
    }
    if let Some(ts) = reading.timestamp_ns {
        write_display(out, format_args!(" {ts}"));
    }
    out.push(b'\n');
}

fn write_name(out: &mut Vec<u8>, name: &str, kind: Kind) {
    escape_name(name, kind, Backslash::WhereNeeded, &mut |s: &str| {
        out.extend_from_slice(s.as_bytes())
    });
}

fn write_value(value: &FieldValue, out: &mut Vec<u8>) {
    match value {
        // `{}` is the shortest string that reads back to the same f64; no suffix means float
        // even when it prints like an integer.
        FieldValue::Float(v) => write_display(out, format_args!("{v}")),
        FieldValue::Int(v) => write_display(out, format_args!("{v}i")),
        FieldValue::UInt(v) => write_display(out, format_args!("{v}u")),
        FieldValue::Bool(v) => out.extend_from_slice(if *v { b"true" } else { b"false" }),
        FieldValue::Str(s) => {
            out.push(b'"');
            escape_string_field(s, &mut |piece: &str| {
                out.extend_from_slice(piece.as_bytes())
            });
            out.push(b'"');
        }
    }
}

fn write_display(out: &mut Vec<u8>, args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    // Writing into a Vec cannot fail.
    let _ = out.write_fmt(args);
}

/// `s` quoted for an error message, cut short so a 64 KiB line can't bloat the reply.
fn quoted(s: &str) -> String {
    const MAX_CHARS: usize = 40;
    match s.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{:?}…", &s[..cut]),
        None => format!("{s:?}"),
    }
}

struct Parser<'a> {
    text: &'a str,
    b: &'a [u8],
}

impl Parser<'_> {
    fn reading(&self) -> Result<Reading, String> {
        let len = self.b.len();
        let mut pos = self.skip(0, |c| c == b' ' || c == b'\t');

        let (measurement, end, control) = self.name(pos, Kind::Measurement);
        if measurement.is_empty() {
            return Err("missing measurement".into());
        }
        check_name(&measurement, control, || "measurement".into())?;
        pos = end;

        let mut tags = Vec::new();
        while pos < len && self.b[pos] == b',' {
            let (key, end, key_control) = self.name(pos + 1, Kind::TagKey);
            if key.is_empty() {
                return Err("empty tag key".into());
            }
            if end >= len || self.b[end] != b'=' {
                return Err(format!("tag {}: missing \"=\"", quoted(&key)));
            }
            let (value, end, value_control) = self.name(end + 1, Kind::TagValue);
            if value.is_empty() {
                return Err(format!("tag {}: empty value", quoted(&key)));
            }
            check_name(&key, key_control, || "tag key".into())?;
            check_name(&value, value_control, || {
                format!("tag {} value", quoted(&key))
            })?;
            tags.push((key, value));
            pos = end;
        }

        pos = self.skip(pos, |c| c == b' ');
        if pos >= len {
            return Err("missing fields".into());
        }
        let mut fields = Vec::new();
        loop {
            let (key, end, control) = self.name(pos, Kind::FieldKey);
            if key.is_empty() {
                return Err("empty field key".into());
            }
            if end >= len || self.b[end] != b'=' {
                return Err(format!("field {}: missing \"=\"", quoted(&key)));
            }
            check_name(&key, control, || "field key".into())?;
            let (value, end) = self.value(end + 1, &key)?;
            fields.push((key, value));
            pos = end;
            if pos < len && self.b[pos] == b',' {
                pos += 1;
            } else {
                break;
            }
        }
        if let Some(key) = first_duplicate(&tags) {
            return Err(format!("duplicate tag {}", quoted(key)));
        }
        if let Some(key) = first_duplicate(&fields) {
            return Err(format!("duplicate field {}", quoted(key)));
        }

        pos = self.skip(pos, |c| c == b' ');
        let timestamp_ns = if pos < len {
            let end = self.skip(pos, |c| c != b' ');
            let token = &self.text[pos..end];
            let ts =
                parse_i64(token).map_err(|_| format!("invalid timestamp {}", quoted(token)))?;
            if self.skip(end, |c| c == b' ') < len {
                return Err("unexpected text after timestamp".into());
            }
            Some(ts)
        } else {
            None
        };

        Ok(Reading {
            measurement,
            tags,
            fields,
            timestamp_ns,
        })
    }

    fn skip(&self, mut pos: usize, pred: impl Fn(u8) -> bool) -> usize {
        while pos < self.b.len() && pred(self.b[pos]) {
            pos += 1;
        }
        pos
    }

    /// Unescaped name starting at `start`, the index of the delimiter (or end) after it,
    /// and the first control byte it holds ([`is_refused_control`]), if any: found in the
    /// same scan (no escape yields or removes one, so the raw bytes tell).
    fn name(&self, start: usize, kind: Kind) -> (String, usize, Option<u8>) {
        let b = self.b;
        let mut i = start;
        // Built only once an escape shows up; most names are copied in one go.
        let mut built: Option<String> = None;
        let mut seg = start;
        let mut control = None;
        let stops = stop_table(kind);
        loop {
            // Tight loop over ordinary bytes; only delimiters, `\` and control bytes need a
            // closer look.
            while i < b.len() && !stops[usize::from(b[i])] {
                i += 1;
            }
            let Some(&c) = b.get(i) else { break };
            if is_refused_control(c) {
                control = control.or(Some(c));
                i += 1;
                continue;
            }
            if c != b'\\' {
                break; // a delimiter
            }
            if let Some(&n) = b.get(i + 1) {
                let leading = kind == Kind::Measurement && i == start;
                if is_escapable(kind, n) || (leading && is_leading_special(n)) {
                    let s = built.get_or_insert_with(String::new);
                    s.push_str(&self.text[seg..i]);
                    s.push(char::from(n));
                    i += 2;
                    seg = i;
                    continue;
                }
            }
            // A lone backslash is literal; the next byte is looked at normally.
            i += 1;
        }
        // `seg` and `i` sit after an ASCII escape pair, at an ASCII delimiter or at the end:
        // all char boundaries.
        let rest = &self.text[seg..i];
        let name = match built {
            Some(mut s) => {
                s.push_str(rest);
                s
            }
            None => rest.to_owned(),
        };
        (name, i, control)
    }

    /// Field value starting at `start`, and the index after it.
    fn value(&self, start: usize, key: &str) -> Result<(FieldValue, usize), String> {
        let b = self.b;
        if b.get(start) == Some(&b'"') {
            return self.string(start + 1, key);
        }
        // Plain loop: tokens are short, and memchr's setup costs more than it saves here.
        let end = self.skip(start, |c| c != b',' && c != b' ');
        let token = &self.text[start..end];
        parse_scalar(token)
            .map(|v| (v, end))
            .map_err(|what| match what {
                "" => format!("field {}: missing value", quoted(key)),
                _ => format!("field {}: {what} {}", quoted(key), quoted(token)),
            })
    }

    /// String field body starting after the opening quote.
    fn string(&self, start: usize, key: &str) -> Result<(FieldValue, usize), String> {
        let b = self.b;
        let mut out = String::new();
        let mut seg = start;
        let mut i = start;
        loop {
            let Some(off) = memchr::memchr2(b'"', b'\\', &b[i..]) else {
                return Err(format!("unterminated string in field {}", quoted(key)));
            };
            i += off;
            if b[i] == b'"' {
                out.push_str(&self.text[seg..i]);
                let end = i + 1;
                if end < b.len() && b[end] != b',' && b[end] != b' ' {
                    return Err(format!(
                        "field {}: unexpected text after string",
                        quoted(key)
                    ));
                }
                return Ok((FieldValue::Str(out), end));
            }
            match b.get(i + 1) {
                Some(&n) if is_string_escapable(n) => {
                    out.push_str(&self.text[seg..i]);
                    out.push(char::from(n));
                    i += 2;
                    seg = i;
                }
                // Any other backslash is literal and stays in the pending segment.
                _ => i += 1,
            }
        }
    }
}

/// A non-string field value; the error is a short description ("" = missing value).
fn parse_scalar(token: &str) -> Result<FieldValue, &'static str> {
    let b = token.as_bytes();
    // Numbers first, the common case: no boolean spelling ends in `i` or `u` or starts
    // like a number, so the order changes no outcome, only how many comparisons it takes.
    match b {
        [] => Err(""),
        [.., b'i'] => parse_i64(&token[..token.len() - 1])
            .map(FieldValue::Int)
            .map_err(|e| e.unwrap_or("invalid integer")),
        [.., b'u'] => parse_u64(&token[..token.len() - 1])
            .map(FieldValue::UInt)
            .map_err(|e| e.unwrap_or("invalid unsigned integer")),
        [b'0'..=b'9' | b'-' | b'.', ..] => parse_f64(token).map(FieldValue::Float),
        b"t" | b"T" | b"true" | b"True" | b"TRUE" => Ok(FieldValue::Bool(true)),
        b"f" | b"F" | b"false" | b"False" | b"FALSE" => Ok(FieldValue::Bool(false)),
        _ => parse_f64(token).map(FieldValue::Float),
    }
}

/// Error: `Some(reason)` for a well-formed number out of range, `None` for a malformed one.
fn parse_i64(s: &str) -> Result<i64, Option<&'static str>> {
    const RANGE: Option<&str> = Some("integer out of range");
    let (neg, digits) = match s.as_bytes() {
        [b'-', rest @ ..] => (true, rest),
        b => (false, b),
    };
    let magnitude = parse_digits(digits).map_err(|overflow| if overflow { RANGE } else { None })?;
    if neg {
        // -(2^63) is i64::MIN, one more than i64::MAX.
        if magnitude <= i64::MIN.unsigned_abs() {
            Ok(0i64.wrapping_sub_unsigned(magnitude))
        } else {
            Err(RANGE)
        }
    } else {
        i64::try_from(magnitude).map_err(|_| RANGE)
    }
}

fn parse_u64(s: &str) -> Result<u64, Option<&'static str>> {
    parse_digits(s.as_bytes())
        .map_err(|overflow| overflow.then_some("unsigned integer out of range"))
}

/// 1+ ASCII digits as a u64; `Err(true)` on overflow, `Err(false)` on bad syntax.
/// One pass, no allocation; unlike `str::parse` it rejects a leading `+`, as line protocol
/// does.
fn parse_digits(digits: &[u8]) -> Result<u64, bool> {
    if digits.is_empty() {
        return Err(false);
    }
    let mut n = 0u64;
    let mut rest = digits;
    // Eight digits at a time (a 19-digit timestamp is most of the work); two chunks, 16
    // digits, can't overflow.
    for _ in 0..2 {
        let Some((chunk, tail)) = rest.split_first_chunk::<8>() else {
            break;
        };
        n = n * 100_000_000 + eight_digits(u64::from_le_bytes(*chunk)).ok_or(false)?;
        rest = tail;
    }
    let mut overflow = false;
    for &c in rest {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return Err(false);
        }
        // After an overflow keep scanning: a malformed token is reported as malformed.
        match n.checked_mul(10).and_then(|n| n.checked_add(u64::from(d))) {
            Some(v) => n = v,
            None => overflow = true,
        }
    }
    if overflow {
        Err(true)
    } else {
        Ok(n)
    }
}

/// The value of eight ASCII digits loaded little-endian (first digit in the low byte), or
/// `None` if any byte is not a digit. Branch-free SWAR, as in simdjson.
fn eight_digits(w: u64) -> Option<u64> {
    const HIGH: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    const ZEROS: u64 = 0x3030_3030_3030_3030;
    // Every byte is 0x30..=0x3F, and adding 6 keeps it below 0x40: so 0x30..=0x39.
    if w & HIGH != ZEROS || w.wrapping_add(0x0606_0606_0606_0606) & HIGH != ZEROS {
        return None;
    }
    let v = w - ZEROS;
    let v = (v.wrapping_mul(10) + (v >> 8)) & 0x00FF_00FF_00FF_00FF;
    let v = (v.wrapping_mul(100) + (v >> 16)) & 0x0000_FFFF_0000_FFFF;
    Some((v.wrapping_mul(10_000) + (v >> 32)) & 0xFFFF_FFFF)
}

fn parse_f64(s: &str) -> Result<f64, &'static str> {
    // Rust also reads `inf`, `nan`, `infinity` and a leading `+`; line protocol doesn't.
    // After an optional `-` its number syntax starts with a digit or `.`, so checking that
    // one byte keeps them out.
    let unsigned = s.strip_prefix('-').unwrap_or(s);
    if !matches!(unsigned.as_bytes().first(), Some(c) if c.is_ascii_digit() || *c == b'.') {
        return Err("invalid number");
    }
    if let Some(v) = short_decimal(s.as_bytes()) {
        return Ok(v);
    }
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(_) => Err("number out of range"),
        Err(_) => Err("invalid number"),
    }
}

/// `[-]digits[.digits]` with at most 15 digits in all (what sensors send: `21.5`), else
/// `None` (the general parser decides). Exact: the digits as an integer (below 2^53) and
/// 10^fraction-digits (at most 10^15) are both exact f64s, and IEEE division rounds their
/// quotient correctly, so this is the nearest f64, as `str::parse` gives (Clinger's fast
/// path, taken here without the general parser's setup).
fn short_decimal(s: &[u8]) -> Option<f64> {
    const POW10: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    let (neg, rest) = match s {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, s),
    };
    let (mut mantissa, mut digits, mut fraction, mut dot) = (0u64, 0usize, 0usize, false);
    for &c in rest {
        match c {
            b'0'..=b'9' => {
                digits += 1;
                if digits > 15 {
                    return None;
                }
                mantissa = mantissa * 10 + u64::from(c - b'0');
                fraction += usize::from(dot);
            }
            b'.' if !dot => dot = true,
            _ => return None,
        }
    }
    if digits == 0 {
        return None;
    }
    // Below 10^15 < 2^53: the conversion is exact.
    let v = mantissa as f64 / POW10[fraction];
    Some(if neg { -v } else { v })
}

/// The first key that occurs twice, if any. A duplicate tag would file the reading under one
/// value and store the other (the `sensor` column and the tags disagree); a duplicate field
/// would drop a value without a word; so both are refused rather than resolved.
fn first_duplicate<V>(pairs: &[(String, V)]) -> Option<&str> {
    let n = pairs.len();
    // Fast path: almost every line has a few distinct keys, and a pairwise scan of those
    // beats hashing. Past 16 keys hash, so a 64 KiB line of `a=1,` can't cost n².
    if n <= 16 {
        return (1..n)
            .find(|&j| pairs[..j].iter().any(|(k, _)| *k == pairs[j].0))
            .map(|j| pairs[j].0.as_str());
    }
    let mut seen = HashSet::with_capacity(n);
    pairs
        .iter()
        .map(|(k, _)| k.as_str())
        .find(|k| !seen.insert(*k))
}

/// Refuse `name` (described by `what()`, e.g. `tag key`) if the scan found a control byte
/// in it (`control`, see [`Parser::name`]). The description is built only for a refusal:
/// this runs for every name of every reading.
///
/// NUL, ESC, CR and friends in a name end up in the store, in logs and on terminals
/// (`query`); no sensor needs them. Tab stays allowed: InfluxDB accepts it, and the wire has
/// an escape for a leading one (`\<tab>`).
fn check_name(
    name: &str,
    control: Option<u8>,
    what: impl FnOnce() -> String,
) -> Result<(), String> {
    match control {
        Some(c) => Err(format!(
            "{} {}: control character 0x{c:02x}",
            what(),
            quoted(name)
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(line: &str) -> Reading {
        match parse(line.as_bytes()) {
            Ok(r) => r,
            Err(e) => panic!("{line:?}: {e}"),
        }
    }

    fn err(line: &[u8]) -> String {
        match parse(line) {
            Ok(r) => panic!("{line:?} parsed as {r:?}"),
            Err(ProtocolError::InvalidReading(m)) => m,
            Err(e) => e.to_string(),
        }
    }

    fn s(x: &str) -> String {
        x.to_owned()
    }

    fn enc(r: &Reading) -> String {
        let mut out = Vec::new();
        encode(r, &mut out);
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn typical_line() {
        let r = p(
            "weather,sensor=kitchen-01,site=lab temperature=21.53,humidity=40i 1732448785123456789",
        );
        assert_eq!(
            r,
            Reading {
                measurement: s("weather"),
                tags: vec![(s("sensor"), s("kitchen-01")), (s("site"), s("lab"))],
                fields: vec![
                    (s("temperature"), FieldValue::Float(21.53)),
                    (s("humidity"), FieldValue::Int(40)),
                ],
                timestamp_ns: Some(1732448785123456789),
            }
        );
    }

    #[test]
    fn field_types() {
        let r = p(
            r#"m a=1,b=1.5,c=-1.5e3,d=.5,e=12i,f=-9223372036854775808i,g=18446744073709551615u,h="hi there",i=t,j=FALSE,k=1E2"#,
        );
        let v: Vec<FieldValue> = r.fields.into_iter().map(|(_, v)| v).collect();
        assert_eq!(
            v,
            vec![
                FieldValue::Float(1.0),
                FieldValue::Float(1.5),
                FieldValue::Float(-1500.0),
                FieldValue::Float(0.5),
                FieldValue::Int(12),
                FieldValue::Int(i64::MIN),
                FieldValue::UInt(u64::MAX),
                FieldValue::Str(s("hi there")),
                FieldValue::Bool(true),
                FieldValue::Bool(false),
                FieldValue::Float(100.0),
            ]
        );
        for (word, b) in [
            ("t", true),
            ("T", true),
            ("true", true),
            ("True", true),
            ("TRUE", true),
            ("f", false),
            ("F", false),
            ("false", false),
            ("False", false),
            ("FALSE", false),
        ] {
            assert_eq!(p(&format!("m x={word}")).fields[0].1, FieldValue::Bool(b));
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(p("m x=1").timestamp_ns, None);
        assert_eq!(p("m x=1 ").timestamp_ns, None);
        assert_eq!(p("m x=1 -5").timestamp_ns, Some(-5));
        assert_eq!(p("m x=1  7  ").timestamp_ns, Some(7));
        assert_eq!(p("  m x=1 0").timestamp_ns, Some(0));
    }

    #[test]
    fn escapes() {
        let r = p(r#"my\ m\,x,t\ k\=\,=v\ a\=l\,ue f\ k\,\==1,s="a \"q\" \\ \n""#);
        assert_eq!(r.measurement, "my m,x");
        assert_eq!(r.tags, vec![(s("t k=,"), s("v a=l,ue"))]);
        assert_eq!(r.fields[0].0, "f k,=");
        assert_eq!(r.fields[1].1, FieldValue::Str(s(r#"a "q" \ \n"#)));
        // Backslash before an ordinary character stays; `\=` in a measurement stays too.
        assert_eq!(p(r"C:\temp\=x,p=C:\dir f=1").measurement, r"C:\temp\=x");
        assert_eq!(p(r"m,p=C:\dir f=1").tags[0].1, r"C:\dir");
        // Doubled backslash is one backslash, so names can end in one.
        assert_eq!(p(r"m\\,t=v\\ f=1").measurement, r"m\");
        assert_eq!(p(r"m\\,t=v\\ f=1").tags[0].1, r"v\");
        // Leading `#` / tab escapes in a measurement only.
        assert_eq!(p(r"\#m f=1").measurement, "#m");
        assert_eq!(p("\\\tm f=1").measurement, "\tm");
        assert_eq!(p(r"a\#m f=1").measurement, r"a\#m");
        // Unicode passes through.
        assert_eq!(p("温度,地点=東京 値=1").tags[0], (s("地点"), s("東京")));
        // `=` in a measurement and in a tag value needs no escape.
        assert_eq!(p("a=b,t=x=y f=1").measurement, "a=b");
        assert_eq!(p("m,t=x=y f=1").tags[0].1, "x=y");
    }

    // See: issue 10 ("Input hygiene"): `sensor=a,sensor=b` stored `a` in the sensor column
    // and `b` in the tags, and `v=1,v=2` silently kept `v=2`.
    #[test]
    fn duplicate_keys_are_refused() {
        assert_eq!(err(b"m,sensor=a,sensor=b v=1"), "duplicate tag \"sensor\"");
        assert_eq!(err(b"m,a=1,b=2,a=1 v=1"), "duplicate tag \"a\"");
        assert_eq!(err(b"m v=1,v=2"), "duplicate field \"v\"");
        assert_eq!(err(b"m a=1,b=2,a=3"), "duplicate field \"a\"");
        // Escapes are resolved first: `a\ b` and `a\ b` are one key.
        assert_eq!(err(br"m a\ b=1,a\ b=2"), "duplicate field \"a b\"");
        // A tag and a field may share a name; keys differing only in case are distinct.
        assert_eq!(p("m,v=x v=1").fields.len(), 1);
        assert_eq!(p("m V=1,v=2").fields.len(), 2);
        // Past the pairwise fast path (16 keys) the hashed path finds them too.
        let distinct: Vec<String> = (0..40).map(|i| format!("k{i}={i}i")).collect();
        assert_eq!(p(&format!("m {}", distinct.join(","))).fields.len(), 40);
        let many: Vec<String> = (0..40).map(|i| format!("k{}={i}i", i % 20)).collect();
        assert_eq!(
            err(format!("m {}", many.join(",")).as_bytes()),
            "duplicate field \"k0\""
        );
        let tags: Vec<String> = (0..30).map(|i| format!("t{}=x", i % 25)).collect();
        assert_eq!(
            err(format!("m,{} v=1", tags.join(",")).as_bytes()),
            "duplicate tag \"t0\""
        );
    }

    // See: issue 10 ("Input hygiene"): NUL and escape sequences reached the store and the
    // terminal of whoever ran `query`.
    #[test]
    fn control_bytes_in_names_are_refused() {
        let cases: &[(&[u8], &str)] = &[
            (b"m\0 v=1", "measurement \"m\\0\": control character 0x00"),
            (
                b"\x1b[31mm v=1",
                "measurement \"\\u{1b}[31mm\": control character 0x1b",
            ),
            (b"m\r v=1", "measurement \"m\\r\": control character 0x0d"),
            (
                b"m\x7f v=1",
                "measurement \"m\\u{7f}\": control character 0x7f",
            ),
            (
                b"m,t\x01=a v=1",
                "tag key \"t\\u{1}\": control character 0x01",
            ),
            (
                b"m,t=a\0 v=1",
                "tag \"t\" value \"a\\0\": control character 0x00",
            ),
            (
                b"m v\x08=1",
                "field key \"v\\u{8}\": control character 0x08",
            ),
        ];
        for (line, want) in cases {
            assert_eq!(&err(line), want, "line {:?}", String::from_utf8_lossy(line));
        }
        // Tab is the one control byte a name may hold (InfluxDB allows it), and string
        // field values are data: both still pass.
        assert_eq!(p("m,t=a\tb v=1").tags[0].1, "a\tb");
        assert_eq!(p("m\tx v=1").measurement, "m\tx");
        assert_eq!(
            p("m s=\"\x1b[31m\0\"").fields[0].1,
            FieldValue::Str(s("\x1b[31m\0"))
        );
        // Non-ASCII (including C1 controls, which are not bytes) is left alone.
        assert_eq!(p("m\u{85} v=1").measurement, "m\u{85}");
    }

    #[test]
    fn errors() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "missing measurement"),
            (b",t=1 x=1", "missing measurement"),
            (b"m", "missing fields"),
            (b"m,t=1", "missing fields"),
            (b"m   ", "missing fields"),
            (b"m,t x=1", "tag \"t\": missing \"=\""),
            (b"m,t", "tag \"t\": missing \"=\""),
            (b"m,=v x=1", "empty tag key"),
            (b"m, x=1", "empty tag key"),
            (b"m,t= x=1", "tag \"t\": empty value"),
            (b"m =1", "empty field key"),
            (b"m x=1,", "empty field key"),
            (b"m x=1,,y=2", "empty field key"),
            (b"m x", "field \"x\": missing \"=\""),
            (b"m x 1", "field \"x\": missing \"=\""),
            (b"m x=", "field \"x\": missing value"),
            (b"m x= 1", "field \"x\": missing value"),
            (b"m x=,y=1", "field \"x\": missing value"),
            (b"m temp=12x", "field \"temp\": invalid number \"12x\""),
            (b"m temp=12xi", "field \"temp\": invalid integer \"12xi\""),
            (b"m temp=+1i", "field \"temp\": invalid integer \"+1i\""),
            (
                b"m x=9223372036854775808i",
                "field \"x\": integer out of range \"9223372036854775808i\"",
            ),
            (b"m x=-1u", "field \"x\": invalid unsigned integer \"-1u\""),
            (
                b"m x=18446744073709551616u",
                "field \"x\": unsigned integer out of range \"18446744073709551616u\"",
            ),
            (b"m x=nan", "field \"x\": invalid number \"nan\""),
            (b"m x=inf", "field \"x\": invalid number \"inf\""),
            (b"m x=1e999", "field \"x\": number out of range \"1e999\""),
            (b"m x=1.2.3", "field \"x\": invalid number \"1.2.3\""),
            (b"m x=+1", "field \"x\": invalid number \"+1\""),
            (b"m x=yes", "field \"x\": invalid number \"yes\""),
            (b"m msg=\"abc", "unterminated string in field \"msg\""),
            (b"m msg=\"abc\\\"", "unterminated string in field \"msg\""),
            (
                b"m msg=\"a\"b",
                "field \"msg\": unexpected text after string",
            ),
            (b"m x=1 12a", "invalid timestamp \"12a\""),
            (
                b"m x=1 99999999999999999999",
                "invalid timestamp \"99999999999999999999\"",
            ),
            (b"m x=1 12 34", "unexpected text after timestamp"),
            (b"m x=1 12 x", "unexpected text after timestamp"),
            (b"m\xff x=1", "invalid UTF-8"),
        ];
        for (line, want) in cases {
            assert_eq!(&err(line), want, "line {:?}", String::from_utf8_lossy(line));
        }
        assert_eq!(parse(b"m x=\"\xc3\x28\""), Err(ProtocolError::InvalidUtf8));
        // Long tokens are cut short in the message.
        let long = format!("m x={}z", "9".repeat(1000));
        assert!(err(long.as_bytes()).len() < 100);
    }

    #[test]
    fn encode_examples() {
        let r = Reading {
            measurement: s("we ather,x"),
            tags: vec![(s("k=1"), s("v,2 "))],
            fields: vec![
                (s("f"), FieldValue::Float(2.0)),
                (s("i"), FieldValue::Int(-3)),
                (s("u"), FieldValue::UInt(4)),
                (s("b"), FieldValue::Bool(false)),
                (s("s"), FieldValue::Str(s(r#"say "hi" \o/"#))),
            ],
            timestamp_ns: Some(-12),
        };
        let line = enc(&r);
        assert_eq!(
            line,
            "we\\ ather\\,x,k\\=1=v\\,2\\  f=2,i=-3i,u=4u,b=false,s=\"say \\\"hi\\\" \\\\o/\" -12\n"
        );
        assert_eq!(p(line.trim_end_matches('\n')), r);
        // Ordinary backslashes are left alone, trailing / escaping ones are doubled.
        let r = Reading {
            measurement: s(r"#C:\t\"),
            tags: vec![(s(r"a\"), s(r"\,"))],
            fields: vec![(s(r"x\y"), FieldValue::Bool(true))],
            timestamp_ns: None,
        };
        let line = enc(&r);
        assert_eq!(line, "\\#C:\\t\\\\,a\\\\=\\\\\\, x\\y=true\n");
        assert_eq!(p(line.trim_end_matches('\n')), r);
    }

    const NAME_CHARS: &[char] = &[
        'a', 'b', 'Z', '0', '9', '-', '_', '.', ' ', ',', '=', '"', '\'', '\\', '#', '\t', 'é',
        '温', '🌡',
    ];

    fn name() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(NAME_CHARS), 1..8)
            .prop_map(|c| c.into_iter().collect())
    }

    fn value() -> impl Strategy<Value = FieldValue> {
        // `\n` can't travel inside a line (see module doc); everything else may.
        let text = prop::collection::vec(
            prop_oneof![prop::sample::select(NAME_CHARS), any::<char>()],
            0..10,
        )
        .prop_map(|c| c.into_iter().filter(|&c| c != '\n').collect::<String>());
        prop_oneof![
            any::<f64>()
                .prop_filter("finite", |v| v.is_finite())
                .prop_map(FieldValue::Float),
            (-1000i64..1000).prop_map(|v| FieldValue::Float(v as f64)),
            any::<i64>().prop_map(FieldValue::Int),
            any::<u64>().prop_map(FieldValue::UInt),
            any::<bool>().prop_map(FieldValue::Bool),
            text.prop_map(FieldValue::Str),
        ]
    }

    pub(crate) fn reading() -> impl Strategy<Value = Reading> {
        (
            name(),
            prop::collection::vec((name(), name()), 0..4),
            prop::collection::vec((name(), value()), 1..5),
            prop::option::of(any::<i64>()),
        )
            .prop_map(|(measurement, mut tags, mut fields, timestamp_ns)| {
                // Duplicate keys are refused on parse, so keep them distinct here.
                let mut seen = HashSet::new();
                fields.retain(|(k, _)| seen.insert(k.clone()));
                let mut seen = HashSet::new();
                tags.retain(|(k, _)| seen.insert(k.clone()));
                Reading {
                    measurement,
                    tags,
                    fields,
                    timestamp_ns,
                }
            })
    }

    #[test]
    fn short_decimals_parse_as_the_general_parser_does() {
        for s in [
            "0",
            "-0",
            "-0.0",
            "21.5",
            "1.",
            ".5",
            "-.5",
            "007.50",
            "999999999999999",
            "0.00000000000001",
            "123456789.012345",
            "-1.79769313486231",
            "0.1",
            "0.3",
        ] {
            let general = s.parse::<f64>().expect("valid");
            assert_eq!(
                short_decimal(s.as_bytes()).map(f64::to_bits),
                Some(general.to_bits()),
                "{s}"
            );
        }
        for s in [
            "",
            "-",
            ".",
            "-.",
            "1.2.3",
            "1e3",
            "+1",
            "1_0",
            "0.0000000000000001",
            "1234567890123456",
        ] {
            assert_eq!(short_decimal(s.as_bytes()), None, "{s}");
        }
    }

    proptest! {
        /// Whatever the fast path takes, it reads as `str::parse` does, to the bit.
        #[test]
        fn short_decimal_agrees_with_str_parse(s in "-?[0-9]{0,16}(\\.[0-9]{0,16})?") {
            if let Some(v) = short_decimal(s.as_bytes()) {
                let general = s.parse::<f64>().expect("a decimal the fast path took is valid");
                prop_assert_eq!(v.to_bits(), general.to_bits(), "{}", s);
            }
            if let Ok(general) = s.parse::<f64>() {
                prop_assert_eq!(parse_f64(&s).map(f64::to_bits), Ok(general.to_bits()));
            }
        }

        #[test]
        fn encode_parse_round_trip(r in reading()) {
            let mut out = Vec::new();
            encode(&r, &mut out);
            prop_assert_eq!(out.last(), Some(&b'\n'));
            let line = &out[..out.len() - 1];
            prop_assert!(memchr::memchr(b'\n', line).is_none());
            prop_assert!(memchr::memchr(b'=', line).is_some());
            let back = parse(line);
            prop_assert_eq!(back, Ok(r));
        }

        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..120)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn parse_never_panics_structured(bytes in prop::collection::vec(
            prop::sample::select(b"m,t=v x\\\" 1.5ei-u#\t\xc3\xa9\xff".to_vec()), 0..60)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn control_byte_anywhere_in_a_name_is_refused(
            r in reading(),
            which in 0usize..3,
            at in any::<prop::sample::Index>(),
            c in (0u8..=0x20).prop_map(|c| match c { b'\t' | 0x20 => 0x7f, c => c }),
        ) {
            let mut r = r;
            let name = match which {
                0 => &mut r.measurement,
                1 => &mut r.fields[0].0,
                _ => match r.tags.first_mut() {
                    Some(tag) => &mut tag.1,
                    None => &mut r.measurement,
                },
            };
            let cut = name.char_indices().map(|(i, _)| i).chain([name.len()]).collect::<Vec<_>>();
            name.insert(cut[at.index(cut.len())], char::from(c));
            let mut out = Vec::new();
            encode(&r, &mut out);
            let back = parse(&out[..out.len() - 1]);
            prop_assert!(
                matches!(&back, Err(ProtocolError::InvalidReading(m)) if m.contains("control character")),
                "{:?}", back
            );
        }

        #[test]
        fn duplicate_key_is_refused(r in reading(), tag in any::<bool>()) {
            let mut r = r;
            if tag && !r.tags.is_empty() {
                let dup = r.tags[0].clone();
                r.tags.push(dup);
            } else {
                let dup = r.fields[0].clone();
                r.fields.push(dup);
            }
            let mut out = Vec::new();
            encode(&r, &mut out);
            let back = parse(&out[..out.len() - 1]);
            prop_assert!(
                matches!(&back, Err(ProtocolError::InvalidReading(m)) if m.starts_with("duplicate")),
                "{:?}", back
            );
        }

        #[test]
        fn integers_match_std(s in "-?[0-9]{1,22}|[0-9:/ a+-]{0,20}") {
            prop_assert_eq!(parse_i64(&s).ok(), if s.starts_with('+') { None } else { s.parse().ok() });
            prop_assert_eq!(parse_u64(&s).ok(), if s.starts_with('+') { None } else { s.parse().ok() });
        }
    }
}
