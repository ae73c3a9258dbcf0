//! Fault scenarios on an emulated link: two network namespaces (server and client side)
//! joined by a user-space relay ([`link`]) whose delay, jitter, loss and outages each test
//! sets, so the client's and the kernel's figures are checked against conditions we know.
//!
//! Needs root (network namespaces, TUN devices). Run by hand as a normal user, each test
//! prints why it skipped; with `SENSORLINK_REQUIRE_NETNS=1` (set by `.ci/run`) it fails
//! instead. Tests run one at a time (a global lock): their timing shares 2 cores.
//! Each prints `injected: … | measured: …`; the rows also go to a markdown table
//! (see [`table`]) for BENCHMARKS.md.

mod examples;
mod link;
mod netns;
mod outages;
mod probes;
mod procs;
mod scenarios;
mod stats;
mod table;

use std::sync::{Mutex, MutexGuard};

use link::Link;
use netns::NetnsPair;

/// Serialises the tests of this target: each measures time on a shared machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Set (to 1) where the suite must run: a machine that cannot make namespaces then fails.
const REQUIRE_ENV: &str = "SENSORLINK_REQUIRE_NETNS";

/// Seed of the relay's loss and jitter draws: fixed, so a scenario's draws repeat.
pub const SEED: u64 = 0x5e45_0711;

/// One test's network: the lock, the namespaces and the running link. Fields drop in
/// order: the relay stops (and its TUN devices go), then the namespaces, then the lock.
pub struct Lab {
    pub link: Link,
    pub net: NetnsPair,
    _lock: MutexGuard<'static, ()>,
}

impl Lab {
    /// Takes the lock and builds the link, with no delay or loss yet. `None` (after
    /// printing why) where namespaces cannot be made and the suite is not required.
    ///
    /// # Panics
    /// Where namespaces cannot be made and `SENSORLINK_REQUIRE_NETNS=1`.
    pub fn new(test: &str) -> Option<Lab> {
        // A test that failed holding the lock poisons it; the next one still runs.
        let lock = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let made = unavailable().map_or_else(
            || {
                NetnsPair::create().and_then(|mut net| {
                    if let Err(reason) = net.check_realtime() {
                        say(&format!(
                            "{test}: note: no real-time priority ({reason}); figures may include scheduler stalls"
                        ));
                    }
                    Ok((Link::start(&net, SEED)?, net))
                })
            },
            Err,
        );
        match made {
            Ok((link, net)) => Some(Lab {
                link,
                net,
                _lock: lock,
            }),
            Err(reason) if required() => {
                panic!("{test}: {REQUIRE_ENV}=1 but the emulated link cannot be built: {reason}")
            }
            Err(reason) => {
                say(&format!(
                    "{test}: SKIPPED: {reason} (run as root; {REQUIRE_ENV}=1 makes this fail)"
                ));
                None
            }
        }
    }
}

/// Writes a line to stderr past the test harness's capture (which takes `eprintln!`), so a
/// skip is seen in a plain `cargo test`.
fn say(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

/// Why this process cannot build the link, before trying.
fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: network namespaces and TUN devices need root".into());
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    None
}

/// Whether `program` runs here; where not, a required suite fails and a hand run skips.
pub fn have_tool(test: &str, program: &str, package: &str) -> bool {
    let found = std::process::Command::new(program)
        .arg("--help")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            !required(),
            "{test}: {program} is not installed (Debian package {package}; test.sh installs it)"
        );
        say(&format!(
            "{test}: SKIPPED: {program} is not installed (Debian package {package})"
        ));
    }
    found
}
