//! Which instance runs the work that must run on exactly one at a time: scheduled sales, expiry
//! of reservations and unpaid orders, the payment closer. One embedded process is always that
//! instance. In scaled mode every process started with the `scheduler` role campaigns for a lease
//! (`Lease`, in Redis) and works only while it believes it holds it; a holder that dies stops
//! renewing, and another takes the lease over when it runs out.
//!
//! A holder believes it holds the lease for less than the lease lasts (from the moment it asked,
//! before Redis started counting, minus a fifth), so two instances act as the scheduler at once
//! only when one is paused for longer than that margin between its check and its write. The
//! work is guarded besides: one sale per schedule slot (a unique index), every expiry and
//! settlement decided once by a conditional write or a script, so such an overlap repeats a
//! check, never a change.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::StoreError;
use crate::ports::Lease;

#[derive(Debug)]
pub struct Leadership {
    kind: Kind,
    /// Until when (ms after `base`) this instance may act; 0 when it may not.
    held_until_ms: AtomicU64,
    base: Instant,
}

#[derive(Debug)]
enum Kind {
    /// The only instance there is (embedded mode): always the leader.
    Sole,
    Elected {
        lease: Arc<dyn Lease>,
        holder: String,
        ttl: Duration,
    },
}

impl Leadership {
    /// The only instance: it leads without asking anyone.
    pub fn sole() -> Self {
        Self::with(Kind::Sole)
    }

    /// One of several instances that take turns on `lease`, each under a name of its own
    /// (`holder`); a grant lasts `ttl`.
    pub fn elected(lease: Arc<dyn Lease>, holder: impl Into<String>, ttl: Duration) -> Self {
        Self::with(Kind::Elected {
            lease,
            holder: holder.into(),
            ttl,
        })
    }

    fn with(kind: Kind) -> Self {
        Self {
            kind,
            held_until_ms: AtomicU64::new(0),
            base: Instant::now(),
        }
    }

    /// Whether this instance may do the leader's work now.
    pub fn is_held(&self) -> bool {
        self.held_at(Instant::now())
    }

    fn held_at(&self, at: Instant) -> bool {
        match self.kind {
            Kind::Sole => true,
            Kind::Elected { .. } => self.since_base(at) < self.held_until(),
        }
    }

    /// The name this instance campaigns under (`None` for the sole instance).
    pub fn holder(&self) -> Option<&str> {
        match &self.kind {
            Kind::Sole => None,
            Kind::Elected { holder, .. } => Some(holder),
        }
    }

    /// How often to campaign: three times per lease, so that a renewal that fails once is
    /// retried well before the lease runs out.
    pub fn renew_every(&self) -> Duration {
        match self.kind {
            Kind::Sole => Duration::from_secs(3600),
            Kind::Elected { ttl, .. } => ttl / 3,
        }
    }

    /// Takes the lease when it is free, or renews it when this instance holds it; whether this
    /// instance leads now. A failure to reach the lease's store leaves what this instance
    /// believes as it was: it runs out by itself.
    pub async fn campaign(&self) -> Result<bool, StoreError> {
        let Kind::Elected { lease, holder, ttl } = &self.kind else {
            return Ok(true);
        };
        let asked = Instant::now();
        let was = self.is_held();
        let granted = lease.acquire_or_renew(holder, *ttl).await?;
        if granted {
            let trusted = *ttl - *ttl / 5;
            self.held_until_ms
                .store(self.since_base(asked + trusted), Ordering::Release);
            if !was {
                tracing::info!(holder = %holder, lease_ms = ttl.as_millis() as u64, "this instance holds the scheduler lease: it runs the scheduler's work");
            }
        } else {
            self.held_until_ms.store(0, Ordering::Release);
            if was {
                tracing::warn!(holder = %holder, "the scheduler lease is held by another instance: this one stops the scheduler's work");
            }
        }
        metrics::gauge!("scheduler_leader").set(if granted { 1.0 } else { 0.0 });
        Ok(granted)
    }

    /// Stops leading and gives the lease up, so that another instance takes over at once rather
    /// than when the lease runs out (on a clean stop).
    pub async fn resign(&self) {
        let Kind::Elected { lease, holder, .. } = &self.kind else {
            return;
        };
        let was = self.is_held();
        self.held_until_ms.store(0, Ordering::Release);
        if !was {
            return;
        }
        match lease.release(holder).await {
            Ok(()) => tracing::info!(holder = %holder, "scheduler lease given up"),
            Err(err) => {
                tracing::warn!(holder = %holder, %err, "cannot give the scheduler lease up; it runs out by itself");
            }
        }
        metrics::gauge!("scheduler_leader").set(0.0);
    }

    fn held_until(&self) -> u64 {
        self.held_until_ms.load(Ordering::Acquire)
    }

    fn since_base(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;

    /// A lease in memory: one holder at a time, never running out unless released.
    #[derive(Debug, Default)]
    struct MemoryLease(Mutex<Option<String>>);

    #[async_trait]
    impl Lease for MemoryLease {
        async fn acquire_or_renew(&self, holder: &str, _ttl: Duration) -> Result<bool, StoreError> {
            let mut held = self.0.lock().unwrap();
            match held.as_deref() {
                Some(h) => Ok(h == holder),
                None => {
                    *held = Some(holder.to_owned());
                    Ok(true)
                }
            }
        }

        async fn release(&self, holder: &str) -> Result<(), StoreError> {
            let mut held = self.0.lock().unwrap();
            if held.as_deref() == Some(holder) {
                *held = None;
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn one_leads_until_it_resigns_then_the_other() {
        let lease = Arc::new(MemoryLease::default());
        let ttl = Duration::from_secs(60);
        let a = Leadership::elected(lease.clone(), "a", ttl);
        let b = Leadership::elected(lease.clone(), "b", ttl);
        assert!(
            !a.is_held() && !b.is_held(),
            "nobody leads before campaigning"
        );
        assert!(a.campaign().await.unwrap());
        assert!(!b.campaign().await.unwrap());
        assert!(a.is_held() && !b.is_held());
        assert!(a.campaign().await.unwrap(), "the holder renews");
        a.resign().await;
        assert!(!a.is_held());
        assert!(b.campaign().await.unwrap());
        assert!(b.is_held());
        assert!(!a.campaign().await.unwrap());
    }

    #[tokio::test]
    async fn a_holder_stops_believing_before_the_lease_runs_out() {
        let lease = Arc::new(MemoryLease::default());
        let ttl = Duration::from_secs(10);
        let before = Instant::now();
        let a = Leadership::elected(lease, "a", ttl);
        assert!(a.campaign().await.unwrap());
        let after = Instant::now();
        assert!(a.is_held());
        // Not renewed, it acts for four fifths of the lease after it asked, no longer.
        assert!(a.held_at(before + Duration::from_secs(7)));
        assert!(!a.held_at(after + Duration::from_secs(8)));
    }

    #[test]
    fn the_sole_instance_always_leads() {
        assert!(Leadership::sole().is_held());
    }
}
