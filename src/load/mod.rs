//! The COPY stage (`rin-ship import`): S3 object-created notifications arrive on SQS; each
//! object is loaded, exactly once, into the warehouse table its key maps to (Rin-compatible
//! config and matching).
//!
//! Owns: the Rin config ([`rin`]), event parsing ([`event`]), the queue ([`sqs`]), the ledger
//! transaction ([`ledger`]), the Redshift dialect ([`redshift`]) and the PostgreSQL load path
//! ([`postgres`]).
//!
//! Must never: delete a message before the load of every record in it committed (or was found
//! in the ledger); delete a message it could not parse (it is left for the dead-letter queue);
//! COPY from a bare key (a prefix) instead of a manifest; expand an object key into SQL other
//! than as a validated, quoted identifier; print a secret.

pub mod aws;
pub mod backfill;
#[cfg(feature = "redshift")]
pub mod dataapi;
pub mod embedded;
pub mod event;
#[cfg(feature = "redshift")]
pub mod iam;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod ledger;
pub mod maintain;
pub mod objects;
pub mod postgres;
pub mod queue;
pub mod redshift;
pub mod rin;
pub mod sqlite;
pub mod sqs;

use anyhow::{Context, Result, anyhow};
use event::{ParseError, Parsed};
use ledger::{Group, Item, ItemResult};
use queue::{Message, Queue};
use rin::{MatchOutcome, Redshift, RinConfig, Warehouse};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

/// Command-line options of `rin-ship import`.
#[derive(Debug, Clone)]
pub struct ImportArgs {
    /// A local path, an `http(s)://` URL or `s3://bucket/key` (as Rin's `-config`).
    pub config: String,
    pub batch: bool,
    pub max_execution_time: Option<Duration>,
    pub dry_run: Vec<String>,
}

/// Counters of one run (also exported as metrics), printed as JSON at exit.
#[derive(Default)]
pub struct Stats {
    messages: AtomicU64,
    deleted: AtomicU64,
    kept: AtomicU64,
    test_events: AtomicU64,
    unparseable: AtomicU64,
    loaded_objects: AtomicU64,
    loaded_rows: AtomicU64,
    duplicates: AtomicU64,
    gone: AtomicU64,
    no_target: AtomicU64,
    discarded: AtomicU64,
    not_created: AtomicU64,
    invalid_identifier: AtomicU64,
    failed_loads: AtomicU64,
    /// Objects with a data error, put in quarantine (their messages deleted).
    quarantined: AtomicU64,
    /// In-process retries of loads that failed with a transient error.
    retried: AtomicU64,
}

/// In-process retries of a group after a transient error (backoff 1 s, 2 s; the message's
/// visibility is extended meanwhile), before its messages are left for redelivery.
const LOAD_RETRIES: u32 = 2;

impl Stats {
    fn json(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "messages": g(&self.messages),
            "deleted": g(&self.deleted),
            "kept": g(&self.kept),
            "test_events": g(&self.test_events),
            "unparseable": g(&self.unparseable),
            "loaded_objects": g(&self.loaded_objects),
            "loaded_rows": g(&self.loaded_rows),
            "duplicates": g(&self.duplicates),
            "gone": g(&self.gone),
            "no_target": g(&self.no_target),
            "discarded": g(&self.discarded),
            "not_created": g(&self.not_created),
            "invalid_identifier": g(&self.invalid_identifier),
            "failed_loads": g(&self.failed_loads),
            "quarantined": g(&self.quarantined),
            "retried": g(&self.retried),
        })
        .to_string()
    }
}

fn record(stats: &AtomicU64, outcome: &'static str, n: u64) {
    stats.fetch_add(n, Ordering::Relaxed);
    metrics::counter!("rin_import_records_total", "outcome" => outcome).increment(n);
}

