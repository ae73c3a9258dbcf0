//! `sensorlink query` and `sensorlink stats`: how stored readings are printed, and how
//! `--since`/`--until` are read. Pure formatting and parsing; the CLI wiring lives elsewhere.
//!
//! Three formats: an aligned `table` for people, `csv` (one column per field name, for
//! spreadsheets) and `json` (values keep their JSON type, integers exact). The table
//! escapes control characters (`\u{1b}`) and invisible format characters (bidi overrides
//! such as `\u{202e}`, zero-width ones), so stored text can neither drive the terminal nor
//! disguise itself; csv and json carry the data as is (json escapes by its own rules).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, Write};

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::protocol::escape::{self, Kind};
use crate::protocol::FieldValue;
use crate::store::{Row, SensorStats};
use crate::timefmt::{now_ns, rfc3339_ns};

/// Output format of `query` and `stats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    /// Aligned columns with a header.
    #[default]
    Table,
    /// RFC 4180 CSV with a header line.
    Csv,
    /// A JSON array of objects.
    Json,
}

/// Print one line (or object) per reading.
pub fn write_rows(rows: &[Row], format: Format, out: &mut dyn Write) -> io::Result<()> {
    match format {
        Format::Table => {
            let cells = rows
                .iter()
                .map(|row| {
                    vec![
                        rfc3339_ns(row.timestamp_ns),
                        row.sensor.clone(),
                        row.measurement.clone(),
                        fields_text(&row.fields),
                        other_tags_text(&row.tags),
                    ]
                })
                .collect();
            write_table(
                out,
                &["time", "sensor", "measurement", "fields", "tags"],
                &[false; 5],
                cells,
            )
        }
        Format::Csv => write_rows_csv(rows, out),
        Format::Json => write_json_array(
            out,
            rows.iter().map(|row| JsonRow {
                time: rfc3339_ns(row.timestamp_ns),
                timestamp_ns: row.timestamp_ns,
                received_ns: row.received_ns,
                sensor: &row.sensor,
                measurement: &row.measurement,
                tags: Pairs(&row.tags),
                fields: Pairs(&row.fields),
            }),
        ),
    }
}

/// Print one line (or object) per sensor.
pub fn write_stats(stats: &[SensorStats], format: Format, out: &mut dyn Write) -> io::Result<()> {
    match format {
        Format::Table => {
            let cells = stats
                .iter()
                .map(|s| {
                    vec![
                        s.sensor.clone(),
                        s.readings.to_string(),
                        rfc3339_ns(s.first_ns),
                        rfc3339_ns(s.last_ns),
                        fields_text(&s.last_fields),
                    ]
                })
                .collect();
            write_table(
                out,
                &["sensor", "readings", "first", "last", "last value"],
                &[false, true, false, false, false],
                cells,
            )
        }
        Format::Csv => {
            let mut csv = csv_writer(out);
            csv.write_record([
                "sensor",
                "readings",
                "first",
                "first_ns",
                "last",
                "last_ns",
                "last_value",
            ])?;
            for s in stats {
                csv.write_record([
                    s.sensor.as_str(),
                    &s.readings.to_string(),
                    &rfc3339_ns(s.first_ns),
                    &s.first_ns.to_string(),
                    &rfc3339_ns(s.last_ns),
                    &s.last_ns.to_string(),
                    &fields_text(&s.last_fields),
                ])?;
            }
            csv.flush()
        }
        Format::Json => write_json_array(
            out,
            stats.iter().map(|s| JsonStats {
                sensor: &s.sensor,
                readings: s.readings,
                first: rfc3339_ns(s.first_ns),
                first_ns: s.first_ns,
                last: rfc3339_ns(s.last_ns),
                last_ns: s.last_ns,
                last_fields: Pairs(&s.last_fields),
            }),
        ),
    }
}

