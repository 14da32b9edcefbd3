//! From messages to loaded objects: parse each message's S3 events, route each object by the
//! Rin config (to none, one or several destinations), gather the objects of one batch by
//! (connection, table) into groups, and load each group through the warehouse interface.
//!
//! A group that fails is handled by what its failure calls for ([`ErrorKind`]):
//! - transient: retried in-process (backoff 1 s, 2 s), then its messages are kept for
//!   redelivery; but when an object could not be read (a cut S3 body), only that object is:
//!   the others load without it at once, and it is retried alone (1 s, 2 s, 4 s) before its
//!   message alone is kept;
//! - data (with `rin_ship.quarantine`): the objects at fault go to quarantine and the rest
//!   load together;
//! - otherwise one bad object must not hold its batch-mates back: the group is split into one
//!   load per object (in order: the keyed insert modes care), once.
//!
//! Must never: report a message done (not kept) when any load it asked for failed; load an
//! object the importer wrote itself (a manifest, a quarantine record).

use super::Loader;
use super::ledger::quarantine::quarantine;
use super::ledger::{ErrorKind, Group, Item, ItemResult, LoadFailure};
use super::rin::{Destination, MatchOutcome, Redshift};
use super::stats::{Stats, record};
use super::warehouse::Sessions;
use crate::common::codec::Codec;
use crate::common::retry::Backoff;
use crate::queue::Message;
use crate::queue::event::{self, ObjectEvent, ParseError, Parsed};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

/// In-process retries of a group after a transient error (backoff 1 s, 2 s; the message's
/// visibility is extended meanwhile), before its messages are left for redelivery.
const LOAD_RETRIES: u32 = 2;

/// In-process retries of one object whose read failed, alone (backoff 1 s, 2 s, 4 s), before
/// its message is left for redelivery.
const READ_RETRIES: u32 = 3;

/// Parses and loads every object the messages name. Returns, per message, whether it must be
/// kept (not deleted): it could not be parsed, or a load of one of its objects failed.
pub async fn load_messages(
    loader: &Loader,
    sessions: &mut Sessions,
    msgs: &[Message],
) -> Vec<bool> {
    let st = &loader.stats;
    st.messages.fetch_add(msgs.len() as u64, Ordering::Relaxed);
    let mut keep = vec![false; msgs.len()];
    let mut objects = Vec::new();
    for (mi, m) in msgs.iter().enumerate() {
        match event::parse_body(&m.body) {
            Ok(Parsed::TestEvent) => {
                st.test_events.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("rin_import_messages_total", "outcome" => "test_event")
                    .increment(1);
                info!(message_id = %m.id, "s3:TestEvent: deleting");
            }
            Ok(Parsed::Objects(o)) => objects.extend(o.into_iter().map(|o| (o, mi, m.id.as_str()))),
            Err(e) => {
                report_unparseable(st, &m.id, m.receive_count, &e);
                keep[mi] = true;
            }
        }
    }
    load_objects(loader, sessions, objects, &mut keep).await;
    keep
}

fn report_unparseable(st: &Stats, id: &str, receive_count: i64, e: &ParseError) {
    st.unparseable.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("rin_import_messages_total", "outcome" => e.reason()).increment(1);
    error!(
        message_id = id,
        receive_count,
        reason = e.reason(),
        "cannot parse the message: {e}; left for the dead-letter queue"
    );
}

/// A group and, per item, the owners (indexes into `failed`) that asked for it.
struct Batch {
    /// The connection, without the table (a worker keeps one session per connection).
    conn: Redshift,
    /// The compression the objects' keys name: one COPY reads one compression.
    codec: Option<Codec>,
    group: Group,
    owners: Vec<Vec<usize>>,
}

/// Routes and loads objects; `owner` indexes `failed`, which is set for each owner of an
/// object that could not be loaded (and so must be retried).
pub async fn load_objects(
    loader: &Loader,
    sessions: &mut Sessions,
    objects: Vec<(ObjectEvent, usize, &str)>,
    failed: &mut [bool],
) {
    let batches = gather(loader, objects, failed).await;
    for b in batches {
        deliver(loader, sessions, b, failed).await;
    }
}

