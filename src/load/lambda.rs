//! `rin-ship import` as an AWS Lambda function (custom runtime, e.g. `provided.al2023`, the
//! binary named `bootstrap`; guide: docs/lambda.md). Each invocation is an SQS event whose
//! records carry S3 notifications; the handler loads them exactly as the SQS poller does
//! ([`super::deliver::load_messages`]: same routing, ledger and transaction) and answers
//! `{"batchItemFailures":[{"itemIdentifier": <messageId>}, ...]}` with the messages that must
//! stay on the queue. Lambda deletes the others, so the event source mapping needs
//! `FunctionResponseTypes: ["ReportBatchItemFailures"]`: without it a successful answer deletes
//! the whole batch, failed loads included (or set `RIN_SHIP_LAMBDA_ON_FAILURE=error`, which
//! fails the invocation instead, and the whole batch comes back; the ledger skips what loaded).
//!
//! Owns: the Runtime API loop (the `lambda_runtime` crate), the init error report, SQS record
//! to [`Message`], the response. Keeps the warehouse connections between invocations. The
//! config needs no `queue_name` here (Rin requires it only outside Lambda). `RIN_DRY_RUN=true`
//! lists the targets and refuses to start; `RIN_BATCH=true` (Rin's Lambda batch mode, polling
//! SQS per invocation) is refused with what to do instead.
//!
//! Must never: name a message as processed unless every load it asked for committed (or needed
//! none); load anything in a dry run; log a message body, the config or a secret.

use super::Loader;
use super::consume::report_kept;
use super::deliver::load_messages;
use super::rin::RinConfig;
use super::rin::flags::env_bool;
use super::warehouse::Sessions;
use crate::queue::Message;
use anyhow::{Result, anyhow};
use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use lambda_runtime::{LambdaEvent, service_fn};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Mutex;
use tracing::{info, warn};

/// The variables the Runtime API client and its config need (it panics without them).
const LAMBDA_ENV: [&str; 4] = [
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
];

/// What the handler does when some messages of a batch failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnFailure {
    /// Answer `batchItemFailures` (the event source mapping must report them).
    Report,
    /// Fail the invocation: Lambda returns the whole batch to the queue.
    Error,
}

/// `bootstrap` started with no arguments (as Lambda starts a custom runtime): runs the handler
/// with the config named by `RIN_CONFIG`. `None` for any other program name or command line.
pub fn bootstrap() -> Option<Result<()>> {
    let mut args = std::env::args_os();
    let argv0 = args.next()?;
    if args.next().is_some() {
        return None;
    }
    let name = std::path::Path::new(&argv0).file_name()?.to_str()?;
    if !name.ends_with("bootstrap") {
        return None;
    }
    // As clap reads them for `rin-ship import`; a value that is no boolean stops here, before
    // anything loads.
    let flags = ["RIN_DEBUG", "RIN_DRY_RUN", "RIN_BATCH"].map(env_bool);
    let [debug, dry_run, batch] = match flags {
        [Ok(d), Ok(r), Ok(b)] => [d, r, b],
        [d, r, b] => {
            let bad = [d, r, b]
                .into_iter()
                .find_map(Result::err)
                .unwrap_or_default();
            return Some(Err(anyhow!("{bad}")));
        }
    };
    let logging = crate::telemetry::LogSettings::from_env(debug)
        .and_then(|settings| crate::telemetry::init_logging(&settings));
    if let Err(e) = logging {
        return Some(Err(e));
    }
    let config = std::env::var("RIN_CONFIG").unwrap_or_default();
    Some(run(config, batch, dry_run))
}

/// Runs the Lambda handler until the Runtime API goes away (`rin-ship import --lambda`, or
/// AWS_LAMBDA_RUNTIME_API set). A config that cannot be loaded is reported to the Runtime API
/// as an init error (Lambda shows it and retries the init).
pub fn main(config: String, batch: bool) -> Result<()> {
    run(config, batch, false)
}

