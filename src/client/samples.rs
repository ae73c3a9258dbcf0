//! [`RunSamples`]: a run's round trips over time and its timeouts, losses and reconnects,
//! kept only for the picture (`--report`), in bounded memory.
//!
//! Round trips go into time buckets; each bucket keeps its count and its lowest and highest
//! sample (with their times), never an average, so a single spike always shows in the
//! picture however long the run. When there are more than [`MAX_BUCKETS`] buckets, the
//! bucket width doubles and neighbours merge (min of mins, max of maxes): memory stays
//! `O(MAX_BUCKETS)` whatever the run's length or rate. Events (timeouts, losses,
//! reconnects) keep their first [`MAX_MARKS`] times each; the header's counts stay exact.

use std::time::Duration;

use tokio::time::Instant;

/// Most time buckets kept; each gives at most two points (its min and its max).
pub const MAX_BUCKETS: usize = 2048;

/// Most times kept per kind of event.
pub const MAX_MARKS: usize = 10_000;

/// The first bucket width: finer than any run's first samples need.
const FIRST_WIDTH_S: f64 = 0.001;

/// One sample: seconds since the run started, round trip in µs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub t_s: f64,
    pub rtt_us: f64,
}

/// The samples of one time bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Bucket {
    /// `floor(t / width)` of its samples.
    index: u64,
    count: u64,
    min: Point,
    max: Point,
}

impl Bucket {
    fn merge(&mut self, other: &Bucket) {
        self.count += other.count;
        if other.min.rtt_us < self.min.rtt_us {
            self.min = other.min;
        }
        if other.max.rtt_us > self.max.rtt_us {
            self.max = other.max;
        }
    }
}

/// What happened at one moment of a run, marked in the picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// A reply did not come within the reply timeout.
    Timeout,
    /// A reading lost: rejected, dropped, or unacked at the end.
    Loss,
    /// A connection re-opened.
    Reconnect,
}

/// A run's samples (see the module's doc).
#[derive(Debug, Clone)]
pub struct RunSamples {
    started: Instant,
    width_s: f64,
    buckets: Vec<Bucket>,
    timeouts: Vec<f64>,
    losses: Vec<f64>,
    reconnects: Vec<f64>,
}

impl RunSamples {
    pub fn new(started: Instant) -> Self {
        RunSamples {
            started,
            width_s: FIRST_WIDTH_S,
            buckets: Vec::new(),
            timeouts: Vec::new(),
            losses: Vec::new(),
            reconnects: Vec::new(),
        }
    }

