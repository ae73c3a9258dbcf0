//! How stores encode what they keep, shared by every backend: the identity of a reading's
//! series, and the text form of its fields and tags.
//!
//! - **Series key**: the canonical series key of [`crate::protocol::escape`] over the
//!   reading's measurement and tags, plus a `sensor` tag holding [`StoredReading::sensor`]
//!   when the reading has none, so readings of two untagged sensors (told apart by their
//!   address) never collide. A reading's identity is (series key, timestamp): a second
//!   reading with both equal is a duplicate, in every store.
//! - **Fields**: a compact JSON array of `[name, type, value]` with type one of `f`, `i`,
//!   `u`, `s`, `b`. Integers are JSON numbers (exact for all of i64 and u64); floats are
//!   JSON strings holding the shortest round-trip form (`"0.1"`, `"-1e300"`, `"-0.0"`,
//!   `"NaN"`), because serde_json's default float parser is not guaranteed to round-trip
//!   every value.
//! - **Tags**: a JSON array of `[key, value]`, sorted.
//!
//! The SQLite store has kept these texts on disk since schema v1: they never change.

use std::fmt::Write as _;

use super::StoredReading;
use crate::protocol::escape::write_series_key;
use crate::protocol::{FieldValue, Reading};

/// [`write_stored_series_key`] into a new String.
pub fn stored_series_key(reading: &StoredReading) -> String {
    let mut out = String::new();
    let mut scratch = Vec::new();
    write_stored_series_key(&mut out, &mut scratch, reading);
    out
}

/// Write the series key of a stored reading into `out` (see the module doc). Reuses the
/// caller's buffers: this runs once per reading on the ingest path.
pub fn write_stored_series_key<'a>(
    out: &mut String,
    pairs: &mut Vec<(&'a str, &'a str)>,
    reading: &'a StoredReading,
) {
    write_reading_series_key(out, pairs, &reading.reading, &reading.sensor);
}

/// [`write_stored_series_key`] of `reading` filed under `sensor`, before it is a
/// [`StoredReading`].
pub fn write_reading_series_key<'a>(
    out: &mut String,
    pairs: &mut Vec<(&'a str, &'a str)>,
    reading: &'a Reading,
    sensor: &'a str,
) {
    series_tags(pairs, reading, sensor);
    write_series_key(out, &reading.measurement, pairs);
}

/// The tags of the series of `reading` filed under `sensor`, sorted, into `pairs`: with
/// the measurement, exactly what the series key encodes (the key is their escaped text,
/// one to one), so the server's quotas can tell series apart without writing the key.
pub fn series_tags<'a>(pairs: &mut Vec<(&'a str, &'a str)>, reading: &'a Reading, sensor: &'a str) {
    pairs.clear();
    pairs.extend(reading.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    if reading.tag("sensor").is_none() {
        pairs.push(("sensor", sensor));
    }
    pairs.sort_unstable();
}

/// Append `s` as a JSON string.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                write!(out, "\\u{:04x}", u32::from(c)).expect("writing to a String cannot fail")
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Encode fields as `[[name,type,value],…]` (see the module docs).
pub fn encode_fields(out: &mut String, fields: &[(String, FieldValue)]) {
    out.clear();
    out.push('[');
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('[');
        push_json_str(out, name);
        // ryu and itoa: the shortest round-trip forms, without `fmt` machinery (this runs
        // once per field on the ingest path). ryu writes `NaN`/`inf` for non-finite values,
        // which str::parse reads back.
        match value {
            FieldValue::Float(v) => {
                out.push_str(",\"f\",\"");
                out.push_str(ryu::Buffer::new().format(*v));
                out.push_str("\"]");
            }
            FieldValue::Int(v) => {
                out.push_str(",\"i\",");
                out.push_str(itoa::Buffer::new().format(*v));
                out.push(']');
            }
            FieldValue::UInt(v) => {
                out.push_str(",\"u\",");
                out.push_str(itoa::Buffer::new().format(*v));
                out.push(']');
            }
            FieldValue::Bool(v) => out.push_str(if *v { ",\"b\",true]" } else { ",\"b\",false]" }),
            FieldValue::Str(v) => {
                out.push_str(",\"s\",");
                push_json_str(out, v);
                out.push(']');
            }
        }
    }
    out.push(']');
}

