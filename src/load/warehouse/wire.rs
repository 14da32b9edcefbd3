//! The PostgreSQL wire protocol, which PostgreSQL and Redshift both speak: connecting (TLS per
//! `rin_ship.sslmode`, IAM temporary logins for Redshift), what the server's errors mean
//! ([`pg_failure`]), and the ledger transaction both drivers run ([`LedgerTx`]: BEGIN, LOCK,
//! the ledger lookups, the driver's load, the ledger rows, COMMIT).
//!
//! Must never: print a password (connections are shown by [`Redshift::visible_dsn`]); commit a
//! load whose ledger rows were not all written.

use super::Env;
use crate::load::ledger::{Dialect, Group, Item, ItemResult, Ledger, LoadFailure, Pending};
use crate::load::rin::{Redshift, SslMode};
use futures::StreamExt;
use tokio_postgres::{Client, NoTls, Transaction};
use tracing::{debug, info, warn};

/// One wire-protocol connection with its ledger: what the PostgreSQL and Redshift sessions
/// are made of.
pub struct Session {
    pub client: Client,
    ledger: Ledger,
}

impl Session {
    /// Connects, and creates the ledger if missing.
    pub async fn open(
        env: &Env<'_>,
        conn: &Redshift,
        dialect: Dialect,
    ) -> Result<Session, LoadFailure> {
        let client = connect(conn, env.cfg.ext.sslmode).await?;
        let ledger = Ledger::new(env.cfg, dialect);
        ensure_ledger(&client, &ledger).await?;
        Ok(Session { client, ledger })
    }

    /// One load in the ledger transaction: `load_new` writes the rows of the objects not in
    /// the ledger yet (and records their ledger rows), returning the rows written; a data
    /// error of a load with one new object is that object's.
    pub async fn load_in_transaction<F>(
        &mut self,
        env: &Env<'_>,
        group: &Group,
        load_new: F,
    ) -> Result<Vec<ItemResult>, LoadFailure>
    where
        F: AsyncFnOnce(&mut LedgerTx<'_>, &[usize]) -> Result<u64, LoadFailure>,
    {
        let mut ltx = LedgerTx::begin(&mut self.client, &self.ledger, group).await?;
        let new = ltx.pending.new.clone();
        if new.is_empty() {
            return ltx.commit().await;
        }
        let rows = load_new(&mut ltx, &new)
            .await
            .map_err(|f| f.attribute_single(&new))?;
        let batch_id = ltx.batch_id.clone();
        let results = ltx.commit().await?;
        let mode = env.cfg.target(group.dest.target).insert_mode.name();
        info!(table = %group.dest.qualified(), objects = new.len(), rows, batch_id, mode, "committed");
        Ok(results)
    }

    pub fn is_open(&self) -> bool {
        !self.client.is_closed()
    }
}

/// Connects as Rin does (host, port, dbname, user, password), TLS per `sslmode`.
pub async fn connect(r: &Redshift, sslmode: SslMode) -> Result<Client, LoadFailure> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&r.host)
        .port(if r.port == 0 { 5439 } else { r.port })
        .dbname(&r.dbname)
        .user(&r.user)
        .application_name("rin-ship")
        .connect_timeout(std::time::Duration::from_secs(30));
    if !r.password.is_empty() {
        cfg.password(&r.password);
    }
    #[cfg(not(feature = "redshift"))]
    if r.iam_auth {
        // Never a login with no password instead (what the config asked for cannot be done).
        return Err(LoadFailure::new(
            crate::load::ledger::ErrorKind::Other,
            format!(
                "cannot connect to {}: the login needs temporary credentials (redshift.password \
                 is empty, so Rin would call GetClusterCredentials; or iam_auth), and this \
                 rin-ship was built without them: build it with `--features redshift`, or set \
                 redshift.password",
                r.visible_dsn()
            ),
        ));
    }
    #[cfg(feature = "redshift")]
    if r.iam_auth {
        // Temporary credentials, fetched anew when the cached ones are near their expiry.
        let c = super::redshift::iam::credentials(r).await?;
        cfg.user(&c.user).password(c.password.expose());
    }
    let what = r.visible_dsn();
    let connected = match sslmode {
        SslMode::Disable => open(cfg, NoTls, &what).await,
        mode => {
            cfg.ssl_mode(if mode == SslMode::Require {
                tokio_postgres::config::SslMode::Require
            } else {
                tokio_postgres::config::SslMode::Prefer
            });
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(
                crate::common::tls::client_config().map_err(LoadFailure::from)?,
            );
            open(cfg, tls, &what).await
        }
    };
    #[cfg(feature = "redshift")]
    if r.iam_auth && connected.is_err() {
        // Perhaps refused: the next attempt logs in with freshly fetched credentials.
        super::redshift::iam::invalidate(r).await;
    }
    connected
}

