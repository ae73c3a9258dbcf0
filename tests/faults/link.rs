//! A user-space link emulator between two namespaces, as mahimahi does it: one TUN device
//! in each, and relay threads that read IP packets from one and write them to the other
//! after the configured delay and jitter, dropping a seeded random fraction, and all of
//! them during an outage. Packets are delayed below TCP, so the kernel's RTT sees it.
//!
//! Per direction: a reader thread decides each packet's fate and release time (arrival +
//! delay + jitter sample, never before the packet ahead of it: order is kept), and a
//! writer thread sleeps until that time and writes it. No qdisc (this kernel has no
//! netem), no nftables.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};

use crate::netns::{enter, NetnsPair};

/// The TUN device's name in each namespace.
const DEV: &str = "t0";

/// Largest packet read from a TUN (its MTU is 1500; a little room for safety).
const MAX_PACKET_BYTES: usize = 65_536;

/// How often the threads look at the stop flag while idle.
const STOP_POLL: Duration = Duration::from_millis(20);

/// What one direction of the link does to packets. Changeable while running.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Conditions {
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Half-width of a uniform jitter: each packet gets delay + U(-jitter, +jitter)
    /// (not below zero), then waits for the packet ahead of it.
    pub jitter: Duration,
    /// Probability of dropping a packet, each on its own (seeded).
    pub loss: f64,
    /// Drop everything.
    pub outage: bool,
}

impl Conditions {
    pub fn delay_ms(ms: u64) -> Conditions {
        Conditions {
            delay: Duration::from_millis(ms),
            ..Conditions::default()
        }
    }
}

/// One direction's counters.
#[derive(Default)]
pub struct Counters {
    pub forwarded: AtomicU64,
    pub lost: AtomicU64,
    pub outage_dropped: AtomicU64,
    /// Packets whose own release time fell before the previous packet's, so they waited
    /// for it (order kept): how much ordering bent the injected jitter.
    pub held_for_order: AtomicU64,
    /// Writes the TUN refused (each one a packet lost that the loss draw did not choose).
    pub write_failed: AtomicU64,
    /// The latest any packet left after its release time, µs: the emulator's own error.
    pub max_late_us: AtomicU64,
    /// Packets released, and the sum and sum of squares of their lateness (µs, µs²): what
    /// the emulator's own error adds to the delay it was asked for, in mean and variance.
    pub late_count: AtomicU64,
    pub late_sum_us: AtomicU64,
    pub late_sq_sum_us2: AtomicU64,
    /// Relay threads of this direction that ended on an error (a broken TUN, or the other
    /// thread gone) rather than on stop: the link is dead from then on.
    pub threads_failed: AtomicU64,
}

impl Counters {
    fn describe(&self) -> String {
        format!(
            "forwarded {}, lost {}, dropped in outage {}, held for order {}, write failed {}, \
             released late by at most {} µs, threads failed {}",
            self.forwarded.load(Ordering::Relaxed),
            self.lost.load(Ordering::Relaxed),
            self.outage_dropped.load(Ordering::Relaxed),
            self.held_for_order.load(Ordering::Relaxed),
            self.write_failed.load(Ordering::Relaxed),
            self.max_late_us.load(Ordering::Relaxed),
            self.threads_failed.load(Ordering::Relaxed)
        )
    }
}

/// One direction's lateness sums (see [`Counters`]); `max_us` is the largest since the link
/// started, so an upper bound for any run.
#[derive(Debug, Clone, Copy, Default)]
pub struct LatenessSums {
    count: u64,
    sum_us: u64,
    sq_sum_us2: u64,
    max_us: u64,
}

impl LatenessSums {
    fn since(self, earlier: LatenessSums) -> LatenessSums {
        LatenessSums {
            count: self.count.saturating_sub(earlier.count),
            sum_us: self.sum_us.saturating_sub(earlier.sum_us),
            sq_sum_us2: self.sq_sum_us2.saturating_sub(earlier.sq_sum_us2),
            max_us: self.max_us,
        }
    }

    /// Mean and variance of the lateness, in ms and ms² (0 without packets).
    fn mean_var_ms(self) -> (f64, f64) {
        if self.count == 0 {
            return (0.0, 0.0);
        }
        let n = self.count as f64;
        let mean = self.sum_us as f64 / n;
        let var = (self.sq_sum_us2 as f64 / n - mean * mean).max(0.0);
        (mean / 1e3, var / 1e6)
    }
}

