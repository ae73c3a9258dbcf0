//! Settings: file < environment < flags, `--print-config`, and range errors (exit 2).

use std::process::Stdio;

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

/// See: issue 8 §4 (cli.rs used to clamp `--max-connections 0` to 1 and
/// `--max-line-bytes 10` to 64 silently).
#[test]
fn out_of_range_values_exit_2_naming_setting_and_range() {
    for (args, message) in [
        (
            ["--max-connections", "0"],
            "invalid max-connections 0: accepted 1 to 1048576",
        ),
        (
            ["--max-line-bytes", "10"],
            "invalid max-line-bytes 10: accepted 64 to 16777216",
        ),
    ] {
        let out = run(bin()
            .args(["server", "--listen", "127.0.0.1:0", "--store", "memory"])
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

/// The default connection limit fits the open-file limit: a plain start does not warn.
#[test]
fn default_max_connections_starts_without_an_open_file_warning() {
    let server = Server::start(&[]);
    server.wait_for_log("listening");
    let log = server.stderr();
    assert!(!log.contains("open-file limit"), "{log}");
}

/// An explicit limit above what the open-file limit allows still warns.
#[test]
fn explicit_max_connections_above_the_open_file_limit_warns() {
    let (_, hard) = rlimit::Resource::NOFILE
        .get()
        .expect("read the open-file limit");
    if hard > 1 << 20 {
        // No accepted --max-connections exceeds this machine's limit.
        return;
    }
    let server = Server::start(&["--max-connections", "1048576"]);
    server.wait_for_log("listening");
    let log = server.stderr();
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