/// The groups the objects make: each routed object into its destinations' groups, the same
/// object twice in one batch once.
async fn gather(
    loader: &Loader,
    objects: Vec<(ObjectEvent, usize, &str)>,
    failed: &mut [bool],
) -> Vec<Batch> {
    let mut batches: Vec<Batch> = Vec::new();
    for (o, mi, id) in objects {
        let Some((item, dests)) = route(loader, &o, mi, id, failed).await else {
            continue;
        };
        for d in dests {
            add(loader, &mut batches, d, &item, mi);
        }
    }
    batches
}

/// Where object `o` (of message `mi`) loads, with its identity; `None` when it loads nowhere
/// (counted and logged here; `failed` set when it must be retried).
async fn route(
    loader: &Loader,
    o: &ObjectEvent,
    mi: usize,
    id: &str,
    failed: &mut [bool],
) -> Option<(Item, Vec<Destination>)> {
    let (cfg, st) = (&loader.cfg, &loader.stats);
    if !o.created {
        record(&st.not_created, "not_created", 1);
        info!(message_id = id, event = %o.event_name, key = %o.key, "not an object-created event: skipped");
        return None;
    }
    if cfg.is_own_object(&o.bucket, &o.key) {
        // A bucket notification without a prefix filter also reports our manifests and
        // quarantine records; a catch-all target must never load them as data.
        record(&st.no_target, "own_object", 1);
        debug!(message_id = id, key = %o.key, "rin-ship's own manifest or quarantine record: ignored");
        return None;
    }
    let dests = match cfg.route(&o.bucket, &o.key) {
        Err(e) => {
            record(&st.invalid_identifier, "invalid_identifier", 1);
            error!(
                message_id = id,
                "{e}; the message stays for the dead-letter queue"
            );
            failed[mi] = true;
            return None;
        }
        Ok(MatchOutcome::NoTarget) => {
            record(&st.no_target, "no_target", 1);
            info!(message_id = id, bucket = %o.bucket, key = %o.key, "no target matches: ignored");
            return None;
        }
        Ok(MatchOutcome::Discarded) => {
            record(&st.discarded, "discarded", 1);
            info!(message_id = id, key = %o.key, "discarded by target");
            return None;
        }
        Ok(MatchOutcome::Load(dests)) => dests,
    };
    let etag = if o.etag.is_empty() {
        match loader.objects.etag(&o.bucket, &o.key).await {
            Ok(Some(e)) => e,
            Ok(None) => {
                record(&st.gone, "gone", 1);
                warn!(message_id = id, key = %o.key, "object no longer exists: skipped");
                return None;
            }
            Err(e) => {
                warn!(message_id = id, "{e:#}");
                failed[mi] = true;
                return None;
            }
        }
    } else {
        o.etag.clone()
    };
    let item = Item {
        bucket: o.bucket.clone(),
        key: o.key.clone(),
        etag,
        version_id: o.version_id.clone(),
        size: o.size,
    };
    Some((item, dests))
}

/// Adds `item` (of message `mi`) to the group of destination `d`.
fn add(loader: &Loader, batches: &mut Vec<Batch>, d: Destination, item: &Item, mi: usize) {
    let conn = loader.cfg.target(d.target).redshift.without_table();
    let codec = Codec::of_key(&item.key);
    let bi = match batches.iter().position(|b| {
        b.conn == conn && b.codec == codec && b.group.dest.qualified() == d.qualified()
    }) {
        Some(i) => i,
        None => {
            batches.push(Batch {
                conn,
                codec,
                group: Group {
                    dest: d,
                    items: Vec::new(),
                },
                owners: Vec::new(),
            });
            batches.len() - 1
        }
    };
    let b = &mut batches[bi];
    match b.group.items.iter().position(|x| x == item) {
        Some(ii) => {
            // The same object twice in one batch: loaded once.
            b.owners[ii].push(mi);
            record(&loader.stats.duplicates, "duplicate", 1);
        }
        None => {
            b.group.items.push(item.clone());
            b.owners.push(vec![mi]);
        }
    }
}

/// A group waiting for its (next) load, with the owners of its items.
struct Load {
    group: Group,
    owners: Vec<Vec<usize>>,
    /// For a group of one object whose read failed: the reads tried so far, and the retry
    /// schedule of the object.
    reads: Option<Backoff>,
    /// Not before this instant (the object's read is retried after a pause).
    not_before: Option<Instant>,
}