/// The handler; with `dry_run` (RIN_DRY_RUN) it lists the targets and refuses to start, and
/// `batch` (Rin's Lambda batch mode, which polls SQS per invocation) is refused: neither may
/// let an invocation answer "done" for messages it never loaded.
fn run(config: String, batch: bool, dry_run: bool) -> Result<()> {
    let missing: Vec<&str> = LAMBDA_ENV
        .into_iter()
        .filter(|v| std::env::var_os(v).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(anyhow!(
            "not running under AWS Lambda: {} not set",
            missing.join(", ")
        ));
    }
    let on_failure = match std::env::var("RIN_SHIP_LAMBDA_ON_FAILURE").as_deref() {
        Err(_) | Ok("" | "report") => OnFailure::Report,
        Ok("error") => OnFailure::Error,
        Ok(other) => {
            return Err(anyhow!(
                "RIN_SHIP_LAMBDA_ON_FAILURE={other:?}: expected report or error"
            ));
        }
    };
    // Loaded before the runtime starts: an http(s):// or s3:// config is fetched on a runtime
    // of its own.
    let cfg = if config.is_empty() {
        Err(anyhow!(
            "no Rin config: set RIN_CONFIG (a path in the package, https://... or s3://bucket/key)"
        ))
    } else {
        RinConfig::load_from(&config)
    };
    let cfg = cfg.and_then(|c| {
        if dry_run {
            super::dry_run::print(&c, &[])?;
            return Err(anyhow!(
                "RIN_DRY_RUN is set: a dry run (the targets are listed above), so the Lambda \
                 handler loads nothing and does not start; unset RIN_DRY_RUN to load"
            ));
        }
        if batch {
            return Err(anyhow!(
                "RIN_BATCH (or --batch) is set: Rin's Lambda batch mode, in which each \
                 invocation polls the SQS queue, is not in rin-ship; subscribe the function to \
                 the queue with an SQS event source mapping instead (docs/lambda.md), or run \
                 `rin-ship import --batch` outside Lambda"
            ));
        }
        Ok(c)
    });
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("rin-lambda")
        .build()?
        .block_on(async move {
            let cfg = match cfg {
                Ok(c) => Arc::new(c),
                Err(e) => {
                    report_init_error(&e).await;
                    return Err(e);
                }
            };
            serve(cfg, on_failure).await
        })
}

async fn serve(cfg: Arc<RinConfig>, on_failure: OnFailure) -> Result<()> {
    info!(
        warehouse = ?cfg.ext.warehouse,
        targets = cfg.targets.len(),
        on_failure = ?on_failure,
        "Lambda handler starting (SQS events; answers batchItemFailures)"
    );
    for t in &cfg.targets {
        info!("target {}: {}", t.index, t.describe());
    }
    let loader = Arc::new(Loader::over_s3(cfg).await);
    // One invocation at a time (lambda_runtime::run is sequential): the lock is never contended;
    // it only carries the connections from one invocation to the next.
    let sessions = Arc::new(Mutex::new(Sessions::default()));
    let handler = service_fn(move |event: LambdaEvent<SqsEvent>| {
        let loader = loader.clone();
        let sessions = sessions.clone();
        async move { handle(&loader, &sessions, event, on_failure).await }
    });
    lambda_runtime::run(handler)
        .await
        .map_err(|e| anyhow!("Lambda Runtime API: {e}"))
}

/// SQS records as the rest of the COPY stage sees messages.
fn messages(event: SqsEvent) -> Vec<Message> {
    event
        .records
        .into_iter()
        .map(|r| Message {
            receive_count: r
                .attributes
                .get("ApproximateReceiveCount")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            id: r.message_id.unwrap_or_default(),
            body: r.body.unwrap_or_default(),
            receipt: r.receipt_handle.unwrap_or_default(),
        })
        .collect()
}