    fn seconds(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.started).as_secs_f64()
    }

    /// A reading acked at `at` after `rtt`. Times must not go backwards (acks come in order).
    pub fn record(&mut self, at: Instant, rtt: Duration) {
        let point = Point {
            t_s: self.seconds(at),
            rtt_us: rtt.as_secs_f64() * 1e6,
        };
        self.push(Bucket {
            index: (point.t_s / self.width_s) as u64,
            count: 1,
            min: point,
            max: point,
        });
        if self.buckets.len() > MAX_BUCKETS {
            self.coarsen();
        }
    }

    fn push(&mut self, bucket: Bucket) {
        match self.buckets.last_mut() {
            Some(last) if last.index >= bucket.index => last.merge(&bucket),
            _ => self.buckets.push(bucket),
        }
    }

    /// Double the bucket width, merging neighbours.
    fn coarsen(&mut self) {
        self.width_s *= 2.0;
        let old = std::mem::take(&mut self.buckets);
        for mut bucket in old {
            bucket.index /= 2;
            self.push(bucket);
        }
    }

    /// `mark` happened at `at` (`n` times, e.g. several readings lost at once).
    pub fn mark(&mut self, mark: Mark, at: Instant, n: u64) {
        let t = self.seconds(at);
        let marks = match mark {
            Mark::Timeout => &mut self.timeouts,
            Mark::Loss => &mut self.losses,
            Mark::Reconnect => &mut self.reconnects,
        };
        let room = MAX_MARKS.saturating_sub(marks.len());
        let n = usize::try_from(n).unwrap_or(usize::MAX).min(room);
        marks.extend(std::iter::repeat_n(t, n));
    }

    /// The points to draw, in time order: each bucket's min and max (one point if equal).
    pub fn points(&self) -> Vec<Point> {
        let mut points = Vec::with_capacity(self.buckets.len() * 2);
        for b in &self.buckets {
            if b.min == b.max {
                points.push(b.min);
            } else if b.min.t_s <= b.max.t_s {
                points.extend([b.min, b.max]);
            } else {
                points.extend([b.max, b.min]);
            }
        }
        points
    }

    /// Samples recorded (exact, whatever was merged).
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.count).sum()
    }

    /// Current bucket width in seconds (how coarse the time axis has become).
    pub fn bucket_width_s(&self) -> f64 {
        self.width_s
    }

    /// Times (seconds since the start) of the kept marks of one kind.
    pub fn marks(&self, mark: Mark) -> &[f64] {
        match mark {
            Mark::Timeout => &self.timeouts,
            Mark::Loss => &self.losses,
            Mark::Reconnect => &self.reconnects,
        }
    }

    /// Seconds from the start to `at`.
    pub fn elapsed_s(&self, at: Instant) -> f64 {
        self.seconds(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A million samples at 1 ms apart stay within the bucket bound, and the one spike
    /// among them is still a point of the picture.
    #[tokio::test(start_paused = true)]
    async fn memory_is_bounded_and_a_spike_is_never_hidden() {
        let t0 = Instant::now();
        let mut samples = RunSamples::new(t0);
        for i in 0..1_000_000u64 {
            let rtt = if i == 654_321 {
                Duration::from_secs(2)
            } else {
                Duration::from_micros(200 + i % 7)
            };
            samples.record(t0 + Duration::from_millis(i), rtt);
        }
        assert_eq!(samples.count(), 1_000_000);
        let points = samples.points();
        assert!(points.len() <= 2 * MAX_BUCKETS, "{}", points.len());
        assert!(samples.bucket_width_s() >= 1000.0 / MAX_BUCKETS as f64);
        let spike = points
            .iter()
            .find(|p| p.rtt_us == 2e6)
            .expect("the spike survives decimation");
        assert!((spike.t_s - 654.321).abs() < 1e-6, "{spike:?}");
        // The lowest sample survives too.
        assert!(points.iter().any(|p| p.rtt_us == 200.0));
        assert!(points.windows(2).all(|w| w[0].t_s <= w[1].t_s));
    }

    #[tokio::test(start_paused = true)]
    async fn marks_are_kept_up_to_their_bound() {
        let t0 = Instant::now();
        let mut samples = RunSamples::new(t0);
        samples.mark(Mark::Loss, t0 + Duration::from_secs(3), 2);
        samples.mark(Mark::Reconnect, t0 + Duration::from_secs(1), 1);
        samples.mark(Mark::Timeout, t0, u64::MAX);
        assert_eq!(samples.marks(Mark::Loss), &[3.0, 3.0]);
        assert_eq!(samples.marks(Mark::Reconnect), &[1.0]);
        assert_eq!(samples.marks(Mark::Timeout).len(), MAX_MARKS);
    }

    #[tokio::test(start_paused = true)]
    async fn few_samples_are_kept_exactly() {
        let t0 = Instant::now();
        let mut samples = RunSamples::new(t0);
        samples.record(t0 + Duration::from_millis(10), Duration::from_micros(300));
        samples.record(t0 + Duration::from_millis(20), Duration::from_micros(100));
        let points = samples.points();
        assert_eq!(
            points,
            vec![
                Point {
                    t_s: 0.01,
                    rtt_us: 300.0
                },
                Point {
                    t_s: 0.02,
                    rtt_us: 100.0
                }
            ]
        );
    }
}