/// Loads one batch's group, handling a failure by its kind (see the module docs).
async fn deliver(loader: &Loader, sessions: &mut Sessions, batch: Batch, failed: &mut [bool]) {
    let st = &loader.stats;
    let env = loader.env();
    let mut pending = vec![Load {
        group: batch.group,
        owners: batch.owners,
        reads: None,
        not_before: None,
    }];
    let mut split = false;
    // 1 s, then 2 s, each up to a quarter longer.
    let mut retry = Backoff::new(Duration::from_secs(1), Duration::from_secs(4)).jitter(1.0, 1.25);
    while let Some(load) = pending.pop() {
        if let Some(at) = load.not_before {
            tokio::time::sleep_until(at.into()).await;
        }
        let Load {
            group: g,
            owners,
            reads,
            ..
        } = load;
        let target = loader.cfg.target(g.dest.target);
        let started = Instant::now();
        let loaded = sessions.load(&loader.drivers, &env, target, &g).await;
        metrics::histogram!("rin_load_duration_seconds", "warehouse" => super::warehouse_label(target.driver))
            .record(started.elapsed().as_secs_f64());
        let f = match loaded {
            Ok(results) => {
                loader.health.ok("warehouse");
                crate::telemetry::set_to_now("rin_last_load_timestamp_seconds");
                count_results(st, &results);
                continue;
            }
            Err(f) => f,
        };
        // A transient failure that names no object (not an object read) is the warehouse not
        // answering; any other answer means it is there.
        if f.kind == ErrorKind::Transient && f.items.is_empty() {
            loader
                .health
                .failing("warehouse", format!("the last load failed: {f:#}"));
        } else {
            loader.health.ok("warehouse");
        }
        report_failure(&g, &f);
        let fail_all = |failed: &mut [bool], owners: &[Vec<usize>]| {
            record(&st.failed_loads, "failed", g.items.len() as u64);
            for o in owners.iter().flatten() {
                failed[*o] = true;
            }
        };
        match f.kind {
            // An object could not be read (a cut S3 body, a GetObject error): that object is
            // retried by itself, and the others of the group load without it (under a flaky
            // store, retrying the whole group would read them all again, and after the last
            // retry keep all of their messages).
            ErrorKind::Transient if f.unreadable && !f.items.is_empty() => {
                let dest = g.dest.clone();
                let (bad, rest) = part(g, owners, &f.items);
                if let Some(rest) = rest {
                    pending.push(rest);
                }
                for (it, o) in bad {
                    let mut reads = reads.clone().unwrap_or_else(read_backoff);
                    if reads.attempts() >= READ_RETRIES {
                        warn!(object = %it.url(), reads = reads.attempts() + 1, "cannot read the object; its message is left for redelivery");
                        record(&st.failed_loads, "failed", 1);
                        for mi in &o {
                            failed[*mi] = true;
                        }
                        continue;
                    }
                    st.retried.fetch_add(1, Ordering::Relaxed);
                    let wait = reads.wait();
                    warn!(object = %it.url(), retry = reads.attempts(), "cannot read the object: retrying it alone in {wait:?}");
                    // Pushed under the rest: the rest loads first, without waiting.
                    pending.insert(
                        0,
                        Load {
                            group: Group {
                                dest: dest.clone(),
                                items: vec![it],
                            },
                            owners: vec![o],
                            reads: Some(reads),
                            not_before: Some(Instant::now() + wait),
                        },
                    );
                }
            }
            ErrorKind::Transient if retry.attempts() < LOAD_RETRIES => {
                st.retried.fetch_add(1, Ordering::Relaxed);
                let wait = retry.wait();
                warn!(table = %g.dest.qualified(), retry = retry.attempts(), "transient load error: retrying in {wait:?}");
                tokio::time::sleep(wait).await;
                pending.push(Load {
                    group: g,
                    owners,
                    reads,
                    not_before: None,
                });
            }
            // Splitting cannot help: the message is delivered again later.
            ErrorKind::Transient => fail_all(failed, &owners),
            ErrorKind::Data if loader.cfg.ext.quarantine && has_culprits(&g, &f) => {
                if let Some((group, owners)) = set_aside(loader, g, owners, &f, failed).await {
                    pending.push(Load {
                        group,
                        owners,
                        reads: None,
                        not_before: None,
                    });
                }
            }
            _ if g.items.len() > 1 && !split => {
                // One bad object must not hold its batch-mates back: load one by one (in
                // their order: the keyed insert modes care).
                split = true;
                for (it, o) in g.items.into_iter().zip(owners).rev() {
                    pending.push(Load {
                        group: Group {
                            dest: g.dest.clone(),
                            items: vec![it],
                        },
                        owners: vec![o],
                        reads: None,
                        not_before: None,
                    });
                }
            }
            _ => fail_all(failed, &owners),
        }
    }
}