/// The response naming the kept messages.
fn response(msgs: &[Message], keep: &[bool]) -> SqsBatchResponse {
    let mut resp = SqsBatchResponse::default();
    for (m, _) in msgs.iter().zip(keep).filter(|(_, k)| **k) {
        let mut f = BatchItemFailure::default();
        // An empty id (never from SQS) makes Lambda fail the whole batch: still safe.
        f.item_identifier = m.id.clone();
        resp.batch_item_failures.push(f);
    }
    resp
}

async fn handle(
    loader: &Loader,
    sessions: &Mutex<Sessions>,
    event: LambdaEvent<SqsEvent>,
    on_failure: OnFailure,
) -> Result<SqsBatchResponse, lambda_runtime::Error> {
    let started = Instant::now();
    let request_id = event.context.request_id.clone();
    let msgs = messages(event.payload);
    let keep = {
        let mut sessions = sessions.lock().await;
        load_messages(loader, &mut sessions, &msgs).await
    };
    for (m, _) in msgs.iter().zip(&keep).filter(|(_, k)| **k) {
        report_kept(&loader.cfg, m, "reported as a batch item failure");
    }
    let resp = response(&msgs, &keep);
    let failed = resp.batch_item_failures.len();
    info!(
        request_id = %request_id,
        messages = msgs.len(),
        failed,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "invocation done"
    );
    if failed > 0 && on_failure == OnFailure::Error {
        return Err(format!(
            "{failed} of {} messages not processed; failing the invocation so the whole batch \
             is delivered again (RIN_SHIP_LAMBDA_ON_FAILURE=error)",
            msgs.len()
        )
        .into());
    }
    Ok(resp)
}

/// POST /2018-06-01/runtime/init/error (best effort: the process exits non-zero anyway).
async fn report_init_error(e: &anyhow::Error) {
    let body = serde_json::json!({
        "errorType": "RinShip.InitError",
        "errorMessage": format!("{e:#}"),
    })
    .to_string();
    let client = lambda_runtime_api_client::PooledClient::builder().build();
    let req = lambda_runtime_api_client::build_request()
        .method("POST")
        .uri("/2018-06-01/runtime/init/error")
        .header("Lambda-Runtime-Function-Error-Type", "RinShip.InitError")
        .header("Content-Type", "application/json")
        .body(lambda_runtime_api_client::body::Body::from(body));
    match req {
        Ok(req) => match client.call(req).await {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => warn!(status = %r.status(), "init error report not accepted"),
            Err(err) => warn!("cannot report the init error: {err}"),
        },
        Err(err) => warn!("cannot build the init error report: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_to_messages_and_response() {
        let event: SqsEvent = serde_json::from_value(serde_json::json!({"Records": [
            {"messageId": "m1", "receiptHandle": "r1", "body": "{}",
             "attributes": {"ApproximateReceiveCount": "3"}, "messageAttributes": {},
             "eventSource": "aws:sqs", "awsRegion": "us-east-1"},
            {"messageId": "m2", "receiptHandle": "r2", "body": "x", "attributes": {},
             "messageAttributes": {}}
        ]}))
        .unwrap();
        let msgs = messages(event);
        assert_eq!(msgs.len(), 2);
        assert_eq!(
            (
                msgs[0].id.as_str(),
                msgs[0].receipt.as_str(),
                msgs[0].body.as_str()
            ),
            ("m1", "r1", "{}")
        );
        assert_eq!((msgs[0].receive_count, msgs[1].receive_count), (3, 0));
        let resp = serde_json::to_value(response(&msgs, &[false, true])).unwrap();
        assert_eq!(
            resp,
            serde_json::json!({"batchItemFailures": [{"itemIdentifier": "m2"}]})
        );
        let none = serde_json::to_value(response(&msgs, &[false, false])).unwrap();
        assert_eq!(none, serde_json::json!({"batchItemFailures": []}));
    }
}
