//! Line-protocol escaping and the canonical series key, in one place.
//!
//! The parser ([`super::ilp::parse`]) reads names by these rules, the encoder
//! ([`super::ilp::encode`]) writes them, every store builds its series key with
//! [`write_series_key`], and `sensorlink query` prints names with [`push_name`]. Pure, no
//! store or I/O dependency, so the protocol stays usable on its own.
//!
//! In the measurement a backslash escapes `,` and space; in tag keys, tag values and field
//! keys it escapes `,`, `=` and space; in string field values it escapes `"` and `\`; `\\`
//! is one backslash everywhere. A measurement may also start with `\#` or `\<tab>`. See
//! PROTOCOL.md and the [`super::ilp`] module doc.
//!
//! Two backslash rules, on purpose ([`Backslash`]): the wire doubles a backslash only where
//! it must (so `C:\temp` travels as InfluxDB writes it), while series keys double every
//! backslash, which is the form the SQLite store has kept on disk since schema v1. Both are
//! unambiguous: two different names never escape to the same text.

/// Which part of a line a name is in; each has its own delimiters and escapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Measurement,
    TagKey,
    TagValue,
    FieldKey,
}

/// When a backslash in a name is doubled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backslash {
    /// Only where the parser would otherwise read it as an escape or where it ends the
    /// name: what the encoder sends (PROTOCOL.md).
    WhereNeeded,
    /// Always: the series key form (stored on disk, so it never changes).
    Always,
}

/// Characters always escaped in a name of this kind.
pub(crate) fn must_escape(kind: Kind, c: u8) -> bool {
    match kind {
        Kind::Measurement => c == b',' || c == b' ',
        Kind::TagKey | Kind::TagValue | Kind::FieldKey => c == b',' || c == b'=' || c == b' ',
    }
}

/// Characters that a preceding backslash escapes in a name (anything else keeps the
/// backslash literally).
pub(crate) fn is_escapable(kind: Kind, c: u8) -> bool {
    c == b'\\' || must_escape(kind, c)
}

/// A measurement's first character that needs a backslash on the wire (an unescaped `#`
/// makes the line a comment; leading tabs are skipped as whitespace).
pub(crate) fn is_leading_special(c: u8) -> bool {
    c == b'#' || c == b'\t'
}

/// Characters that a preceding backslash escapes inside a string field value.
pub(crate) fn is_string_escapable(c: u8) -> bool {
    c == b'"' || c == b'\\'
}

/// Whether `c` is an ASCII control byte that no name may hold (tab is allowed; see
/// [`super::ilp`]).
pub(crate) const fn is_refused_control(c: u8) -> bool {
    (c < 0x20 && c != b'\t') || c == 0x7f
}

/// Bytes that stop the parser's fast scan of a name: the delimiters that end a name of
/// this kind when not escaped, `\`, and the control bytes names may not hold (so the one
/// scan also finds those, instead of a second pass over every name).
pub(crate) fn stop_table(kind: Kind) -> &'static [bool; 256] {
    const fn table(delims: &[u8]) -> [bool; 256] {
        let mut t = [false; 256];
        t[b'\\' as usize] = true;
        let mut i = 0;
        while i < delims.len() {
            t[delims[i] as usize] = true;
            i += 1;
        }
        let mut c = 0;
        while c < 256 {
            if is_refused_control(c as u8) {
                t[c] = true;
            }
            c += 1;
        }
        t
    }
    static COMMA_SPACE: [bool; 256] = table(b", ");
    static COMMA_EQ_SPACE: [bool; 256] = table(b",= ");
    match kind {
        Kind::Measurement | Kind::TagValue => &COMMA_SPACE,
        Kind::TagKey | Kind::FieldKey => &COMMA_EQ_SPACE,
    }
}

/// Emit `s` escaped as a name of `kind`, in pieces (so `Vec<u8>` and `String` sinks both
/// work without copying).
pub fn escape_name(s: &str, kind: Kind, backslash: Backslash, emit: &mut impl FnMut(&str)) {
    let b = s.as_bytes();
    let wire = backslash == Backslash::WhereNeeded;
    let mut seg = 0;
    for (i, &c) in b.iter().enumerate() {
        let leading = wire && kind == Kind::Measurement && i == 0;
        let needs = if c == b'\\' {
            match (backslash, b.get(i + 1)) {
                (Backslash::Always, _) | (Backslash::WhereNeeded, None) => true,
                (Backslash::WhereNeeded, Some(&n)) => {
                    is_escapable(kind, n) || (leading && is_leading_special(n))
                }
            }
        } else {
            must_escape(kind, c) || (leading && is_leading_special(c))
        };
        if needs {
            // Special bytes are ASCII, so `i` is a char boundary.
            emit(&s[seg..i]);
            emit("\\");
            seg = i;
        }
    }
    emit(&s[seg..]);
}

