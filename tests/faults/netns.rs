//! A pair of network namespaces (server side, client side) made for one test, deleted by
//! `Drop` even when the test panics; stale pairs of dead test processes are removed first.
//!
//! Only these namespaces are touched: the host's interfaces and routes never are.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Every namespace this suite makes starts with this, then `<pid>-<n>-<side>`, so a later
/// run can tell its own leftovers (of a test process that died) from anyone else's.
pub const PREFIX: &str = "slfault-";

/// Where `ip netns add` bind-mounts the namespaces it names.
const NETNS_DIR: &str = "/run/netns";

/// Turns IPv6 off in the namespace it runs in, where the kernel has it.
const DISABLE_IPV6: &str = "for c in all default; do f=/proc/sys/net/ipv6/conf/$c/disable_ipv6; \
     if [ -e $f ]; then echo 1 > $f || exit 1; fi; done";

/// Tells apart the pairs one test process makes.
static NEXT_PAIR: AtomicU32 = AtomicU32::new(0);

/// Two namespaces, `server` and `client`, each with loopback up; [`crate::link`] joins them.
pub struct NetnsPair {
    pub server: String,
    pub client: String,
    /// The third octet of the pair's 10.201.x.0/30 (each namespace has its own routing, so
    /// this only keeps the printed addresses apart).
    pub subnet: u8,
    /// Whether our programs run at real-time priority (see [`NetnsPair::command`]); off
    /// where `chrt` is not allowed (set by [`NetnsPair::check_realtime`]).
    realtime: bool,
}

