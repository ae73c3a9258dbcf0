//! Where a client's values come from (`--source`).

use std::path::PathBuf;
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::RngExt;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::{Interval, MissedTickBehavior};

use crate::protocol::FieldValue;

/// A parsed `--source` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// 102, 104, 106, … (the seed's counter).
    Counter,
    /// A random walk.
    Random,
    /// Run a shell command; each line it prints is a value; re-run at the next interval
    /// when it exits.
    Exec(String),
    /// Re-read a file each interval (e.g. /sys/class/thermal/thermal_zone0/temp).
    File(PathBuf),
    /// Each line of standard input is a value; ends at EOF.
    Stdin,
}

/// Why a source could not give a value.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("invalid --source {0:?}: expected counter, random, exec:CMD, file:PATH or stdin")]
    InvalidSpec(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: not a number: {text:?}")]
    NotANumber { what: String, text: String },
}

impl std::str::FromStr for SourceSpec {
    type Err = SourceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || SourceError::InvalidSpec(s.to_string());
        match s {
            "counter" => Ok(SourceSpec::Counter),
            "random" => Ok(SourceSpec::Random),
            "stdin" => Ok(SourceSpec::Stdin),
            _ => {
                if let Some(cmd) = s.strip_prefix("exec:") {
                    if cmd.trim().is_empty() {
                        return Err(invalid());
                    }
                    Ok(SourceSpec::Exec(cmd.to_string()))
                } else if let Some(path) = s.strip_prefix("file:") {
                    if path.is_empty() {
                        return Err(invalid());
                    }
                    Ok(SourceSpec::File(PathBuf::from(path)))
                } else {
                    Err(invalid())
                }
            }
        }
    }
}

/// Longest text quoted back in a [`SourceError::NotANumber`], so a wrong file (or a
/// command printing megabytes on one line) does not flood the log.
const MAX_QUOTED_CHARS: usize = 80;

/// Parses one reading: integer text → `Int`, other finite numbers → `Float`.
///
/// `what` names the source in the error (e.g. `file /sys/…/temp`). Surrounding whitespace
/// is ignored.
pub fn parse_value(text: &str, what: &str) -> Result<FieldValue, SourceError> {
    let t = text.trim();
    if let Ok(i) = t.parse::<i64>() {
        return Ok(FieldValue::Int(i));
    }
    match t.parse::<f64>() {
        // "inf"/"nan" parse as f64 but are not readings (and line protocol cannot carry them).
        Ok(f) if f.is_finite() => Ok(FieldValue::Float(f)),
        _ => {
            let mut quoted: String = t.chars().take(MAX_QUOTED_CHARS).collect();
            if quoted.len() < t.len() {
                quoted.push('…');
            }
            Err(SourceError::NotANumber {
                what: what.to_string(),
                text: quoted,
            })
        }
    }
}

/// Consecutive silent failing runs of an exec command before [`Source::next`] reports them.
const EXEC_FAILURES_BEFORE_ERROR: u32 = 3;

/// Where the random walk starts.
const RANDOM_START: f64 = 20.0;

/// A running source of values, paced by the interval where the source is periodic.
///
/// [`Source::next`] is cancel-safe (usable in `tokio::select!`): state lives in `self`
/// between awaits, so a cancelled call loses neither a tick nor a partly read line.
pub struct Source {
    kind: Kind,
}

enum Kind {
    Counter {
        pacer: Pacer,
        last: i64,
    },
    Random {
        pacer: Pacer,
        rng: SmallRng,
        /// The value to give next.
        value: f64,
    },
    File {
        pacer: Pacer,
        path: PathBuf,
        /// A tick was taken but the read it allows has not finished (cancel safety).
        ticked: bool,
    },
    Lines {
        /// Opened on first use so that `new` needs no runtime.
        reader: Option<LineReader<BoxedRead>>,
        open: fn() -> BoxedRead,
        what: String,
        ended: bool,
    },
    // Boxed: the child process state dwarfs the other variants.
    Exec(Box<Exec>),
}