/// Connects and drives the connection in the background.
async fn open<T>(cfg: tokio_postgres::Config, tls: T, what: &str) -> Result<Client, LoadFailure>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket> + Send + 'static,
    T::Stream: Send + 'static,
{
    let (client, conn) = cfg
        .connect(tls)
        .await
        .map_err(|e| pg_failure(&e, false, &format!("cannot connect to {what}")))?;
    tokio::spawn(async move {
        // Driven message by message rather than awaited: awaited, tokio-postgres logs each
        // server notice at INFO, and `CREATE ... IF NOT EXISTS` sends one on every load
        // ("relation rin_ship_stage already exists, skipping"). They say nothing an operator
        // acts on: debug.
        let mut conn = conn;
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(tokio_postgres::AsyncMessage::Notice(n)) => {
                    debug!(severity = n.severity(), "warehouse notice: {}", n.message())
                }
                // LISTEN notifications: rin-ship listens to nothing.
                Ok(_) => {}
                Err(e) => {
                    // tokio-postgres says only "db error" for what the server said.
                    let why = match e.as_db_error() {
                        Some(db) => format!("{} (SQLSTATE {})", db_reason(db), db.code().code()),
                        None => e.to_string(),
                    };
                    warn!("warehouse connection closed: {why}; the next load opens a new one");
                    return;
                }
            }
        }
    });
    Ok(client)
}

/// The server's message, with its detail when it has one.
pub fn db_reason(db: &tokio_postgres::error::DbError) -> String {
    match db.detail() {
        Some(d) if !d.is_empty() => format!("{}: {d}", db.message()),
        _ => db.message().to_string(),
    }
}

/// A failure of `what` (a step, or a statement as shown) with `e`, classified by the ledger's
/// rules; with `data_possible` false (the ledger's own statements), a data-class SQLSTATE is not
/// a data error.
pub fn pg_failure(e: &tokio_postgres::Error, data_possible: bool, what: &str) -> LoadFailure {
    match e.as_db_error() {
        Some(db) => LoadFailure::server(Some(db.code().code()), db_reason(db), data_possible, what),
        None => {
            let text = e.to_string();
            let kind = crate::load::ledger::failure::classify_client(&text);
            let message = if what.is_empty() {
                text
            } else {
                format!("{what}: {text}")
            };
            LoadFailure::new(kind, message)
        }
    }
}

/// A statement that loads no rows failed (the ledger's, the catalog's): never a data error.
impl From<tokio_postgres::Error> for LoadFailure {
    fn from(e: tokio_postgres::Error) -> LoadFailure {
        pg_failure(&e, false, "")
    }
}

/// Creates the ledger if missing (racing importers: a failed CREATE is retried).
pub async fn ensure_ledger(client: &Client, ledger: &Ledger) -> Result<(), LoadFailure> {
    if let Some(exists) = ledger.exists() {
        let row = client
            .query_one(&exists, &[])
            .await
            .map_err(|e| pg_failure(&e, false, "looking for the ledger"))?;
        if row.get::<_, bool>(0) {
            return Ok(());
        }
    }
    let ddl = ledger.ddl().join(";\n");
    for attempt in 0..3 {
        match client.batch_execute(&ddl).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < 2 => {
                warn!("creating the ledger {}: {e}; retrying", ledger.ident());
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => {
                return Err(LoadFailure::new(
                    crate::load::ledger::ErrorKind::Other,
                    format!("ledger: cannot create the ledger {}: {e}", ledger.ident()),
                ));
            }
        }
    }
    Ok(())
}

