//! Control lines (`ping`, `sync`, `auth`) and the server's replies (`pong`, `ack`,
//! `ok auth`, `error`).
//!
//! A line with no `=` byte is a control line. Every valid reading has at least one field,
//! hence at least one `=`, so the two can never be mistaken for each other, and the check
//! needs no parsing.
//!
//! Commands: `ping`, `ping TOKEN`, `sync TOKEN`, `auth SECRET`, words separated by spaces
//! or tabs. A token is 1..=64 printable ASCII characters (`!`..=`~`) other than `=`. An
//! `auth` secret (`sl_<id>_<secret>`, see [`crate::auth::token`]) is checked by the server,
//! not here, and is never echoed in an error: it is a credential.
//!
//! Replies: `pong`, `pong TOKEN`, `ack TOKEN readings=N rejected=M [duplicates=D]
//! [conflicts=C] [store_us=X] [commit_us=Y]`, `ok auth ID` (only ever sent to a peer that
//! sent `auth`), `error LINE REASON`. `duplicates` and `conflicts` are written only when not
//! 0 (absent means 0), so an ack without them keeps its old bytes. Readers ignore `ack` keys
//! they don't know, so new ones can be added.

use super::ProtocolError;

/// A control line sent by a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ping(Option<String>),
    Sync(String),
    /// `auth <token>`: the secret as sent (its `Debug` is redacted: it must not reach a log).
    Auth(AuthSecret),
}

/// The token text of an `auth` line. A credential: `Debug` never shows it, and it is read
/// only through [`AuthSecret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct AuthSecret(String);

impl AuthSecret {
    pub fn new(secret: impl Into<String>) -> Self {
        AuthSecret(secret.into())
    }

    /// The secret itself: for the check against the tokens file and for sending it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AuthSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthSecret(<redacted>)")
    }
}

/// The answer to a `sync`: everything before it on this connection is stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ack {
    pub token: String,
    /// Readings accepted since the previous `sync` on this connection.
    pub readings: u64,
    /// Lines rejected since the previous `sync` on this connection.
    pub rejected: u64,
    /// Of `readings`, those whose series and timestamp were already stored with the same
    /// fields: not stored twice, harmless (e.g. a resend after a lost ack). Absent = 0.
    pub duplicates: u64,
    /// Of `readings`, those whose series and timestamp were already stored with *other*
    /// fields: refused, the stored reading is kept. Absent = 0.
    pub conflicts: u64,
    /// Microseconds from the receipt of the batch's first reading to its commit.
    pub store_us: Option<u64>,
    /// Microseconds the store's transaction took to commit.
    pub commit_us: Option<u64>,
}

/// A line the server sends in line mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Pong(Option<String>),
    Ack(Ack),
    /// `ok auth <token id>`: the `auth` line was accepted (sent only to peers that sent one).
    AuthOk(String),
    Error {
        line: u64,
        reason: String,
    },
}

/// The reason of the `error` reply to an `auth` line when the server has no `--auth`.
pub const AUTH_OFF_REASON: &str = "auth is not enabled on this server";

/// How the reason of the `error` reply to a refused token starts (then the refusal).
pub const AUTH_FAILED_PREFIX: &str = "auth failed: ";

/// Longest token, in bytes.
pub const MAX_TOKEN_BYTES: usize = 64;

/// Whether a line is a control line rather than a reading (control lines contain no `=`).
pub fn is_control(line: &[u8]) -> bool {
    memchr::memchr(b'=', line).is_none()
}

/// Whether `line` (its leading blanks skipped) starts with `ping`, `sync` or `auth` as a
/// whole word: a cheap look before [`is_control`] scans the line for `=`.
pub fn starts_with_command(line: &[u8]) -> bool {
    let word_ends = matches!(line.get(4), None | Some(b' ' | b'\t'));
    word_ends && matches!(line.get(..4), Some(b"ping" | b"sync" | b"auth"))
}