/// Parse a `--since`/`--until` value into ns since the epoch.
///
/// Accepts RFC 3339 (`2026-11-24T11:46:25Z`, `2026-11-24T12:46:25.5+01:00`),
/// `YYYY-MM-DD HH:MM:SS[.f]` and `YYYY-MM-DD` (both UTC), an integer (ns since the epoch),
/// and a duration ago: a whole number and a unit `s`, `m`, `h` or `d` (`10m`, `2h`, `1d`).
///
/// # Errors
/// A message naming the accepted forms, or saying the time is out of range.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let out_of_range = || format!("time {s:?} is out of range (years 1677 to 2262)");
    if let Ok(ns) = s.parse::<i64>() {
        return Ok(ns);
    }
    if let Some(ago) = parse_ago(s) {
        let ago = ago.ok_or_else(out_of_range)?;
        return now_ns().checked_sub(ago).ok_or_else(out_of_range);
    }
    if let Ok(dt) = chrono::DateTime::parse_from_rfc3339(s) {
        return dt.timestamp_nanos_opt().ok_or_else(out_of_range);
    }
    for layout in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(dt) = chrono::NaiveDateTime::parse_from_str(s, layout) {
            return dt.and_utc().timestamp_nanos_opt().ok_or_else(out_of_range);
        }
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return date
            .and_time(chrono::NaiveTime::MIN)
            .and_utc()
            .timestamp_nanos_opt()
            .ok_or_else(out_of_range);
    }
    Err(format!(
        "invalid time {s:?}: expected RFC 3339 (2026-11-24T11:46:25Z), \
         YYYY-MM-DD[ HH:MM:SS[.f]] (UTC), ns since the epoch, or a duration ago (30s, 10m, 2h, 1d)"
    ))
}

/// `10m` → `Some(Some(600e9))`; `None` when `s` is not of that form; `Some(None)` when the
/// duration overflows.
fn parse_ago(s: &str) -> Option<Option<i64>> {
    let unit_ns: i64 = match s.chars().last()? {
        's' => 1_000_000_000,
        'm' => 60 * 1_000_000_000,
        'h' => 3_600 * 1_000_000_000,
        'd' => 86_400 * 1_000_000_000,
        _ => return None,
    };
    let digits = &s[..s.len() - 1];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        digits
            .parse::<i64>()
            .ok()
            .and_then(|n| n.checked_mul(unit_ns)),
    )
}

/// Fields the way line protocol writes them: `temperature=21.5 humidity=40i name="x"`.
fn fields_text(fields: &[(String, FieldValue)]) -> String {
    let mut out = String::new();
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        escape::push_name(&mut out, name, Kind::FieldKey);
        out.push('=');
        match value {
            FieldValue::Str(s) => escape::push_string_field(&mut out, s),
            other => out.push_str(&value_text(other, true)),
        }
    }
    out
}

/// A field value as text; `suffix` adds line protocol's `i`/`u` to integers.
fn value_text(value: &FieldValue, suffix: bool) -> String {
    let mut out = String::new();
    let written = match value {
        // Debug is the shortest form that reads back as the same f64, and keeps a `.0`
        // or an exponent so a float never looks like an integer.
        FieldValue::Float(v) => write!(out, "{v:?}"),
        FieldValue::Int(v) if suffix => write!(out, "{v}i"),
        FieldValue::UInt(v) if suffix => write!(out, "{v}u"),
        FieldValue::Int(v) => write!(out, "{v}"),
        FieldValue::UInt(v) => write!(out, "{v}"),
        FieldValue::Bool(v) => write!(out, "{v}"),
        FieldValue::Str(v) => write!(out, "{v}"),
    };
    written.expect("writing to a String cannot fail");
    out
}

/// Tags other than `sensor` (which has its own column): `k=v,k2=v2`, escaped as line
/// protocol so `,`, `=` and spaces stay readable.
fn other_tags_text(tags: &[(String, String)]) -> String {
    let mut out = String::new();
    for (k, v) in tags.iter().filter(|(k, _)| k != "sensor") {
        if !out.is_empty() {
            out.push(',');
        }
        escape::push_name(&mut out, k, Kind::TagKey);
        out.push('=');
        escape::push_name(&mut out, v, Kind::TagValue);
    }
    out
}

