//! Settings: file < environment < flags, `--print-config`, and range errors (exit 2).

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

use crate::harness::*;

/// `server --print-config` with `args` and `envs`: exit code, stdout, stderr.
fn print_config(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = run(bin()
        .args(["server", "--print-config"])
        .args(args)
        .env_remove("SENSORLINK_CONFIG")
        .envs(envs.iter().copied())
        .stdin(Stdio::null()));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn setting(printed: &str, key: &str) -> String {
    printed
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("{key} not printed:\n{printed}"))
        .to_string()
}

#[test]
fn printed_config_fed_back_prints_the_same() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (code, first, stderr) = print_config(
        &[
            "--store",
            "memory",
            "--fsync",
            "os",
            "--idle-timeout",
            "90s",
            "--max-connections",
            "9",
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let path = dir.path().join("server.toml");
    std::fs::write(&path, &first).expect("write config");
    let path = path.to_str().expect("utf-8 temp path");
    let (code, second, stderr) = print_config(&["--config", path], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(second, first);
    assert_eq!(setting(&second, "idle-timeout"), "\"1m 30s\"");
    assert_eq!(setting(&second, "store"), "\"memory\"");
}

#[test]
fn flags_beat_environment_beat_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("server.toml");
    std::fs::write(
        &path,
        "[server]\nmax-connections = 5\nmax-line-bytes = 1000\n",
    )
    .expect("write config");
    let path = path.to_str().expect("utf-8 temp path");
    let env = [("SENSORLINK_MAX_CONNECTIONS", "6")];

    let (_, file_only, _) = print_config(&["--config", path], &[]);
    assert_eq!(setting(&file_only, "max-connections"), "5");
    let (_, env_over_file, _) = print_config(&["--config", path], &env);
    assert_eq!(setting(&env_over_file, "max-connections"), "6");
    assert_eq!(setting(&env_over_file, "max-line-bytes"), "1000");
    let (_, flag_over_env, _) = print_config(&["--config", path, "--max-connections", "7"], &env);
    assert_eq!(setting(&flag_over_env, "max-connections"), "7");
    // SENSORLINK_CONFIG names the file too.
    let (_, via_env, _) = print_config(&[], &[("SENSORLINK_CONFIG", path)]);
    assert_eq!(setting(&via_env, "max-connections"), "5");
}

/// `client --print-config` with `args` and `envs` (the client's own variables cleared).
fn print_client_config(args: &[&str], envs: &[(&str, &str)]) -> String {
    let out = run(bin()
        .args(["client", "--print-config"])
        .args(args)
        .env_remove("SENSORLINK_CONFIG")
        .env_remove("SENSORLINK_LEGACY")
        .env_remove("SENSORLINK_COUNT")
        .envs(envs.iter().copied())
        .stdin(Stdio::null()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Switches and optional numbers follow the same precedence as the rest: an explicit
/// `--legacy=false` beats `SENSORLINK_LEGACY=true`, which beats `legacy = true` in the file.
#[test]
fn switches_and_options_follow_the_precedence_too() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("client.toml");
    std::fs::write(&path, "[client]\nlegacy = true\ncount = 5\n").expect("write config");
    let path = path.to_str().expect("utf-8 temp path");
    let file = ["--config", path];

    let printed = print_client_config(&file, &[]);
    assert_eq!(setting(&printed, "legacy"), "true");
    assert_eq!(setting(&printed, "count"), "5");

    let env_false = [("SENSORLINK_LEGACY", "false"), ("SENSORLINK_COUNT", "6")];
    let printed = print_client_config(&file, &env_false);
    assert_eq!(
        setting(&printed, "legacy"),
        "false",
        "environment over file"
    );
    assert_eq!(setting(&printed, "count"), "6", "environment over file");

    let printed = print_client_config(
        &[&file[..], &["--legacy", "--count", "7"]].concat(),
        &env_false,
    );
    assert_eq!(setting(&printed, "legacy"), "true", "flag over environment");
    assert_eq!(setting(&printed, "count"), "7", "flag over environment");

    let env_true = [("SENSORLINK_LEGACY", "true")];
    let printed = print_client_config(&[&file[..], &["--legacy=false"]].concat(), &env_true);
    assert_eq!(
        setting(&printed, "legacy"),
        "false",
        "--legacy=false over env and file"
    );

    let printed = print_client_config(&[], &[]);
    assert_eq!(setting(&printed, "legacy"), "false", "default");
    assert!(
        !printed.contains("count = "),
        "no count by default:\n{printed}"
    );
}

/// See: issue 8 §4 (cli.rs used to clamp `--max-connections 0` to 1 and
/// `--max-line-bytes 10` to 64 silently).
#[test]
fn out_of_range_values_exit_2_naming_setting_and_range() {
    for (args, message) in [
        (
            &["--listen", "127.0.0.1:0", "--max-connections", "0"][..],
            "invalid max-connections 0: accepted 1 to 1048576",
        ),
        (
            &["--listen", "127.0.0.1:0", "--max-line-bytes", "10"],
            "invalid max-line-bytes 10: accepted 64 to 16777216",
        ),
        (
            &["--listen", "8889"],
            "invalid listen \"8889\": accepted IP:PORT or HOST:PORT",
        ),
    ] {
        let out = run(bin()
            .args(["server", "--store", "memory"])
            .args(args)
            .env_remove("SENSORLINK_CONFIG")
            .stdin(Stdio::null()));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(message), "{stderr}");
        assert!(out.stdout.is_empty(), "never started listening");
    }
}

#[test]
fn unknown_key_in_the_file_exits_2_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("server.toml");
    std::fs::write(&path, "[server]\nmax-conections = 5\n").expect("write config");
    let (code, _, stderr) = print_config(&["--config", path.to_str().expect("utf-8")], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("unknown field `max-conections`"),
        "{stderr}"
    );
}

/// `sensorlink` with the soft AND hard open-file limits lowered to 1024, so the lowered
/// default is exercised whatever this machine's limit is (the server raises the soft limit
/// to the hard one, so lowering only the soft limit would test nothing).
fn under_nofile_1024() -> Command {
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        r#"ulimit -n 1024 && exec "$0" "$@""#,
        env!("CARGO_BIN_EXE_sensorlink"),
    ])
    .env_remove("SENSORLINK_CONFIG")
    .env_remove("SENSORLINK_MAX_CONNECTIONS")
    .env("RUST_LOG", "sensorlink=info");
    cmd
}

