//! The ledger of loaded objects and the transaction that makes a load exactly-once:
//!
//! ```text
//! BEGIN; LOCK ledger; SELECT (already loaded?) per object;
//!   load the new objects (Redshift: one COPY over a manifest; PostgreSQL: stream each object);
//!   INSERT INTO ledger (one row per object); COMMIT;
//! ```
//!
//! The lock serializes every importer on that warehouse, so two of them can never both find an
//! object missing and load it. A ledger row is keyed by (bucket, object_key, etag, version_id,
//! target): the same bytes under the same key load once per target table; new content under
//! the same key (another ETag) loads again.

use super::objects::{Fetched, Source};
use super::postgres::{self, STAGE_DDL};
use super::redshift;
use super::rin::{Destination, RinConfig, Warehouse, quote_ident, split_qualified};
use anyhow::{Context, Result, anyhow};
use tokio_postgres::Client;
use tracing::{info, warn};

/// One object to load into one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub bucket: String,
    pub key: String,
    pub etag: String,
    pub version_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemResult {
    /// Loaded in this transaction (rows, when known per object).
    Loaded(Option<u64>),
    /// Already in the ledger.
    Duplicate,
    /// The object no longer exists with that ETag (overwritten or deleted): its successor's
    /// own event loads the new content.
    Gone,
}

/// A batch for one destination table on one warehouse connection.
#[derive(Debug, Clone)]
pub struct Group {
    pub dest: Destination,
    pub items: Vec<Item>,
}

pub fn ledger_ident(cfg: &RinConfig) -> String {
    let (s, t) = split_qualified(&cfg.ext.ledger_table).expect("validated at load");
    format!("{}.{}", quote_ident(&s), quote_ident(&t))
}

