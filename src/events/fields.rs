//! A reading's fields, shortened for a log line ([`BriefFields`]).

use crate::protocol::FieldValue;

/// Fields as `name=value,…`, strings quoted and escaped, cut after [`BriefFields::MAX_CHARS`]:
/// enough to tell two readings apart in a log line, never a flood.
pub(crate) struct BriefFields<'a>(pub(crate) &'a [(String, FieldValue)]);

impl BriefFields<'_> {
    pub(crate) const MAX_CHARS: usize = 80;
}

impl std::fmt::Display for BriefFields<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut text = String::new();
        for (i, (name, value)) in self.0.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.extend(name.escape_debug());
            text.push('=');
            match value {
                FieldValue::Str(s) => text.push_str(&format!("{s:?}")),
                other => text.push_str(&other.to_string()),
            }
            if text.chars().count() > Self::MAX_CHARS {
                break;
            }
        }
        match text.char_indices().nth(Self::MAX_CHARS) {
            Some((cut, _)) => write!(f, "{}…", &text[..cut]),
            None => f.write_str(&text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_brief_and_escaped() {
        let fields = vec![
            ("t".to_string(), FieldValue::Float(-99.0)),
            ("n".to_string(), FieldValue::Int(3)),
            ("s".to_string(), FieldValue::Str("a\"b\n".into())),
        ];
        assert_eq!(BriefFields(&fields).to_string(), r#"t=-99,n=3,s="a\"b\n""#);
        let long = vec![("v".to_string(), FieldValue::Str("x".repeat(500)))];
        let text = BriefFields(&long).to_string();
        assert_eq!(text.chars().count(), BriefFields::MAX_CHARS + 1, "{text}");
        assert!(text.ends_with('…'));
    }
}
