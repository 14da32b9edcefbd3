//! Golden tests of the Data API driver over a recording transport.

use super::client::*;
use super::*;
use crate::load::ledger::Item;
use crate::load::rin::Destination;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

/// One Data API (or S3) request, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Execute(Conn, String),
    Batch(Conn, Vec<String>),
    Describe(String),
    Result(String),
    Manifest(String, String, String),
}

/// Answers from a script, records every request and when (tokio's clock) it came.
#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<(Duration, Call)>>,
    /// Per statement id: `DescribeStatement` answers in order (the last one repeats).
    describes: Mutex<HashMap<String, VecDeque<StatementStatus>>>,
    results: Mutex<HashMap<String, Vec<Row>>>,
    /// Ids handed out by execute / batch_execute, in order.
    ids: Mutex<VecDeque<String>>,
    start: Mutex<Option<tokio::time::Instant>>,
}

impl Fake {
    fn record(&self, c: Call) {
        let start = *self
            .start
            .lock()
            .unwrap()
            .get_or_insert_with(tokio::time::Instant::now);
        self.calls.lock().unwrap().push((start.elapsed(), c));
    }
    fn next_id(&self) -> String {
        self.ids.lock().unwrap().pop_front().expect("a scripted id")
    }
    fn calls(&self) -> Vec<Call> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|(_, c)| c.clone())
            .collect()
    }
    fn script(self, id: &str, answers: Vec<StatementStatus>) -> Self {
        self.ids.lock().unwrap().push_back(id.to_string());
        self.describes
            .lock()
            .unwrap()
            .insert(id.to_string(), answers.into());
        self
    }
    fn rows(self, id: &str, rows: Vec<Row>) -> Self {
        self.results.lock().unwrap().insert(id.to_string(), rows);
        self
    }
}

impl DataApiTransport for Fake {
    async fn execute(&self, conn: &Conn, sql: &str) -> Result<String> {
        self.record(Call::Execute(conn.clone(), sql.to_string()));
        Ok(self.next_id())
    }
    async fn batch_execute(&self, conn: &Conn, sqls: &[String]) -> Result<String> {
        self.record(Call::Batch(conn.clone(), sqls.to_vec()));
        Ok(self.next_id())
    }
    async fn describe(&self, _conn: &Conn, id: &str) -> Result<StatementStatus> {
        self.record(Call::Describe(id.to_string()));
        let mut d = self.describes.lock().unwrap();
        let q = d.get_mut(id).expect("a scripted statement");
        Ok(if q.len() > 1 {
            q.pop_front().unwrap()
        } else {
            q[0].clone()
        })
    }
    async fn get_result(&self, _conn: &Conn, id: &str) -> Result<Vec<Row>> {
        self.record(Call::Result(id.to_string()));
        Ok(self
            .results
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .unwrap_or_default())
    }
}

impl ManifestWriter for Fake {
    async fn put_manifest(&self, bucket: &str, key: &str, body: String) -> Result<()> {
        self.record(Call::Manifest(bucket.into(), key.into(), body));
        Ok(())
    }
}

fn status(state: State) -> StatementStatus {
    StatementStatus {
        state,
        error: None,
        result_rows: None,
        has_result_set: None,
        sub: Vec::new(),
    }
}

fn finished() -> StatementStatus {
    status(State::Finished)
}

fn sub(state: State, rows: Option<i64>, error: Option<&str>) -> SubStatus {
    SubStatus {
        state,
        error: error.map(str::to_string),
        result_rows: rows,
        has_result_set: Some(false),
    }
}

fn batch_done(copy_rows: i64) -> StatementStatus {
    StatementStatus {
        sub: vec![
            sub(State::Finished, Some(0), None),
            sub(State::Finished, Some(1), None),
            sub(State::Finished, Some(copy_rows), None),
            sub(State::Finished, Some(1), None),
        ],
        ..finished()
    }
}

fn batch_failed(at: usize, error: &str) -> StatementStatus {
    let mut subs = Vec::new();
    for k in 0..4 {
        subs.push(match k.cmp(&at) {
            std::cmp::Ordering::Less => sub(State::Finished, Some(0), None),
            std::cmp::Ordering::Equal => sub(State::Failed, None, Some(error)),
            std::cmp::Ordering::Greater => sub(State::Aborted, None, None),
        });
    }
    StatementStatus {
        state: State::Failed,
        error: Some(error.to_string()),
        sub: subs,
        ..finished()
    }
}

