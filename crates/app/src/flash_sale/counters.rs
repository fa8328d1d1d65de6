//! `flash_sale_reservations_total{result}`, every result's handle looked up once: a counter named
//! by its labels costs a registry lookup (hashing the name and labels) every time, on a path
//! where most answers are refusals that cost little else.

use std::sync::OnceLock;

use metrics::Counter;

use crate::flash_sale::idempotency::Refusal;

/// A reservation's result, as counted.
#[derive(Debug, Clone, Copy)]
pub(super) enum Counted {
    Reserved,
    /// The commit failed; nothing was reserved.
    Unavailable,
    /// An idempotent repeat, answered as the first time.
    Replayed,
    Refused(Refusal),
}

const RESULTS: [&str; 9] = [
    "reserved",
    "unavailable",
    "replayed",
    Refusal::SaleNotFound.label(),
    Refusal::ItemNotFound.label(),
    Refusal::NotStarted.label(),
    Refusal::Ended.label(),
    Refusal::SoldOut.label(),
    Refusal::LimitReached.label(),
];

impl Counted {
    const fn index(self) -> usize {
        match self {
            Self::Reserved => 0,
            Self::Unavailable => 1,
            Self::Replayed => 2,
            Self::Refused(Refusal::SaleNotFound) => 3,
            Self::Refused(Refusal::ItemNotFound) => 4,
            Self::Refused(Refusal::NotStarted) => 5,
            Self::Refused(Refusal::Ended) => 6,
            Self::Refused(Refusal::SoldOut) => 7,
            Self::Refused(Refusal::LimitReached) => 8,
        }
    }
}

/// The handles, made at the first count: by then the process's recorder is installed (handles
/// made before it would count nowhere).
#[derive(Debug, Default)]
pub(super) struct Counters(OnceLock<[Counter; RESULTS.len()]>);

impl Counters {
    pub(super) fn count(&self, result: Counted) {
        self.0.get_or_init(|| {
            RESULTS.map(|r| metrics::counter!("flash_sale_reservations_total", "result" => r))
        })[result.index()]
        .increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_result_has_its_own_label() {
        let all = [
            Counted::Reserved,
            Counted::Unavailable,
            Counted::Replayed,
            Counted::Refused(Refusal::SaleNotFound),
            Counted::Refused(Refusal::ItemNotFound),
            Counted::Refused(Refusal::NotStarted),
            Counted::Refused(Refusal::Ended),
            Counted::Refused(Refusal::SoldOut),
            Counted::Refused(Refusal::LimitReached),
        ];
        let mut labels: Vec<&str> = all.iter().map(|c| RESULTS[c.index()]).collect();
        assert_eq!(labels[7], "sold_out");
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), RESULTS.len());
    }
}
