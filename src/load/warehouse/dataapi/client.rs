//! The Data API client as the driver uses it: the calls it makes ([`DataApiTransport`]: the
//! AWS SDK, or a recording fake in tests), statements polled to their end with backoff
//! ([`Poll`]: 50 ms doubling to 2 s, within an overall timeout), the ledger created once per
//! connection, and the ledger pre-filter.
//!
//! Must never: put a secret in a log or an error.

use super::Conn;
use super::sdk::SdkTransport;
use crate::common::retry::Backoff;
use crate::load::ledger::{Item, Ledger};
use crate::load::rin::RinConfig;
use anyhow::{Context, Result, anyhow, bail};
use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;
use tracing::warn;

/// A statement's state (`DescribeStatement` `Status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Submitted,
    Picked,
    Started,
    Finished,
    Aborted,
    Failed,
    Other(String),
}

impl State {
    pub fn parse(s: &str) -> State {
        match s {
            "SUBMITTED" => State::Submitted,
            "PICKED" => State::Picked,
            "STARTED" => State::Started,
            "FINISHED" => State::Finished,
            "ABORTED" => State::Aborted,
            "FAILED" => State::Failed,
            o => State::Other(o.to_string()),
        }
    }

    pub fn done(&self) -> bool {
        matches!(self, State::Finished | State::Aborted | State::Failed)
    }
}

/// One sub-statement of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubStatus {
    pub state: State,
    pub error: Option<String>,
    /// Rows returned or affected (a COPY: rows loaded); `None` where the API says -1.
    pub result_rows: Option<i64>,
    pub has_result_set: Option<bool>,
}

/// `DescribeStatement`'s answer, as far as the loader needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementStatus {
    pub state: State,
    pub error: Option<String>,
    pub result_rows: Option<i64>,
    pub has_result_set: Option<bool>,
    /// A batch's statements, in order (empty for a single statement).
    pub sub: Vec<SubStatus>,
}

/// A result row: each column as text, `None` for NULL.
pub type Row = Vec<Option<String>>;

/// The Data API calls the loader makes (the AWS SDK; a recording fake in tests).
pub trait DataApiTransport: Send + Sync {
    /// `ExecuteStatement`: the statement id.
    fn execute(&self, conn: &Conn, sql: &str) -> impl Future<Output = Result<String>> + Send;
    /// `BatchExecuteStatement` (one transaction): the batch id.
    fn batch_execute(
        &self,
        conn: &Conn,
        sqls: &[String],
    ) -> impl Future<Output = Result<String>> + Send;
    /// `DescribeStatement`.
    fn describe(
        &self,
        conn: &Conn,
        id: &str,
    ) -> impl Future<Output = Result<StatementStatus>> + Send;
    /// `GetStatementResult`, every page.
    fn get_result(&self, conn: &Conn, id: &str) -> impl Future<Output = Result<Vec<Row>>> + Send;
}

/// Where manifests are written (S3; a recording fake in tests).
pub trait ManifestWriter: Send + Sync {
    fn put_manifest(
        &self,
        bucket: &str,
        key: &str,
        body: String,
    ) -> impl Future<Output = Result<()>> + Send;
}

impl ManifestWriter for crate::store::Objects {
    async fn put_manifest(&self, bucket: &str, key: &str, body: String) -> Result<()> {
        self.put_small(bucket, key, body).await
    }
}

/// Polling and retry settings.
#[derive(Debug, Clone)]
pub struct Poll {
    /// First wait after submitting; doubled after every `DescribeStatement` still running...
    pub first: Duration,
    /// ...up to this.
    pub max: Duration,
    /// A statement still running after this fails the load (it may still commit: the ledger
    /// then makes the redelivered message a duplicate).
    pub timeout: Duration,
    /// Consecutive `DescribeStatement` errors tolerated while polling.
    pub describe_errors: u32,
    /// Batches tried per group when the guard finds an object loaded meanwhile.
    pub guard_attempts: u32,
}

impl Default for Poll {
    fn default() -> Self {
        Poll {
            first: Duration::from_millis(50),
            max: Duration::from_secs(2),
            timeout: Duration::from_secs(30 * 60),
            describe_errors: 3,
            guard_attempts: 3,
        }
    }
}

/// The Data API driver: a transport, the polling policy and which ledgers exist.
pub struct DataApi<T = SdkTransport> {
    pub(super) transport: T,
    pub poll: Poll,
    pub(super) ensured: tokio::sync::Mutex<HashSet<Conn>>,
    pub(super) batch_id: Box<dyn Fn() -> String + Send + Sync>,
}

