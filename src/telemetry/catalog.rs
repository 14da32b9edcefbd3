//! Every metric family rin-ship exports: its name, type, `# HELP` text and the series that
//! exist from the start (zero-valued), by the part of the process that exports it. Owns the
//! names and their meaning (what `docs/operations.md` and `examples/prometheus/alerts.yaml`
//! rely on); it must never let a family appear only at its first event (an alert on an absent
//! series never fires, and a rate over a series born mid-window misleads), and a family used
//! in the source must be listed here (a unit test reads the source to check).

/// Which part of rin-ship exports a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Every process with a metrics endpoint.
    Process,
    /// `serve`: intake, buffer, shipping.
    Serve,
    /// The loader: `import`, and `serve` with `embedded_load`.
    Load,
    /// `serve`'s local queue (with `embedded_load`).
    LocalQueue,
    /// `import` only: its SQS queue, table maintenance.
    Import,
    /// `rin-ship sync` (with `metrics_bind`), besides its loader's.
    Sync,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// The series registered at start.
#[derive(Debug, Clone, Copy)]
pub enum Series {
    /// One series without labels.
    One,
    /// These label sets.
    Labels(&'static [&'static [(&'static str, &'static str)]]),
    /// Labels from the config (a target's name): the stage that knows them registers them.
    FromConfig,
}

pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub part: Part,
    pub help: &'static str,
    pub series: Series,
}

use Kind::{Counter, Gauge, Histogram};
use Part::{Import, Load, LocalQueue, Process, Serve, Sync};
use Series::{FromConfig, Labels, One};

const fn f(
    name: &'static str,
    kind: Kind,
    part: Part,
    series: Series,
    help: &'static str,
) -> Family {
    Family {
        name,
        kind,
        part,
        help,
        series,
    }
}

/// Bucket bounds (seconds) for latencies that can run to minutes (a Redshift COPY).
pub const SLOW_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Families whose buckets are [`SLOW_BUCKETS`].
pub const SLOW: &[&str] = &["rin_upload_duration_seconds", "rin_load_duration_seconds"];