/// Append `s` escaped for the wire as a name of `kind`.
pub fn push_name(out: &mut String, s: &str, kind: Kind) {
    escape_name(s, kind, Backslash::WhereNeeded, &mut |piece| {
        out.push_str(piece)
    });
}

/// Emit the body of a string field value (without the quotes): `"` and `\` escaped.
pub fn escape_string_field(s: &str, emit: &mut impl FnMut(&str)) {
    let mut seg = 0;
    for (i, c) in s.bytes().enumerate() {
        if is_string_escapable(c) {
            emit(&s[seg..i]);
            emit("\\");
            seg = i;
        }
    }
    emit(&s[seg..]);
}

/// Append `s` as a quoted string field value: `"say \"hi\""`.
pub fn push_string_field(out: &mut String, s: &str) {
    out.push('"');
    escape_string_field(s, &mut |piece| out.push_str(piece));
    out.push('"');
}

/// Write the canonical series key `measurement,k1=v1,k2=v2` into `out` (cleared first):
/// tags sorted by key then value, every backslash doubled ([`Backslash::Always`]), so the
/// same series always gets the same key whatever order its tags arrived in, and two
/// different series never share one. `pairs` is sorted in place; the caller reuses both
/// buffers (this runs once per stored reading).
pub fn write_series_key(out: &mut String, measurement: &str, pairs: &mut [(&str, &str)]) {
    out.clear();
    pairs.sort_unstable();
    let mut emit = |piece: &str| out.push_str(piece);
    escape_name(measurement, Kind::Measurement, Backslash::Always, &mut emit);
    for (key, value) in pairs.iter() {
        emit(",");
        escape_name(key, Kind::TagKey, Backslash::Always, &mut emit);
        emit("=");
        escape_name(value, Kind::TagValue, Backslash::Always, &mut emit);
    }
}

