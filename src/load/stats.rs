//! The counters of one loader run: what became of each message and object, also exported as
//! metrics (`rin_import_records_total{outcome}` and friends) and printed as JSON at exit.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Stats {
    pub messages: AtomicU64,
    pub deleted: AtomicU64,
    pub kept: AtomicU64,
    pub test_events: AtomicU64,
    pub unparseable: AtomicU64,
    pub loaded_objects: AtomicU64,
    pub loaded_rows: AtomicU64,
    pub duplicates: AtomicU64,
    pub gone: AtomicU64,
    pub no_target: AtomicU64,
    pub discarded: AtomicU64,
    pub not_created: AtomicU64,
    pub invalid_identifier: AtomicU64,
    pub failed_loads: AtomicU64,
    /// Objects with a data error, put in quarantine (their messages deleted).
    pub quarantined: AtomicU64,
    /// In-process retries of loads that failed with a transient error.
    pub retried: AtomicU64,
}

/// A counter's value.
pub fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Stats {
    pub fn json(&self) -> String {
        serde_json::json!({
            "messages": get(&self.messages),
            "deleted": get(&self.deleted),
            "kept": get(&self.kept),
            "test_events": get(&self.test_events),
            "unparseable": get(&self.unparseable),
            "loaded_objects": get(&self.loaded_objects),
            "loaded_rows": get(&self.loaded_rows),
            "duplicates": get(&self.duplicates),
            "gone": get(&self.gone),
            "no_target": get(&self.no_target),
            "discarded": get(&self.discarded),
            "not_created": get(&self.not_created),
            "invalid_identifier": get(&self.invalid_identifier),
            "failed_loads": get(&self.failed_loads),
            "quarantined": get(&self.quarantined),
            "retried": get(&self.retried),
        })
        .to_string()
    }
}

/// Counts `n` objects with `outcome` (the run's counter and `rin_import_records_total`).
pub fn record(stat: &AtomicU64, outcome: &'static str, n: u64) {
    stat.fetch_add(n, Ordering::Relaxed);
    metrics::counter!("rin_import_records_total", "outcome" => outcome).increment(n);
}