pub const FAMILIES: &[Family] = &[
    // -- the process ---------------------------------------------------------------------
    f(
        "rin_build_info",
        Gauge,
        Process,
        FromConfig,
        "Always 1; the labels say which rin-ship runs: version, commit, features (cargo features built in).",
    ),
    f(
        "process_start_time_seconds",
        Gauge,
        Process,
        One,
        "When the process started, in seconds since the Unix epoch.",
    ),
    f(
        "process_resident_memory_bytes",
        Gauge,
        Process,
        One,
        "Resident memory of the process (VmRSS), read at each scrape.",
    ),
    f(
        "rin_ready",
        Gauge,
        Process,
        FromConfig,
        "1 while a readiness check passes, 0 while it fails (the reason is in /readyz): buffer (serve), queue and warehouse (import).",
    ),
    // -- serve: intake -----------------------------------------------------------------
    f(
        "rin_events_in_total",
        Counter,
        Serve,
        FromConfig,
        "Events received and handed to the buffer, by intake and target.",
    ),
    f(
        "rin_bytes_in_total",
        Counter,
        Serve,
        FromConfig,
        "Bytes received (as sent: frames, request bodies before decompression), by intake and target.",
    ),
    f(
        "rin_ack_latency_seconds",
        Histogram,
        Serve,
        Labels(&[&[("intake", "forward")], &[("intake", "http")]]),
        "Time from receiving a frame or request to its events being durable (fsynced), i.e. to the ack or 200.",
    ),
    f(
        "rin_events_refused_total",
        Counter,
        Serve,
        Labels(&[&[("reason", "no_route")]]),
        "Events refused (not acked, the client keeps them): no_route is a tag that matches no target and no fallback.",
    ),
    f(
        "rin_forward_connections_total",
        Counter,
        Serve,
        One,
        "Forward connections accepted.",
    ),
    f(
        "rin_forward_connections_refused_total",
        Counter,
        Serve,
        Labels(&[&[("reason", "max_connections")]]),
        "Forward connections closed at once because forward.max_connections were open.",
    ),
    f(
        "rin_forward_connections_evicted_total",
        Counter,
        Serve,
        One,
        "Forward connections closed at forward.max_connections to make room for a new one: the one that delivered no frame the longest (at least 1 s) gives its place.",
    ),
    f(
        "rin_forward_bytes_total",
        Counter,
        Serve,
        One,
        "Bytes read from forward connections.",
    ),
    f(
        "rin_forward_frames_rejected_total",
        Counter,
        Serve,
        Labels(&[
            &[("reason", "malformed")],
            &[("reason", "too_large")],
            &[("reason", "decompress")],
            &[("reason", "busy")],
            &[("reason", "truncated")],
            &[("reason", "no_route")],
            &[("reason", "slow")],
        ]),
        "Forward frames refused, by reason; each closes its connection and is not acked (the client resends it).",
    ),
    f(
        "rin_forward_handshake_failures_total",
        Counter,
        Serve,
        Labels(&[&[("reason", "timeout")], &[("reason", "tls")]]),
        "Forward connections whose TLS or shared-key handshake failed, by reason.",
    ),
    f(
        "rin_forward_resends_deduplicated_total",
        Counter,
        Serve,
        One,
        "Forward chunks received again after a lost ack, acked without being stored twice.",
    ),
    f(
        "rin_forward_udp_heartbeats_total",
        Counter,
        Serve,
        One,
        "fluentd UDP heartbeats answered.",
    ),
    f(
        "rin_forward_udp_ignored_total",
        Counter,
        Serve,
        One,
        "UDP datagrams on the forward port that were not heartbeats.",
    ),
    f(
        "rin_http_connections_total",
        Counter,
        Serve,
        One,
        "HTTP intake connections accepted.",
    ),
    f(
        "rin_http_connections_evicted_total",
        Counter,
        Serve,
        One,
        "HTTP connections closed at http.max_connections to make room for a new one: the one that completed no request the longest (at least 1 s) gives its place.",
    ),
    f(
        "rin_http_requests_total",
        Counter,
        Serve,
        Labels(&[&[("code", "200")], &[("code", "503")]]),
        "HTTP intake requests answered, by status code (200 only once every event is durable).",
    ),
    f(
        "rin_http_requests_rejected_total",
        Counter,
        Serve,
        Labels(&[
            &[("reason", "malformed")],
            &[("reason", "too_large")],
            &[("reason", "busy")],
            &[("reason", "unavailable")],
            &[("reason", "disk_full")],
            &[("reason", "auth")],
            &[("reason", "no_tag")],
            &[("reason", "slow")],
        ]),
        "HTTP intake requests refused, by reason (nothing of a refused request is stored).",
    ),
    f(
        "rin_http_resends_deduplicated_total",
        Counter,
        Serve,
        One,
        "HTTP requests resent with an Idempotency-Key already stored, answered 200 without storing them twice.",
    ),
    f(
        "rin_tls_reloads_total",
        Counter,
        Serve,
        Labels(&[&[("result", "ok")], &[("result", "error")]]),
        "TLS certificate reloads (SIGHUP), by result.",
    ),
    f(
        "rin_decompress_bytes",
        Gauge,
        Serve,
        One,
        "Memory held by decompressed payloads (forward and HTTP) right now.",
    ),
    f(
        "rin_decompress_waits_total",
        Counter,
        Serve,
        Labels(&[&[("outcome", "admitted")], &[("outcome", "refused")]]),
        "Payloads that found the decompression budget spent and waited (up to 2 s) for room: admitted once room came, or refused as busy after the wait.",
    ),
    f(
        "rin_decompress_budget_bytes",
        Gauge,
        Serve,
        One,
        "The decompression memory budget (decompress_memory): past it, payloads are refused with reason busy and retried by clients.",
    ),
    // -- serve: buffer -----------------------------------------------------------------
    f(
        "rin_buffer_bytes",
        Gauge,
        Serve,
        One,
        "Bytes the buffer holds on disk (open and sealed chunks and their journals), counted against buffer.quota.",
    ),
    f(
        "rin_buffer_quota_bytes",
        Gauge,
        Serve,
        One,
        "buffer.quota: at it, intake stops reading (forward) or answers 503 (HTTP).",
    ),
    f(
        "rin_buffer_fill_ratio",
        Gauge,
        Serve,
        One,
        "rin_buffer_bytes / rin_buffer_quota_bytes, read at each scrape; 1 means intake is pushing back.",
    ),
    f(
        "rin_buffer_chunks",
        Gauge,
        Serve,
        Labels(&[&[("state", "open")], &[("state", "sealed")]]),
        "Chunks in the buffer: open (taking events) and sealed (waiting to be uploaded).",
    ),
    f(
        "rin_buffer_oldest_chunk_age_seconds",
        Gauge,
        Serve,
        One,
        "Age of the oldest chunk not yet uploaded (since its first event), read at each scrape; 0 when none. Grows without bound when uploads fail.",
    ),
    f(
        "rin_chunks_sealed_total",
        Counter,
        Serve,
        One,
        "Chunks sealed (by seal_bytes, seal_age, max_open_chunks or shutdown).",
    ),
    f(
        "rin_chunks_sealed_early_total",
        Counter,
        Serve,
        Labels(&[&[("reason", "max_open_chunks")]]),
        "Chunks sealed before seal_bytes or seal_age, by reason.",
    ),
    f(
        "rin_buffer_full_total",
        Counter,
        Serve,
        One,
        "Times the buffer reached its quota (intake pushed back).",
    ),
    f(
        "rin_buffer_commits_total",
        Counter,
        Serve,
        One,
        "Group commits (one fsync for every batch of the group).",
    ),
    f(
        "rin_buffer_commit_errors_total",
        Counter,
        Serve,
        One,
        "Commits that failed (disk errors); their batches were not acked.",
    ),
    f(
        "rin_disk_full_errors_total",
        Counter,
        Serve,
        Labels(&[
            &[("stage", "chunk")],
            &[("stage", "journal")],
            &[("stage", "seal")],
            &[("stage", "object_store")],
            &[("stage", "queue")],
            &[("stage", "warehouse")],
        ]),
        "Writes that failed for want of space (ENOSPC, EDQUOT), by what was written: chunk (data file, new chunk), journal (commit record), seal, object_store (a local store's folder), queue (the local queue), warehouse (the embedded SQLite). Nothing of a failed write is acked.",
    ),
    f(
        "rin_disk_full",
        Gauge,
        Serve,
        One,
        "1 while intake pushes back for a full disk (forward: no ack, HTTP 503 reason disk_full), until its filesystem has 4 MiB (an eighth of a smaller one) free again.",
    ),
    // -- serve: shipping ---------------------------------------------------------------
    f(
        "rin_events_out_total",
        Counter,
        Serve,
        FromConfig,
        "Events in uploaded objects, by target.",
    ),
    f(
        "rin_objects_uploaded_total",
        Counter,
        Serve,
        One,
        "Objects uploaded.",
    ),
    f(
        "rin_uploaded_bytes_total",
        Counter,
        Serve,
        One,
        "Object bytes uploaded (compressed).",
    ),
    f(
        "rin_upload_duration_seconds",
        Histogram,
        Serve,
        One,
        "Time of one successful object upload (PUT, or the multipart upload).",
    ),
    f(
        "rin_upload_errors_total",
        Counter,
        Serve,
        One,
        "Failed upload attempts (each is retried with backoff).",
    ),
    f(
        "rin_upload_retries_total",
        Counter,
        Serve,
        One,
        "Upload retries scheduled.",
    ),
    f(
        "rin_last_upload_timestamp_seconds",
        Gauge,
        Serve,
        One,
        "When the last upload succeeded, in seconds since the Unix epoch; 0 before the first.",
    ),
    f(
        "rin_notifications_total",
        Counter,
        Serve,
        One,
        "Object-created events sent by the shipper (a store's notify: SQS or the local queue).",
    ),
    f(
        "rin_notification_errors_total",
        Counter,
        Serve,
        One,
        "Failed notification attempts (retried; the chunk is kept until sent).",
    ),
    // -- the local queue (serve with embedded_load) ----------------------------------------
    f(
        "rin_local_queue_messages",
        Gauge,
        LocalQueue,
        Labels(&[
            &[("state", "ready")],
            &[("state", "inflight")],
            &[("state", "dead")],
        ]),
        "Messages in the local queue, read at each scrape: ready (waiting), inflight (leased by a load), dead (gave up after 10 receives; see queue/dead/).",
    ),
    f(
        "rin_local_queue_dead_letters_total",
        Counter,
        LocalQueue,
        One,
        "Local-queue messages moved to queue/dead/ after failing 10 times.",
    ),
    // -- the loader (import, and serve's embedded loader) ----------------------------------
    f(
        "rin_import_messages_total",
        Counter,
        Load,
        Labels(&[
            &[("outcome", "deleted")],
            &[("outcome", "kept")],
            &[("outcome", "test_event")],
        ]),
        "Queue messages handled, by outcome: deleted (done), kept (left for redelivery), test_event, or why it could not be parsed.",
    ),
    f(
        "rin_import_records_total",
        Counter,
        Load,
        Labels(&[
            &[("outcome", "loaded")],
            &[("outcome", "duplicate")],
            &[("outcome", "failed")],
            &[("outcome", "quarantined")],
        ]),
        "Objects (event records) handled, by outcome: loaded, duplicate (already in the ledger), failed, quarantined, gone, no_target, ...",
    ),
    f(
        "rin_import_rows_total",
        Counter,
        Load,
        One,
        "Rows loaded into the warehouse.",
    ),
    f(
        "rin_import_unmatched_keys_total",
        Counter,
        Load,
        FromConfig,
        "Record keys that matched no column of a PostgreSQL target with no catch_all_column (dropped from the row and logged under schema: report; the object refused under schema: strict), by target.",
    ),
    f(
        "rin_import_columns_added_total",
        Counter,
        Load,
        FromConfig,
        "Columns schema: evolve added to a PostgreSQL target for record keys it had no column for, by target.",
    ),
    f(
        "rin_import_load_errors_total",
        Counter,
        Load,
        Labels(&[
            &[("kind", "data")],
            &[("kind", "transient")],
            &[("kind", "other")],
        ]),
        "Failed loads, by kind: data (quarantined), transient (retried), other (left on the queue).",
    ),
    f(
        "rin_import_quarantined_total",
        Counter,
        Load,
        One,
        "Objects put in quarantine for a data error.",
    ),
    f(
        "rin_import_compression_mismatch_total",
        Counter,
        Load,
        One,
        "Redshift loads whose target sql_option named a compression other than the objects' (GZIP for .zst, say): the keyword was replaced and a warning logged.",
    ),
    f(
        "rin_import_disk_warnings_total",
        Counter,
        Load,
        One,
        "Loads that may not fit the Redshift cluster's free disk.",
    ),
    f(
        "rin_load_duration_seconds",
        Histogram,
        Load,
        FromConfig,
        "Time of one load transaction (a COPY and its ledger rows), by warehouse, including failed ones.",
    ),
    f(
        "rin_last_load_timestamp_seconds",
        Gauge,
        Load,
        One,
        "When the last load committed, in seconds since the Unix epoch; 0 before the first.",
    ),
    // -- import only --------------------------------------------------------------------
    f(
        "rin_import_queue_messages",
        Gauge,
        Import,
        Labels(&[&[("state", "visible")], &[("state", "inflight")]]),
        "SQS messages (ApproximateNumberOfMessages: visible; ...NotVisible: inflight), read every 10 s.",
    ),
    f(
        "rin_maintenance_total",
        Counter,
        Import,
        Labels(&[&[("action", "vacuum")], &[("action", "analyze")]]),
        "Maintenance statements run (rin_ship.maintenance), by action.",
    ),
    f(
        "rin_maintenance_disk_warnings_total",
        Counter,
        Import,
        One,
        "Maintenance rounds that found the Redshift disks fuller than disk_warn_pct.",
    ),
    f(
        "rin_sync_rows_total",
        Counter,
        Sync,
        FromConfig,
        "Rows read from the source and written to objects, by target table.",
    ),
    f(
        "rin_sync_pass_duration_seconds",
        Histogram,
        Sync,
        FromConfig,
        "Duration of one table's pass (read, store, load), by target table.",
    ),
    f(
        "rin_sync_failures_total",
        Counter,
        Sync,
        FromConfig,
        "Passes that failed (the next pass retries; the state keeps what was stored), by table.",
    ),
    f(
        "rin_sync_deleted_rows_total",
        Counter,
        Sync,
        FromConfig,
        "Warehouse rows deleted because their key is gone from the source (delete_missing), by table.",
    ),
    f(
        "rin_sync_last_pass_timestamp_seconds",
        Gauge,
        Sync,
        FromConfig,
        "When the last pass of a table finished (Unix seconds), by table: alert when it is older than the schedule.",
    ),
    f(
        "rin_sync_watermark_lag_seconds",
        Gauge,
        Sync,
        FromConfig,
        "How far the newest watermark was behind the source's own clock when the last pass began (time watermarks only), by table: how stale the warehouse copy is at most, plus the pass's duration.",
    ),
    f(
        "rin_sync_unmapped_columns_total",
        Counter,
        Sync,
        FromConfig,
        "Source columns found without a target column before a pass (schema: report), by table.",
    ),
];

