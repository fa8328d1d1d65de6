//! Heartbeats of the background work (workers and the group commit), so that `/readyz` can say
//! what each last did and refuse traffic while one is stuck or gone. A heartbeat is told when a
//! run starts and ends; how long a run may take, and how long the work may stay idle, is its own.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

/// What `/readyz` shows of one piece of background work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkReport {
    pub name: &'static str,
    pub state: WorkState,
    /// When its last run finished.
    pub last_run_at: Option<OffsetDateTime>,
    /// Runs that failed (panicked) since it last succeeded.
    pub failures: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkState {
    /// Idle between runs, or running for less than it may.
    Ok,
    /// One run has taken longer than it may.
    Stuck,
    /// No run has started for longer than the work may stay idle: its loop is not turning.
    Stalled,
    /// Its task has ended.
    Stopped,
}

impl WorkState {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Stuck => "stuck",
            Self::Stalled => "stalled",
            Self::Stopped => "stopped",
        }
    }

    pub const fn is_healthy(self) -> bool {
        matches!(self, Self::Ok)
    }
}

#[derive(Debug)]
struct Beat {
    born: Instant,
    running_since: Option<Instant>,
    last_start: Option<Instant>,
    last_end_at: Option<OffsetDateTime>,
    failures: u32,
    stopped: bool,
}

#[derive(Debug)]
pub struct Heartbeat {
    name: &'static str,
    /// A run this long is stuck.
    stuck_after: Duration,
    /// No run started for this long: stalled (`None`: idle is fine, as for the group commit,
    /// which runs only when there is something to write).
    stalled_after: Option<Duration>,
    beat: Mutex<Beat>,
}

impl Heartbeat {
    pub fn new(
        name: &'static str,
        stuck_after: Duration,
        stalled_after: Option<Duration>,
    ) -> Arc<Self> {
        Arc::new(Self {
            name,
            stuck_after,
            stalled_after,
            beat: Mutex::new(Beat {
                born: Instant::now(),
                running_since: None,
                last_start: None,
                last_end_at: None,
                failures: 0,
                stopped: false,
            }),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Beat) -> T) -> T {
        f(&mut self.beat.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn started(&self) {
        let now = Instant::now();
        self.with(|b| {
            b.running_since = Some(now);
            b.last_start = Some(now);
        });
    }

    /// A run ended; `ok == false` when it panicked.
    pub fn finished(&self, ok: bool) {
        self.with(|b| {
            b.running_since = None;
            b.last_end_at = Some(OffsetDateTime::now_utc());
            b.failures = if ok { 0 } else { b.failures.saturating_add(1) };
        });
    }

    /// Its task has ended (called from a guard the task drops, so an abort or a panic counts).
    pub fn stopped(&self) {
        self.with(|b| b.stopped = true);
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn report(&self) -> WorkReport {
        self.with(|b| {
            let state = if b.stopped {
                WorkState::Stopped
            } else if b
                .running_since
                .is_some_and(|s| s.elapsed() >= self.stuck_after)
            {
                WorkState::Stuck
            } else if self.stalled_after.is_some_and(|idle| {
                b.running_since.is_none() && b.last_start.unwrap_or(b.born).elapsed() >= idle
            }) {
                WorkState::Stalled
            } else {
                WorkState::Ok
            };
            WorkReport {
                name: self.name,
                state,
                last_run_at: b.last_end_at,
                failures: b.failures,
            }
        })
    }
}

/// Marks its heartbeat stopped when dropped: held by the task the heartbeat is of.
#[derive(Debug)]
pub struct StopGuard(pub Arc<Heartbeat>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        self.0.stopped();
    }
}

/// Every heartbeat of the process, for `/readyz`.
#[derive(Debug, Default)]
pub struct Workers {
    beats: Mutex<Vec<Arc<Heartbeat>>>,
}

impl Workers {
    pub fn register(&self, beat: Arc<Heartbeat>) {
        self.beats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(beat);
    }

    pub fn reports(&self) -> Vec<WorkReport> {
        self.beats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|b| b.report())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_tells_stuck_stalled_and_stopped_apart() {
        let beat = Heartbeat::new("w", Duration::ZERO, None);
        assert_eq!(beat.report().state, WorkState::Ok);
        beat.started();
        assert_eq!(
            beat.report().state,
            WorkState::Stuck,
            "running at least 0 s"
        );
        beat.finished(false);
        let report = beat.report();
        assert_eq!((report.state, report.failures), (WorkState::Ok, 1));
        assert!(report.last_run_at.is_some());
        beat.started();
        beat.finished(true);
        assert_eq!(beat.report().failures, 0);
        drop(StopGuard(Arc::clone(&beat)));
        assert_eq!(beat.report().state, WorkState::Stopped);

        let idle = Heartbeat::new("idle", Duration::from_secs(60), Some(Duration::ZERO));
        assert_eq!(idle.report().state, WorkState::Stalled);
        let patient = Heartbeat::new("patient", Duration::from_secs(60), None);
        assert_eq!(patient.report().state, WorkState::Ok, "idle is fine for it");
    }
}