const CLUSTER: &str = r#"queue_name: q
credentials:
  aws_region: ap-northeast-1
  aws_iam_role: arn:aws:iam::123456789012:role/rin
rin_ship:
  authorization: iam_role
redshift:
  driver: redshift-data
  cluster: mycluster
  dbname: dev
  user: loader
s3:
  bucket: logs
  region: ap-northeast-1
sql_option: "JSON 'auto' GZIP"
targets:
  - redshift: {schema: public, table: access}
    s3: {key_prefix: app/}
"#;

const SERVERLESS: &str = r#"queue_name: q
redshift:
  driver: redshift-data
  workgroup: wg
  dbname: dev
  secret_arn: arn:aws:secretsmanager:us-west-2:123456789012:secret:rs-AbC
  region: us-west-2
s3:
  bucket: logs
  region: us-west-2
rin_ship:
  ledger_table: rin.ledger
  authorization: iam_role
targets:
  - redshift: {table: access}
    s3: {key_prefix: app/}
"#;

fn parse(src: &str) -> RinConfig {
    RinConfig::parse(src, &|_| None).unwrap()
}

fn item(key: &str, etag: &str) -> Item {
    Item {
        bucket: "logs".into(),
        key: key.into(),
        etag: etag.into(),
        version_id: String::new(),
        size: 0,
    }
}

fn group(items: Vec<Item>) -> Group {
    Group {
        dest: Destination {
            target: 0,
            schema: "public".into(),
            table: "access".into(),
        },
        items,
    }
}

fn driver(fake: Fake) -> DataApi<Fake> {
    let mut a = DataApi::new(fake);
    a.batch_id = Box::new(|| "b0".to_string());
    a
}

fn cluster_conn() -> Conn {
    Conn {
        region: "ap-northeast-1".into(),
        cluster: Some("mycluster".into()),
        workgroup: None,
        database: "dev".into(),
        db_user: Some("loader".into()),
        secret_arn: None,
    }
}

const LEDGER: &str = "\"public\".\"rin_ship_ledger\"";
const DDL: &str = "CREATE TABLE IF NOT EXISTS \"public\".\"rin_ship_ledger\" (bucket varchar(1024) NOT NULL, object_key varchar(4096) NOT NULL, etag varchar(256) NOT NULL, version_id varchar(1024) NOT NULL, target varchar(1024) NOT NULL, row_count bigint, batch_id varchar(64) NOT NULL, batch_rows bigint, loaded_at timestamptz NOT NULL)";

fn cond(items: &[(&str, &str)]) -> String {
    let each: Vec<String> = items
        .iter()
        .map(|(k, e)| {
            format!("(bucket = 'logs' AND object_key = '{k}' AND etag = '{e}' AND version_id = '')")
        })
        .collect();
    format!(
        "target = '\"public\".\"access\"' AND ({})",
        each.join(" OR ")
    )
}

fn manifest_of(keys: &[&str]) -> (String, String) {
    let listed: Vec<(&str, &str)> = keys.iter().map(|k| ("logs", *k)).collect();
    (
        sql::manifest_key("rin-ship/manifests/", "\"public\".\"access\"", &listed),
        sql::manifest_json(&listed),
    )
}

fn batch_sqls(items: &[(&str, &str)], mkey: &str) -> Vec<String> {
    let c = cond(items);
    let rows: Vec<String> = items
        .iter()
        .map(|(k, e)| {
            format!(
                "('logs', '{k}', '{e}', '', '\"public\".\"access\"', NULL, 'b0', NULL, SYSDATE)"
            )
        })
        .collect();
    vec![
        format!("LOCK {LEDGER}"),
        format!("SELECT 1 / (CASE WHEN COUNT(*) = 0 THEN 1 ELSE 0 END) FROM {LEDGER} WHERE {c}"),
        format!(
            "/* rin-ship */ COPY \"public\".\"access\" FROM 's3://logs/{mkey}' IAM_ROLE 'arn:aws:iam::123456789012:role/rin' MANIFEST REGION 'ap-northeast-1' JSON 'auto' GZIP"
        ),
        format!(
            "INSERT INTO {LEDGER} (bucket, object_key, etag, version_id, target, row_count, batch_id, batch_rows, loaded_at) VALUES {}",
            rows.join(", ")
        ),
    ]
}