impl DataApi<SdkTransport> {
    /// The driver over the AWS SDK, with the credentials of the Rin config (or the default
    /// chain). Cheap: clients are made per region on first use.
    pub async fn from_config(cfg: &RinConfig) -> DataApi<SdkTransport> {
        DataApi::new(SdkTransport::new(
            crate::load::warehouse::redshift::iam::sdk_config(cfg).await,
        ))
    }
}

impl<T: DataApiTransport> DataApi<T> {
    pub fn new(transport: T) -> DataApi<T> {
        DataApi {
            transport,
            poll: Poll::default(),
            ensured: tokio::sync::Mutex::new(HashSet::new()),
            batch_id: Box::new(crate::load::ledger::batch_id),
        }
    }

    /// Runs one statement to its end; `Err` unless it finished.
    pub(super) async fn run(&self, conn: &Conn, sql: &str, what: &str) -> Result<String> {
        let id = self
            .transport
            .execute(conn, sql)
            .await
            .with_context(|| format!("ExecuteStatement ({what})"))?;
        let st = self.wait(conn, &id).await?;
        if st.state != State::Finished {
            bail!(
                "Data API statement {id} ({what}) {:?}: {}",
                st.state,
                st.error.as_deref().unwrap_or("no error given")
            );
        }
        Ok(id)
    }

    /// Polls `DescribeStatement` until the statement is done: waits `first`, doubling to
    /// `max`, for at most `timeout`.
    pub async fn wait(&self, conn: &Conn, id: &str) -> Result<StatementStatus> {
        let start = tokio::time::Instant::now();
        let mut backoff = Backoff::new(self.poll.first, self.poll.max);
        let mut errors = 0;
        loop {
            tokio::time::sleep(backoff.wait()).await;
            match self.transport.describe(conn, id).await {
                Ok(st) if st.state.done() => return Ok(st),
                Ok(_) => errors = 0,
                Err(e) => {
                    errors += 1;
                    if errors >= self.poll.describe_errors {
                        return Err(e.context(format!("DescribeStatement {id}")));
                    }
                    warn!(id, "DescribeStatement: {e:#}; polling on");
                }
            }
            if start.elapsed() >= self.poll.timeout {
                bail!(
                    "Data API statement {id} still running after {:?}; given up waiting (if it \
                     commits, the ledger keeps the redelivery from loading again)",
                    self.poll.timeout
                );
            }
        }
    }

    /// Creates the ledger on `conn` if missing, once per driver (racing importers: retried).
    pub(super) async fn ensure_ledger(&self, conn: &Conn, ledger: &Ledger) -> Result<()> {
        let mut ensured = self.ensured.lock().await;
        if ensured.contains(conn) {
            return Ok(());
        }
        let ddl = ledger.ddl();
        let ledger = ledger.ident();
        for attempt in 0..3 {
            let r = async {
                let id = self.transport.batch_execute(conn, &ddl).await?;
                let st = self.wait(conn, &id).await?;
                match st.state {
                    State::Finished => Ok(()),
                    s => Err(anyhow!(
                        "{s:?}: {}",
                        st.error.as_deref().unwrap_or("no error given")
                    )),
                }
            }
            .await;
            match r {
                Ok(()) => {
                    ensured.insert(conn.clone());
                    return Ok(());
                }
                Err(e) if attempt < 2 => {
                    warn!("creating the ledger {ledger}: {e:#}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e.context(format!("cannot create the ledger {ledger}"))),
            }
        }
        Ok(())
    }

    /// Indices (into `items`) of the `pending` objects the ledger holds for `qualified`.
    pub(super) async fn already_loaded(
        &self,
        conn: &Conn,
        ledger: &Ledger,
        qualified: &str,
        items: &[Item],
        pending: &[usize],
    ) -> Result<Vec<usize>> {
        let sql = format!(
            "SELECT bucket, object_key, etag, version_id FROM {} WHERE {}",
            ledger.ident(),
            Ledger::objects_condition(qualified, items, pending)
        );
        let id = self.run(conn, &sql, "ledger lookup").await?;
        let rows = self
            .transport
            .get_result(conn, &id)
            .await
            .context("GetStatementResult (ledger lookup)")?;
        let found: HashSet<[&str; 4]> = rows
            .iter()
            .map(|r| {
                let col = |i: usize| r.get(i).and_then(|v| v.as_deref()).unwrap_or("");
                [col(0), col(1), col(2), col(3)]
            })
            .collect();
        Ok(pending
            .iter()
            .copied()
            .filter(|&i| {
                let it = &items[i];
                found.contains(&[
                    it.bucket.as_str(),
                    it.key.as_str(),
                    it.etag.as_str(),
                    it.version_id.as_str(),
                ])
            })
            .collect())
    }
}