/// Whether `s` can be a `ping` / `sync` token: 1..=64 printable ASCII bytes, no `=`
/// (so a control line stays free of `=`, and a token is one word).
pub fn valid_token(s: &str) -> bool {
    (1..=MAX_TOKEN_BYTES).contains(&s.len()) && s.bytes().all(|c| c.is_ascii_graphic() && c != b'=')
}

/// Parse a control line (without its line ending).
pub fn parse_command(line: &str) -> Result<Command, ProtocolError> {
    let mut words = line.split([' ', '\t']).filter(|w| !w.is_empty());
    let first = words.next().unwrap_or("");
    let token = words.next();
    let extra = words.next().is_some();
    match first {
        "ping" => {
            if extra {
                return Err(invalid("ping takes at most one token"));
            }
            token.map(checked_token).transpose().map(Command::Ping)
        }
        "auth" => {
            // The word after `auth` is a credential: no error below may quote it.
            match token {
                Some(secret) if !extra => Ok(Command::Auth(AuthSecret::new(secret))),
                Some(_) => Err(invalid("auth takes one token")),
                None => Err(invalid("auth needs a token")),
            }
        }
        "sync" => {
            if extra {
                return Err(invalid("sync takes one token"));
            }
            match token {
                Some(t) => checked_token(t).map(Command::Sync),
                None => Err(invalid("sync needs a token")),
            }
        }
        other => Err(ProtocolError::UnknownCommand(
            truncate(other, 32).to_owned(),
        )),
    }
}

fn checked_token(t: &str) -> Result<String, ProtocolError> {
    if valid_token(t) {
        Ok(t.to_owned())
    } else {
        Err(ProtocolError::InvalidCommand(format!(
            "invalid token {:?} (1-{MAX_TOKEN_BYTES} printable ASCII characters, no \"=\")",
            truncate(t, 32)
        )))
    }
}

fn invalid(msg: &str) -> ProtocolError {
    ProtocolError::InvalidCommand(msg.to_owned())
}

/// At most `max` chars of `s`, so an echoed word can't bloat a reply or a log line.
fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((cut, _)) => &s[..cut],
        None => s,
    }
}

