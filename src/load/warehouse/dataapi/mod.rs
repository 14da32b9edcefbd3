//! The Redshift Data API driver (`redshift.driver: redshift-data`): provisioned clusters
//! (`cluster` + database `user`, or a Secrets Manager `secret_arn`) and Serverless
//! (`workgroup`), with no connection to hold.
//!
//! The Data API has no interactive transaction, so exactly-once is built from one
//! `BatchExecuteStatement` (its statements run in one transaction, committed or rolled back
//! together):
//!
//! ```text
//! ExecuteStatement  SELECT ... FROM ledger WHERE <these objects>     -- pre-filter, no lock
//! BatchExecuteStatement [
//!   LOCK ledger;
//!   SELECT 1 / (CASE WHEN COUNT(*) = 0 THEN 1 ELSE 0 END) FROM ledger WHERE <these objects>;
//!   COPY table FROM 's3://.../x.manifest' ... MANIFEST;             -- load_statements()
//!   INSERT INTO ledger VALUES (<one row per object>), ...;
//! ]
//! ```
//!
//! The guard divides by zero, failing and rolling back the whole batch, when another importer
//! loaded one of the objects between the pre-filter and the lock; the group is then filtered
//! again and retried (a bounded number of times). Statements are polled with
//! `DescribeStatement` at 50 ms doubling to 2 s, within an overall timeout; a failure names
//! the sub-statement that failed and carries the Data API's error.
//!
//! Must never: put a secret in a log or an error (the COPY is shown masked); load an object the
//! ledger holds for that table.

mod client;
mod sdk;
#[cfg(test)]
mod tests;

use client::State;
pub use client::{DataApi, DataApiTransport, ManifestWriter};

use super::redshift::{Manifest, sql};
use super::{Driver, Env, Warehouse};
use crate::load::ledger::Dialect;
use crate::load::ledger::{ErrorKind, Group, Item, ItemResult, Ledger, LoadFailure, Pending};
use crate::load::rin::{Destination, Redshift, RinConfig, Target};
use anyhow::{Result, bail};
use async_trait::async_trait;
use std::sync::Arc;
use tracing::{info, warn};

/// Where statements run, exactly as the Data API requests name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Conn {
    /// Picks the client; not a request field.
    pub region: String,
    pub cluster: Option<String>,
    pub workgroup: Option<String>,
    pub database: String,
    pub db_user: Option<String>,
    pub secret_arn: Option<String>,
}

impl Conn {
    /// From a validated `redshift:` section with `driver: redshift-data`.
    pub fn new(cfg: &RinConfig, r: &Redshift) -> Result<Conn> {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        if r.cluster.is_empty() == r.workgroup.is_empty() {
            bail!("redshift-data: exactly one of redshift.cluster or redshift.workgroup");
        }
        let secret_arn = some(&r.secret_arn);
        Ok(Conn {
            region: crate::load::warehouse::redshift::iam::region_for(cfg, r),
            cluster: some(&r.cluster),
            workgroup: some(&r.workgroup),
            database: r.dbname.clone(),
            // Serverless maps the caller's IAM identity; a secret names its own user.
            db_user: if r.cluster.is_empty() || secret_arn.is_some() {
                None
            } else {
                some(&r.user)
            },
            secret_arn,
        })
    }
}

/// The Data API driver: one SDK client for the process (made on first use), shared by every
/// worker's sessions.
#[derive(Default)]
pub struct DataApiDriver {
    api: tokio::sync::OnceCell<Arc<DataApi>>,
}

#[async_trait]
impl Driver for DataApiDriver {
    async fn connect(
        &self,
        env: &Env<'_>,
        _conn: &Redshift,
    ) -> Result<Box<dyn Warehouse>, LoadFailure> {
        let api = self
            .api
            .get_or_init(|| async { Arc::new(DataApi::from_config(env.cfg).await) })
            .await
            .clone();
        // The ledger is created on the first load of each connection (`DataApi::ensured`).
        Ok(Box::new(Session { api }))
    }