/// `cell` with every control character (C0, DEL, C1) and every [`invisible`] format
/// character written as its Rust escape (`\t`, `\u{1b}`, `\u{202e}`): a stored `\x1b[31m`
/// must not recolour, move the cursor of, or retitle the terminal of whoever runs `query`,
/// a tab or newline would break the columns, and a right-to-left override or a zero-width
/// character would make one sensor's name read like another's.
fn printable(cell: String) -> String {
    let unsafe_char = |c: char| c.is_control() || invisible(c);
    if !cell.chars().any(unsafe_char) {
        return cell;
    }
    let mut out = String::with_capacity(cell.len() + 8);
    for c in cell.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// One note per sensor whose stored first or last timestamp lies outside `window` as of
/// `now_ns` (e.g. a reading at i64::MAX, year 2262): stored before the server refused such
/// timestamps. The window guards what comes in; it never rewrites what is stored, so such a
/// sensor's `last` stays where it is, and `stats` says why.
pub fn out_of_window_notes(
    stats: &[SensorStats],
    window: crate::protocol::TimestampWindow,
    now_ns: i64,
) -> Vec<String> {
    stats
        .iter()
        .filter_map(|s| {
            let (which, ts, err) = [("last", s.last_ns), ("first", s.first_ns)]
                .into_iter()
                .find_map(|(which, ts)| window.check(ts, now_ns).err().map(|e| (which, ts, e)))?;
            let reason = match err {
                crate::protocol::ProtocolError::TimestampOutOfRange { reason, .. } => reason,
                other => other.to_string(),
            };
            Some(format!(
                "note: sensor {}: {which} reading at {} is {reason}: stored before the server \
                 refused such timestamps (stored readings are never rewritten)",
                printable(s.sensor.clone()),
                rfc3339_ns(ts)
            ))
        })
        .collect()
}

/// Unicode format characters (general category Cf, as of Unicode 15), which reorder or
/// hide text: the bidi embeddings, overrides, isolates and marks, zero-width spaces and
/// joiners, the soft hyphen, the byte-order mark, invisible operators, tag characters; plus
/// the line and paragraph separators (U+2028, U+2029: some terminals break lines at them).
/// Inclusive ranges, ascending.
const INVISIBLE: &[(char, char)] = &[
    ('\u{00ad}', '\u{00ad}'),
    ('\u{0600}', '\u{0605}'),
    ('\u{061c}', '\u{061c}'),
    ('\u{06dd}', '\u{06dd}'),
    ('\u{070f}', '\u{070f}'),
    ('\u{0890}', '\u{0891}'),
    ('\u{08e2}', '\u{08e2}'),
    ('\u{180e}', '\u{180e}'),
    ('\u{200b}', '\u{200f}'),
    ('\u{2028}', '\u{202e}'),
    ('\u{2060}', '\u{2064}'),
    ('\u{2066}', '\u{206f}'),
    ('\u{feff}', '\u{feff}'),
    ('\u{fff9}', '\u{fffb}'),
    ('\u{110bd}', '\u{110bd}'),
    ('\u{110cd}', '\u{110cd}'),
    ('\u{13430}', '\u{1343f}'),
    ('\u{1bca0}', '\u{1bca3}'),
    ('\u{1d173}', '\u{1d17a}'),
    ('\u{e0001}', '\u{e0001}'),
    ('\u{e0020}', '\u{e007f}'),
];

/// Whether `c` is one of [`INVISIBLE`] (ASCII and Latin-1 letters never are: checked first).
fn invisible(c: char) -> bool {
    c >= '\u{00ad}'
        && INVISIBLE
            .iter()
            .any(|&(low, high)| (low..=high).contains(&c))
}

/// Aligned columns separated by two spaces; widths from the data; no trailing spaces.
/// Control characters in cells are escaped ([`printable`]).
fn write_table(
    out: &mut dyn Write,
    header: &[&str],
    right_align: &[bool],
    rows: Vec<Vec<String>>,
) -> io::Result<()> {
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|row| row.into_iter().map(printable).collect())
        .collect();
    let width = |cell: &String| cell.chars().count();
    let mut widths: Vec<usize> = header.iter().map(width).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(width(cell));
        }
    }
    let mut line = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        line.clear();
        // Cells after the last non-empty one are left out, so no line ends in spaces.
        let used = row.iter().rposition(|c| !c.is_empty()).map_or(0, |i| i + 1);
        for (i, cell) in row.iter().enumerate().take(used) {
            let pad = widths[i].saturating_sub(width(cell));
            let last = i + 1 == used;
            if right_align.get(i).copied().unwrap_or(false) {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                if !last {
                    line.push_str(&" ".repeat(pad));
                }
            }
            if !last {
                line.push_str("  ");
            }
        }
        line.push('\n');
        out.write_all(line.as_bytes())?;
    }
    Ok(())
}

