//! Readiness: the named checks `/readyz` answers from (serve: the buffer's quota; import: its
//! queue and its warehouse), each passing or failing with a reason, also exported as
//! `rin_ready{check}`. Owns only their state; the stages report what they see (a receive that
//! failed, a load that could not connect) or give a probe read at each request. It must never
//! block a stage: setting a check is a short lock, nothing more.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

type Probe = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

#[derive(Clone, Default)]
pub struct Health(Arc<Inner>);

#[derive(Default)]
struct Inner {
    /// Set `rin_ready{check}` too (the health the process's `/readyz` answers from).
    exported: bool,
    /// Checks the stages set: `Err(reason)` while failing.
    states: Mutex<BTreeMap<&'static str, Result<(), String>>>,
    /// Checks read at each request.
    probes: Mutex<Vec<(&'static str, Probe)>>,
}

impl Health {
    /// The checks `/readyz` answers from, also exported as `rin_ready{check}`.
    pub fn exported() -> Health {
        Health(Arc::new(Inner {
            exported: true,
            ..Inner::default()
        }))
    }

    /// Checks kept for whoever asks ([`Health::report`]), not exported.
    pub fn quiet() -> Health {
        Health::default()
    }

    fn gauge(&self, check: &'static str, ok: bool) {
        if self.0.exported {
            metrics::gauge!("rin_ready", "check" => check).set(if ok { 1.0 } else { 0.0 });
        }
    }

    /// A check that starts failing with `why` (not known yet) until a stage says otherwise.
    #[cfg_attr(not(all(feature = "s3", feature = "sqs")), allow(dead_code))]
    pub fn pending(&self, check: &'static str, why: &str) {
        self.set(check, Err(why.to_string()));
    }

    pub fn ok(&self, check: &'static str) {
        self.set(check, Ok(()));
    }

    pub fn failing(&self, check: &'static str, why: String) {
        self.set(check, Err(why));
    }

    fn set(&self, check: &'static str, state: Result<(), String>) {
        self.gauge(check, state.is_ok());
        self.0.states.lock().unwrap().insert(check, state);
    }

    /// Whether `check` was last set passing (a probe or an unknown check: false).
    #[cfg_attr(not(all(feature = "s3", feature = "sqs")), allow(dead_code))]
    pub fn passing(&self, check: &str) -> bool {
        matches!(self.0.states.lock().unwrap().get(check), Some(Ok(())))
    }

    /// A check read at each `/readyz` (and scrape).
    pub fn probe(
        &self,
        check: &'static str,
        probe: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) {
        self.gauge(check, true);
        self.0.probes.lock().unwrap().push((check, Box::new(probe)));
    }

    /// Whether every check passes, and one line per check (`name: ok` or `name: reason`).
    pub fn report(&self) -> (bool, String) {
        let mut all = self.0.states.lock().unwrap().clone();
        for (name, probe) in self.0.probes.lock().unwrap().iter() {
            let state = probe();
            self.gauge(name, state.is_ok());
            all.insert(name, state);
        }
        let ready = all.values().all(Result::is_ok);
        let mut text = String::from(if ready { "ready\n" } else { "not ready\n" });
        for (name, state) in &all {
            match state {
                Ok(()) => text.push_str(&format!("{name}: ok\n")),
                Err(why) => text.push_str(&format!("{name}: {why}\n")),
            }
        }
        (ready, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_check_passes() {
        let h = Health::exported();
        assert!(h.report().0);
        h.pending("queue", "not reached yet");
        let (ready, text) = h.report();
        assert!(!ready && text.contains("queue: not reached yet"), "{text}");
        h.ok("queue");
        h.probe("buffer", || Err("at its quota".into()));
        let (ready, text) = h.report();
        assert!(
            !ready && text.contains("buffer: at its quota") && text.contains("queue: ok"),
            "{text}"
        );
    }
}