    fn dry_run(
        &self,
        cfg: &RinConfig,
        dest: &Destination,
        objects: &[(&str, &str)],
    ) -> Vec<String> {
        let t = cfg.target(dest.target);
        let q = dest.qualified();
        let ledger = Ledger::new(cfg, Dialect::Redshift);
        // What only the load knows, named: the event's ETag and version.
        let items: Vec<Item> = objects
            .iter()
            .map(|(bucket, key)| Item {
                bucket: bucket.to_string(),
                key: key.to_string(),
                etag: "<the object's ETag>".into(),
                version_id: String::new(),
                size: 0,
            })
            .collect();
        let all: Vec<usize> = (0..items.len()).collect();
        let group = Group {
            dest: dest.clone(),
            items,
        };
        let m = Manifest::of_items(cfg, t, &q, &group.items, &all);
        let mut out: Vec<String> = ledger
            .ddl()
            .into_iter()
            .map(|s| format!("-- once per connection, before the first load: {s}"))
            .collect();
        out.push(format!(
            "-- ExecuteStatement (objects already loaded are dropped): SELECT bucket, \
             object_key, etag, version_id FROM {} WHERE {}",
            ledger.ident(),
            Ledger::objects_condition(&q, &group.items, &all)
        ));
        out.push(format!("-- writes the manifest {}: {}", m.url, m.body));
        out.push("-- BatchExecuteStatement, one transaction:".to_string());
        let st = batch_statements(&ledger, cfg, t, &group, &all, &m, "<batch id>");
        // The shown forms: the COPY masked.
        for (k, sql) in st.sqls.iter().enumerate() {
            out.push(if st.loads.contains(&k) {
                st.kinds[k].clone()
            } else {
                sql.clone()
            });
        }
        out
    }
}

/// Loads through the shared client; nothing to keep open.
struct Session {
    api: Arc<DataApi>,
}

#[async_trait]
impl Warehouse for Session {
    async fn load(&mut self, env: &Env<'_>, group: &Group) -> Result<Vec<ItemResult>, LoadFailure> {
        load_group(&self.api, env.cfg, env.objects, group).await
    }
}

/// What one batch did.
enum Batch {
    /// Committed; the COPY's row count where the API gave one.
    Committed(Option<u64>),
    /// The guard found an object loaded meanwhile: rolled back, filter again.
    GuardTripped,
}

/// Position of the guard in a batch (after `LOCK`).
const GUARD: usize = 1;

/// Loads one group (one table on one Data API connection) exactly once; results in the order
/// of `group.items`.
pub async fn load_group<T: DataApiTransport, W: ManifestWriter>(
    api: &DataApi<T>,
    cfg: &RinConfig,
    manifests: &W,
    group: &Group,
) -> Result<Vec<ItemResult>, LoadFailure> {
    let target = cfg.target(group.dest.target);
    let conn = Conn::new(cfg, &target.redshift)?;
    let ledger = Ledger::new(cfg, Dialect::Redshift);
    api.ensure_ledger(&conn, &ledger)
        .await
        .map_err(|e| LoadFailure::new(ErrorKind::Other, format!("ledger: {e:#}")))?;
    let qualified = group.dest.qualified();
    let items = &group.items;
    let mut pending = Pending::new(items);
    let mut attempt = 0;
    while !pending.new.is_empty() {
        let loaded = api
            .already_loaded(&conn, &ledger, &qualified, items, &pending.new)
            .await?;
        for i in loaded {
            pending.settle(i, ItemResult::Duplicate);
        }
        if pending.new.is_empty() {
            break;
        }
        attempt += 1;
        if attempt > api.poll.guard_attempts {
            return Err(LoadFailure::new(
                ErrorKind::Other,
                format!(
                    "{qualified}: the ledger guard found objects loaded meanwhile {} times in a \
                     row; leaving {} object(s) for the redelivery",
                    api.poll.guard_attempts,
                    pending.new.len()
                ),
            ));
        }
        let new = pending.new.clone();
        let batch = load_batch(api, &conn, &ledger, cfg, target, manifests, group, &new).await;
        match batch.map_err(|f| f.attribute_single(&new))? {
            Batch::Committed(rows) => {
                // The batch's rows on its first object (see ItemResult::Loaded).
                for (n, &i) in new.iter().enumerate() {
                    pending.settle(i, ItemResult::Loaded(if n == 0 { rows } else { None }));
                }
                break;
            }
            Batch::GuardTripped => {
                warn!(table = %qualified, attempt, "an object was loaded by another importer meanwhile; filtering again");
            }
        }
    }
    Ok(pending.finish())
}

/// The statements of one batch, with what each is (for an error naming the one that failed).
struct Statements {
    sqls: Vec<String>,
    kinds: Vec<String>,
    /// The index of the statement whose row count is the rows written.
    rows_at: usize,
    /// The statements that load rows (a data error there is the objects').
    loads: std::ops::Range<usize>,
}