impl NetnsPair {
    /// Makes both namespaces with loopback up and IPv6 off (so nothing but the test's own
    /// traffic crosses the link: no router solicitations).
    ///
    /// # Errors
    /// Says what failed (`ip netns add` needs root and `ip` from iproute2).
    pub fn create() -> Result<NetnsPair, String> {
        remove_stale();
        let n = NEXT_PAIR.fetch_add(1, Ordering::Relaxed);
        let base = format!("{PREFIX}{}-{n}", std::process::id());
        let pair = NetnsPair {
            server: format!("{base}-s"),
            client: format!("{base}-c"),
            subnet: (n % 250) as u8 + 1,
            realtime: true,
        };
        for ns in [&pair.server, &pair.client] {
            ip(&["netns", "add", ns])?;
        }
        // From here on, Drop deletes whatever was made.
        for ns in [&pair.server, &pair.client] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            // Through /proc with sh (essential), not sysctl (procps may be missing); a
            // kernel without IPv6 has nothing to turn off.
            pair.exec_status(ns, &["sh", "-c", DISABLE_IPV6])?;
        }
        Ok(pair)
    }

    /// The server side's address on the link.
    pub fn server_ip(&self) -> String {
        format!("10.201.{}.1", self.subnet)
    }

    /// The client side's address on the link.
    pub fn client_ip(&self) -> String {
        format!("10.201.{}.2", self.subnet)
    }

    /// `ip netns exec NS chrt -f 1 program args…`, for our own programs: both exec, so the
    /// child's PID is the program's own and the test signals exactly what it started.
    /// Real-time priority 1 (below the relay's 10) keeps a machine busy with other work
    /// from stalling them for a scheduler slice or more: such a stall would read as a link
    /// fault. They sleep between readings and probes (no spinning), so they take little of
    /// a core.
    /// Where real time is not allowed (see [`NetnsPair::check_realtime`]), they run as
    /// [`NetnsPair::command_niced`] does.
    pub fn command(&self, ns: &str, program: &str) -> Command {
        if !self.realtime {
            return self.command_niced(ns, program);
        }
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, "chrt", "-f", "1", program]);
        cmd
    }

    /// Tries `chrt -f 1 true` in the client namespace, once. Root without
    /// `CAP_SYS_NICE` (a container) or with no real-time budget in its cgroup
    /// (`cpu.rt_runtime_us=0`) gets "Operation not permitted"; then our programs run
    /// niced instead, and the reason is returned for the test to print.
    pub fn check_realtime(&mut self) -> Result<(), String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.client, "chrt", "-f", "1", "true"])
            .stdin(Stdio::null())
            .output()
            .map_err(|err| format!("ip netns exec … chrt: {err}"));
        let failed = match out {
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => format!(
                "chrt -f 1: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(err) => err,
        };
        self.realtime = false;
        Err(failed)
    }

    /// `ip netns exec NS nice -n -10 program args…`, for other programs (irtt): a Go
    /// runtime spins while it waits for its own threads, which a real-time class never
    /// time-slices, so they get a raised normal priority instead.
    pub fn command_niced(&self, ns: &str, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, "nice", "-n", "-10", program]);
        cmd
    }

    /// Runs `args` in `ns` and waits; an error carries its stderr.
    pub fn exec_status(&self, ns: &str, args: &[&str]) -> Result<Output, String> {
        let out = self
            .command_niced(ns, args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .output()
            .map_err(|err| format!("ip netns exec {ns} {args:?}: {err}"))?;
        if !out.status.success() {
            return Err(format!(
                "ip netns exec {ns} {args:?}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(out)
    }

    /// The namespace's count of TCP segments retransmitted (`Tcp: RetransSegs` of its
    /// `/proc/net/snmp`): the kernel's own figure, for every socket in the namespace.
    pub fn retrans_segs(&self, ns: &str) -> u64 {
        let out = self
            .exec_status(ns, &["cat", "/proc/net/snmp"])
            .unwrap_or_else(|err| panic!("reading /proc/net/snmp: {err}"));
        snmp_value(&String::from_utf8_lossy(&out.stdout), "Tcp", "RetransSegs")
            .expect("/proc/net/snmp has Tcp: RetransSegs")
    }

    /// A `TcpExt` counter of the namespace's `/proc/net/netstat` (same layout as
    /// `/proc/net/snmp`): `TCPTimeouts` (retransmission timer expiries) and
    /// `TCPLossProbes` (tail-loss probes sent) tell a dead link from a late peer.
    pub fn tcp_ext(&self, ns: &str, name: &str) -> u64 {
        let out = self
            .exec_status(ns, &["cat", "/proc/net/netstat"])
            .unwrap_or_else(|err| panic!("reading /proc/net/netstat: {err}"));
        snmp_value(&String::from_utf8_lossy(&out.stdout), "TcpExt", name)
            .unwrap_or_else(|| panic!("/proc/net/netstat has no TcpExt: {name}"))
    }

    /// An fd of the namespace, for `setns`.
    ///
    /// # Errors
    /// When the namespace's mount is gone.
    pub fn open(&self, ns: &str) -> Result<OwnedFd, String> {
        let path = CString::new(format!("{NETNS_DIR}/{ns}")).expect("no NUL in a name");
        // SAFETY: a NUL-terminated path; the fd returned is owned below.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(format!(
                "open {NETNS_DIR}/{ns}: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: `fd` was just opened and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.server, &self.client] {
            // A namespace still held by a TUN fd or a process lives on until they go; the
            // name (the mount) goes now, so nothing of ours is listed any more.
            if let Err(err) = ip(&["netns", "del", ns]) {
                eprintln!("cleanup: {err}");
            }
        }
    }
}

/// Moves the calling thread into the namespace `fd` names.
///
/// # Errors
/// When `setns` fails.
pub fn enter(fd: &OwnedFd) -> Result<(), String> {
    // SAFETY: `fd` is a namespace fd; setns changes only the calling thread.
    let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(format!("setns: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Runs `ip args…` and waits.
///
/// # Errors
/// When `ip` cannot start or fails; carries its stderr.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("ip {}: {err} (is iproute2 installed?)", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Deletes namespaces of this suite whose test process is gone (a run killed before its
/// `Drop`s ran).
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            match ip(&["netns", "del", &name]) {
                Ok(()) => eprintln!("removed stale namespace {name} (process {pid} is gone)"),
                Err(err) => eprintln!("stale namespace {name}: {err}"),
            }
        }
    }
}

/// A value of `/proc/net/snmp`, where each group is a header line of names and a line of
/// values (`Tcp: RtoAlgorithm … RetransSegs …` then `Tcp: 1 … 17 …`).
pub fn snmp_value(text: &str, group: &str, name: &str) -> Option<u64> {
    let tag = format!("{group}:");
    let mut lines = text.lines().filter(|line| line.starts_with(&tag));
    let names = lines.next()?;
    let values = lines.next()?;
    let at = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(at)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snmp_value_reads_the_column_under_its_name() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Tcp: RtoAlgorithm RtoMin RetransSegs InErrs\nTcp: 1 200 17 0\n";
        assert_eq!(snmp_value(text, "Tcp", "RetransSegs"), Some(17));
        assert_eq!(snmp_value(text, "Tcp", "Missing"), None);
        assert_eq!(snmp_value(text, "Udp", "InDatagrams"), None);
    }
}