#[tokio::test(start_paused = true)]
async fn fresh_load_golden() {
    let cfg = parse(CLUSTER);
    let fake = Fake::default()
        .script("ddl", vec![finished()])
        .script("sel", vec![status(State::Started), finished()])
        .script("batch", vec![status(State::Picked), batch_done(42)]);
    let api = driver(fake);
    let g = group(vec![
        item("app/a.json.gz", "e1"),
        item("app/b's.json.gz", "e2"),
    ]);
    let r = load_group(&api, &cfg, &api.transport, &g).await.unwrap();
    // The COPY's 42 rows are the batch's: reported once, on its first object.
    assert_eq!(
        r,
        vec![ItemResult::Loaded(Some(42)), ItemResult::Loaded(None)]
    );
    let objs = [("app/a.json.gz", "e1"), ("app/b''s.json.gz", "e2")];
    let (mkey, mbody) = manifest_of(&["app/a.json.gz", "app/b's.json.gz"]);
    assert_eq!(
        api.transport.calls(),
        vec![
            Call::Batch(cluster_conn(), vec![DDL.to_string()]),
            Call::Describe("ddl".into()),
            Call::Execute(
                cluster_conn(),
                format!(
                    "SELECT bucket, object_key, etag, version_id FROM {LEDGER} WHERE {}",
                    cond(&objs)
                )
            ),
            Call::Describe("sel".into()),
            Call::Describe("sel".into()),
            Call::Result("sel".into()),
            Call::Manifest("logs".into(), mkey.clone(), mbody),
            Call::Batch(cluster_conn(), batch_sqls(&objs, &mkey)),
            Call::Describe("batch".into()),
            Call::Describe("batch".into()),
        ]
    );
    // One object: its row count comes from the COPY sub-statement. The ledger exists now.
    let fake = Fake::default()
        .script("sel", vec![finished()])
        .script("batch", vec![batch_done(7)]);
    let api2 = DataApi {
        transport: fake,
        ensured: tokio::sync::Mutex::new([cluster_conn()].into_iter().collect()),
        ..api
    };
    let g = group(vec![item("app/c.json.gz", "e3")]);
    let r = load_group(&api2, &cfg, &api2.transport, &g).await.unwrap();
    assert_eq!(r, vec![ItemResult::Loaded(Some(7))]);
    assert!(matches!(api2.transport.calls()[0], Call::Execute(..)));
}

#[tokio::test(start_paused = true)]
async fn serverless_secret_fields() {
    let cfg = parse(SERVERLESS);
    let fake = Fake::default()
        .script("ddl", vec![finished()])
        .script("sel", vec![finished()])
        .script("batch", vec![batch_done(3)]);
    let api = driver(fake);
    let g = Group {
        dest: Destination {
            target: 0,
            schema: String::new(),
            table: "access".into(),
        },
        items: vec![item("app/a.json.gz", "e1")],
    };
    let r = load_group(&api, &cfg, &api.transport, &g).await.unwrap();
    assert_eq!(r, vec![ItemResult::Loaded(Some(3))]);
    let conn = Conn {
        region: "us-west-2".into(),
        cluster: None,
        workgroup: Some("wg".into()),
        database: "dev".into(),
        db_user: None,
        secret_arn: Some("arn:aws:secretsmanager:us-west-2:123456789012:secret:rs-AbC".into()),
    };
    let calls = api.transport.calls();
    assert_eq!(
        calls[0],
        Call::Batch(
            conn.clone(),
            vec![
                "CREATE SCHEMA IF NOT EXISTS \"rin\"".to_string(),
                DDL.replace("\"public\".\"rin_ship_ledger\"", "\"rin\".\"ledger\"")
            ]
        )
    );
    let Call::Batch(c, sqls) = &calls[6] else {
        panic!("{calls:?}")
    };
    assert_eq!(*c, conn);
    assert_eq!(sqls[0], "LOCK \"rin\".\"ledger\"");
    assert!(
        sqls[2].starts_with("/* rin-ship */ COPY \"access\" FROM 's3://logs/rin-ship/manifests/"),
        "{}",
        sqls[2]
    );
    assert!(
        sqls[2].ends_with("' IAM_ROLE default MANIFEST REGION 'us-west-2'"),
        "{}",
        sqls[2]
    );
}