/// Start `sensorlink server` under [`under_nofile_1024`], wait for `listening on`, kill it
/// (by its PID: `exec` keeps the shell's) and return its log.
fn log_of_server_under_nofile_1024(extra: &[&str]) -> String {
    let mut child = under_nofile_1024()
        .args(["server", "--listen", "127.0.0.1:0", "--store", "memory"])
        .args(["--http", "off"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sh running sensorlink server");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut first = String::new();
        let _ = BufReader::new(stdout).read_line(&mut first);
        let _ = tx.send(first);
    });
    let first = rx.recv_timeout(PATIENCE);
    let _ = child.kill();
    let out = child.wait_with_output().expect("wait for the server");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    let first = first.unwrap_or_else(|_| panic!("server did not start; log:\n{log}"));
    assert!(first.starts_with("listening on "), "{first:?}\n{log}");
    log
}

/// The default connection limit fits the open-file limit: under a hard limit of 1024 the
/// default is 704 (64 descriptors kept spare, and 256 for HTTP), and a plain start does
/// not warn.
#[test]
fn default_max_connections_fits_a_low_open_file_limit() {
    let out = run(under_nofile_1024().args(["server", "--print-config"]));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{printed}");
    assert_eq!(setting(&printed, "max-connections"), "704");

    // The check runs before the server binds, so its warning would precede `listening on`.
    let log = log_of_server_under_nofile_1024(&[]);
    assert!(!log.contains("open-file limit"), "{log}");
}

/// An explicit limit above what the open-file limit allows still warns.
#[test]
fn explicit_max_connections_above_the_open_file_limit_warns() {
    let log = log_of_server_under_nofile_1024(&["--max-connections", "5000"]);
    assert!(
        log.contains("--max-connections is above the open-file limit"),
        "{log}"
    );
}

#[test]
fn client_print_config_reads_back_and_ranges_are_checked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = run(bin()
        .args([
            "client",
            "--print-config",
            "--sensor",
            "s1",
            "--legacy",
            "--interval",
            "2s",
        ])
        .env_remove("SENSORLINK_CONFIG")
        .stdin(Stdio::null()));
    assert_eq!(out.status.code(), Some(0));
    let first = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(setting(&first, "legacy"), "true");
    let path = dir.path().join("client.toml");
    std::fs::write(&path, &first).expect("write config");
    let out = run(bin()
        .args(["client", "--print-config", "--config"])
        .arg(&path)
        .env_remove("SENSORLINK_CONFIG")
        .stdin(Stdio::null()));
    assert_eq!(String::from_utf8_lossy(&out.stdout), first);

    let out = run(bin()
        .args([
            "client",
            "127.0.0.1:1",
            "--count",
            "1",
            "--max-pending",
            "0",
        ])
        .env_remove("SENSORLINK_CONFIG")
        .stdin(Stdio::null()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid max-pending 0: accepted 1 to 100000000"),
        "{stderr}"
    );
}
