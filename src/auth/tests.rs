use super::admin::{self, NewToken};
use super::*;

fn sensors(patterns: &[&str]) -> NewToken {
    NewToken {
        sensors: patterns.iter().map(|p| p.to_string()).collect(),
        ..NewToken::default()
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tokens.toml");
    Fixture { _dir: dir, path }
}

#[test]
fn a_new_token_verifies_and_only_its_hash_is_stored() {
    let f = fixture();
    let made = admin::add(&f.path, sensors(&["kitchen-*"])).expect("add");
    let text = std::fs::read_to_string(&f.path).expect("file");
    assert!(!text.contains(&made.token), "token in clear: {text}");
    assert!(text.contains(&made.entry.hash));
    let auth = Authority::load(&f.path).expect("load");
    let grant = auth.verify(&made.token).expect("verifies");
    assert_eq!(grant.id(), made.entry.id);
    assert!(grant.may_write() && !grant.may_read());
    assert_eq!(auth.active(), 1);
}

#[test]
fn wrong_malformed_and_foreign_tokens_are_refused() {
    let f = fixture();
    let made = admin::add(&f.path, sensors(&["a"])).expect("add");
    let auth = Authority::load(&f.path).expect("load");
    let mut wrong = made.token.clone().into_bytes();
    let last = wrong.len() - 1;
    wrong[last] = if wrong[last] == b'a' { b'b' } else { b'a' };
    let wrong = String::from_utf8(wrong).expect("ascii");
    assert_eq!(auth.verify(&wrong).unwrap_err(), Refusal::Unknown);
    assert_eq!(auth.verify("hunter2").unwrap_err(), Refusal::Malformed);
    assert_eq!(auth.verify("").unwrap_err(), Refusal::Malformed);
    let other = token::new_token("zzzz9999");
    assert_eq!(auth.verify(&other).unwrap_err(), Refusal::Unknown);
}

#[test]
fn scope_decides_sensor_and_measurement() {
    let f = fixture();
    let new = NewToken {
        sensors: vec!["kitchen-*".into(), "hall".into()],
        measurements: vec!["weather".into(), "sensorlink_link".into()],
        ..NewToken::default()
    };
    let made = admin::add(&f.path, new).expect("add");
    let auth = Authority::load(&f.path).expect("load");
    let grant = auth.verify(&made.token).expect("verifies");
    assert_eq!(
        grant.sensor_for("weather", Some("kitchen-01")),
        Ok("kitchen-01")
    );
    assert_eq!(grant.sensor_for("weather", Some("hall")), Ok("hall"));
    assert!(matches!(
        grant.sensor_for("weather", Some("garage")),
        Err(ScopeError::Sensor { .. })
    ));
    assert!(matches!(
        grant.sensor_for("power", Some("hall")),
        Err(ScopeError::Measurement { .. })
    ));
    let err = grant.sensor_for("weather", None).unwrap_err();
    assert!(matches!(err, ScopeError::SensorTagRequired { .. }), "{err}");
    assert!(err.to_string().contains("kitchen-*, hall"), "{err}");
}

#[test]
fn a_single_plain_sensor_is_the_identity_of_untagged_readings() {
    let f = fixture();
    let made = admin::add(&f.path, sensors(&["kitchen-01"])).expect("add");
    let auth = Authority::load(&f.path).expect("load");
    let grant = auth.verify(&made.token).expect("verifies");
    assert_eq!(grant.sensor_for("weather", None), Ok("kitchen-01"));
    assert!(grant.sensor_for("weather", Some("kitchen-02")).is_err());
    // A glob is not a name: untagged readings need a tag.
    let glob = admin::add(&f.path, sensors(&["kitchen-0?"])).expect("add");
    let auth = Authority::load(&f.path).expect("reload");
    let grant = auth.verify(&glob.token).expect("verifies");
    assert!(grant.sensor_for("weather", None).is_err());
}

#[test]
fn a_read_only_token_cannot_write() {
    let f = fixture();
    let new = NewToken {
        read: true,
        ..NewToken::default()
    };
    let made = admin::add(&f.path, new).expect("add");
    assert_eq!(made.entry.name, "reader");
    let auth = Authority::load(&f.path).expect("load");
    let grant = auth.verify(&made.token).expect("verifies");
    assert!(grant.may_read() && !grant.may_write());
    assert!(matches!(
        grant.sensor_for("m", Some("s")),
        Err(ScopeError::NoWrite { .. })
    ));
    assert!(
        admin::add(&f.path, NewToken::default()).is_err(),
        "a scope is required"
    );
}

#[test]
fn revoke_and_reload_mark_held_grants_stale() {
    let f = fixture();
    let keep = admin::add(&f.path, sensors(&["a"])).expect("add");
    let gone = admin::add(&f.path, sensors(&["b"])).expect("add");
    let auth = Authority::load(&f.path).expect("load");
    let kept = auth.verify(&keep.token).expect("verifies");
    let held = auth.verify(&gone.token).expect("verifies");

    let revoked = admin::revoke(&f.path, &gone.entry.id).expect("revoke");
    assert_eq!(revoked.len(), 1);
    // Not in force until the server reloads.
    assert!(auth.verify(&gone.token).is_ok());
    let added = admin::add(&f.path, sensors(&["c"])).expect("add");
    let summary = auth.reload().expect("reload");
    assert_eq!(
        summary,
        ReloadSummary {
            active: 2,
            revoked: 1,
            added: 1,
            removed_or_changed: 1
        }
    );
    assert!(!held.is_current());
    assert!(kept.is_current(), "an unchanged token keeps its grant");
    assert!(matches!(auth.verify(&gone.token), Err(Refusal::Revoked(_))));
    assert!(matches!(auth.refresh(&held), Err(Refusal::Revoked(_))));
    assert!(auth.verify(&added.token).is_ok());
    assert!(
        admin::revoke(&f.path, &gone.entry.id).is_err(),
        "already revoked"
    );
}

#[test]
fn revoke_by_name_and_unknown_names() {
    let f = fixture();
    let new = NewToken {
        name: Some("door".into()),
        ..sensors(&["door-*"])
    };
    admin::add(&f.path, new.clone()).expect("add");
    admin::add(&f.path, new).expect("add");
    assert_eq!(admin::revoke(&f.path, "door").expect("by name").len(), 2);
    assert!(admin::revoke(&f.path, "window").is_err());
}

#[test]
fn a_broken_file_is_refused_at_load_and_reload_keeps_the_old_tokens() {
    let f = fixture();
    let made = admin::add(&f.path, sensors(&["a"])).expect("add");
    let auth = Authority::load(&f.path).expect("load");
    std::fs::write(&f.path, "[[token]]\nid = \"abcd1234\"\nhash = \"nope\"\n").expect("write");
    let err = auth.reload().unwrap_err();
    assert!(format!("{err:#}").contains("abcd1234"), "{err:#}");
    assert!(auth.verify(&made.token).is_ok(), "old tokens stay in force");
    assert!(Authority::load(&f.path).is_err());
    for bad in [
        "[[token]]\nid = \"UPPER123\"\nhash = \"sha256:00\"\n",
        "[[token]]\nid = \"abcd1234\"\nhash = \"sha256:00\"\n",
    ] {
        std::fs::write(&f.path, bad).expect("write");
        assert!(Authority::load(&f.path).is_err(), "{bad}");
    }
    assert!(Authority::load(&f.path.with_extension("missing")).is_err());
}

#[test]
fn bad_globs_are_refused_before_a_token_is_printed() {
    let f = fixture();
    assert!(admin::add(&f.path, sensors(&["kitchen-[a"])).is_err());
    assert!(!f.path.exists(), "nothing written");
}

#[test]
fn a_new_secret_under_the_same_id_does_not_carry_old_holders_over() {
    let f = fixture();
    let made = admin::add(&f.path, sensors(&["a"])).expect("add");
    let auth = Authority::load(&f.path).expect("load");
    let held = auth.verify(&made.token).expect("verifies");
    // Same id, new secret (an edited file): the old secret's holders are out.
    let mut file = file::TokensFile::read(&f.path).expect("read");
    let fresh = token::new_token(&made.entry.id);
    file.tokens[0].hash = TokenHash::of(&fresh).to_text();
    file.write(&f.path).expect("write");
    auth.reload().expect("reload");
    assert!(!held.is_current());
    assert_eq!(auth.refresh(&held).unwrap_err(), Refusal::Unknown);
    assert_eq!(auth.verify(&made.token).unwrap_err(), Refusal::Unknown);
    assert!(auth.verify(&fresh).is_ok());
    // A scope change under the same secret refreshes.
    let held = auth.verify(&fresh).expect("verifies");
    let mut file = file::TokensFile::read(&f.path).expect("read");
    file.tokens[0].sensors = vec!["b".into()];
    file.write(&f.path).expect("write");
    auth.reload().expect("reload");
    let refreshed = auth.refresh(&held).expect("same secret");
    assert_eq!(refreshed.sensor_for("m", None), Ok("b"));
}