#[tokio::test(start_paused = true)]
async fn guard_finds_object_loaded_meanwhile() {
    let cfg = parse(CLUSTER);
    // The pre-filter finds a.json.gz loaded; the batch for b and c then trips the guard
    // (another importer committed c meanwhile); the second pre-filter finds c; b loads.
    let fake = Fake::default()
        .script("sel1", vec![finished()])
        .rows(
            "sel1",
            vec![vec![
                Some("logs".into()),
                Some("app/a.json.gz".into()),
                Some("e1".into()),
                Some(String::new()),
            ]],
        )
        .script(
            "batch1",
            vec![batch_failed(GUARD, "ERROR: division by zero")],
        )
        .script("sel2", vec![finished()])
        .rows(
            "sel2",
            vec![vec![
                Some("logs".into()),
                Some("app/c.json.gz".into()),
                Some("e3".into()),
                Some(String::new()),
            ]],
        )
        .script("batch2", vec![batch_done(5)]);
    let mut api = driver(fake);
    api.ensured = tokio::sync::Mutex::new([cluster_conn()].into_iter().collect());
    let g = group(vec![
        item("app/a.json.gz", "e1"),
        item("app/b.json.gz", "e2"),
        item("app/c.json.gz", "e3"),
        item("app/b.json.gz", "e2"),
    ]);
    let r = load_group(&api, &cfg, &api.transport, &g).await.unwrap();
    assert_eq!(
        r,
        vec![
            ItemResult::Duplicate,
            ItemResult::Loaded(Some(5)),
            ItemResult::Duplicate,
            ItemResult::Duplicate,
        ]
    );
    let all = [
        ("app/a.json.gz", "e1"),
        ("app/b.json.gz", "e2"),
        ("app/c.json.gz", "e3"),
    ];
    let bc = [("app/b.json.gz", "e2"), ("app/c.json.gz", "e3")];
    let b = [("app/b.json.gz", "e2")];
    let (mkey_bc, body_bc) = manifest_of(&["app/b.json.gz", "app/c.json.gz"]);
    let (mkey_b, body_b) = manifest_of(&["app/b.json.gz"]);
    let select = |c: &[(&str, &str)]| {
        Call::Execute(
            cluster_conn(),
            format!(
                "SELECT bucket, object_key, etag, version_id FROM {LEDGER} WHERE {}",
                cond(c)
            ),
        )
    };
    assert_eq!(
        api.transport.calls(),
        vec![
            select(&all),
            Call::Describe("sel1".into()),
            Call::Result("sel1".into()),
            Call::Manifest("logs".into(), mkey_bc.clone(), body_bc),
            Call::Batch(cluster_conn(), batch_sqls(&bc, &mkey_bc)),
            Call::Describe("batch1".into()),
            select(&bc),
            Call::Describe("sel2".into()),
            Call::Result("sel2".into()),
            Call::Manifest("logs".into(), mkey_b.clone(), body_b),
            Call::Batch(cluster_conn(), batch_sqls(&b, &mkey_b)),
            Call::Describe("batch2".into()),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn everything_already_loaded_runs_no_batch() {
    let cfg = parse(CLUSTER);
    let fake = Fake::default().script("sel", vec![finished()]).rows(
        "sel",
        vec![vec![
            Some("logs".into()),
            Some("app/a.json.gz".into()),
            Some("e1".into()),
            None,
        ]],
    );
    let mut api = driver(fake);
    api.ensured = tokio::sync::Mutex::new([cluster_conn()].into_iter().collect());
    let r = load_group(
        &api,
        &cfg,
        &api.transport,
        &group(vec![item("app/a.json.gz", "e1")]),
    )
    .await
    .unwrap();
    assert_eq!(r, vec![ItemResult::Duplicate]);
    assert_eq!(
        api.transport.calls().len(),
        3,
        "{:?}",
        api.transport.calls()
    );
}

#[tokio::test(start_paused = true)]
async fn guard_retries_are_bounded() {
    let cfg = parse(CLUSTER);
    let mut fake = Fake::default();
    for n in 0..3 {
        fake = fake.script(&format!("sel{n}"), vec![finished()]).script(
            &format!("batch{n}"),
            vec![batch_failed(GUARD, "ERROR: division by zero")],
        );
    }
    let fake = fake.script("sel3", vec![finished()]);
    let mut api = driver(fake);
    api.ensured = tokio::sync::Mutex::new([cluster_conn()].into_iter().collect());
    let e = load_group(
        &api,
        &cfg,
        &api.transport,
        &group(vec![item("app/a.json.gz", "e1")]),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("3 times in a row"), "{e:#}");
    let batches = api
        .transport
        .calls()
        .iter()
        .filter(|c| matches!(c, Call::Batch(..)))
        .count();
    assert_eq!(batches, 3);
}

#[tokio::test(start_paused = true)]
async fn failed_copy_surfaces_the_error_masked() {
    let mut cfg = parse(CLUSTER);
    cfg.ext.authorization = crate::load::rin::Authorization::AccessKeys;
    cfg.credentials.aws_access_key_id = "AKIAEXAMPLE".into();
    cfg.credentials.aws_secret_access_key = "TOPSECRETKEY".into();
    let err = "ERROR: Load into table 'access' failed. Check 'sys_load_error_detail' system table for details.";
    let fake = Fake::default()
        .script("sel", vec![finished()])
        .script("batch", vec![status(State::Started), batch_failed(2, err)]);
    let mut api = driver(fake);
    api.ensured = tokio::sync::Mutex::new([cluster_conn()].into_iter().collect());
    let e = load_group(
        &api,
        &cfg,
        &api.transport,
        &group(vec![item("app/a.json.gz", "e1")]),
    )
    .await
    .unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains(err), "{msg}");
    assert!(msg.contains("failed at statement 3 of 4 (/* rin-ship */ COPY \"public\".\"access\" FROM 's3://logs/rin-ship/manifests/"), "{msg}");
    assert!(msg.contains("SECRET_ACCESS_KEY '****'"), "{msg}");
    assert!(!msg.contains("TOPSECRETKEY"), "{msg}");
    // The request itself carries the key (the COPY needs it).
    let calls = api.transport.calls();
    let Call::Batch(_, sqls) = &calls[4] else {
        panic!("{calls:?}")
    };
    assert!(sqls[2].contains("SECRET_ACCESS_KEY 'TOPSECRETKEY'"));
    // A division by zero elsewhere than the guard is an error too, not a duplicate.
    let fake = Fake::default()
        .script("sel", vec![finished()])
        .script("batch", vec![batch_failed(3, "ERROR: division by zero")]);
    let mut api = driver(fake);
    api.ensured = tokio::sync::Mutex::new([cluster_conn()].into_iter().collect());
    let e = load_group(
        &api,
        &cfg,
        &api.transport,
        &group(vec![item("app/a.json.gz", "e1")]),
    )
    .await
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("at statement 4 of 4 (ledger INSERT)"),
        "{e:#}"
    );
}

#[tokio::test(start_paused = true)]
async fn failed_lookup_and_ddl_surface() {
    let cfg = parse(CLUSTER);
    let mut failed = status(State::Failed);
    failed.error = Some("ERROR: permission denied for relation rin_ship_ledger".into());
    let fake = Fake::default()
        .script("ddl1", vec![failed.clone()])
        .script("ddl2", vec![failed.clone()])
        .script("ddl3", vec![failed]);
    let api = driver(fake);
    let e = load_group(
        &api,
        &cfg,
        &api.transport,
        &group(vec![item("app/a.json.gz", "e1")]),
    )
    .await
    .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("permission denied for relation rin_ship_ledger"),
        "{msg}"
    );
    assert!(msg.contains("cannot create the ledger"), "{msg}");
}

