//! Long-lived responses: the server-sent event streams of live sales. Each holds a connection
//! open for as long as the sale runs, so their number is capped in total and per client address
//! (an IPv6 client by its /64), and every one of them ends when the server starts to stop.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::StatusCode;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use flashmart_app::rate_limit::client_key;
use tokio::sync::watch;

use crate::error::ApiError;

/// Tells long-lived responses that the server is stopping.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// The signal and the sender that raises it.
    pub fn channel() -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(false);
        (tx, Self(rx))
    }

    /// Resolves once the server is stopping (at once if it already is).
    pub async fn stopping(&mut self) {
        // A dropped sender means the server is gone: stop as well.
        let _ = self.0.wait_for(|stopping| *stopping).await;
    }
}

/// How many event streams may be open.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    pub total: usize,
    pub per_ip: usize,
}

#[derive(Debug)]
pub struct EventStreams {
    limits: StreamLimits,
    open: AtomicUsize,
    by_ip: DashMap<IpAddr, usize>,
}

/// One open stream; closing it (dropping the guard) gives its place back.
#[derive(Debug)]
pub struct StreamGuard {
    streams: Arc<EventStreams>,
    ip: Option<IpAddr>,
}

impl EventStreams {
    pub fn new(limits: StreamLimits) -> Self {
        Self {
            limits,
            open: AtomicUsize::new(0),
            by_ip: DashMap::new(),
        }
    }

    /// A place for one more stream from `ip`: 429 over the address's share, 503 over the total.
    pub fn open(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<StreamGuard, ApiError> {
        let ip = ip.map(client_key);
        if let Some(ip) = ip {
            let mut n = self.by_ip.entry(ip).or_insert(0);
            if *n >= self.limits.per_ip {
                return Err(ApiError::too_many_requests(5));
            }
            *n += 1;
        }
        // From here on the guard gives back whatever was taken.
        let guard = StreamGuard {
            streams: Arc::clone(self),
            ip,
        };
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.limits.total {
            drop(guard);
            return Err(ApiError::status(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many event streams are open; try again later",
            ));
        }
        Ok(guard)
    }

    pub fn open_count(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.streams.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip
            && let Entry::Occupied(mut n) = self.streams.by_ip.entry(ip)
        {
            if *n.get() <= 1 {
                n.remove();
            } else {
                *n.get_mut() -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_capped_per_address_and_in_total() {
        let streams = Arc::new(EventStreams::new(StreamLimits {
            total: 3,
            per_ip: 2,
        }));
        let a: IpAddr = "203.0.113.1".parse().unwrap();
        let b: IpAddr = "203.0.113.2".parse().unwrap();
        let a1 = streams.open(Some(a)).unwrap();
        let _a2 = streams.open(Some(a)).unwrap();
        assert!(streams.open(Some(a)).is_err(), "per address");
        let _b1 = streams.open(Some(b)).unwrap();
        assert!(streams.open(Some(b)).is_err(), "in total");
        assert_eq!(streams.open_count(), 3);
        drop(a1);
        let _b2 = streams.open(Some(b)).expect("a place came back");
        assert_eq!(streams.open_count(), 3);
    }
}
