//! The Data API over the AWS SDK (aws-sdk-redshiftdata), one client per region. An SDK
//! error says whether retrying may help: a throttled or unreachable service is transient,
//! a refused request is not (the error carries a [`LoadFailure`] of that kind).

use super::Conn;
use super::client::{DataApiTransport, Row, State, StatementStatus, SubStatus};
use crate::load::ledger::{ErrorKind, LoadFailure};
use anyhow::{Result, anyhow};
use std::collections::HashMap;

/// The Data API over the AWS SDK, one client per region.
pub struct SdkTransport {
    base: aws_config::SdkConfig,
    clients: std::sync::Mutex<HashMap<String, aws_sdk_redshiftdata::Client>>,
}

impl SdkTransport {
    pub fn new(base: aws_config::SdkConfig) -> SdkTransport {
        SdkTransport {
            base,
            clients: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, region: &str) -> aws_sdk_redshiftdata::Client {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .entry(region.to_string())
            .or_insert_with(|| {
                let c = aws_sdk_redshiftdata::config::Builder::from(&self.base)
                    .region(aws_config::Region::new(region.to_string()))
                    .build();
                aws_sdk_redshiftdata::Client::from_conf(c)
            })
            .clone()
    }
}

/// An SDK error, classified: service errors that say "try again" (throttling, too many
/// statements, an internal error) and every failure to reach the service are transient; the
/// rest (a refused request) is other.
fn sdk_err<E, R>(e: aws_sdk_redshiftdata::error::SdkError<E, R>) -> anyhow::Error
where
    E: std::error::Error
        + aws_sdk_redshiftdata::error::ProvideErrorMetadata
        + Send
        + Sync
        + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    use aws_sdk_redshiftdata::error::SdkError;
    let kind = match &e {
        SdkError::ServiceError(s) => match s.err().code() {
            Some(
                "ThrottlingException"
                | "ActiveStatementsExceededException"
                | "ActiveSessionsExceededException"
                | "InternalServerException",
            ) => ErrorKind::Transient,
            _ => ErrorKind::Other,
        },
        _ => ErrorKind::Transient,
    };
    anyhow::Error::new(LoadFailure::new(
        kind,
        format!("{}", aws_sdk_redshiftdata::error::DisplayErrorContext(&e)),
    ))
}

fn rows_or_none(n: i64) -> Option<i64> {
    (n >= 0).then_some(n)
}

impl DataApiTransport for SdkTransport {
    async fn execute(&self, conn: &Conn, sql: &str) -> Result<String> {
        let out = self
            .client(&conn.region)
            .execute_statement()
            .sql(sql)
            .database(&conn.database)
            .set_cluster_identifier(conn.cluster.clone())
            .set_workgroup_name(conn.workgroup.clone())
            .set_db_user(conn.db_user.clone())
            .set_secret_arn(conn.secret_arn.clone())
            .statement_name("rin-ship")
            .send()
            .await
            .map_err(sdk_err)?;
        out.id.ok_or_else(|| anyhow!("ExecuteStatement gave no id"))
    }

    async fn batch_execute(&self, conn: &Conn, sqls: &[String]) -> Result<String> {
        let out = self
            .client(&conn.region)
            .batch_execute_statement()
            .set_sqls(Some(sqls.to_vec()))
            .database(&conn.database)
            .set_cluster_identifier(conn.cluster.clone())
            .set_workgroup_name(conn.workgroup.clone())
            .set_db_user(conn.db_user.clone())
            .set_secret_arn(conn.secret_arn.clone())
            .statement_name("rin-ship")
            .send()
            .await
            .map_err(sdk_err)?;
        out.id
            .ok_or_else(|| anyhow!("BatchExecuteStatement gave no id"))
    }

    async fn describe(&self, conn: &Conn, id: &str) -> Result<StatementStatus> {
        let out = self
            .client(&conn.region)
            .describe_statement()
            .id(id)
            .send()
            .await
            .map_err(sdk_err)?;
        Ok(StatementStatus {
            state: State::parse(out.status.as_ref().map(|s| s.as_str()).unwrap_or("")),
            error: out.error.clone(),
            result_rows: rows_or_none(out.result_rows),
            has_result_set: out.has_result_set,
            sub: out
                .sub_statements
                .unwrap_or_default()
                .into_iter()
                .map(|s| SubStatus {
                    state: State::parse(s.status.as_ref().map(|s| s.as_str()).unwrap_or("")),
                    error: s.error,
                    result_rows: rows_or_none(s.result_rows),
                    has_result_set: s.has_result_set,
                })
                .collect(),
        })
    }

    async fn get_result(&self, conn: &Conn, id: &str) -> Result<Vec<Row>> {
        use aws_sdk_redshiftdata::types::Field;
        let client = self.client(&conn.region);
        let mut rows = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = client
                .get_statement_result()
                .id(id)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(sdk_err)?;
            for rec in out.records {
                rows.push(
                    rec.into_iter()
                        .map(|f| match f {
                            Field::StringValue(s) => Some(s),
                            Field::LongValue(n) => Some(n.to_string()),
                            Field::DoubleValue(d) => Some(d.to_string()),
                            Field::BooleanValue(b) => Some(b.to_string()),
                            _ => None,
                        })
                        .collect(),
                );
            }
            match out.next_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(rows),
            }
        }
    }
}