/// The schedule of an object's read retries: 1 s, 2 s, 4 s, each up to a quarter longer.
fn read_backoff() -> Backoff {
    Backoff::new(Duration::from_secs(1), Duration::from_secs(4)).jitter(1.0, 1.25)
}

/// Splits a group into the objects `bad` names (each with its owners) and a load of the
/// others, in their order (none when every object is named).
fn part(
    g: Group,
    owners: Vec<Vec<usize>>,
    bad: &[usize],
) -> (Vec<(Item, Vec<usize>)>, Option<Load>) {
    let mut named = Vec::new();
    let mut rest = Group {
        dest: g.dest,
        items: Vec::new(),
    };
    let mut rest_owners = Vec::new();
    for (ii, (it, o)) in g.items.into_iter().zip(owners).enumerate() {
        if bad.contains(&ii) {
            named.push((it, o));
        } else {
            rest.items.push(it);
            rest_owners.push(o);
        }
    }
    let rest = (!rest.items.is_empty()).then_some(Load {
        group: rest,
        owners: rest_owners,
        reads: None,
        not_before: None,
    });
    (named, rest)
}

fn count_results(st: &Stats, results: &[ItemResult]) {
    for r in results {
        match r {
            ItemResult::Loaded(rows) => {
                record(&st.loaded_objects, "loaded", 1);
                if let Some(n) = rows {
                    st.loaded_rows.fetch_add(*n, Ordering::Relaxed);
                    metrics::counter!("rin_import_rows_total").increment(*n);
                }
            }
            ItemResult::Duplicate => record(&st.duplicates, "duplicate", 1),
            ItemResult::Gone => record(&st.gone, "gone", 1),
        }
    }
}

fn report_failure(g: &Group, f: &LoadFailure) {
    metrics::counter!("rin_import_load_errors_total", "kind" => f.kind.label()).increment(1);
    error!(table = %g.dest.qualified(), objects = g.items.len(), kind = f.kind.label(), "load failed: {f:#}");
    for d in &f.details {
        error!(
            table = %g.dest.qualified(),
            object = %d.url,
            line = d.line,
            column = d.column.as_deref().unwrap_or(""),
            reason = %d.reason,
            "load error"
        );
    }
}

/// The objects a data error names (the only one, in a group of one).
fn culprits(g: &Group, f: &LoadFailure) -> Vec<usize> {
    if f.items.is_empty() && g.items.len() == 1 {
        vec![0]
    } else {
        f.items.clone()
    }
}

fn has_culprits(g: &Group, f: &LoadFailure) -> bool {
    !culprits(g, f).is_empty()
}

/// Quarantines the objects at fault (their messages are deleted, unless another record of
/// theirs fails) and returns the others, to load together.
async fn set_aside(
    loader: &Loader,
    g: Group,
    owners: Vec<Vec<usize>>,
    f: &LoadFailure,
    failed: &mut [bool],
) -> Option<(Group, Vec<Vec<usize>>)> {
    let st = &loader.stats;
    let bad = culprits(&g, f);
    let mut rest = Group {
        dest: g.dest.clone(),
        items: Vec::new(),
    };
    let mut rest_owners = Vec::new();
    for (ii, (it, o)) in g.items.iter().zip(&owners).enumerate() {
        if !bad.contains(&ii) {
            rest.items.push(it.clone());
            rest_owners.push(o.clone());
            continue;
        }
        match quarantine(&loader.objects, &loader.cfg, &g.dest, it, f).await {
            Ok(url) => {
                record(&st.quarantined, "quarantined", 1);
                metrics::counter!("rin_import_quarantined_total").increment(1);
                error!(table = %g.dest.qualified(), object = %it.url(), record = %url, "data error: object quarantined; its message is deleted");
            }
            Err(qe) => {
                error!(object = %it.url(), "cannot quarantine: {qe:#}; the message stays");
                record(&st.failed_loads, "failed", 1);
                for mi in o {
                    failed[*mi] = true;
                }
            }
        }
    }
    (!rest.items.is_empty()).then_some((rest, rest_owners))
}