impl Reply {
    /// Append the reply with its `\n`.
    ///
    /// Integers go through `itoa`, not `write!`: an ack is on every round trip's path, and
    /// `core::fmt`'s machinery cost more there than the rest of the reply's encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut digits = itoa::Buffer::new();
        let mut int = |out: &mut Vec<u8>, key: &[u8], n: u64| {
            out.extend_from_slice(key);
            out.extend_from_slice(digits.format(n).as_bytes());
        };
        match self {
            Reply::Pong(None) => out.extend_from_slice(b"pong"),
            Reply::Pong(Some(token)) => {
                out.extend_from_slice(b"pong ");
                out.extend_from_slice(token.as_bytes());
            }
            Reply::Ack(ack) => {
                out.extend_from_slice(b"ack ");
                out.extend_from_slice(ack.token.as_bytes());
                int(out, b" readings=", ack.readings);
                int(out, b" rejected=", ack.rejected);
                if ack.duplicates > 0 {
                    int(out, b" duplicates=", ack.duplicates);
                }
                if ack.conflicts > 0 {
                    int(out, b" conflicts=", ack.conflicts);
                }
                if let Some(us) = ack.store_us {
                    int(out, b" store_us=", us);
                }
                if let Some(us) = ack.commit_us {
                    int(out, b" commit_us=", us);
                }
            }
            Reply::AuthOk(id) => {
                out.extend_from_slice(b"ok auth ");
                out.extend_from_slice(id.as_bytes());
            }
            Reply::Error { line, reason } => {
                int(out, b"error ", *line);
                out.push(b' ');
                // A line ending inside the reason would split the reply in two.
                let start = out.len();
                out.extend_from_slice(reason.as_bytes());
                for c in &mut out[start..] {
                    if *c == b'\n' || *c == b'\r' {
                        *c = b' ';
                    }
                }
            }
        }
        out.push(b'\n');
    }

    /// Parse a reply line (without its line ending); unknown `key=value` pairs are ignored.
    pub fn parse(line: &str) -> Result<Reply, ProtocolError> {
        // A reply is the server's control line, so its errors are command errors.
        let bad = |msg: String| ProtocolError::InvalidCommand(format!("bad reply: {msg}"));
        let (first, rest) = line.split_once(' ').unwrap_or((line, ""));
        match first {
            "pong" => {
                let mut words = rest.split_ascii_whitespace();
                let token = words.next();
                if words.next().is_some() {
                    return Err(bad("pong takes at most one token".into()));
                }
                match token {
                    Some(t) if !valid_token(t) => {
                        Err(bad(format!("invalid token {:?}", truncate(t, 32))))
                    }
                    t => Ok(Reply::Pong(t.map(str::to_owned))),
                }
            }
            "ack" => {
                let mut words = rest.split_ascii_whitespace();
                let token = match words.next() {
                    Some(t) if valid_token(t) => t.to_owned(),
                    Some(t) => return Err(bad(format!("invalid token {:?}", truncate(t, 32)))),
                    None => return Err(bad("ack needs a token".into())),
                };
                let mut ack = Ack {
                    token,
                    ..Ack::default()
                };
                for word in words {
                    let Some((key, value)) = word.split_once('=') else {
                        return Err(bad(format!(
                            "expected key=value, got {:?}",
                            truncate(word, 32)
                        )));
                    };
                    let slot = match key {
                        "readings" => &mut ack.readings,
                        "rejected" => &mut ack.rejected,
                        "duplicates" => &mut ack.duplicates,
                        "conflicts" => &mut ack.conflicts,
                        "store_us" => ack.store_us.insert(0),
                        "commit_us" => ack.commit_us.insert(0),
                        // Newer servers may add keys; old clients must keep working.
                        _ => continue,
                    };
                    *slot = value.parse().map_err(|_| {
                        bad(format!("{key}: invalid number {:?}", truncate(value, 32)))
                    })?;
                }
                Ok(Reply::Ack(ack))
            }
            "ok" => match rest.split_ascii_whitespace().collect::<Vec<_>>()[..] {
                ["auth", id] if valid_token(id) => Ok(Reply::AuthOk(id.to_owned())),
                _ => Err(bad(format!("unknown ok reply {:?}", truncate(rest, 32)))),
            },
            "error" => {
                let (num, reason) = rest
                    .split_once(' ')
                    .ok_or_else(|| bad("error needs a line number and a reason".into()))?;
                let line = num
                    .parse()
                    .map_err(|_| bad(format!("invalid line number {:?}", truncate(num, 32))))?;
                if reason.is_empty() {
                    return Err(bad("error needs a reason".into()));
                }
                Ok(Reply::Error {
                    line,
                    reason: reason.to_owned(),
                })
            }
            other => Err(bad(format!("unknown reply {:?}", truncate(other, 32)))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(s: &str) -> Result<Command, ProtocolError> {
        parse_command(s)
    }

    #[test]
    fn control_detection() {
        assert!(is_control(b"ping"));
        assert!(is_control(b"sync abc"));
        assert!(is_control(b""));
        assert!(!is_control(b"m x=1"));
        assert!(!is_control(b"="));
    }

    #[test]
    fn commands() {
        assert_eq!(cmd("ping"), Ok(Command::Ping(None)));
        assert_eq!(cmd("  ping\t "), Ok(Command::Ping(None)));
        assert_eq!(cmd("ping abc-1"), Ok(Command::Ping(Some("abc-1".into()))));
        assert_eq!(cmd("sync\t42"), Ok(Command::Sync("42".into())));
        let t64 = "~".repeat(64);
        assert_eq!(cmd(&format!("sync {t64}")), Ok(Command::Sync(t64)));
        assert_eq!(
            cmd("sync !\"#$%&'()*+,-./:;<>?@[\\]^_`{|}~").map(|_| ()),
            Ok(())
        );
    }

    #[test]
    fn command_errors() {
        assert_eq!(
            cmd("sync"),
            Err(ProtocolError::InvalidCommand("sync needs a token".into()))
        );
        for bad in ["é", &"x".repeat(65)] {
            let line = format!("sync {bad}");
            assert!(
                matches!(cmd(&line), Err(ProtocolError::InvalidCommand(m)) if m.starts_with("invalid token")),
                "{line}"
            );
        }
        assert!(
            matches!(cmd("ping é"), Err(ProtocolError::InvalidCommand(m)) if m.starts_with("invalid token"))
        );
        assert!(matches!(
            cmd("ping a b"),
            Err(ProtocolError::InvalidCommand(_))
        ));
        assert!(matches!(
            cmd("sync a b"),
            Err(ProtocolError::InvalidCommand(_))
        ));
        assert_eq!(
            cmd("hello"),
            Err(ProtocolError::UnknownCommand("hello".into()))
        );
        assert_eq!(
            cmd("PING"),
            Err(ProtocolError::UnknownCommand("PING".into()))
        );
        assert_eq!(cmd(""), Err(ProtocolError::UnknownCommand("".into())));
        let long = "é".repeat(100);
        assert_eq!(
            cmd(&long),
            Err(ProtocolError::UnknownCommand("é".repeat(32)))
        );
    }

    /// `auth` takes exactly one word, and no error quotes it (it is a secret).
    #[test]
    fn auth_commands() {
        assert_eq!(
            cmd("auth sl_abcdefgh_secret"),
            Ok(Command::Auth(AuthSecret::new("sl_abcdefgh_secret")))
        );
        assert_eq!(
            cmd("\tauth  anything-goes "),
            Ok(Command::Auth(AuthSecret::new("anything-goes")))
        );
        for (line, msg) in [
            ("auth", "auth needs a token"),
            ("auth s3cr3t extra", "auth takes one token"),
        ] {
            let err = cmd(line).expect_err(line);
            assert_eq!(err, ProtocolError::InvalidCommand(msg.into()));
            assert!(!err.to_string().contains("s3cr3t"), "{err}");
        }
        let debug = format!("{:?}", cmd("auth s3cr3t"));
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert_eq!(AuthSecret::new("s3cr3t").expose(), "s3cr3t");
    }

    #[test]
    fn tokens() {
        assert!(valid_token("a"));
        assert!(!valid_token(""));
        assert!(!valid_token("a=b"));
        assert!(!valid_token("a b"));
        assert!(!valid_token("\x7f"));
        assert!(valid_token(&"a".repeat(64)));
        assert!(!valid_token(&"a".repeat(65)));
    }

    fn enc(r: &Reply) -> String {
        let mut out = Vec::new();
        r.encode(&mut out);
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn reply_encoding() {
        assert_eq!(enc(&Reply::Pong(None)), "pong\n");
        assert_eq!(enc(&Reply::Pong(Some("t1".into()))), "pong t1\n");
        let mut ack = Ack {
            token: "s7".into(),
            readings: 10,
            rejected: 2,
            ..Ack::default()
        };
        assert_eq!(
            enc(&Reply::Ack(ack.clone())),
            "ack s7 readings=10 rejected=2\n"
        );
        ack.commit_us = Some(5);
        assert_eq!(
            enc(&Reply::Ack(ack.clone())),
            "ack s7 readings=10 rejected=2 commit_us=5\n"
        );
        ack.store_us = Some(900);
        assert_eq!(
            enc(&Reply::Ack(ack.clone())),
            "ack s7 readings=10 rejected=2 store_us=900 commit_us=5\n"
        );
        // After `rejected=`, each only when not 0.
        ack.conflicts = 1;
        assert_eq!(
            enc(&Reply::Ack(ack.clone())),
            "ack s7 readings=10 rejected=2 conflicts=1 store_us=900 commit_us=5\n"
        );
        ack.duplicates = 3;
        assert_eq!(
            enc(&Reply::Ack(ack)),
            "ack s7 readings=10 rejected=2 duplicates=3 conflicts=1 store_us=900 commit_us=5\n"
        );
        let e = Reply::Error {
            line: 3,
            reason: "bad\r\nthing here".into(),
        };
        assert_eq!(enc(&e), "error 3 bad  thing here\n");
    }

    /// Integers are written without `core::fmt`: every width, 0 and `u64::MAX` included,
    /// comes out as `format!` would write it.
    #[test]
    fn reply_encoding_of_extreme_counts() {
        for n in [0, 9, 10, 99, 100, 12_345_678_901, u64::MAX - 1, u64::MAX] {
            let ack = Ack {
                token: "t".into(),
                readings: n,
                rejected: n,
                duplicates: n,
                conflicts: n,
                store_us: Some(n),
                commit_us: Some(n),
            };
            let repeats = if n > 0 {
                format!(" duplicates={n} conflicts={n}")
            } else {
                String::new()
            };
            assert_eq!(
                enc(&Reply::Ack(ack)),
                format!("ack t readings={n} rejected={n}{repeats} store_us={n} commit_us={n}\n")
            );
            let e = Reply::Error {
                line: n,
                reason: "r".into(),
            };
            assert_eq!(enc(&e), format!("error {n} r\n"));
        }
        assert_eq!(enc(&Reply::AuthOk("ab12".into())), "ok auth ab12\n");
    }

    #[test]
    fn reply_round_trip() {
        let replies = [
            Reply::Pong(None),
            Reply::Pong(Some("abc".into())),
            Reply::Ack(Ack {
                token: "x".into(),
                readings: u64::MAX,
                store_us: Some(1),
                ..Ack::default()
            }),
            Reply::Ack(Ack {
                token: "y".into(),
                readings: 1,
                rejected: 2,
                store_us: Some(3),
                commit_us: Some(4),
                ..Ack::default()
            }),
            Reply::Ack(Ack {
                token: "z".into(),
                readings: 5,
                duplicates: 2,
                conflicts: 3,
                ..Ack::default()
            }),
            Reply::Error {
                line: 42,
                reason: "invalid reading: field \"x\": missing value".into(),
            },
            Reply::AuthOk("abcd1234".into()),
        ];
        for r in replies {
            let line = enc(&r);
            assert_eq!(Reply::parse(line.trim_end_matches('\n')), Ok(r));
        }
    }

    #[test]
    fn reply_parsing() {
        assert_eq!(
            Reply::parse("ack t rejected=1 future=zz readings=2"),
            Ok(Reply::Ack(Ack {
                token: "t".into(),
                readings: 2,
                rejected: 1,
                ..Ack::default()
            }))
        );
        assert_eq!(
            Reply::parse("ack t"),
            Ok(Reply::Ack(Ack {
                token: "t".into(),
                ..Ack::default()
            }))
        );
        assert_eq!(
            Reply::parse("error 7  leading space kept"),
            Ok(Reply::Error {
                line: 7,
                reason: " leading space kept".into()
            })
        );
        for bad in [
            "",
            "pongx",
            "pong a b",
            "ack",
            "ack t readings=x",
            "ack t readings=-1",
            "ack t store_us=",
            "ack t conflicts=x",
            "ack t duplicates=-1",
            "ack t loose",
            "error",
            "error 7",
            "error 7 ",
            "error x reason",
            "hello there",
            "ok",
            "ok auth",
            "ok ping x",
            "ok auth a b",
        ] {
            assert!(Reply::parse(bad).is_err(), "{bad:?}");
        }
    }
}