/// `rin-ship import`.
pub fn main(args: ImportArgs) -> Result<()> {
    let cfg = RinConfig::load_from(&args.config)?;
    if !args.dry_run.is_empty() {
        return dry_run(&cfg, &args.dry_run);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("rin-import")
        .build()?
        .block_on(run(Arc::new(cfg), args))
}

fn dry_run(cfg: &RinConfig, keys: &[String]) -> Result<()> {
    for t in &cfg.targets {
        println!("target {}: {}", t.index, t.describe());
    }
    for arg in keys {
        let (bucket, key) = match arg.strip_prefix("s3://") {
            Some(rest) => {
                let (b, k) = rest
                    .split_once('/')
                    .ok_or_else(|| anyhow!("{arg}: expected s3://bucket/key"))?;
                (b.to_string(), k.to_string())
            }
            None => (
                cfg.targets
                    .first()
                    .map(|t| t.s3.bucket.clone())
                    .unwrap_or_default(),
                arg.clone(),
            ),
        };
        match cfg.route(&bucket, &key) {
            Err(e) => println!("s3://{bucket}/{key} => rejected: {e}"),
            Ok(MatchOutcome::NoTarget) => println!("s3://{bucket}/{key} => no target"),
            Ok(MatchOutcome::Discarded) => println!("s3://{bucket}/{key} => discarded"),
            Ok(MatchOutcome::Load(dests)) => {
                for d in dests {
                    let t = cfg.target(d.target);
                    let q = d.qualified();
                    println!(
                        "s3://{bucket}/{key} => target {} {q} ({:?} {})",
                        d.target,
                        cfg.ext.warehouse,
                        t.redshift.visible_dsn()
                    );
                    match cfg.ext.warehouse {
                        Warehouse::Redshift => {
                            let objects = [(bucket.as_str(), key.as_str())];
                            let (mb, mp) = ledger::manifest_location(cfg, &t.s3.bucket);
                            let mkey = redshift::manifest_key(&mp, &q, &objects);
                            let url = format!("s3://{mb}/{mkey}");
                            println!("  manifest {url}: {}", redshift::manifest_json(&objects));
                            let plan = redshift::LoadPlan::new(cfg, t, &q, &url);
                            for sql in redshift::load_statements(&plan, true) {
                                println!("  {sql}");
                            }
                        }
                        Warehouse::Postgres => {
                            println!(
                                "  COPY rin_ship_stage (doc) FROM STDIN WITH (FORMAT csv, QUOTE e'\\x01', DELIMITER e'\\x02')  -- s3://{bucket}/{key}, decompressed"
                            );
                            println!(
                                "  INSERT INTO {q} (<columns of {q}>) SELECT ... FROM rin_ship_stage s, LATERAL jsonb_populate_record(NULL::{q}, s.doc) r"
                            );
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// What every load needs: the config, where objects are read, and the run's counters.
pub struct Ctx {
    pub cfg: Arc<RinConfig>,
    pub objects: objects::Source,
    pub stats: Stats,
    /// The Redshift Data API client, when a target uses `driver: redshift-data`.
    #[cfg(feature = "redshift")]
    pub data_api: Option<Arc<dataapi::DataApi>>,
}

/// A [`Ctx`] reading objects from S3 (or the configured S3-compatible endpoint), for loading
/// outside `run`: `rin-ship backfill`, the Lambda handler.
pub async fn context(cfg: Arc<RinConfig>) -> Ctx {
    let s3 = aws::s3_client(&cfg).await;
    // Temporary database passwords (`iam_auth`) come from the config's AWS credentials.
    #[cfg(feature = "redshift")]
    iam::init(&cfg).await;
    #[cfg(feature = "redshift")]
    let data_api = match cfg
        .targets
        .iter()
        .any(|t| dataapi::is_data_api(&t.redshift))
    {
        true => Some(Arc::new(dataapi::DataApi::from_config(&cfg).await)),
        false => None,
    };
    Ctx {
        cfg,
        objects: objects::Source::S3(s3),
        stats: Stats::default(),
        #[cfg(feature = "redshift")]
        data_api,
    }
}

/// Whether the object is one the importer itself wrote (a manifest or a quarantine record).
fn is_own_object(cfg: &RinConfig, bucket: &str, key: &str) -> bool {
    [ledger::manifest_location, ledger::quarantine_location]
        .iter()
        .any(|location| {
            let (b, prefix) = location(cfg, bucket);
            b == bucket && !prefix.is_empty() && key.starts_with(&prefix)
        })
}

/// Resolves at SIGTERM or Ctrl-C (the commands of the COPY stage stop gracefully on either).
pub async fn termination() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let term = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

/// Warehouse connections of one worker, by connection settings (targets may differ).
#[derive(Default)]
pub struct Conns {
    wire: HashMap<Redshift, tokio_postgres::Client>,
    /// `driver: sqlite` (the embedded warehouse), by the same key.
    sqlite: HashMap<Redshift, sqlite::Db>,
}

async fn run(cfg: Arc<RinConfig>, args: ImportArgs) -> Result<()> {
    if !cfg.ext.metrics_bind.is_empty() {
        let addr: std::net::SocketAddr = cfg
            .ext
            .metrics_bind
            .parse()
            .with_context(|| format!("rin_ship.metrics_bind {:?}", cfg.ext.metrics_bind))?;
        let handle = crate::telemetry::install_metrics()?;
        crate::telemetry::serve_ops(addr, handle, Arc::new(crate::buffer::Usage::unlimited()))
            .await?;
    }
    let sqs_client = aws::sqs_client(&cfg).await;
    let name = if cfg.ext.queue_url.is_empty() {
        cfg.queue_name.clone()
    } else {
        cfg.ext.queue_url.clone()
    };
    let queue = Queue::Sqs(sqs::Queue::open(sqs_client, &name).await?);
    info!(queue = %queue.describe(), warehouse = ?cfg.ext.warehouse, targets = cfg.targets.len(), "importer starting");
    for t in &cfg.targets {
        info!("target {}: {}", t.index, t.describe());
    }
    let ctx = Arc::new(context(cfg.clone()).await);
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            termination().await;
            info!("signal received: finishing the loads in flight, then exiting");
            let _ = stop_tx.send(true);
        });
    }
    if let Some(limit) = args.max_execution_time {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            info!("max execution time reached: finishing the loads in flight, then exiting");
            let _ = stop_tx.send(true);
        });
    }
    // Returns at once unless rin_ship.maintenance.enabled_in_import is set.
    let maintenance = tokio::spawn(maintain::run_in_background(cfg.clone(), stop_rx.clone()));
    let result = consume(ctx.clone(), queue, stop_rx, args.batch).await;
    let _ = stop_tx.send(true); // with --batch nothing else stops maintenance
    let _ = maintenance.await;
    println!("{}", ctx.stats.json());
    info!(summary = %ctx.stats.json(), "importer stopped");
    result
}

/// Runs `rin_ship.concurrency` pollers on `queue` until `stop` (or, with `batch`, until the
/// queue is empty). Errors only when a worker failed for good.
pub async fn consume(
    ctx: Arc<Ctx>,
    queue: Queue,
    stop: watch::Receiver<bool>,
    batch: bool,
) -> Result<()> {
    let fatal = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..ctx.cfg.ext.concurrency {
        let ctx = ctx.clone();
        let stop = stop.clone();
        let queue = queue.clone();
        let fatal = fatal.clone();
        workers.push(tokio::spawn(async move {
            if let Err(e) = worker(w, ctx, queue, stop, batch).await {
                error!(worker = w, "importer worker failed: {e:#}");
                fatal.store(true, Ordering::Relaxed);
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    if fatal.load(Ordering::Relaxed) {
        return Err(anyhow!("an importer worker failed (see the log)"));
    }
    Ok(())
}

async fn worker(
    w: usize,
    ctx: Arc<Ctx>,
    queue: Queue,
    mut stop: watch::Receiver<bool>,
    batch: bool,
) -> Result<()> {
    let cfg = &ctx.cfg;
    let mut conns = Conns::default();
    let mut backoff = Duration::from_millis(500);
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let received = tokio::select! {
            r = queue.receive(cfg.ext.wait_time_seconds, cfg.ext.visibility_timeout_seconds) => r,
            _ = stop.changed() => return Ok(()),
        };
        let msgs = match received {
            Ok(m) => {
                backoff = Duration::from_millis(500);
                m
            }
            Err(e) => {
                warn!(worker = w, "{e:#}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        if msgs.is_empty() {
            if batch {
                info!(worker = w, "queue is empty: batch done");
                return Ok(());
            }
            continue;
        }
        process(&ctx, &queue, &mut conns, msgs).await;
    }
}

/// Handles one received batch: keeps it invisible while it loads, loads it, deletes what
/// committed (or needed no load), reports what stays.
async fn process(ctx: &Ctx, queue: &Queue, conns: &mut Conns, msgs: Vec<Message>) {
    let cfg = &ctx.cfg;
    let st = &ctx.stats;
    let receipts: Vec<String> = msgs.iter().map(|m| m.receipt.clone()).collect();
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
    let vt = cfg.ext.visibility_timeout_seconds;
    let extender = {
        let queue = queue.clone();
        let receipts = receipts.clone();
        tokio::spawn(async move {
            let every = Duration::from_secs((vt as u64 / 3).max(1));
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => queue.extend(&receipts, vt).await,
                    _ = &mut done_rx => return,
                }
            }
        })
    };
    let started = Instant::now();
    let keep = load_messages(ctx, conns, &msgs).await;
    let _ = done_tx.send(());
    let _ = extender.await;
    let mut delete = Vec::new();
    for (mi, m) in msgs.iter().enumerate() {
        if keep[mi] {
            st.kept.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("rin_import_messages_total", "outcome" => "kept").increment(1);
            report_kept(cfg, m, "not deleted");
        } else {
            delete.push(receipts[mi].clone());
        }
    }
    if std::env::var("RIN_SHIP_FAILPOINT").as_deref() == Ok("pause_before_delete") {
        // Test hook: the loads committed, the messages are not deleted yet; a test kills the
        // process here (SIGKILL) to prove the redelivery loads nothing twice.
        warn!("failpoint pause_before_delete: loads committed, pausing before DeleteMessageBatch");
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let n = queue.delete(&delete).await;
    st.deleted.fetch_add(n as u64, Ordering::Relaxed);
    metrics::counter!("rin_import_messages_total", "outcome" => "deleted").increment(n as u64);
    info!(
        messages = msgs.len(),
        deleted = n,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "batch done"
    );
}

/// Logs a message that stays on the queue; one failing again and again is called poison.
pub fn report_kept(cfg: &RinConfig, m: &Message, what: &str) {
    let n = m.receive_count;
    if n >= cfg.ext.max_receive_count_warn {
        error!(
            message_id = %m.id,
            receive_count = n,
            "poison message: failed {n} times; left to the queue's redrive policy"
        );
    } else {
        warn!(message_id = %m.id, receive_count = n, "message {what}; it will be delivered again");
    }
}

/// Parses and loads every object the messages name. Returns, per message, whether it must be
/// kept (not deleted): it could not be parsed, or a load of one of its objects failed.
pub async fn load_messages(ctx: &Ctx, conns: &mut Conns, msgs: &[Message]) -> Vec<bool> {
    let st = &ctx.stats;
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
    load_objects(ctx, conns, objects, &mut keep).await;
    keep
}

/// Routes and loads objects; `owner` indexes `failed`, which is set for each owner of an
/// object that could not be loaded (and so must be retried).
pub async fn load_objects(
    ctx: &Ctx,
    conns: &mut Conns,
    objects: Vec<(event::ObjectEvent, usize, &str)>,
    failed: &mut [bool],
) {
    let cfg = &ctx.cfg;
    let st = &ctx.stats;
    // (connection, table) -> group and, per item, the owners that carry it.
    let mut groups: Vec<(Redshift, Group, Vec<Vec<usize>>)> = Vec::new();
    for (o, mi, id) in objects {
        if !o.created {
            record(&st.not_created, "not_created", 1);
            info!(message_id = id, event = %o.event_name, key = %o.key, "not an object-created event: skipped");
            continue;
        }
        if is_own_object(cfg, &o.bucket, &o.key) {
            // A bucket notification without a prefix filter also reports our manifests and
            // quarantine records; a catch-all target must never load them as data.
            record(&st.no_target, "own_object", 1);
            debug!(message_id = id, key = %o.key, "rin-ship's own manifest or quarantine record: ignored");
            continue;
        }
        match cfg.route(&o.bucket, &o.key) {
            Err(e) => {
                record(&st.invalid_identifier, "invalid_identifier", 1);
                error!(
                    message_id = id,
                    "{e}; the message stays for the dead-letter queue"
                );
                failed[mi] = true;
            }
            Ok(MatchOutcome::NoTarget) => {
                record(&st.no_target, "no_target", 1);
                info!(message_id = id, bucket = %o.bucket, key = %o.key, "no target matches: ignored");
            }
            Ok(MatchOutcome::Discarded) => {
                record(&st.discarded, "discarded", 1);
                info!(message_id = id, key = %o.key, "discarded by target");
            }
            Ok(MatchOutcome::Load(dests)) => {
                let mut etag = o.etag.clone();
                if etag.is_empty() {
                    match ctx.objects.etag(&o.bucket, &o.key).await {
                        Ok(Some(e)) => etag = e,
                        Ok(None) => {
                            record(&st.gone, "gone", 1);
                            warn!(message_id = id, key = %o.key, "object no longer exists: skipped");
                            continue;
                        }
                        Err(e) => {
                            warn!(message_id = id, "{e:#}");
                            failed[mi] = true;
                            continue;
                        }
                    }
                }
                let item = Item {
                    bucket: o.bucket.clone(),
                    key: o.key.clone(),
                    etag,
                    version_id: o.version_id.clone(),
                    size: o.size,
                };
                for d in dests {
                    let mut conn = cfg.target(d.target).redshift.clone();
                    conn.schema.clear();
                    conn.table.clear();
                    let gi = match groups
                        .iter()
                        .position(|(c, g, _)| *c == conn && g.dest.qualified() == d.qualified())
                    {
                        Some(i) => i,
                        None => {
                            groups.push((
                                conn,
                                Group {
                                    dest: d.clone(),
                                    items: Vec::new(),
                                },
                                Vec::new(),
                            ));
                            groups.len() - 1
                        }
                    };
                    let (_, g, owners) = &mut groups[gi];
                    match g.items.iter().position(|x| *x == item) {
                        Some(ii) => {
                            // The same object twice in one batch: loaded once.
                            owners[ii].push(mi);
                            record(&st.duplicates, "duplicate", 1);
                        }
                        None => {
                            g.items.push(item.clone());
                            owners.push(vec![mi]);
                        }
                    }
                }
            }
        }
    }
    for (conn, group, owners) in groups {
        let mut pending = vec![(group, owners)];
        let mut split = false;
        let mut retries = 0;
        while let Some((g, owners)) = pending.pop() {
            match load_with_conn(ctx, conns, &conn, &g).await {
                Ok(results) => {
                    for r in results {
                        match r {
                            ItemResult::Loaded(rows) => {
                                record(&st.loaded_objects, "loaded", 1);
                                if let Some(n) = rows {
                                    st.loaded_rows.fetch_add(n, Ordering::Relaxed);
                                    metrics::counter!("rin_import_rows_total").increment(n);
                                }
                            }
                            ItemResult::Duplicate => record(&st.duplicates, "duplicate", 1),
                            ItemResult::Gone => record(&st.gone, "gone", 1),
                        }
                    }
                }
                Err(e) => {
                    let kind = ledger::classify(&e);
                    metrics::counter!("rin_import_load_errors_total", "kind" => kind.label())
                        .increment(1);
                    error!(table = %g.dest.qualified(), objects = g.items.len(), kind = kind.label(), "load failed: {e:#}");
                    let f = ledger::failure(&e);
                    for d in f.map(|f| f.details.as_slice()).unwrap_or_default() {
                        error!(
                            table = %g.dest.qualified(),
                            object = %d.url,
                            line = d.line,
                            column = d.column.as_deref().unwrap_or(""),
                            reason = %d.reason,
                            "load error"
                        );
                    }
                    if kind == ledger::ErrorKind::Transient {
                        if retries < LOAD_RETRIES {
                            retries += 1;
                            st.retried.fetch_add(1, Ordering::Relaxed);
                            let wait = Duration::from_millis(1000 << (retries - 1))
                                .mul_f64(1.0 + rand::random::<f64>() / 4.0);
                            warn!(table = %g.dest.qualified(), retry = retries, "transient load error: retrying in {wait:?}");
                            tokio::time::sleep(wait).await;
                            pending.push((g, owners));
                            continue;
                        }
                        // Splitting cannot help: the message is delivered again later.
                        record(&st.failed_loads, "failed", g.items.len() as u64);
                        for o in owners.iter().flatten() {
                            failed[*o] = true;
                        }
                        continue;
                    }
                    if kind == ledger::ErrorKind::Data
                        && ctx.cfg.ext.quarantine
                        && let Some(f) = f
                    {
                        // The objects at fault go to quarantine (their messages are deleted,
                        // unless another record of theirs fails); the others load together.
                        let bad: Vec<usize> = if f.items.is_empty() && g.items.len() == 1 {
                            vec![0]
                        } else {
                            f.items.clone()
                        };
                        if !bad.is_empty() {
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
                                match ledger::quarantine(&ctx.objects, cfg, &g.dest, it, f).await {
                                    Ok(url) => {
                                        record(&st.quarantined, "quarantined", 1);
                                        metrics::counter!("rin_import_quarantined_total")
                                            .increment(1);
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
                            if !rest.items.is_empty() {
                                pending.push((rest, rest_owners));
                            }
                            continue;
                        }
                    }
                    if g.items.len() > 1 && !split {
                        // One bad object must not hold its batch-mates back: load one by one
                        // (in their order: the keyed insert modes care).
                        split = true;
                        for (it, o) in g.items.into_iter().zip(owners).rev() {
                            pending.push((
                                Group {
                                    dest: g.dest.clone(),
                                    items: vec![it],
                                },
                                vec![o],
                            ));
                        }
                        continue;
                    }
                    record(&st.failed_loads, "failed", g.items.len() as u64);
                    for o in owners.iter().flatten() {
                        failed[*o] = true;
                    }
                }
            }
        }
    }
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

/// Loads one group on the warehouse connection `conn` describes (connecting, and creating the
/// ledger, on first use or after the connection dropped).
async fn load_with_conn(
    ctx: &Ctx,
    conns: &mut Conns,
    conn: &Redshift,
    g: &Group,
) -> Result<Vec<ItemResult>> {
    if conn.driver == "sqlite" {
        return sqlite::load(&ctx.cfg, &ctx.objects, &mut conns.sqlite, conn, g).await;
    }
    #[cfg(feature = "redshift")]
    if dataapi::is_data_api(conn) {
        // One client per process; the driver creates the ledger on first use.
        let api = ctx
            .data_api
            .as_ref()
            .expect("set by context() for data-api targets");
        return dataapi::load_group(api, &ctx.cfg, &ctx.objects, g).await;
    }
    let wire = &mut conns.wire;
    if wire.get(conn).is_some_and(|c| c.is_closed()) {
        wire.remove(conn);
    }
    if !wire.contains_key(conn) {
        let client = postgres::connect(conn, ctx.cfg.ext.sslmode).await?;
        ledger::ensure_ledger(&client, &ctx.cfg)
            .await
            .context("ledger")?;
        wire.insert(conn.clone(), client);
    }
    let client = wire.get_mut(conn).expect("inserted above");
    let r = ledger::load_group(client, &ctx.cfg, &ctx.objects, g).await;
    if r.is_err() && client.is_closed() {
        wire.remove(conn);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_manifests_and_quarantine_records_are_recognised() {
        let mut cfg = RinConfig::parse(
            "queue_name: q\ns3: {bucket: logs}\ntargets:\n  - redshift: {schema: s, table: t}\n    s3: {key_regexp: '.*'}\n",
            &|_| None,
        )
        .unwrap();
        assert!(is_own_object(&cfg, "logs", "rin-ship/manifests/x.manifest"));
        assert!(is_own_object(&cfg, "logs", "rin-ship/quarantine/y.json"));
        assert!(!is_own_object(&cfg, "logs", "app/rin-ship/manifests/x"));
        cfg.ext.manifest_prefix = "s3://meta/m".into();
        cfg.ext.quarantine_prefix = "s3://logs".into(); // a whole bucket: never "own"
        assert!(is_own_object(&cfg, "meta", "m/x.manifest"));
        assert!(!is_own_object(
            &cfg,
            "logs",
            "rin-ship/manifests/x.manifest"
        ));
        assert!(!is_own_object(&cfg, "logs", "app/a.json.gz"));
    }
}