/// Rows as CSV: fixed columns, then one column per field name (in order of first use).
fn write_rows_csv(rows: &[Row], out: &mut dyn Write) -> io::Result<()> {
    let mut names: Vec<&str> = Vec::new();
    let mut column: HashMap<&str, usize> = HashMap::new();
    for row in rows {
        for (name, _) in &row.fields {
            column.entry(name.as_str()).or_insert_with(|| {
                names.push(name.as_str());
                names.len() - 1
            });
        }
    }
    let fixed = [
        "time",
        "timestamp_ns",
        "received_ns",
        "sensor",
        "measurement",
        "tags",
    ];
    let mut csv = csv_writer(out);
    csv.write_record(fixed.iter().copied().chain(names.iter().copied()))?;
    let mut values: Vec<String> = Vec::with_capacity(names.len());
    for row in rows {
        values.clear();
        values.resize(names.len(), String::new());
        for (name, value) in &row.fields {
            if let Some(&i) = column.get(name.as_str()) {
                values[i] = value_text(value, false);
            }
        }
        let fixed = [
            rfc3339_ns(row.timestamp_ns),
            row.timestamp_ns.to_string(),
            row.received_ns.to_string(),
            row.sensor.clone(),
            row.measurement.clone(),
            other_tags_text(&row.tags),
        ];
        csv.write_record(fixed.iter().chain(values.iter()))?;
    }
    csv.flush()
}

/// RFC 4180 CSV (quotes only where needed), records ended by `\n`.
fn csv_writer(out: &mut dyn Write) -> csv::Writer<&mut dyn Write> {
    csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(out)
}

/// `[`, one object per line, `]`: valid JSON that also greps and diffs well.
fn write_json_array<T: Serialize>(
    out: &mut dyn Write,
    items: impl Iterator<Item = T>,
) -> io::Result<()> {
    let mut first = true;
    out.write_all(b"[")?;
    for item in items {
        out.write_all(if first { b"\n" } else { b",\n" })?;
        first = false;
        serde_json::to_writer(&mut *out, &item).map_err(io::Error::other)?;
    }
    out.write_all(if first { b"]\n" } else { b"\n]\n" })
}

/// Pairs serialized as a JSON object, in their order (serde_json's own map would sort).
pub(crate) struct Pairs<'a, V>(pub(crate) &'a [(String, V)]);

impl<V: Serialize> Serialize for Pairs<'_, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct JsonRow<'a> {
    time: String,
    timestamp_ns: i64,
    received_ns: i64,
    sensor: &'a str,
    measurement: &'a str,
    tags: Pairs<'a, String>,
    fields: Pairs<'a, FieldValue>,
}