/// `LOCK`; the guard; the insert mode's statements; the ledger rows.
fn batch_statements(
    ledger: &Ledger,
    cfg: &RinConfig,
    target: &Target,
    group: &Group,
    pending: &[usize],
    manifest: &Manifest,
    batch_id: &str,
) -> Statements {
    let qualified = group.dest.qualified();
    let ident = ledger.ident();
    let cond = Ledger::objects_condition(&qualified, &group.items, pending);
    let option = manifest.sql_option(target);
    let plan = sql::LoadPlan {
        sql_option: &option,
        ..sql::LoadPlan::new(cfg, target, &qualified, &manifest.url)
    };
    let mut sqls = vec![
        ledger
            .lock(&qualified)
            .expect("a Redshift ledger has a lock"),
        format!("SELECT 1 / (CASE WHEN COUNT(*) = 0 THEN 1 ELSE 0 END) FROM {ident} WHERE {cond}"),
    ];
    let mut kinds = vec!["LOCK".to_string(), "ledger guard".to_string()];
    let first_load = sqls.len();
    sqls.extend(sql::load_statements(&plan, false));
    kinds.extend(sql::load_statements(&plan, true));
    let loads = first_load..sqls.len();
    sqls.push(ledger.insert_literal(&qualified, &group.items, pending, batch_id));
    kinds.push("ledger INSERT".to_string());
    Statements {
        sqls,
        kinds,
        rows_at: first_load + plan.rows_statement(),
        loads,
    }
}

/// Writes the manifest of `pending`, runs the batch and reads its outcome.
#[allow(clippy::too_many_arguments)]
async fn load_batch<T: DataApiTransport, W: ManifestWriter>(
    api: &DataApi<T>,
    conn: &Conn,
    ledger: &Ledger,
    cfg: &RinConfig,
    target: &Target,
    manifests: &W,
    group: &Group,
    pending: &[usize],
) -> Result<Batch, LoadFailure> {
    let qualified = group.dest.qualified();
    let m = Manifest::of_items(cfg, target, &qualified, &group.items, pending);
    manifests
        .put_manifest(&m.bucket, &m.key, m.body.clone())
        .await
        .map_err(|e| {
            LoadFailure::new(ErrorKind::Transient, format!("writing the manifest: {e:#}"))
        })?;
    let batch_id = (api.batch_id)();
    let st = batch_statements(ledger, cfg, target, group, pending, &m, &batch_id);
    for s in &st.kinds[st.loads.clone()] {
        info!(sql = %s, objects = pending.len(), "COPY (Data API)");
    }
    let id = api
        .transport
        .batch_execute(conn, &st.sqls)
        .await
        .map_err(|e| LoadFailure::from(e.context("BatchExecuteStatement")))?;
    let status = api.wait(conn, &id).await?;
    match status.state {
        State::Finished => {
            // The statement that writes the table's rows; its count where the API has one.
            let rows = status
                .sub
                .get(st.rows_at)
                .and_then(|s| s.result_rows)
                .and_then(|n| u64::try_from(n).ok());
            info!(table = %qualified, objects = pending.len(), rows = ?rows, batch_id, statement = %id, "committed (Data API)");
            Ok(Batch::Committed(rows))
        }
        State::Failed => {
            let error = status
                .error
                .clone()
                .or_else(|| status.sub.iter().find_map(|s| s.error.clone()))
                .unwrap_or_else(|| "no error given".to_string());
            let failed = status.sub.iter().position(|s| s.state == State::Failed);
            let division = error.to_ascii_lowercase().contains("by zero");
            if division && failed.is_none_or(|k| k == GUARD) {
                return Ok(Batch::GuardTripped);
            }
            let at = match failed {
                Some(k) => format!(
                    " at statement {} of {} ({})",
                    k + 1,
                    st.sqls.len(),
                    st.kinds.get(k).map(String::as_str).unwrap_or("?")
                ),
                None => String::new(),
            };
            // The Data API sends no SQLSTATE: the message decides, by the same rules as the
            // wire protocol's. Only the load statements can be at fault for the data.
            let data_possible = failed.is_none_or(|k| st.loads.contains(&k));
            Err(LoadFailure::server(None, error, data_possible, "")
                .retold(&format!("Data API batch {id} into {qualified} failed{at}")))
        }
        s => Err(LoadFailure::new(
            ErrorKind::Other,
            format!(
                "Data API batch {id} into {qualified} {s:?}: {}",
                status.error.as_deref().unwrap_or("no error given")
            ),
        )),
    }
}