#[tokio::test(start_paused = true)]
async fn polling_backs_off_50ms_doubling_to_2s() {
    let fake = Fake::default().script(
        "s",
        std::iter::repeat_n(status(State::Started), 9)
            .chain([finished()])
            .collect(),
    );
    let api = driver(fake);
    let conn = cluster_conn();
    let t0 = tokio::time::Instant::now();
    let st = api.wait(&conn, "s").await.unwrap();
    assert_eq!(st.state, State::Finished);
    let at: Vec<u64> = api
        .transport
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|(d, _)| d.as_millis() as u64)
        .collect();
    // Describes at 50, 150, 350, 750, 1550, 3150, 5150, 7150, 9150, 11150 ms (the fake's
    // clock starts at the first call, 50 ms in).
    let gaps: Vec<u64> = at.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps, vec![100, 200, 400, 800, 1600, 2000, 2000, 2000, 2000]);
    assert_eq!(at.len(), 10);
    assert_eq!(t0.elapsed(), Duration::from_millis(11150));
}

#[tokio::test(start_paused = true)]
async fn polling_gives_up_at_the_timeout() {
    let fake = Fake::default().script("s", vec![status(State::Started)]);
    let mut api = driver(fake);
    api.poll.timeout = Duration::from_secs(10);
    let t0 = tokio::time::Instant::now();
    let e = api.wait(&cluster_conn(), "s").await.unwrap_err();
    assert!(e.to_string().contains("still running after 10s"), "{e}");
    // 50+100+...+1600 = 3150, then 2 s steps: the first check at or past 10 s is 11150.
    assert_eq!(t0.elapsed(), Duration::from_millis(11150));
    assert_eq!(api.transport.calls().len(), 10);
}