/// The emulator's own lateness in both directions: a round trip crosses each once, so its
/// means and variances add to the round trip's.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lateness {
    up: LatenessSums,
    down: LatenessSums,
}

impl Lateness {
    /// The lateness of packets released since `earlier` was taken.
    pub fn since(self, earlier: Lateness) -> Lateness {
        Lateness {
            up: self.up.since(earlier.up),
            down: self.down.since(earlier.down),
        }
    }

    /// What it adds to a round trip's mean, ms.
    pub fn mean_ms(self) -> f64 {
        self.up.mean_var_ms().0 + self.down.mean_var_ms().0
    }

    /// What it adds to a round trip's variance, ms².
    pub fn variance_ms2(self) -> f64 {
        self.up.mean_var_ms().1 + self.down.mean_var_ms().1
    }

    /// The most it can add to one round trip, ms.
    pub fn max_ms(self) -> f64 {
        (self.up.max_us + self.down.max_us) as f64 / 1e3
    }
}

/// One direction: its conditions and counters, shared with its threads.
struct Direction {
    conditions: Mutex<Conditions>,
    counters: Counters,
}

/// The running link. Set conditions with [`Link::set_up`] / [`Link::set_down`] /
/// [`Link::set_outage`]; `Drop` stops the relay and closes the TUN devices.
pub struct Link {
    /// Client → server.
    up: Arc<Direction>,
    /// Server → client.
    down: Arc<Direction>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Link {
    /// Makes a TUN device in each namespace of `pair` (point-to-point, server side
    /// 10.201.x.1, client side 10.201.x.2), and starts the relay with no delay, no loss.
    /// `seed` seeds the loss and jitter draws (each direction its own stream).
    ///
    /// # Errors
    /// When a device cannot be made or configured.
    pub fn start(pair: &NetnsPair, seed: u64) -> Result<Link, String> {
        let server_tun = open_tun_in(pair, &pair.server)?;
        let client_tun = open_tun_in(pair, &pair.client)?;
        for (ns, local, peer) in [
            (&pair.server, pair.server_ip(), pair.client_ip()),
            (&pair.client, pair.client_ip(), pair.server_ip()),
        ] {
            crate::netns::ip(&["-n", ns, "addr", "add", &local, "peer", &peer, "dev", DEV])?;
            crate::netns::ip(&["-n", ns, "link", "set", DEV, "up"])?;
        }
        let server_tun = Arc::new(server_tun);
        let client_tun = Arc::new(client_tun);
        let mut link = Link {
            up: Arc::new(Direction::new()),
            down: Arc::new(Direction::new()),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        let up = link.up.clone();
        let down = link.down.clone();
        link.relay("up", up, client_tun.clone(), server_tun.clone(), seed, true);
        link.relay(
            "down",
            down,
            server_tun,
            client_tun,
            seed ^ 0x9e37_79b9_7f4a_7c15,
            false,
        );
        Ok(link)
    }

    /// Sets both directions.
    pub fn set(&self, conditions: Conditions) {
        self.set_up(conditions);
        self.set_down(conditions);
    }

    /// Client → server.
    pub fn set_up(&self, conditions: Conditions) {
        *self.up.conditions.lock().expect("conditions lock") = conditions;
    }

    /// Server → client.
    pub fn set_down(&self, conditions: Conditions) {
        *self.down.conditions.lock().expect("conditions lock") = conditions;
    }

    /// Starts or ends an outage in both directions, keeping the other conditions.
    pub fn set_outage(&self, outage: bool) {
        for dir in [&self.up, &self.down] {
            dir.conditions.lock().expect("conditions lock").outage = outage;
        }
    }

    /// Counters of both directions, printed beside each scenario.
    pub fn describe(&self) -> String {
        format!(
            "relay up: {}; down: {}",
            self.up.counters.describe(),
            self.down.counters.describe()
        )
    }

    /// The emulator's lateness so far, both directions: take one before a run and one after,
    /// and [`Lateness::since`] gives the run's.
    pub fn lateness(&self) -> Lateness {
        let of = |c: &Counters| LatenessSums {
            count: c.late_count.load(Ordering::Relaxed),
            sum_us: c.late_sum_us.load(Ordering::Relaxed),
            sq_sum_us2: c.late_sq_sum_us2.load(Ordering::Relaxed),
            max_us: c.max_late_us.load(Ordering::Relaxed),
        };
        Lateness {
            up: of(&self.up.counters),
            down: of(&self.down.counters),
        }
    }

    /// Packets dropped by the loss draw (not the outage): (up, down).
    pub fn lost(&self) -> (u64, u64) {
        (
            self.up.counters.lost.load(Ordering::Relaxed),
            self.down.counters.lost.load(Ordering::Relaxed),
        )
    }

    fn relay(
        &mut self,
        name: &str,
        dir: Arc<Direction>,
        from: Arc<OwnedFd>,
        to: Arc<OwnedFd>,
        seed: u64,
        toward_server: bool,
    ) {
        let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
        let dir_for_writer = dir.clone();
        let stop = self.stop.clone();
        let reader = std::thread::Builder::new()
            .name(format!("relay-{name}-read"))
            .spawn(move || read_loop(&dir, &from, &tx, &stop, seed, toward_server))
            .expect("spawn a relay thread");
        let stop = self.stop.clone();
        let counters = dir_for_writer;
        let writer = std::thread::Builder::new()
            .name(format!("relay-{name}-write"))
            .spawn(move || write_loop(&to, &rx, &stop, &counters.counters))
            .expect("spawn a relay thread");
        self.threads.push(reader);
        self.threads.push(writer);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        // The TUN fds close with the last Arc (held by the threads, now gone): the devices
        // vanish with them (they were never made persistent).
    }
}

impl Direction {
    fn new() -> Direction {
        Direction {
            conditions: Mutex::new(Conditions::default()),
            counters: Counters::default(),
        }
    }
}

/// Reads packets, decides drop or release time, hands them to the writer in order.
fn read_loop(
    dir: &Direction,
    from: &OwnedFd,
    tx: &mpsc::Sender<(Instant, Vec<u8>)>,
    stop: &AtomicBool,
    seed: u64,
    toward_server: bool,
) {
    precise_timers();
    let mut schedule = Schedule::new(seed, Instant::now());
    let mut buf = vec![0u8; MAX_PACKET_BYTES];
    // These threads run at real-time priority: every path that does not block (poll, then
    // read) must end the thread, or it would spin above every normal task on the machine.
    while !stop.load(Ordering::Relaxed) {
        match readable(from, STOP_POLL) {
            Readiness::Readable => {}
            Readiness::Idle => continue,
            Readiness::Broken(why) => return fail(&dir.counters, why),
        }
        // SAFETY: reads into our buffer, at most its length.
        let n = unsafe { libc::read(from.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        let arrival = Instant::now();
        if n < 0 {
            let err = std::io::Error::last_os_error();
            // Transient: the next poll is the blocking wait before trying again.
            if matches!(err.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) {
                continue;
            }
            return fail(&dir.counters, format!("read from the TUN: {err}"));
        }
        if n == 0 {
            // A TUN read returns a whole packet or an error; 0 means the device is gone.
            return fail(&dir.counters, "read from the TUN returned 0".to_string());
        }
        let conditions = *dir.conditions.lock().expect("conditions lock");
        let flow = flow_of(&buf[..n as usize], toward_server);
        let counter = match schedule.decide(arrival, &conditions, flow) {
            Fate::Outage => &dir.counters.outage_dropped,
            Fate::Lost => &dir.counters.lost,
            Fate::Release { at, held } => {
                if held {
                    dir.counters.held_for_order.fetch_add(1, Ordering::Relaxed);
                }
                if tx.send((at, buf[..n as usize].to_vec())).is_err() {
                    return;
                }
                &dir.counters.forwarded
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What happens to one packet.
#[derive(Debug, PartialEq)]
enum Fate {
    Outage,
    Lost,
    /// Written at `at`; `held` when its own draw said earlier and it waited for the
    /// packet ahead of it.
    Release {
        at: Instant,
        held: bool,
    },
}

/// Which stream of draws a packet takes: its IP protocol and the port on the server side
/// (0 for anything else). Each flow draws from its own seeded stream, so the fates of one
/// tool's packets do not depend on how they interleave with another's (irtt beside the
/// probe): a run repeats. The client's ports are left out: they change from run to run.
type Flow = (u8, u16);

/// The flow of an IPv4 packet travelling toward the server side (or away from it).
fn flow_of(packet: &[u8], toward_server: bool) -> Flow {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return (0, 0);
    }
    let header = usize::from(packet[0] & 0x0f) * 4;
    let protocol = packet[9];
    let ports = packet.get(header..header + 4);
    match (protocol, ports) {
        (6 | 17, Some(ports)) => {
            let at = if toward_server { 2 } else { 0 };
            (protocol, u16::from_be_bytes([ports[at], ports[at + 1]]))
        }
        _ => (protocol, 0),
    }
}

/// One direction's decisions, no I/O: a seeded stream of draws per flow, and the last
/// release time (order is kept across all flows, as on one wire).
struct Schedule {
    seed: u64,
    draws: std::collections::HashMap<Flow, StdRng>,
    last_release: Instant,
}

impl Schedule {
    fn new(seed: u64, start: Instant) -> Schedule {
        Schedule {
            seed,
            draws: std::collections::HashMap::new(),
            last_release: start,
        }
    }

    /// The fate of a packet of `flow` that arrived at `arrival` under `conditions`.
    fn decide(&mut self, arrival: Instant, conditions: &Conditions, flow: Flow) -> Fate {
        let seed = self.seed
            ^ (u64::from(flow.0) << 16 | u64::from(flow.1)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let rng = self
            .draws
            .entry(flow)
            .or_insert_with(|| StdRng::seed_from_u64(seed));
        // Two draws for every packet, dropped or not, so a flow's sequence of fates
        // depends only on the seed and the packets it has sent.
        let lose = rng.random::<f64>() < conditions.loss;
        let jitter_draw = rng.random::<f64>() * 2.0 - 1.0;
        if conditions.outage {
            return Fate::Outage;
        }
        if lose {
            return Fate::Lost;
        }
        let delay_s = (conditions.delay.as_secs_f64()
            + jitter_draw * conditions.jitter.as_secs_f64())
        .max(0.0);
        let own = arrival + Duration::from_secs_f64(delay_s);
        let held = own < self.last_release;
        let at = own.max(self.last_release);
        self.last_release = at;
        Fate::Release { at, held }
    }
}

/// Writes each packet at its release time.
fn write_loop(
    to: &OwnedFd,
    rx: &mpsc::Receiver<(Instant, Vec<u8>)>,
    stop: &AtomicBool,
    counters: &Counters,
) {
    precise_timers();
    while !stop.load(Ordering::Relaxed) {
        let (release, packet) = match rx.recv_timeout(STOP_POLL) {
            Ok(item) => item,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            // The reader ended (error or panic): nothing more can come, and looping here
            // would spin at real-time priority without ever blocking.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if !stop.load(Ordering::Relaxed) {
                    fail(counters, "its reader thread ended".to_string());
                }
                return;
            }
        };
        let now = Instant::now();
        if release > now {
            std::thread::sleep(release - now);
        }
        let late_us = release.elapsed().as_micros() as u64;
        counters.max_late_us.fetch_max(late_us, Ordering::Relaxed);
        counters.late_count.fetch_add(1, Ordering::Relaxed);
        counters.late_sum_us.fetch_add(late_us, Ordering::Relaxed);
        counters
            .late_sq_sum_us2
            .fetch_add(late_us.saturating_mul(late_us), Ordering::Relaxed);
        // SAFETY: writes one whole packet from our buffer. A failed write is a lost packet,
        // as on a real link (e.g. the device is going down at the end of a test); counted.
        let n = unsafe { libc::write(to.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
        if n < 0 {
            counters.write_failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Lowers this thread's timer slack to 1 µs (the default 50 µs would blur a 20 ms delay),
/// and asks for real-time scheduling so that a machine busy compiling does not delay
/// releases; without the privilege the thread just runs at normal priority. Real time
/// only with the process's `RLIMIT_RTTIME` bound set first, so a spinning relay thread is
/// ended by the kernel rather than starving the machine.
fn precise_timers() {
    // SAFETY: prctl on the calling thread only.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong, 0, 0, 0);
    }
    if let Err(err) = crate::procs::limit_rt_time() {
        eprintln!("relay: no RLIMIT_RTTIME ({err}): normal priority");
        return;
    }
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: sched_setscheduler on the calling thread only.
    unsafe {
        libc::sched_setscheduler(0, libc::SCHED_FIFO, &param);
    }
}

/// Counts a relay thread that ends on an error, and says why (the test's output shows it
/// beside the failure the dead link then causes).
fn fail(counters: &Counters, why: String) {
    counters.threads_failed.fetch_add(1, Ordering::Relaxed);
    eprintln!(
        "relay thread {:?} ends: {why}",
        std::thread::current().name()
    );
}

/// What one wait on a TUN fd found.
enum Readiness {
    Readable,
    /// Nothing within the timeout (or a signal cut the wait short): look at the stop flag.
    Idle,
    /// The fd reports an error or hang-up (e.g. the device was detached), or poll failed:
    /// polling again would return at once, forever.
    Broken(String),
}

/// Waits up to `timeout` for `fd` to be readable.
fn readable(fd: &OwnedFd, timeout: Duration) -> Readiness {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd on our stack.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
    if rc < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EINTR) {
            return Readiness::Idle;
        }
        return Readiness::Broken(format!("poll on the TUN: {err}"));
    }
    if rc == 0 {
        return Readiness::Idle;
    }
    if pfd.revents & libc::POLLIN != 0 {
        // Read even with POLLERR/POLLHUP set beside it: the read reports the error.
        return Readiness::Readable;
    }
    Readiness::Broken(format!("poll on the TUN: revents {:#x}", pfd.revents))
}

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags (the rest of the union
/// is padding here).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens a TUN device named [`DEV`] inside `ns`: a thread enters the namespace, opens
/// `/dev/net/tun` and attaches it; the fd keeps working from any thread afterwards.
fn open_tun_in(pair: &NetnsPair, ns: &str) -> Result<OwnedFd, String> {
    let ns_fd = pair.open(ns)?;
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter(&ns_fd)?;
        // SAFETY: a NUL-terminated path; the fd is owned below.
        let fd = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
            )
        };
        if fd < 0 {
            return Err(format!(
                "open /dev/net/tun: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: `fd` was just opened and nothing else owns it.
        let tun = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..DEV.len()].copy_from_slice(DEV.as_bytes());
        // SAFETY: TUNSETIFF reads and writes one ifreq, which `req` is laid out as.
        let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if rc < 0 {
            return Err(format!(
                "TUNSETIFF {DEV} in {ns}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(tun)
    })
    .join()
    .map_err(|_| "the TUN-opening thread panicked".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::binomial_interval;

    /// A pipe's (read end, write end).
    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: pipe fills two fds, owned below.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
        // SAFETY: both were just opened and nothing else owns them.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    // The two threads must return, not spin, when their input breaks: were they to loop,
    // these calls would never return (and, at real time, RLIMIT_RTTIME would kill the
    // test process).
    #[test]
    fn the_reader_ends_on_a_hung_up_fd() {
        let (read_end, write_end) = pipe();
        drop(write_end);
        assert!(matches!(
            readable(&read_end, STOP_POLL),
            Readiness::Broken(_)
        ));
        let dir = Direction::new();
        let (tx, _rx) = mpsc::channel();
        read_loop(&dir, &read_end, &tx, &AtomicBool::new(false), 1, true);
        assert_eq!(dir.counters.threads_failed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_writer_ends_when_its_reader_is_gone() {
        let (_read_end, write_end) = pipe();
        let counters = Counters::default();
        let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
        drop(tx);
        write_loop(&write_end, &rx, &AtomicBool::new(false), &counters);
        assert_eq!(counters.threads_failed.load(Ordering::Relaxed), 1);
    }

    /// A UDP flow to the server's port 2112.
    const UDP: Flow = (17, 2112);

    fn jittery() -> Conditions {
        Conditions {
            jitter: Duration::from_millis(10),
            ..Conditions::delay_ms(20)
        }
    }

    #[test]
    fn a_fixed_delay_releases_each_packet_exactly_that_much_later() {
        let start = Instant::now();
        let mut schedule = Schedule::new(1, start);
        for ms in [0, 1, 5, 100] {
            let arrival = start + Duration::from_millis(ms);
            assert_eq!(
                schedule.decide(arrival, &Conditions::delay_ms(20), UDP),
                Fate::Release {
                    at: arrival + Duration::from_millis(20),
                    held: false
                }
            );
        }
    }

    #[test]
    fn jitter_stays_in_its_range_and_never_reorders() {
        let start = Instant::now();
        let mut schedule = Schedule::new(2, start);
        let (mut last, mut held) = (start, 0);
        // 1 ms apart, far closer than the 20 ms span: order must often hold packets back.
        for ms in 0..10_000u64 {
            let arrival = start + Duration::from_millis(ms);
            let Fate::Release { at, held: waited } = schedule.decide(arrival, &jittery(), UDP)
            else {
                panic!("no loss or outage was set");
            };
            assert!(
                at >= last,
                "packet {ms} released before the one ahead of it"
            );
            assert!(
                at >= arrival + Duration::from_millis(10),
                "below delay − jitter"
            );
            assert!(
                waited || at <= arrival + Duration::from_millis(30),
                "above delay + jitter"
            );
            held += u32::from(waited);
            last = at;
        }
        assert!(
            held > 0,
            "1 ms apart with ± 10 ms, some packet must have waited"
        );
    }

    #[test]
    fn loss_is_the_injected_fraction_and_repeats_with_the_seed() {
        let start = Instant::now();
        let lossy = Conditions {
            loss: 0.05,
            ..Conditions::default()
        };
        let fates = |seed| {
            let mut schedule = Schedule::new(seed, start);
            (0..100_000)
                .map(|_| schedule.decide(start, &lossy, UDP) == Fate::Lost)
                .collect::<Vec<_>>()
        };
        let first = fates(3);
        let lost = first.iter().filter(|&&lost| lost).count() as u64;
        let (lo, hi) = binomial_interval(100_000, 0.05, 0.999);
        assert!(
            (lo..=hi).contains(&lost),
            "{lost} lost of 100000, not in [{lo}, {hi}]"
        );
        assert_eq!(first, fates(3), "the same seed gives the same fates");
        assert_ne!(first, fates(4), "another seed gives other fates");
    }

    #[test]
    fn an_outage_drops_everything_and_keeps_the_draws_in_step() {
        let start = Instant::now();
        let mut cut = Schedule::new(5, start);
        let mut open = Schedule::new(5, start);
        let outage = Conditions {
            outage: true,
            ..Conditions::delay_ms(20)
        };
        for _ in 0..100 {
            assert_eq!(cut.decide(start, &outage, UDP), Fate::Outage);
            open.decide(start, &Conditions::delay_ms(20), UDP);
        }
        // Both drew the same numbers, so they decide alike from here on.
        let lossy = Conditions {
            loss: 0.5,
            ..Conditions::delay_ms(20)
        };
        for _ in 0..100 {
            assert_eq!(
                cut.decide(start, &lossy, UDP) == Fate::Lost,
                open.decide(start, &lossy, UDP) == Fate::Lost
            );
        }
    }

    #[test]
    fn each_flow_draws_alone_whatever_the_interleaving() {
        let start = Instant::now();
        let lossy = Conditions {
            loss: 0.3,
            ..Conditions::default()
        };
        let (a, b) = ((17, 2112), (17, 8889));
        // Flow a alone, then a interleaved with b in a varying pattern: a's fates repeat.
        let mut alone = Schedule::new(6, start);
        let a_alone: Vec<_> = (0..1000).map(|_| alone.decide(start, &lossy, a)).collect();
        let mut mixed = Schedule::new(6, start);
        let mut a_mixed = Vec::new();
        for i in 0..1000 {
            for _ in 0..i % 3 {
                mixed.decide(start, &lossy, b);
            }
            a_mixed.push(mixed.decide(start, &lossy, a));
        }
        assert_eq!(a_alone, a_mixed);
    }

    #[test]
    fn flow_of_reads_protocol_and_the_server_side_port() {
        // IPv4, 20-byte header, protocol UDP; ports 40000 → 2112.
        let mut packet = vec![0u8; 28];
        packet[0] = 0x45;
        packet[9] = 17;
        packet[20..22].copy_from_slice(&40000u16.to_be_bytes());
        packet[22..24].copy_from_slice(&2112u16.to_be_bytes());
        assert_eq!(flow_of(&packet, true), (17, 2112));
        assert_eq!(flow_of(&packet, false), (17, 40000));
        packet[9] = 1; // ICMP: no ports
        assert_eq!(flow_of(&packet, true), (1, 0));
        assert_eq!(flow_of(&packet[..10], true), (0, 0), "too short");
        packet[0] = 0x60; // IPv6
        assert_eq!(flow_of(&packet, true), (0, 0));
    }
}