#[derive(Serialize)]
struct JsonStats<'a> {
    sensor: &'a str,
    readings: u64,
    first: String,
    first_ns: i64,
    last: String,
    last_ns: i64,
    last_fields: Pairs<'a, FieldValue>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_795_520_785_000_000_000; // 2026-11-24T11:46:25Z

    fn rows() -> Vec<Row> {
        vec![
            Row {
                measurement: "env".into(),
                sensor: "kitchen-1".into(),
                tags: vec![
                    ("room".into(), "kitchen".into()),
                    ("sensor".into(), "kitchen-1".into()),
                ],
                fields: vec![
                    ("temperature".into(), FieldValue::Float(21.5)),
                    ("humidity".into(), FieldValue::Int(40)),
                ],
                timestamp_ns: T0,
                received_ns: T0 + 1_500,
            },
            Row {
                measurement: "door".into(),
                sensor: "10.0.0.7".into(),
                tags: vec![],
                fields: vec![
                    ("open".into(), FieldValue::Bool(true)),
                    ("note".into(), FieldValue::Str("say \"hi\", ok".into())),
                    ("count".into(), FieldValue::UInt(u64::MAX)),
                    ("temperature".into(), FieldValue::Float(-1e300)),
                ],
                timestamp_ns: T0 + 123_456_789,
                received_ns: T0 + 123_456_789,
            },
        ]
    }

    fn render(f: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> String {
        let mut buf = Vec::new();
        f(&mut buf).expect("writing to a Vec succeeds");
        String::from_utf8(buf).expect("output is UTF-8")
    }

    #[test]
    fn rows_as_table() {
        let text = render(|out| write_rows(&rows(), Format::Table, out));
        let expected = "\
time                            sensor     measurement  fields                                                                          tags
2026-11-24T11:46:25.000000000Z  kitchen-1  env          temperature=21.5 humidity=40i                                                   room=kitchen
2026-11-24T11:46:25.123456789Z  10.0.0.7   door         open=true note=\"say \\\"hi\\\", ok\" count=18446744073709551615u temperature=-1e300
";
        assert_eq!(text, expected);
        assert!(text.lines().all(|l| !l.ends_with(' ')));
    }

    // See: issue 10 ("`query`'s table output escapes control characters (a stored
    // `\x1b[31m` is printed raw today)"). Stores written before the parser refused them
    // may hold such names, and string values may hold them still.
    #[test]
    fn table_escapes_control_characters() {
        let row = Row {
            measurement: "m\x1b[31m".into(),
            sensor: "s\0\u{9b}".into(),
            tags: vec![("t".into(), "a\tb".into())],
            fields: vec![("v".into(), FieldValue::Str("red\x1b[31m\r\nx\x7f".into()))],
            timestamp_ns: T0,
            received_ns: T0,
        };
        let text = render(|out| write_rows(&[row], Format::Table, out));
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert_eq!(text.lines().count(), 2, "{text}");
        let line = text.lines().nth(1).expect("one row");
        assert!(line.contains("s\\u{0}\\u{9b}"), "{line}");
        assert!(line.contains("m\\u{1b}[31m"), "{line}");
        assert!(line.contains(r#"v="red\u{1b}[31m\r\nx\u{7f}""#), "{line}");
        assert!(line.ends_with(r"t=a\tb"), "{line}");
        let stats = vec![SensorStats {
            sensor: "\x1b]0;pwned\x07".into(),
            readings: 1,
            first_ns: T0,
            last_ns: T0,
            last_fields: vec![],
        }];
        let text = render(|out| write_stats(&stats, Format::Table, out));
        assert!(text.contains(r"\u{1b}]0;pwned\u{7}"), "{text}");
        // Plain text is untouched (no copy either way, but the bytes are what matter).
        assert_eq!(printable("temp=21.5 é 温".into()), "temp=21.5 é 温");
    }

    /// Readings stored before the timestamp window existed are named, not hidden.
    #[test]
    fn stats_note_timestamps_outside_the_window() {
        let now = T0;
        let stat = |sensor: &str, first_ns, last_ns| SensorStats {
            sensor: sensor.into(),
            readings: 1,
            first_ns,
            last_ns,
            last_fields: vec![],
        };
        let stats = vec![
            stat("ok", 0, now),
            stat("future", now, i64::MAX),
            stat("past", -1, now),
        ];
        let notes = out_of_window_notes(&stats, crate::protocol::TimestampWindow::default(), now);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes[0].starts_with(
                "note: sensor future: last reading at 2262-04-11T23:47:16.854775807Z is more \
                 than 1day in the future (max-future-timestamp): stored before"
            ),
            "{}",
            notes[0]
        );
        assert!(
            notes[1].contains(
                "sensor past: first reading at 1969-12-31T23:59:59.999999999Z is before 1970"
            ),
            "{}",
            notes[1]
        );
    }

    /// Every format character the review found missing is escaped, each range of the table
    /// from end to end, and the neighbours just outside the ranges are kept.
    #[test]
    fn every_format_character_is_escaped() {
        for c in [
            '\u{00ad}',
            '\u{180e}',
            '\u{2060}',
            '\u{2064}',
            '\u{206a}',
            '\u{206f}',
            '\u{fff9}',
            '\u{fffb}',
            '\u{e0001}',
            '\u{e0020}',
            '\u{e007f}',
        ] {
            assert!(invisible(c), "{:?}", c);
            assert_eq!(printable(c.to_string()), c.escape_default().to_string());
        }
        for pair in INVISIBLE.windows(2) {
            assert!(pair[0].1 < pair[1].0, "ascending, disjoint: {pair:?}");
        }
        for &(low, high) in INVISIBLE {
            assert!(low <= high && invisible(low) && invisible(high), "{low:?}");
        }
        for c in [
            '\u{00ac}',
            '\u{00ae}',
            '\u{2065}',
            '\u{2070}',
            '\u{fffc}',
            '\u{e0080}',
        ] {
            assert!(!invisible(c), "{:?}", c);
            assert_eq!(printable(c.to_string()), c.to_string());
        }
    }

    /// A right-to-left override or a zero-width character would let a stored name pass for
    /// another (`kitchen-01` shown for `kitchen-\u{202e}10`); the table shows them escaped.
    #[test]
    fn table_escapes_invisible_format_characters() {
        let row = Row {
            measurement: "m\u{feff}".into(),
            sensor: "kitchen-\u{202e}10".into(),
            tags: vec![("t".into(), "a\u{200b}b\u{2066}c\u{2069}".into())],
            fields: vec![(
                "v".into(),
                FieldValue::Str("x\u{202a}\u{200f}\u{2028}".into()),
            )],
            timestamp_ns: T0,
            received_ns: T0,
        };
        let text = render(|out| write_rows(&[row], Format::Table, out));
        let line = text.lines().nth(1).expect("one row");
        assert!(!line.chars().any(invisible), "{line:?}");
        assert!(line.contains(r"kitchen-\u{202e}10"), "{line}");
        assert!(line.contains(r"m\u{feff}"), "{line}");
        assert!(line.contains(r#"v="x\u{202a}\u{200f}\u{2028}""#), "{line}");
        assert!(line.ends_with(r"t=a\u{200b}b\u{2066}c\u{2069}"), "{line}");
        for c in [
            '\u{202a}', '\u{202e}', '\u{2066}', '\u{2069}', '\u{200b}', '\u{200f}', '\u{feff}',
        ] {
            assert_eq!(printable(c.to_string()), c.escape_default().to_string());
        }
        // Neighbours that only look special are kept: an en dash, a narrow no-break space.
        assert_eq!(
            printable("a\u{2013}b\u{202f}c".into()),
            "a\u{2013}b\u{202f}c"
        );
    }

    /// Names print as line protocol writes them (the shared escaping): delimiters escaped,
    /// a backslash doubled only where it would otherwise escape or end the name.
    #[test]
    fn names_print_as_line_protocol() {
        let row = Row {
            measurement: "m".into(),
            sensor: "s".into(),
            tags: vec![("k ey".into(), r"C:\dir,x\".into())],
            fields: vec![
                (r"a=b\".into(), FieldValue::Str(r#"q"\"#.into())),
                (r"C:\t".into(), FieldValue::Int(1)),
            ],
            timestamp_ns: T0,
            received_ns: T0,
        };
        assert_eq!(other_tags_text(&row.tags), r"k\ ey=C:\dir\,x\\");
        assert_eq!(fields_text(&row.fields), r#"a\=b\\="q\"\\" C:\t=1i"#);
    }

    #[test]
    fn empty_table_is_a_header() {
        let text = render(|out| write_rows(&[], Format::Table, out));
        assert_eq!(text, "time  sensor  measurement  fields  tags\n");
    }

    #[test]
    fn rows_as_csv() {
        let text = render(|out| write_rows(&rows(), Format::Csv, out));
        let expected = "\
time,timestamp_ns,received_ns,sensor,measurement,tags,temperature,humidity,open,note,count
2026-11-24T11:46:25.000000000Z,1795520785000000000,1795520785000001500,kitchen-1,env,room=kitchen,21.5,40,,,
2026-11-24T11:46:25.123456789Z,1795520785123456789,1795520785123456789,10.0.0.7,door,,-1e300,,true,\"say \"\"hi\"\", ok\",18446744073709551615
";
        assert_eq!(text, expected);
    }

    #[test]
    fn csv_quotes_per_rfc_4180() {
        let text = render(|out| {
            let mut csv = csv_writer(out);
            csv.write_record(["a", "b,c", "d\"e", "f\ng", "h\ri", ""])?;
            csv.flush()
        });
        assert_eq!(text, "a,\"b,c\",\"d\"\"e\",\"f\ng\",\"h\ri\",\n");
    }

    #[test]
    fn rows_as_json() {
        let text = render(|out| write_rows(&rows(), Format::Json, out));
        let expected = r#"[
{"time":"2026-11-24T11:46:25.000000000Z","timestamp_ns":1795520785000000000,"received_ns":1795520785000001500,"sensor":"kitchen-1","measurement":"env","tags":{"room":"kitchen","sensor":"kitchen-1"},"fields":{"temperature":21.5,"humidity":40}},
{"time":"2026-11-24T11:46:25.123456789Z","timestamp_ns":1795520785123456789,"received_ns":1795520785123456789,"sensor":"10.0.0.7","measurement":"door","tags":{},"fields":{"open":true,"note":"say \"hi\", ok","count":18446744073709551615,"temperature":-1e+300}}
]
"#;
        assert_eq!(text, expected);
        let parsed: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(parsed[1]["fields"]["count"].as_u64(), Some(u64::MAX));
        assert_eq!(render(|out| write_rows(&[], Format::Json, out)), "[]\n");
    }

    fn stats() -> Vec<SensorStats> {
        vec![
            SensorStats {
                sensor: "a".into(),
                readings: 12_345,
                first_ns: T0,
                last_ns: T0 + 60_000_000_000,
                last_fields: vec![("t".into(), FieldValue::Float(20.0))],
            },
            SensorStats {
                sensor: "long-sensor".into(),
                readings: 7,
                first_ns: T0,
                last_ns: T0,
                last_fields: vec![("n".into(), FieldValue::Int(i64::MIN))],
            },
        ]
    }

    #[test]
    fn stats_as_table() {
        let text = render(|out| write_stats(&stats(), Format::Table, out));
        let expected = "\
sensor       readings  first                           last                            last value
a               12345  2026-11-24T11:46:25.000000000Z  2026-11-24T11:47:25.000000000Z  t=20.0
long-sensor         7  2026-11-24T11:46:25.000000000Z  2026-11-24T11:46:25.000000000Z  n=-9223372036854775808i
";
        assert_eq!(text, expected);
    }

    #[test]
    fn stats_as_csv() {
        let text = render(|out| write_stats(&stats(), Format::Csv, out));
        let expected = "\
sensor,readings,first,first_ns,last,last_ns,last_value
a,12345,2026-11-24T11:46:25.000000000Z,1795520785000000000,2026-11-24T11:47:25.000000000Z,1795520845000000000,t=20.0
long-sensor,7,2026-11-24T11:46:25.000000000Z,1795520785000000000,2026-11-24T11:46:25.000000000Z,1795520785000000000,n=-9223372036854775808i
";
        assert_eq!(text, expected);
    }

    #[test]
    fn stats_as_json() {
        let text = render(|out| write_stats(&stats()[1..], Format::Json, out));
        let expected = r#"[
{"sensor":"long-sensor","readings":7,"first":"2026-11-24T11:46:25.000000000Z","first_ns":1795520785000000000,"last":"2026-11-24T11:46:25.000000000Z","last_ns":1795520785000000000,"last_fields":{"n":-9223372036854775808}}
]
"#;
        assert_eq!(text, expected);
    }

    #[test]
    fn parse_absolute_times() {
        assert_eq!(parse_time("2026-11-24T11:46:25Z"), Ok(T0));
        assert_eq!(parse_time("2026-11-24T11:46:25.5Z"), Ok(T0 + 500_000_000));
        assert_eq!(parse_time("2026-11-24T12:46:25+01:00"), Ok(T0));
        assert_eq!(
            parse_time("2026-11-24T11:46:25.123456789-00:00"),
            Ok(T0 + 123_456_789)
        );
        assert_eq!(parse_time("2026-11-24 11:46:25"), Ok(T0));
        assert_eq!(parse_time("2026-11-24 11:46:25.25"), Ok(T0 + 250_000_000));
        assert_eq!(parse_time("2026-11-24T11:46:25"), Ok(T0));
        assert_eq!(
            parse_time("2026-11-24"),
            Ok(T0 - (11 * 3600 + 46 * 60 + 25) * 1_000_000_000)
        );
        assert_eq!(parse_time("1795520785000000000"), Ok(T0));
        assert_eq!(parse_time(" 0 "), Ok(0));
        assert_eq!(parse_time("-5"), Ok(-5));
    }

    #[test]
    fn parse_relative_times() {
        for (text, ago_ns) in [
            ("30s", 30_000_000_000i64),
            ("10m", 600_000_000_000),
            ("2h", 7_200_000_000_000),
            ("1d", 86_400_000_000_000),
            ("0s", 0),
        ] {
            let before = now_ns();
            let t = parse_time(text).expect(text);
            let after = now_ns();
            assert!(t >= before - ago_ns && t <= after - ago_ns, "{text}");
        }
    }

    #[test]
    fn parse_rejects_garbage() {
        for text in [
            "",
            "m",
            "x10m",
            "10x",
            "1.5h",
            "-10m",
            "2026-13-01",
            "2026-11-24 25:00:00",
            "yesterday",
            "99999999999999999999d",
            "3000-01-01",
        ] {
            assert!(parse_time(text).is_err(), "{text:?} should be rejected");
        }
    }
}