/// The importer runs loads on spawned tasks: the real driver's future must be `Send`.
#[allow(dead_code)]
fn load_future_is_send(api: &DataApi, cfg: &RinConfig, objects: &crate::store::Objects, g: &Group) {
    fn send<F: Future + Send>(_: F) {}
    send(load_group(api, cfg, objects, g));
    send(crate::load::warehouse::redshift::iam::credentials(
        &cfg.target(0).redshift,
    ));
}

#[test]
fn conns_from_config() {
    let cfg = parse(CLUSTER);
    assert_eq!(
        Conn::new(&cfg, &cfg.target(0).redshift).unwrap(),
        cluster_conn()
    );
    assert_eq!(
        cfg.target(0).driver,
        crate::load::rin::DriverKind::RedshiftData
    );
    assert_eq!(
        cfg.target(0).redshift.visible_dsn(),
        "redshift-data://loader@cluster(mycluster)/dev"
    );
    let s = CLUSTER.replace(
        "  user: loader\n",
        "  secret_arn: arn:aws:secretsmanager:x\n",
    );
    let cfg = parse(&s);
    let c = Conn::new(&cfg, &cfg.target(0).redshift).unwrap();
    assert_eq!(c.db_user, None);
    assert_eq!(c.secret_arn.as_deref(), Some("arn:aws:secretsmanager:x"));
}