type BoxedRead = Pin<Box<dyn AsyncRead + Send>>;

impl Source {
    /// `first_tick_delayed`: wait one interval before the first value (the seed did).
    pub fn new(spec: &SourceSpec, interval: Duration, first_tick_delayed: bool) -> Self {
        let pacer = Pacer::new(interval, first_tick_delayed);
        let kind = match spec {
            SourceSpec::Counter => Kind::Counter { pacer, last: 100 },
            SourceSpec::Random => Kind::Random {
                pacer,
                rng: rand::make_rng(),
                value: RANDOM_START,
            },
            SourceSpec::File(path) => Kind::File {
                pacer,
                path: path.clone(),
                ticked: false,
            },
            SourceSpec::Stdin => Kind::Lines {
                reader: None,
                open: || Box::pin(tokio::io::stdin()),
                what: "stdin".to_string(),
                ended: false,
            },
            SourceSpec::Exec(cmd) => Kind::Exec(Box::new(Exec {
                cmd: cmd.clone(),
                what: format!("exec {cmd:?}"),
                pacer,
                running: None,
                failures: 0,
            })),
        };
        Self { kind }
    }

    /// A line source over any reader, read like `stdin` (not paced; ends at EOF).
    /// `what` names it in errors.
    pub fn from_reader<R>(reader: R, what: &str) -> Self
    where
        R: AsyncRead + Send + 'static,
    {
        Self {
            kind: Kind::Lines {
                reader: Some(LineReader::new(Box::pin(reader))),
                // Never called: the reader is already open.
                open: || Box::pin(tokio::io::empty()),
                what: what.to_string(),
                ended: false,
            },
        }
    }

    /// The next value, waiting for it; `Ok(None)` when the source has ended (stdin EOF).
    ///
    /// After an error the source stays usable: call `next` again to go on.
    pub async fn next(&mut self) -> Result<Option<FieldValue>, SourceError> {
        match &mut self.kind {
            Kind::Counter { pacer, last } => {
                pacer.tick().await;
                *last = last.saturating_add(2);
                Ok(Some(FieldValue::Int(*last)))
            }
            Kind::Random { pacer, rng, value } => {
                pacer.tick().await;
                let v = *value;
                let step: f64 = rng.random_range(-0.5..=0.5);
                // Rounded after each step so values print as 2-decimal temperatures.
                *value = ((v + step) * 100.0).round() / 100.0;
                Ok(Some(FieldValue::Float(v)))
            }
            Kind::File {
                pacer,
                path,
                ticked,
            } => {
                if !*ticked {
                    pacer.tick().await;
                    *ticked = true;
                }
                let read = tokio::fs::read_to_string(&*path).await;
                *ticked = false;
                let text = read.map_err(|source| SourceError::Io {
                    what: format!("reading {}", path.display()),
                    source,
                })?;
                parse_value(&text, &format!("file {}", path.display())).map(Some)
            }
            Kind::Lines {
                reader,
                open,
                what,
                ended,
            } => {
                if *ended {
                    return Ok(None);
                }
                let reader = reader.get_or_insert_with(|| LineReader::new(open()));
                loop {
                    let line = reader.next_line().await.map_err(|source| SourceError::Io {
                        what: format!("reading {what}"),
                        source,
                    })?;
                    let Some(line) = line else {
                        *ended = true;
                        return Ok(None);
                    };
                    if line.trim().is_empty() {
                        continue;
                    }
                    return parse_value(&line, what).map(Some);
                }
            }
            Kind::Exec(exec) => exec.next().await,
        }
    }
}

/// Ticks at the interval; the first tick is immediate unless delayed.
struct Pacer {
    period: Duration,
    first_delayed: bool,
    /// Created on first tick: a tokio interval needs a runtime, `Source::new` does not.
    interval: Option<Interval>,
}

impl Pacer {
    fn new(period: Duration, first_delayed: bool) -> Self {
        Self {
            period,
            first_delayed,
            interval: None,
        }
    }