/// Creates the ledger if missing (racing importers: a failed CREATE is retried once).
pub async fn ensure_ledger(client: &Client, cfg: &RinConfig) -> Result<()> {
    let (schema, _) = split_qualified(&cfg.ext.ledger_table)?;
    let ledger = ledger_ident(cfg);
    let ts = "timestamptz";
    let mut ddl = String::new();
    if schema != "public" {
        ddl.push_str(&format!(
            "CREATE SCHEMA IF NOT EXISTS {};\n",
            quote_ident(&schema)
        ));
    }
    ddl.push_str(&format!(
        "CREATE TABLE IF NOT EXISTS {ledger} (\n  \
           bucket varchar(1024) NOT NULL,\n  \
           object_key varchar(4096) NOT NULL,\n  \
           etag varchar(256) NOT NULL,\n  \
           version_id varchar(1024) NOT NULL,\n  \
           target varchar(1024) NOT NULL,\n  \
           row_count bigint,\n  \
           batch_id varchar(64) NOT NULL,\n  \
           batch_rows bigint,\n  \
           loaded_at {ts} NOT NULL\n)"
    ));
    if cfg.ext.warehouse == Warehouse::Postgres {
        // Redshift enforces no unique index; PostgreSQL gets one as a second line of defence.
        let (_, t) = split_qualified(&cfg.ext.ledger_table)?;
        ddl.push_str(&format!(
            ";\nCREATE UNIQUE INDEX IF NOT EXISTS {} ON {ledger} (bucket, object_key, etag, version_id, target)",
            quote_ident(&format!("{t}_object"))
        ));
    }
    for attempt in 0..3 {
        match client.batch_execute(&ddl).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < 2 => {
                warn!("creating the ledger {ledger}: {e}; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => return Err(anyhow!("cannot create the ledger {ledger}: {e}")),
        }
    }
    Ok(())
}

/// Loads one group in one transaction. Any error rolls the whole group back.
pub async fn load_group(
    client: &mut Client,
    cfg: &RinConfig,
    objects: &Source,
    group: &Group,
) -> Result<Vec<ItemResult>> {
    let ledger = ledger_ident(cfg);
    let qualified = group.dest.qualified();
    let target = cfg.target(group.dest.target);
    let batch_id = format!("{:016x}", rand::random::<u64>());
    let tx = client.transaction().await?;
    let lock = match cfg.ext.warehouse {
        Warehouse::Postgres => format!("LOCK TABLE {ledger} IN SHARE ROW EXCLUSIVE MODE"),
        Warehouse::Redshift => format!("LOCK {ledger}"),
    };
    tx.batch_execute(&lock)
        .await
        .with_context(|| format!("LOCK {ledger}"))?;
    let check = format!(
        "SELECT 1 FROM {ledger} WHERE bucket = $1 AND object_key = $2 AND etag = $3 \
         AND version_id = $4 AND target = $5"
    );
    let mut results: Vec<Option<ItemResult>> = vec![None; group.items.len()];
    let mut new = Vec::new();
    for (i, it) in group.items.iter().enumerate() {
        let hit = tx
            .query_opt(
                &check,
                &[&it.bucket, &it.key, &it.etag, &it.version_id, &qualified],
            )
            .await
            .context("ledger lookup")?;
        if hit.is_some() {
            results[i] = Some(ItemResult::Duplicate);
        } else if !new.iter().any(|&j: &usize| group.items[j] == *it) {
            new.push(i);
        } else {
            results[i] = Some(ItemResult::Duplicate);
        }
    }
    let insert = format!(
        "INSERT INTO {ledger} (bucket, object_key, etag, version_id, target, row_count, batch_id, \
         batch_rows, loaded_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, {})",
        match cfg.ext.warehouse {
            Warehouse::Postgres => "now()",
            Warehouse::Redshift => "SYSDATE",
        }
    );
    let mut loaded_rows: u64 = 0;
    match cfg.ext.warehouse {
        Warehouse::Postgres if !new.is_empty() => {
            tx.batch_execute(STAGE_DDL).await?;
            let cols = postgres::table_columns(&tx, &qualified).await?;
            let ins = postgres::insert_sql(&qualified, &cols, &cfg.ext.catch_all_column)?;
            for &i in &new {
                let it = &group.items[i];
                let what = format!("s3://{}/{}", it.bucket, it.key);
                let body = match objects.open(it).await? {
                    Fetched::Body(b) => b,
                    Fetched::Gone => {
                        warn!(object = %what, "object gone or replaced; not loading it");
                        results[i] = Some(ItemResult::Gone);
                        continue;
                    }
                };
                let staged = postgres::stage_object(&tx, body, &what).await?;
                let rows = tx
                    .execute(&ins, &[])
                    .await
                    .with_context(|| format!("loading {what} into {qualified}"))?;
                let rows_i = rows as i64;
                tx.execute(
                    &insert,
                    &[
                        &it.bucket,
                        &it.key,
                        &it.etag,
                        &it.version_id,
                        &qualified,
                        &Some(rows_i),
                        &batch_id,
                        &None::<i64>,
                    ],
                )
                .await
                .context("ledger insert")?;
                info!(object = %what, table = %qualified, rows, staged, "loaded");
                loaded_rows += rows;
                results[i] = Some(ItemResult::Loaded(Some(rows)));
            }
        }
        Warehouse::Redshift if !new.is_empty() => {
            let listed: Vec<(&str, &str)> = new
                .iter()
                .map(|&i| (group.items[i].bucket.as_str(), group.items[i].key.as_str()))
                .collect();
            let (mbucket, mprefix) = manifest_location(cfg, &target.s3.bucket);
            let mkey = redshift::manifest_key(&mprefix, &qualified, &listed);
            let body = redshift::manifest_json(&listed);
            objects
                .put(&mbucket, &mkey, body)
                .await
                .context("writing the manifest")?;
            let url = format!("s3://{mbucket}/{mkey}");
            let args = (
                &qualified,
                url.as_str(),
                &cfg.credentials,
                cfg.ext.authorization,
                target.s3.region.as_str(),
                target.sql_option.as_str(),
            );
            let sql = redshift::copy_sql(args.0, args.1, args.2, args.3, args.4, args.5, false);
            let shown = redshift::copy_sql(args.0, args.1, args.2, args.3, args.4, args.5, true);
            info!(sql = %shown, objects = listed.len(), "COPY");
            tx.batch_execute(&sql)
                .await
                .map_err(|e| anyhow!("{shown}: {e}"))?;
            let count = first_value(&tx, "SELECT pg_last_copy_count()").await?;
            for &i in &new {
                let it = &group.items[i];
                let single = (new.len() == 1).then_some(count);
                tx.execute(
                    &insert,
                    &[
                        &it.bucket,
                        &it.key,
                        &it.etag,
                        &it.version_id,
                        &qualified,
                        &single,
                        &batch_id,
                        &Some(count),
                    ],
                )
                .await
                .context("ledger insert")?;
                results[i] = Some(ItemResult::Loaded(single.map(|c| c as u64)));
            }
            loaded_rows = count as u64;
        }
        _ => {}
    }
    tx.commit().await.context("COMMIT")?;
    if !new.is_empty() {
        info!(table = %qualified, objects = new.len(), rows = loaded_rows, batch_id, "committed");
    }
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or(ItemResult::Duplicate))
        .collect())
}

async fn first_value(tx: &tokio_postgres::Transaction<'_>, sql: &str) -> Result<i64> {
    for m in tx.simple_query(sql).await? {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            return r
                .get(0)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| anyhow!("{sql}: no number"));
        }
    }
    Err(anyhow!("{sql}: no row"))
}

/// (bucket, key prefix) where manifests go.
pub fn manifest_location(cfg: &RinConfig, target_bucket: &str) -> (String, String) {
    let p = &cfg.ext.manifest_prefix;
    if let Some(rest) = p.strip_prefix("s3://") {
        let (b, k) = rest.split_once('/').unwrap_or((rest, ""));
        let mut k = k.to_string();
        if !k.is_empty() && !k.ends_with('/') {
            k.push('/');
        }
        (b.to_string(), k)
    } else {
        (target_bucket.to_string(), "rin-ship/manifests/".to_string())
    }
}