#[test]
fn config_validation() {
    let bad = |from: &str, to: &str, want: &str| {
        let src = CLUSTER.replace(from, to);
        let e = format!("{:#}", RinConfig::parse(&src, &|_| None).unwrap_err());
        assert!(e.contains(want), "{from:?} -> {to:?}: {e}");
    };
    bad(
        "  cluster: mycluster\n",
        "",
        "exactly one of redshift.cluster",
    );
    bad(
        "  cluster: mycluster\n",
        "  cluster: c\n  workgroup: w\n",
        "exactly one of redshift.cluster",
    );
    bad("  user: loader\n", "", "exactly one of redshift.user");
    bad(
        "  user: loader\n",
        "  user: loader\n  secret_arn: arn:x\n",
        "exactly one of redshift.user",
    );
    bad("  dbname: dev\n", "", "needs redshift.dbname");
    bad(
        "  user: loader\n",
        "  user: loader\n  password: pw\n",
        "redshift.password is not used",
    );
    bad(
        "  user: loader\n",
        "  user: loader\n  iam_auth: true\n",
        "iam_auth is for the wire protocol",
    );
    bad(
        "  driver: redshift-data\n",
        "  driver: mysql\n",
        "redshift.driver \"mysql\": expected postgres, redshift-data or sqlite",
    );
    bad(
        "rin_ship:\n",
        "rin_ship:\n  warehouse: postgres\n",
        "needs rin_ship.warehouse: redshift",
    );
    // Issue 12: Rin's Data API driver ignores a user with a workgroup, so this is a warning
    // (and the user is dropped) instead of the refusal it was.
    let wg = parse(&CLUSTER.replace("  cluster: mycluster\n", "  workgroup: wg\n"));
    assert_eq!(wg.target(0).redshift.user, "");
    assert!(
        wg.warnings
            .iter()
            .any(|w| w.contains("redshift.user \"loader\" is not used with a workgroup")),
        "{:?}",
        wg.warnings
    );
    // IAM auth on the wire protocol.
    let wire = CLUSTER.replace(
        "  driver: redshift-data\n",
        "  host: c.example\n  iam_auth: true\n",
    );
    let cfg = parse(&wire);
    assert!(cfg.target(0).redshift.iam_auth);
    assert_eq!(
        cfg.target(0).redshift.visible_dsn(),
        "loader:(iam cluster(mycluster))@c.example:0/dev"
    );
    let bad_wire = |from: &str, to: &str, want: &str| {
        let src = wire.replace(from, to);
        let e = format!("{:#}", RinConfig::parse(&src, &|_| None).unwrap_err());
        assert!(e.contains(want), "{from:?} -> {to:?}: {e}");
    };
    bad_wire("  user: loader\n", "", "needs redshift.user");
    bad_wire("  host: c.example\n", "", "needs redshift.host");
    bad_wire(
        "  user: loader\n",
        "  user: loader\n  secret_arn: a\n",
        "secret_arn is for driver redshift-data",
    );
    bad_wire(
        "  user: loader\n",
        "  user: loader\n  password: p\n",
        "redshift.password is not used",
    );
    let sl = wire.replace(
        "  cluster: mycluster\n  dbname: dev\n  user: loader\n",
        "  workgroup: wg\n  dbname: dev\n",
    );
    assert!(parse(&sl).target(0).redshift.iam_auth);
    bad(
        "  user: loader\n",
        "  user: loader\n  auto_create: true\n",
        "auto_create needs iam_auth",
    );
    let plain = CLUSTER.replace("  driver: redshift-data\n", "  host: h\n  secret_arn: a\n");
    assert!(RinConfig::parse(&plain, &|_| None).is_err());
    // Per-target overrides inherit the new keys.
    let per = CLUSTER.replace(
        "  - redshift: {schema: public, table: access}",
        "  - redshift: {schema: public, table: access, region: eu-west-1}",
    );
    let cfg = parse(&per);
    assert_eq!(cfg.target(0).redshift.region, "eu-west-1");
    assert_eq!(cfg.target(0).redshift.driver, "redshift-data");
    assert_eq!(
        Conn::new(&cfg, &cfg.target(0).redshift).unwrap().region,
        "eu-west-1"
    );
}

/// The bad objects of [`crate::load::warehouse::conformance`], as the Data API reports them
/// (the COPY, statement 3 of the batch, fails): the same verdicts as every other driver.
#[tokio::test(start_paused = true)]
async fn conformance_verdicts() {
    use crate::load::warehouse::conformance::{CASES, Case, expected, verdict};
    let cfg = parse(CLUSTER);
    for case in CASES {
        let error = match case {
            Case::MissingTable => "ERROR: relation \"public.missing\" does not exist",
            _ => {
                "ERROR: Load into table 'access' failed. Check 'sys_load_error_detail' system \
                 table for details."
            }
        };
        let fake = Fake::default()
            .script("sel", vec![finished()])
            .script("batch", vec![batch_failed(2, error)]);
        let mut api = driver(fake);
        api.ensured = tokio::sync::Mutex::new([cluster_conn()].into_iter().collect());
        let f = load_group(
            &api,
            &cfg,
            &api.transport,
            &group(vec![item("app/a.json.gz", "e1")]),
        )
        .await
        .unwrap_err();
        assert_eq!(verdict(&f), expected(case), "{case:?}: {f}");
    }
}