/// One load's transaction, after the ledger lock and lookups: `pending.new` are the objects
/// to load; the driver writes their rows and, for each, [`LedgerTx::record`]s its ledger row,
/// then [`LedgerTx::commit`]s.
pub struct LedgerTx<'c> {
    pub tx: Transaction<'c>,
    pub pending: Pending,
    insert: String,
    /// The ledger's `target`: the destination table, quoted.
    pub target: String,
    pub batch_id: String,
}

impl<'c> LedgerTx<'c> {
    /// BEGIN; LOCK the ledger; look every object of the group up.
    pub async fn begin(
        client: &'c mut Client,
        ledger: &Ledger,
        group: &Group,
    ) -> Result<LedgerTx<'c>, LoadFailure> {
        let target = group.dest.qualified();
        let tx = client.transaction().await?;
        if let Some(lock) = ledger.lock(&target) {
            tx.batch_execute(&lock)
                .await
                .map_err(|e| pg_failure(&e, false, &format!("locking {target}'s ledger rows")))?;
        }
        let mut pending = Pending::new(&group.items);
        let lookup = ledger.lookup();
        for i in pending.new.clone() {
            let it = &group.items[i];
            let hit = tx
                .query_opt(
                    &lookup,
                    &[&it.bucket, &it.key, &it.etag, &it.version_id, &target],
                )
                .await
                .map_err(|e| pg_failure(&e, false, "ledger lookup"))?;
            if hit.is_some() {
                pending.settle(i, ItemResult::Duplicate);
            }
        }
        Ok(LedgerTx {
            tx,
            pending,
            insert: ledger.insert(),
            target,
            batch_id: crate::load::ledger::batch_id(),
        })
    }

    /// The ledger row of `it`: `rows` written from it, `batch_rows` by the whole load.
    pub async fn record(
        &self,
        it: &Item,
        rows: Option<i64>,
        batch_rows: Option<i64>,
    ) -> Result<(), LoadFailure> {
        self.tx
            .execute(
                &self.insert,
                &[
                    &it.bucket,
                    &it.key,
                    &it.etag,
                    &it.version_id,
                    &self.target,
                    &rows,
                    &self.batch_id,
                    &batch_rows,
                ],
            )
            .await
            .map_err(|e| pg_failure(&e, false, "ledger insert"))?;
        Ok(())
    }

    /// COMMIT; the results in group order.
    pub async fn commit(self) -> Result<Vec<ItemResult>, LoadFailure> {
        if let Some(pause) = pause_before_commit() {
            // Test hook: a load in flight, its lock held, its rows not committed; a test
            // checks what other loads do meanwhile, then kills the process, or (with a pause
            // in seconds) drops the connection or restarts the server before the COMMIT.
            warn!(target = %self.target, "failpoint pause_before_commit: holding the load open for {pause:?}");
            tokio::time::sleep(pause).await;
        }
        self.tx
            .commit()
            .await
            .map_err(|e| pg_failure(&e, false, "COMMIT"))?;
        Ok(self.pending.finish())
    }
}

/// The test hook `RIN_SHIP_FAILPOINT=pause_before_commit` (an hour) or
/// `pause_before_commit=SECONDS`.
fn pause_before_commit() -> Option<std::time::Duration> {
    let v = std::env::var("RIN_SHIP_FAILPOINT").ok()?;
    let rest = v.strip_prefix("pause_before_commit")?;
    match rest.strip_prefix('=') {
        Some(secs) => secs.parse().ok().map(std::time::Duration::from_secs),
        None if rest.is_empty() => Some(std::time::Duration::from_secs(3600)),
        None => None,
    }
}

/// The first column of the first row of `sql`, as a number.
pub async fn first_value(tx: &Transaction<'_>, sql: &str) -> Result<i64, LoadFailure> {
    for m in tx.simple_query(sql).await? {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            return r.get(0).and_then(|v| v.parse().ok()).ok_or_else(|| {
                LoadFailure::new(
                    crate::load::ledger::ErrorKind::Other,
                    format!("{sql}: no number"),
                )
            });
        }
    }
    Err(LoadFailure::new(
        crate::load::ledger::ErrorKind::Other,
        format!("{sql}: no row"),
    ))
}
