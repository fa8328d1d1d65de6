//! What a load phase measured: latencies, answers by status and code, throughput; and the
//! progress line printed while it runs.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One worker's measurements; merged at the end of a phase.
#[derive(Debug, Default)]
pub struct Recorder {
    latencies_us: Vec<u32>,
    answers: BTreeMap<(u16, i64), u64>,
    errors: u64,
}

impl Recorder {
    pub fn record(&mut self, status: u16, code: i64, latency: Duration) {
        self.latencies_us
            .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
        *self.answers.entry((status, code)).or_default() += 1;
    }

    /// Requests answered so far.
    pub fn answered(&self) -> u64 {
        self.latencies_us.len() as u64
    }

    /// A request that got no HTTP answer (connection refused or reset).
    pub fn error(&mut self) {
        self.errors += 1;
    }

    pub fn merge(&mut self, other: Recorder) {
        self.latencies_us.extend(other.latencies_us);
        for (k, v) in other.answers {
            *self.answers.entry(k).or_default() += v;
        }
        self.errors += other.errors;
    }

    pub fn finish(mut self, name: &str, elapsed: Duration) -> Summary {
        self.latencies_us.sort_unstable();
        let pct = |p: f64| -> Duration {
            if self.latencies_us.is_empty() {
                return Duration::ZERO;
            }
            let rank = ((p / 100.0) * self.latencies_us.len() as f64).ceil() as usize;
            let i = rank.clamp(1, self.latencies_us.len()) - 1;
            Duration::from_micros(u64::from(self.latencies_us[i]))
        };
        Summary {
            name: name.to_owned(),
            requests: self.latencies_us.len() as u64,
            errors: self.errors,
            elapsed,
            p50: pct(50.0),
            p90: pct(90.0),
            p99: pct(99.0),
            max: pct(100.0),
            answers: self.answers,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Summary {
    pub name: String,
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// `(HTTP status, code)` -> count.
    pub answers: BTreeMap<(u16, i64), u64>,
}

impl Summary {
    pub fn throughput(&self) -> f64 {
        per_second(self.requests, self.elapsed)
    }
}

/// `count` over `elapsed`, or 0 when no time passed.
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} requests in {:.3} s = {:.0} req/s ({} without an answer)",
            self.name,
            self.requests,
            self.elapsed.as_secs_f64(),
            self.throughput(),
            self.errors
        )?;
        writeln!(
            f,
            "  latency p50 {}  p90 {}  p99 {}  max {}",
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.max)
        )?;
        write!(f, "  answers:")?;
        for ((status, code), n) in &self.answers {
            if i64::from(*status) == *code {
                write!(f, "  {status}: {n}")?;
            } else {
                write!(f, "  {status}/{code}: {n}")?;
            }
        }
        Ok(())
    }
}

/// Prints `name: done/total, rate` to stderr once a second until dropped.
#[derive(Debug)]
pub struct Progress {
    pub done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub fn start(name: &str, total: u64) -> Self {
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (d, s, name) = (Arc::clone(&done), Arc::clone(&stop), name.to_owned());
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut last = 0;
            loop {
                tick.tick().await;
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let now = d.load(Ordering::Relaxed);
                eprintln!(
                    "  {name}: {now}/{total} requests, {} req/s, {:.0} s",
                    now - last,
                    started.elapsed().as_secs_f64()
                );
                last = now;
            }
        });
        Self { done, stop, task }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.abort();
    }
}

/// The invariant checks of a run, each passed or failed, printed as a list.
#[derive(Debug, Default)]
pub struct Checks {
    results: Vec<(String, bool, String)>,
}

impl Checks {
    pub fn check(&mut self, name: &str, passed: bool, detail: impl Into<String>) {
        self.results.push((name.to_owned(), passed, detail.into()));
    }

    pub fn passed(&self) -> bool {
        self.results.iter().all(|(_, ok, _)| *ok)
    }
}

impl fmt::Display for Checks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invariants:")?;
        for (name, ok, detail) in &self.results {
            writeln!(
                f,
                "  [{}] {name}: {detail}",
                if *ok { "PASS" } else { "FAIL" }
            )?;
        }
        write!(
            f,
            "result: {}",
            if self.passed() {
                "all invariants hold"
            } else {
                "INVARIANT VIOLATED"
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_sorted_latencies() {
        let mut r = Recorder::default();
        for us in 1..=100u64 {
            r.record(200, 0, Duration::from_micros(us));
        }
        r.record(409, 60004, Duration::from_micros(1000));
        let s = r.finish("t", Duration::from_secs(1));
        assert_eq!(s.requests, 101);
        assert_eq!(s.p50, Duration::from_micros(51));
        assert_eq!(s.max, Duration::from_micros(1000));
        assert_eq!(s.answers[&(409, 60004)], 1);
        assert!((s.throughput() - 101.0).abs() < 1e-9);
        let text = s.to_string();
        assert!(text.contains("409/60004: 1"), "{text}");
    }

    #[test]
    fn checks_fail_when_one_fails() {
        let mut c = Checks::default();
        c.check("a", true, "fine");
        assert!(c.passed());
        c.check("b", false, "broken");
        assert!(!c.passed());
        assert!(c.to_string().contains("[FAIL] b: broken"));
    }
}