/// Decode what [`encode_fields`] wrote.
pub fn decode_fields(text: &str) -> Result<Vec<(String, FieldValue)>, String> {
    let raw: Vec<(String, String, serde_json::Value)> =
        serde_json::from_str(text).map_err(|err| format!("fields {text:?}: {err}"))?;
    raw.into_iter()
        .map(|(name, kind, value)| {
            use serde_json::Value;
            let decoded = match (kind.as_str(), &value) {
                ("f", Value::String(s)) => s.parse::<f64>().ok().map(FieldValue::Float),
                ("i", Value::Number(n)) => n.as_i64().map(FieldValue::Int),
                ("u", Value::Number(n)) => n.as_u64().map(FieldValue::UInt),
                ("b", Value::Bool(b)) => Some(FieldValue::Bool(*b)),
                ("s", Value::String(s)) => Some(FieldValue::Str(s.clone())),
                _ => None,
            };
            decoded
                .map(|v| (name, v))
                .ok_or_else(|| format!("field {text:?}: bad value {value} for type {kind:?}"))
        })
        .collect()
}

/// Tags as a JSON array of `[key, value]`, sorted.
pub fn encode_tags(tags: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = tags.iter().collect();
    sorted.sort_unstable();
    serde_json::to_string(&sorted).expect("a list of string pairs always serializes")
}

/// Decode what [`encode_tags`] wrote.
pub fn decode_tags(text: &str) -> Result<Vec<(String, String)>, String> {
    serde_json::from_str(text).map_err(|err| format!("tags {text:?}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{all_fields, reading, same_fields};

    #[test]
    fn stored_key_adds_sensor_only_when_untagged() {
        let tagged = reading("temp", &[("sensor", "s1")], vec![], 1);
        assert_eq!(stored_series_key(&tagged), "temp,sensor=s1");
        let mut untagged = reading("temp", &[("room", "k")], vec![], 1);
        untagged.sensor = "10.0.0.1".into();
        assert_eq!(stored_series_key(&untagged), "temp,room=k,sensor=10.0.0.1");
    }

    #[test]
    fn fields_encoding_round_trips_exactly() {
        let fields: Vec<(String, FieldValue)> = all_fields()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .chain([
                ("nan".to_string(), FieldValue::Float(f64::NAN)),
                ("inf".to_string(), FieldValue::Float(f64::NEG_INFINITY)),
            ])
            .collect();
        let mut text = String::new();
        encode_fields(&mut text, &fields);
        let back = decode_fields(&text).expect("decodes");
        assert!(same_fields(&fields, &back), "{back:?}");
        let mut small = String::new();
        encode_fields(
            &mut small,
            &[
                ("t".into(), FieldValue::Float(21.5)),
                ("n".into(), FieldValue::Int(-3)),
            ],
        );
        assert_eq!(small, r#"[["t","f","21.5"],["n","i",-3]]"#);
    }

    #[test]
    fn decode_rejects_mismatched_types() {
        assert!(decode_fields(r#"[["a","i","x"]]"#).is_err());
        assert!(decode_fields(r#"[["a","u",-1]]"#).is_err());
        assert!(decode_fields(r#"[["a","q",1]]"#).is_err());
        assert!(decode_fields("not json").is_err());
        assert!(decode_tags("[1]").is_err());
    }

    #[test]
    fn tags_encode_sorted() {
        let tags = vec![
            ("z".to_string(), "1".to_string()),
            ("a".into(), "\"".into()),
        ];
        let text = encode_tags(&tags);
        assert_eq!(text, r#"[["a","\""],["z","1"]]"#);
        let mut sorted = tags;
        sorted.sort();
        assert_eq!(decode_tags(&text).expect("decodes"), sorted);
    }

    proptest::proptest! {
        #[test]
        fn floats_round_trip(bits in proptest::num::u64::ANY) {
            let v = f64::from_bits(bits);
            let mut text = String::new();
            encode_fields(&mut text, &[("v".into(), FieldValue::Float(v))]);
            let back = decode_fields(&text).expect("decodes");
            match back[0].1 {
                FieldValue::Float(b) => proptest::prop_assert!(
                    b.to_bits() == v.to_bits() || (v.is_nan() && b.is_nan())
                ),
                ref other => proptest::prop_assert!(false, "not a float: {other:?}"),
            }
        }
    }
}
