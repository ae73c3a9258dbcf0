//! Token text: generation, the public id inside it, and the hash kept on disk.
//!
//! A token reads `sl_<id>_<secret>`: `id` is 8 lowercase letters/digits, unique in its file,
//! so the server finds the entry without trying every hash; `secret` is 43 random
//! letters/digits (≈ 256 bits). Only `sha256:<hex>` of the whole token is stored. A slow
//! password hash (argon2, PBKDF2) defends guessable passwords; a 256-bit random secret
//! cannot be guessed, so one SHA-256 is enough and keeps `auth` cheap under a flood of
//! attempts. Tokens contain no `=` and no space, so `auth <token>` stays a control line.

use rand::RngExt as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

const PREFIX: &str = "sl_";
pub const ID_LEN: usize = 8;
const SECRET_LEN: usize = 43;
/// `sl_` + id + `_` + secret.
pub const TOKEN_LEN: usize = PREFIX.len() + ID_LEN + 1 + SECRET_LEN;
const HASH_PREFIX: &str = "sha256:";

/// A SHA-256 digest of a token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_text())
    }
}

impl TokenHash {
    pub fn of(token: &str) -> Self {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// The digest: also the key of the token's signed UDP probes (`crate::probe::wire`).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Compare in constant time: how much of a guessed hash matched never shows in the
    /// reply time.
    pub fn matches(&self, other: &TokenHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// `sha256:<64 lowercase hex digits>`, the form kept in the tokens file.
    pub fn to_text(&self) -> String {
        let mut text = String::with_capacity(HASH_PREFIX.len() + 64);
        text.push_str(HASH_PREFIX);
        for byte in self.0 {
            text.push(char::from(HEX[usize::from(byte >> 4)]));
            text.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        text
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let hex = text
            .strip_prefix(HASH_PREFIX)
            .ok_or_else(|| format!("hash {text:?} does not start with {HASH_PREFIX:?}"))?;
        if hex.len() != 64 {
            return Err(format!("hash {text:?}: expected 64 hex digits"));
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks_exact(2).enumerate() {
            let digit = |c: u8| char::from(c).to_digit(16);
            match (digit(pair[0]), digit(pair[1])) {
                // Each digit is < 16, so the byte fits.
                (Some(high), Some(low)) => out[i] = (high * 16 + low) as u8,
                _ => return Err(format!("hash {text:?}: not hexadecimal")),
            }
        }
        Ok(TokenHash(out))
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The id part of a presented token, if it has the token's shape.
pub fn id_of(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_at_checked(ID_LEN)?;
    let secret = secret.strip_prefix('_')?;
    let well_formed = token.len() == TOKEN_LEN
        && valid_id(id)
        && secret.bytes().all(|b| b.is_ascii_alphanumeric());
    well_formed.then_some(id)
}

/// Whether `id` can be a token id: 8 lowercase ASCII letters or digits.
pub fn valid_id(id: &str) -> bool {
    id.len() == ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// A fresh id (not yet checked against a file's ids).
pub fn new_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..ID_LEN)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

/// A fresh token with the given id.
pub fn new_token(id: &str) -> String {
    let mut rng = rand::rng();
    let secret: String = (0..SECRET_LEN)
        .map(|_| char::from(rng.sample(rand::distr::Alphanumeric)))
        .collect();
    format!("{PREFIX}{id}_{secret}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_tokens_have_the_shape_and_a_fresh_secret() {
        let id = new_id();
        assert!(valid_id(&id), "{id}");
        let a = new_token(&id);
        let b = new_token(&id);
        assert_eq!(a.len(), TOKEN_LEN);
        assert_eq!(id_of(&a), Some(id.as_str()));
        assert_ne!(a, b, "secrets must be random");
        assert!(crate::protocol::control::is_control(a.as_bytes()));
    }

    #[test]
    fn malformed_tokens_have_no_id() {
        let good = new_token("abcd1234");
        assert_eq!(id_of(&good), Some("abcd1234"));
        for bad in [
            "",
            "sl_",
            "sl_abcd1234",
            &good[..good.len() - 1],
            &format!("{good}x"),
            &good.replace("sl_", "xx_"),
            &good.replacen("abcd1234", "ABCD1234", 1),
            &format!("sl_abcd1234_{}", "é".repeat(21)),
        ] {
            assert_eq!(id_of(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn hash_text_round_trips_and_compares() {
        let hash = TokenHash::of("sl_abcd1234_secret");
        let text = hash.to_text();
        assert!(text.starts_with("sha256:") && text.len() == 71, "{text}");
        let back = TokenHash::parse(&text).expect("own text parses");
        assert!(back.matches(&hash));
        assert!(!TokenHash::of("sl_abcd1234_secreT").matches(&hash));
        // The known SHA-256 of "abc".
        assert_eq!(
            TokenHash::of("abc").to_text(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        for bad in [
            "",
            "sha256:",
            "md5:00",
            &text[..70],
            &text.replace('a', "g"),
        ] {
            assert!(TokenHash::parse(bad).is_err(), "{bad:?}");
        }
    }
}