/// [`write_series_key`] into a new String.
pub fn series_key(measurement: &str, tags: &[(String, String)]) -> String {
    let mut pairs: Vec<(&str, &str)> = tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut out = String::new();
    write_series_key(&mut out, measurement, &mut pairs);
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::protocol::ilp::{self, tests::reading};
    use crate::protocol::Reading;

    fn wire(s: &str, kind: Kind) -> String {
        let mut out = String::new();
        push_name(&mut out, s, kind);
        out
    }

    #[test]
    fn wire_names() {
        assert_eq!(wire("a b,c=d", Kind::Measurement), r"a\ b\,c=d");
        assert_eq!(wire("a b,c=d", Kind::TagValue), r"a\ b\,c\=d");
        assert_eq!(wire(r"C:\temp", Kind::TagValue), r"C:\temp");
        assert_eq!(wire(r"end\", Kind::FieldKey), r"end\\");
        assert_eq!(wire(r"\,", Kind::TagKey), r"\\\,");
        assert_eq!(wire("#m", Kind::Measurement), r"\#m");
        assert_eq!(wire("#m", Kind::TagValue), "#m");
    }

    #[test]
    fn string_fields() {
        let mut out = String::new();
        push_string_field(&mut out, r#"say "hi" \o/"#);
        assert_eq!(out, r#""say \"hi\" \\o/""#);
    }

    /// The on-disk form of SQLite schema v1: every backslash doubled, no leading `#` escape.
    #[test]
    fn series_key_sorts_and_escapes() {
        let tags = vec![
            ("z".to_string(), "1".to_string()),
            ("a b".to_string(), "x,y=z".to_string()),
            ("a".to_string(), "2".to_string()),
        ];
        assert_eq!(
            series_key("cpu load,x", &tags),
            r"cpu\ load\,x,a=2,a\ b=x\,y\=z,z=1"
        );
        assert_eq!(series_key("m", &[]), "m");
        assert_eq!(series_key(r"#C:\t", &[]), r"#C:\\t");
        // Without escaping the backslash these two would share the key `a\,k=v`.
        let kv = vec![("k".to_string(), "v".to_string())];
        assert_ne!(series_key("a\\", &kv), series_key("a,k=v", &[]));
    }

    /// Tags with equal keys are ordered by value, so their order on the line does not
    /// change the key.
    #[test]
    fn series_keys_of_equal_tags_sort_by_value() {
        let tags = vec![
            ("site".to_string(), "lab".to_string()),
            ("a b".to_string(), "2".to_string()),
            ("a b".to_string(), "1".to_string()),
        ];
        assert_eq!(series_key("w,x", &tags), r"w\,x,a\ b=1,a\ b=2,site=lab");
    }

    /// Reads a series key back into (measurement, tags): the inverse of the key form, used
    /// only to show that it is unambiguous.
    fn parse_key(key: &str) -> (String, Vec<(String, String)>) {
        let mut parts: Vec<String> = vec![String::new()];
        let mut chars = key.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    let next = chars.next().expect("a key never ends in a lone backslash");
                    let last = parts.last_mut().expect("parts is never empty");
                    last.push('\\');
                    last.push(next);
                }
                ',' => parts.push(String::new()),
                c => parts.last_mut().expect("parts is never empty").push(c),
            }
        }
        let unescape = |s: &str| {
            let mut out = String::new();
            let mut chars = s.chars();
            while let Some(c) = chars.next() {
                out.push(if c == '\\' {
                    chars.next().expect("escape pairs")
                } else {
                    c
                });
            }
            out
        };
        let measurement = unescape(&parts[0]);
        let tags = parts[1..]
            .iter()
            .map(|pair| {
                let mut cut = None;
                let mut escaped = false;
                for (i, c) in pair.char_indices() {
                    match (escaped, c) {
                        (true, _) => escaped = false,
                        (false, '\\') => escaped = true,
                        (false, '=') => {
                            cut = Some(i);
                            break;
                        }
                        _ => {}
                    }
                }
                let cut = cut.expect("every tag has an unescaped '='");
                (unescape(&pair[..cut]), unescape(&pair[cut + 1..]))
            })
            .collect();
        (measurement, tags)
    }

    /// Any text but `\n` (which no line can carry), biased towards the bytes escaping is
    /// about.
    pub(crate) fn any_text(len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
        let special = prop::sample::select(vec![' ', ',', '=', '"', '\\', '#', '\t', '\r']);
        prop::collection::vec(prop_oneof![special, any::<char>()], len)
            .prop_map(|c| c.into_iter().filter(|&c| c != '\n').collect::<String>())
    }

    /// Non-empty [`any_text`]: a measurement, tag or field name.
    pub(crate) fn any_name() -> impl Strategy<Value = String> {
        any_text(1..8).prop_filter("names are never empty", |s| !s.is_empty())
    }

    /// [`any_name`] without the ASCII control bytes (tab excepted) the parser refuses in
    /// names.
    fn wire_name() -> impl Strategy<Value = String> {
        any_name()
            .prop_map(|s| {
                s.chars()
                    .filter(|&c| c == '\t' || !c.is_ascii_control())
                    .collect::<String>()
            })
            .prop_filter("names are never empty", |s| !s.is_empty())
    }

    /// Readings whose every name and string is arbitrary text the parser accepts.
    fn any_reading() -> impl Strategy<Value = Reading> {
        (
            wire_name(),
            prop::collection::btree_map(wire_name(), wire_name(), 0..4),
            prop::collection::btree_map(wire_name(), any_text(0..10), 1..4),
        )
            .prop_map(|(measurement, tags, fields)| Reading {
                measurement,
                tags: tags.into_iter().collect(),
                fields: fields
                    .into_iter()
                    .map(|(k, v)| (k, crate::protocol::FieldValue::Str(v)))
                    .collect(),
                timestamp_ns: Some(1),
            })
    }

    proptest! {
        /// Every name the encoder writes, whatever it contains, parses back unchanged:
        /// measurement, tag keys and values, field keys and string values.
        #[test]
        fn escape_then_parse_round_trips(r in prop_oneof![reading(), any_reading()]) {
            let mut line = Vec::new();
            ilp::encode(&r, &mut line);
            line.pop();
            let back: Reading = ilp::parse(&line).expect("encoded lines parse");
            prop_assert_eq!(back, r);
        }

        /// The series key ignores tag order and reads back as the same series: canonical and
        /// unambiguous.
        #[test]
        fn series_key_is_canonical(r in prop_oneof![reading(), any_reading()], seed in any::<u64>()) {
            let key = series_key(&r.measurement, &r.tags);
            let mut shuffled = r.tags.clone();
            let n = shuffled.len().max(1);
            shuffled.rotate_left(usize::try_from(seed).unwrap_or(0) % n);
            shuffled.reverse();
            prop_assert_eq!(&series_key(&r.measurement, &shuffled), &key);
            let (measurement, tags) = parse_key(&key);
            let mut sorted = r.tags.clone();
            sorted.sort();
            prop_assert_eq!(measurement, r.measurement);
            prop_assert_eq!(tags, sorted);
        }
    }
}