/// The family named `name`.
#[cfg(test)]
pub fn family(name: &str) -> Option<&'static Family> {
    FAMILIES.iter().find(|f| f.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `counter!("rin_...")`, `gauge!` and `histogram!` in the source is a family here,
    /// of that type: otherwise it has no `# HELP` and appears only at its first event.
    #[test]
    fn every_metric_in_the_source_is_listed() {
        let re = regex::Regex::new(r#"(counter|gauge|histogram)!\(\s*"([a-z_]+)""#).unwrap();
        let mut stack = vec![std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src"
        ))];
        let mut seen = 0;
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                if p.extension().is_none_or(|x| x != "rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&p).unwrap();
                for c in re.captures_iter(&text) {
                    seen += 1;
                    let name = &c[2];
                    let fam = family(name).unwrap_or_else(|| {
                        panic!("{}: `{name}` is not in telemetry/catalog.rs", p.display())
                    });
                    let kind = match &c[1] {
                        "counter" => Kind::Counter,
                        "gauge" => Kind::Gauge,
                        _ => Kind::Histogram,
                    };
                    assert_eq!(fam.kind, kind, "{}: `{name}`", p.display());
                }
            }
        }
        assert!(seen > 40, "the source scan found only {seen} metrics");
    }

    #[test]
    fn names_are_unique_and_prometheus_shaped() {
        let mut names = std::collections::HashSet::new();
        for f in FAMILIES {
            assert!(names.insert(f.name), "{} twice", f.name);
            assert!(!f.help.is_empty(), "{}", f.name);
            match f.kind {
                Kind::Counter => assert!(f.name.ends_with("_total"), "{}", f.name),
                Kind::Histogram => assert!(f.name.ends_with("_seconds"), "{}", f.name),
                Kind::Gauge => assert!(!f.name.ends_with("_total"), "{}", f.name),
            }
        }
    }
}