    async fn tick(&mut self) {
        if self.period.is_zero() {
            // tokio intervals panic on a zero period. Zero is ping-pong: the client's engine
            // paces the producer (`client::turns`); yield anyway so that a source polled in a
            // loop cannot starve the other tasks.
            tokio::task::yield_now().await;
            return;
        }
        let (period, first_delayed) = (self.period, self.first_delayed);
        let interval = self.interval.get_or_insert_with(|| {
            let now = tokio::time::Instant::now();
            let start = if first_delayed { now + period } else { now };
            let mut iv = tokio::time::interval_at(start, period);
            // After a stall (slow command, suspended laptop) resume the normal spacing
            // instead of firing a burst of catch-up ticks.
            iv.set_missed_tick_behavior(MissedTickBehavior::Delay);
            iv
        });
        interval.tick().await;
    }
}

/// Reads lines keeping partial data across cancelled calls; invalid UTF-8 is replaced
/// rather than failing (the line then simply is not a number).
struct LineReader<R> {
    reader: BufReader<R>,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    fn new(reader: R) -> Self {
        Self {
            reader: BufReader::new(reader),
            buf: Vec::new(),
        }
    }

    /// The next line without its line ending; `None` at EOF.
    async fn next_line(&mut self) -> std::io::Result<Option<String>> {
        // read_until appends to `buf`, so a cancelled call's bytes are kept for the next.
        self.reader.read_until(b'\n', &mut self.buf).await?;
        if self.buf.is_empty() {
            return Ok(None);
        }
        let line = String::from_utf8_lossy(&self.buf)
            .trim_end_matches(['\n', '\r'])
            .to_string();
        self.buf.clear();
        Ok(Some(line))
    }
}

/// `exec:CMD`: each stdout line is a value; the command is re-run at the next tick after
/// it exits.
struct Exec {
    cmd: String,
    what: String,
    pacer: Pacer,
    running: Option<Running>,
    /// Consecutive runs that exited non-zero without printing anything.
    failures: u32,
}

struct Running {
    child: Child,
    /// `None` once stdout has closed; the child is then waited for.
    stdout: Option<LineReader<ChildStdout>>,
    printed: bool,
}

impl Exec {
    async fn next(&mut self) -> Result<Option<FieldValue>, SourceError> {
        loop {
            let running = match &mut self.running {
                Some(r) => r,
                None => {
                    self.pacer.tick().await;
                    self.running = Some(self.spawn()?);
                    continue;
                }
            };
            if let Some(stdout) = &mut running.stdout {
                match stdout.next_line().await {
                    Ok(Some(line)) => {
                        if line.trim().is_empty() {
                            continue;
                        }
                        running.printed = true;
                        return parse_value(&line, &self.what).map(Some);
                    }
                    Ok(None) => running.stdout = None,
                    Err(source) => {
                        // Stop reading; the command is waited for and re-run as usual.
                        running.stdout = None;
                        return Err(SourceError::Io {
                            what: format!("{}: reading output", self.what),
                            source,
                        });
                    }
                }
                continue;
            }
            let waited = running.child.wait().await;
            let printed = running.printed;
            self.running = None;
            let status = waited.map_err(|source| SourceError::Io {
                what: format!("{}: waiting for it", self.what),
                source,
            })?;
            if status.success() || printed {
                self.failures = 0;
                continue;
            }
            self.failures += 1;
            if self.failures >= EXEC_FAILURES_BEFORE_ERROR {
                // Start counting afresh: later calls keep trying, reporting every few runs.
                self.failures = 0;
                return Err(SourceError::Io {
                    what: self.what.clone(),
                    source: std::io::Error::other(format!(
                        "{} without printing a value",
                        describe_exit(status)
                    )),
                });
            }
        }
    }

    fn spawn(&self) -> Result<Running, SourceError> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&self.cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Dropping the source (client shutting down) must not leave the command behind.
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| SourceError::Io {
                what: format!("{}: starting sh", self.what),
                source,
            })?;
        let stdout = child.stdout.take().map(LineReader::new);
        Ok(Running {
            child,
            stdout,
            printed: false,
        })
    }
}

fn describe_exit(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => format!("ended by {status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn spec(s: &str) -> SourceSpec {
        s.parse().expect("valid spec")
    }

    #[test]
    fn source_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Source>();
    }

    #[test]
    fn parses_specs() {
        assert_eq!(spec("counter"), SourceSpec::Counter);
        assert_eq!(spec("random"), SourceSpec::Random);
        assert_eq!(spec("stdin"), SourceSpec::Stdin);
        assert_eq!(
            spec("exec:cat /sys/x | head -1"),
            SourceSpec::Exec("cat /sys/x | head -1".into())
        );
        assert_eq!(spec("file:/tmp/t"), SourceSpec::File("/tmp/t".into()));
        for bad in ["", "Counter", "exec:", "exec:  ", "file:", "foo", "stdin:x"] {
            assert!(
                matches!(bad.parse::<SourceSpec>(), Err(SourceError::InvalidSpec(s)) if s == bad),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn parse_value_cases() {
        let ok = |t| parse_value(t, "x").expect("number");
        assert_eq!(ok("42"), FieldValue::Int(42));
        assert_eq!(ok(" -7\n"), FieldValue::Int(-7));
        assert_eq!(ok("45000\n"), FieldValue::Int(45000));
        assert_eq!(ok("2.5"), FieldValue::Float(2.5));
        assert_eq!(ok("1e3"), FieldValue::Float(1000.0));
        assert_eq!(ok("-0.25"), FieldValue::Float(-0.25));
        // Beyond i64: still a number.
        assert_eq!(ok("99999999999999999999"), FieldValue::Float(1e20));
        for bad in ["", "abc", "nan", "inf", "-infinity", "1,5", "12i"] {
            match parse_value(bad, "file /t") {
                Err(SourceError::NotANumber { what, text }) => {
                    assert_eq!(what, "file /t");
                    assert_eq!(text, bad);
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let long = "x".repeat(1000);
        match parse_value(&long, "x") {
            Err(SourceError::NotANumber { text, .. }) => assert!(text.chars().count() <= 81),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn counter_sequence_immediate_first() {
        let start = Instant::now();
        let mut s = Source::new(&SourceSpec::Counter, Duration::from_secs(1), false);
        assert_eq!(s.next().await.unwrap(), Some(FieldValue::Int(102)));
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(s.next().await.unwrap(), Some(FieldValue::Int(104)));
        assert!(start.elapsed() >= Duration::from_secs(1));
        assert_eq!(s.next().await.unwrap(), Some(FieldValue::Int(106)));
        assert!(start.elapsed() >= Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn counter_first_tick_delayed() {
        let interval = Duration::from_secs(1);
        let start = Instant::now();
        let mut s = Source::new(&SourceSpec::Counter, interval, true);
        assert_eq!(s.next().await.unwrap(), Some(FieldValue::Int(102)));
        assert!(start.elapsed() >= interval);
        assert_eq!(s.next().await.unwrap(), Some(FieldValue::Int(104)));
        assert!(start.elapsed() >= 2 * interval);
        assert_eq!(s.next().await.unwrap(), Some(FieldValue::Int(106)));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_interval_does_not_panic() {
        let mut s = Source::new(&SourceSpec::Counter, Duration::ZERO, true);
        assert_eq!(s.next().await.unwrap(), Some(FieldValue::Int(102)));
    }

    #[tokio::test(start_paused = true)]
    async fn random_is_a_walk() {
        let mut s = Source::new(&SourceSpec::Random, Duration::from_millis(100), false);
        let mut prev = match s.next().await.unwrap() {
            Some(FieldValue::Float(v)) => v,
            other => panic!("{other:?}"),
        };
        assert_eq!(prev, RANDOM_START);
        for _ in 0..500 {
            let v = match s.next().await.unwrap() {
                Some(FieldValue::Float(v)) => v,
                other => panic!("{other:?}"),
            };
            assert!((v - prev).abs() <= 0.5 + 1e-9, "{prev} -> {v}");
            // Two decimals.
            assert!(((v * 100.0).round() - v * 100.0).abs() < 1e-6, "{v}");
            prev = v;
        }
    }

    #[tokio::test]
    async fn file_is_reread_each_tick() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("temp");
        std::fs::write(&path, "45000\n").unwrap();
        let mut s = Source::new(
            &SourceSpec::File(path.clone()),
            Duration::from_millis(10),
            false,
        );
        assert_eq!(s.next().await.unwrap(), Some(FieldValue::Int(45000)));
        std::fs::write(&path, " 21.5 \n").unwrap();
        assert_eq!(s.next().await.unwrap(), Some(FieldValue::Float(21.5)));
        std::fs::write(&path, "hot\n").unwrap();
        match s.next().await {
            Err(SourceError::NotANumber { what, text }) => {
                assert_eq!(what, format!("file {}", path.display()));
                assert_eq!(text, "hot");
            }
            other => panic!("{other:?}"),
        }
        std::fs::remove_file(&path).unwrap();
        match s.next().await {
            Err(SourceError::Io { what, .. }) => {
                assert_eq!(what, format!("reading {}", path.display()))
            }
            other => panic!("{other:?}"),
        }
        // Still usable after errors.
        std::fs::write(&path, "7").unwrap();
        assert_eq!(s.next().await.unwrap(), Some(FieldValue::Int(7)));
    }

    #[tokio::test]
    async fn lines_skip_blanks_survive_bad_lines_and_end() {
        let input: &'static [u8] = b"1\n\n  \nabc\n2.5\r\n\xff\n3";
        let mut s = Source::from_reader(input, "stdin");
        assert_eq!(s.next().await.unwrap(), Some(FieldValue::Int(1)));
        match s.next().await {
            Err(SourceError::NotANumber { what, text }) => {
                assert_eq!(what, "stdin");
                assert_eq!(text, "abc");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.next().await.unwrap(), Some(FieldValue::Float(2.5)));
        assert!(matches!(
            s.next().await,
            Err(SourceError::NotANumber { .. })
        ));
        assert_eq!(s.next().await.unwrap(), Some(FieldValue::Int(3)));
        assert_eq!(s.next().await.unwrap(), None);
        assert_eq!(s.next().await.unwrap(), None);
    }

    #[tokio::test]
    async fn exec_lines_then_rerun() {
        let mut s = Source::new(
            &spec(r"exec:printf '1\n2.5\n'"),
            Duration::from_millis(10),
            false,
        );
        assert_eq!(s.next().await.unwrap(), Some(FieldValue::Int(1)));
        assert_eq!(s.next().await.unwrap(), Some(FieldValue::Float(2.5)));
        assert_eq!(s.next().await.unwrap(), Some(FieldValue::Int(1)));
        assert_eq!(s.next().await.unwrap(), Some(FieldValue::Float(2.5)));
    }

    #[tokio::test]
    async fn exec_nonzero_exit_after_output_is_fine() {
        let mut s = Source::new(
            &spec("exec:echo 5; exit 3"),
            Duration::from_millis(10),
            false,
        );
        for _ in 0..4 {
            assert_eq!(s.next().await.unwrap(), Some(FieldValue::Int(5)));
        }
    }

    #[tokio::test]
    async fn exec_failing_silently_three_times_is_an_error() {
        let mut s = Source::new(&spec("exec:exit 1"), Duration::from_millis(10), false);
        for _ in 0..2 {
            match s.next().await {
                Err(e @ SourceError::Io { .. }) => assert_eq!(
                    e.to_string(),
                    "exec \"exit 1\": exited with status 1 without printing a value"
                ),
                other => panic!("{other:?}"),
            }
        }
    }
}
