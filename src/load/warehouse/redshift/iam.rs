//! Password-less Redshift logins over the wire protocol (`redshift.iam_auth: true`): temporary
//! database credentials from `GetClusterCredentials` (provisioned: cluster, database user,
//! database, optional AutoCreate) or the Serverless `GetCredentials` (workgroup, database),
//! cached per connection and fetched again [`REFRESH_BEFORE`] their `Expiration`, so every new
//! connection (the importer reconnects after a dropped one) logs in with a password that is
//! still good. A refused login drops the cached password ([`invalidate`]).
//!
//! Also the AWS configuration the Redshift API clients (here and in the Data API driver) share.
//!
//! Must never: print a password (the [`Secret`] type has no `Display`, and its `Debug` is
//! `***`).

pub use crate::common::secret::Secret;
use crate::load::rin::{Redshift, RinConfig};
use anyhow::{Context, Result, anyhow};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};
use tracing::{info, warn};

/// Temporary credentials are fetched again this long before they expire.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);

/// How long temporary credentials are asked for (the APIs allow 900..=3600 s).
pub const DURATION_SECONDS: i32 = 3600;

/// A temporary database login.
#[derive(Clone, Debug)]
pub struct TempCredentials {
    /// The user to log in as (as the API returned it, e.g. `IAM:alice`).
    pub user: String,
    pub password: Secret,
    pub expiration: SystemTime,
}

/// What one set of temporary credentials is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CredentialTarget {
    /// `GetClusterCredentials`.
    Cluster {
        region: String,
        cluster: String,
        db_user: String,
        db_name: String,
        auto_create: bool,
    },
    /// Serverless `GetCredentials`.
    Workgroup {
        region: String,
        workgroup: String,
        db_name: String,
    },
}

impl CredentialTarget {
    /// From a validated `redshift:` section with `iam_auth: true`; `default_region` when it
    /// names none.
    pub fn new(r: &Redshift, default_region: &str) -> Result<CredentialTarget> {
        let region = if r.region.is_empty() {
            default_region.to_string()
        } else {
            r.region.clone()
        };
        match (r.cluster.is_empty(), r.workgroup.is_empty()) {
            (false, true) => Ok(CredentialTarget::Cluster {
                region,
                cluster: r.cluster.clone(),
                db_user: r.user.clone(),
                db_name: r.dbname.clone(),
                auto_create: r.auto_create,
            }),
            (true, false) => Ok(CredentialTarget::Workgroup {
                region,
                workgroup: r.workgroup.clone(),
                db_name: r.dbname.clone(),
            }),
            _ => Err(anyhow!(
                "redshift.iam_auth needs exactly one of redshift.cluster or redshift.workgroup"
            )),
        }
    }

    fn region(&self) -> &str {
        match self {
            CredentialTarget::Cluster { region, .. }
            | CredentialTarget::Workgroup { region, .. } => region,
        }
    }
}

impl fmt::Display for CredentialTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialTarget::Cluster {
                cluster,
                db_user,
                db_name,
                ..
            } => write!(
                f,
                "GetClusterCredentials cluster {cluster} user {db_user} database {db_name}"
            ),
            CredentialTarget::Workgroup {
                workgroup, db_name, ..
            } => write!(f, "GetCredentials workgroup {workgroup} database {db_name}"),
        }
    }
}

/// Where temporary credentials come from (the AWS APIs; a fake in tests).
pub trait CredentialSource: Send + Sync {
    fn fetch(&self, t: &CredentialTarget) -> impl Future<Output = Result<TempCredentials>> + Send;
}

/// Temporary credentials per [`CredentialTarget`], reused until [`REFRESH_BEFORE`] their
/// expiry. One fetch at a time (logins are rare; concurrent connects wait for one fetch).
pub struct CredentialCache<S> {
    source: S,
    refresh_before: Duration,
    cached: tokio::sync::Mutex<HashMap<CredentialTarget, TempCredentials>>,
}

impl<S: CredentialSource> CredentialCache<S> {
    pub fn new(source: S) -> CredentialCache<S> {
        CredentialCache {
            source,
            refresh_before: REFRESH_BEFORE,
            cached: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    pub async fn get(&self, t: &CredentialTarget) -> Result<TempCredentials> {
        self.get_at(t, SystemTime::now()).await
    }

    /// The credentials for `t` as of `now`: the cached ones while they are good for more than
    /// [`REFRESH_BEFORE`], else freshly fetched ones.
    pub async fn get_at(&self, t: &CredentialTarget, now: SystemTime) -> Result<TempCredentials> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.get(t)
            && now + self.refresh_before < c.expiration
        {
            return Ok(c.clone());
        }
        let fresh = self.source.fetch(t).await.with_context(|| t.to_string())?;
        let left = fresh
            .expiration
            .duration_since(now)
            .unwrap_or(Duration::ZERO);
        info!(user = %fresh.user, valid_for_s = left.as_secs(), "temporary Redshift credentials: {t}");
        cached.insert(t.clone(), fresh.clone());
        Ok(fresh)
    }

    /// Forgets the credentials for `t` (after a refused login).
    pub async fn invalidate(&self, t: &CredentialTarget) {
        self.cached.lock().await.remove(t);
    }
}

/// The real source: the Redshift and Redshift Serverless APIs, one client per region.
pub struct SdkSource {
    base: aws_config::SdkConfig,
    clients: Mutex<HashMap<String, (aws_sdk_redshift::Client, aws_sdk_redshiftserverless::Client)>>,
}

impl SdkSource {
    pub fn new(base: aws_config::SdkConfig) -> SdkSource {
        SdkSource {
            base,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn clients(
        &self,
        region: &str,
    ) -> (aws_sdk_redshift::Client, aws_sdk_redshiftserverless::Client) {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .entry(region.to_string())
            .or_insert_with(|| {
                let r = aws_config::Region::new(region.to_string());
                let rs = aws_sdk_redshift::config::Builder::from(&self.base)
                    .region(r.clone())
                    .build();
                let sl = aws_sdk_redshiftserverless::config::Builder::from(&self.base)
                    .region(r)
                    .build();
                (
                    aws_sdk_redshift::Client::from_conf(rs),
                    aws_sdk_redshiftserverless::Client::from_conf(sl),
                )
            })
            .clone()
    }
}

/// When the API gave no expiry: the shortest duration the APIs hand out.
const ASSUMED_LIFETIME: Duration = Duration::from_secs(900);

fn expiration(e: Option<&aws_smithy_types::DateTime>) -> SystemTime {
    e.and_then(|d| SystemTime::try_from(*d).ok())
        .unwrap_or_else(|| SystemTime::now() + ASSUMED_LIFETIME)
}

impl CredentialSource for SdkSource {
    async fn fetch(&self, t: &CredentialTarget) -> Result<TempCredentials> {
        let (redshift, serverless) = self.clients(t.region());
        match t {
            CredentialTarget::Cluster {
                cluster,
                db_user,
                db_name,
                auto_create,
                ..
            } => {
                let out = redshift
                    .get_cluster_credentials()
                    .cluster_identifier(cluster)
                    .db_user(db_user)
                    .db_name(db_name)
                    .auto_create(*auto_create)
                    .duration_seconds(DURATION_SECONDS)
                    .send()
                    .await
                    .map_err(|e| anyhow!("{}", aws_sdk_redshift::error::DisplayErrorContext(&e)))?;
                Ok(TempCredentials {
                    user: out.db_user.clone().unwrap_or_else(|| db_user.clone()),
                    password: Secret::new(
                        out.db_password
                            .clone()
                            .ok_or_else(|| anyhow!("no DbPassword in the answer"))?,
                    ),
                    expiration: expiration(out.expiration.as_ref()),
                })
            }
            CredentialTarget::Workgroup {
                workgroup, db_name, ..
            } => {
                let out = serverless
                    .get_credentials()
                    .workgroup_name(workgroup)
                    .db_name(db_name)
                    .duration_seconds(DURATION_SECONDS)
                    .send()
                    .await
                    .map_err(|e| {
                        anyhow!(
                            "{}",
                            aws_sdk_redshiftserverless::error::DisplayErrorContext(&e)
                        )
                    })?;
                Ok(TempCredentials {
                    user: out
                        .db_user
                        .clone()
                        .ok_or_else(|| anyhow!("no DbUser in the answer"))?,
                    password: Secret::new(
                        out.db_password
                            .clone()
                            .ok_or_else(|| anyhow!("no DbPassword in the answer"))?,
                    ),
                    expiration: expiration(out.expiration.as_ref()),
                })
            }
        }
    }
}

/// The region for the Redshift APIs of connection `r`: its `region`, else
/// `credentials.aws_region`, else the first target's S3 region, else `us-east-1`.
pub fn region_for(cfg: &RinConfig, r: &Redshift) -> String {
    [
        r.region.as_str(),
        cfg.credentials.aws_region.as_str(),
        cfg.targets
            .first()
            .map(|t| t.s3.region.as_str())
            .unwrap_or(""),
    ]
    .into_iter()
    .find(|s| !s.is_empty())
    .unwrap_or("us-east-1")
    .to_string()
}

/// The AWS configuration for the Redshift API clients: Rin's `credentials` keys when set,
/// else the default credential chain (regions are set per client). Endpoints follow the SDK's
/// own settings (`AWS_ENDPOINT_URL_REDSHIFT`, `AWS_ENDPOINT_URL_REDSHIFT_DATA`, ...).
pub async fn sdk_config(cfg: &RinConfig) -> aws_config::SdkConfig {
    use crate::common::aws::{self, AwsSettings, DEFAULT_REGION};
    let settings = AwsSettings {
        // Only Rin's own region: each client sets its connection's region anyway.
        region: Some(
            AwsSettings::first_region([cfg.credentials.aws_region.as_str()])
                .unwrap_or_else(|| DEFAULT_REGION.to_string()),
        ),
        ..cfg.aws_settings()
    };
    aws::sdk_config(&settings).await
}

/// The process-wide cache the wire-protocol [`crate::load::warehouse::wire::connect`] logs in
/// with.
struct Global {
    cache: CredentialCache<SdkSource>,
    default_region: String,
}

static GLOBAL: tokio::sync::OnceCell<Global> = tokio::sync::OnceCell::const_new();

/// Sets up the credential cache for `iam_auth` connections with the Rin config's AWS
/// credentials and region, once per process, before the first connect (a no-op when no
/// target uses `iam_auth`, or when already set up).
pub async fn init(cfg: &RinConfig) {
    if !cfg.targets.iter().any(|t| t.redshift.iam_auth) {
        return;
    }
    GLOBAL
        .get_or_init(|| async {
            Global {
                cache: CredentialCache::new(SdkSource::new(sdk_config(cfg).await)),
                default_region: region_for(cfg, &Redshift::default()),
            }
        })
        .await;
}

/// The cache; without [`init`], one over the default AWS credential chain and region.
async fn global() -> &'static Global {
    GLOBAL
        .get_or_init(|| async {
            warn!(
                "redshift.iam_auth: temporary credentials set up without the Rin config \
                 (iam::init not called): default AWS credential chain and region"
            );
            let base = crate::common::aws::sdk_config(&Default::default()).await;
            let default_region = base
                .region()
                .map(|r| r.to_string())
                .unwrap_or_else(|| crate::common::aws::DEFAULT_REGION.to_string());
            Global {
                cache: CredentialCache::new(SdkSource::new(base)),
                default_region,
            }
        })
        .await
}

/// The login for an `iam_auth` connection: still good for more than [`REFRESH_BEFORE`].
pub async fn credentials(r: &Redshift) -> Result<TempCredentials> {
    let g = global().await;
    let t = CredentialTarget::new(r, &g.default_region)?;
    g.cache.get(&t).await
}

/// Drops the cached login of `r` (its password was refused): the next connect fetches anew.
pub async fn invalidate(r: &Redshift) {
    if let Some(g) = GLOBAL.get()
        && let Ok(t) = CredentialTarget::new(r, &g.default_region)
    {
        g.cache.invalidate(&t).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Hands out `pw-1`, `pw-2`, ... valid for `life` from `base`.
    struct Fake {
        calls: Mutex<Vec<CredentialTarget>>,
        n: AtomicUsize,
        base: SystemTime,
        life: Duration,
    }

    impl CredentialSource for Fake {
        async fn fetch(&self, t: &CredentialTarget) -> Result<TempCredentials> {
            self.calls.lock().unwrap().push(t.clone());
            let n = self.n.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(TempCredentials {
                user: "IAM:alice".into(),
                password: Secret::new(format!("pw-{n}")),
                expiration: self.base + self.life * n as u32,
            })
        }
    }

    fn cluster() -> Redshift {
        Redshift {
            host: "c.example".into(),
            cluster: "c1".into(),
            user: "alice".into(),
            dbname: "dev".into(),
            iam_auth: true,
            ..Default::default()
        }
    }

    #[test]
    fn targets_from_config() {
        assert_eq!(
            CredentialTarget::new(&cluster(), "ap-northeast-1").unwrap(),
            CredentialTarget::Cluster {
                region: "ap-northeast-1".into(),
                cluster: "c1".into(),
                db_user: "alice".into(),
                db_name: "dev".into(),
                auto_create: false,
            }
        );
        let w = Redshift {
            workgroup: "wg".into(),
            dbname: "dev".into(),
            region: "eu-west-1".into(),
            iam_auth: true,
            ..Default::default()
        };
        assert_eq!(
            CredentialTarget::new(&w, "ap-northeast-1").unwrap(),
            CredentialTarget::Workgroup {
                region: "eu-west-1".into(),
                workgroup: "wg".into(),
                db_name: "dev".into(),
            }
        );
        assert!(CredentialTarget::new(&Redshift::default(), "r").is_err());
    }

    #[tokio::test]
    async fn cached_until_five_minutes_before_expiry() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let cache = CredentialCache::new(Fake {
            calls: Mutex::new(Vec::new()),
            n: AtomicUsize::new(0),
            base: t0,
            life: Duration::from_secs(3600),
        });
        let t = CredentialTarget::new(&cluster(), "us-east-1").unwrap();
        let a = cache.get_at(&t, t0).await.unwrap();
        assert_eq!(a.password.expose(), "pw-1");
        assert_eq!(a.user, "IAM:alice");
        // Reused while more than 5 minutes are left...
        let b = cache
            .get_at(&t, t0 + Duration::from_secs(3600 - 301))
            .await
            .unwrap();
        assert_eq!(b.password.expose(), "pw-1");
        // ...fetched anew at 5 minutes before the expiry (a reconnect then gets a fresh one).
        let c = cache
            .get_at(&t, t0 + Duration::from_secs(3600 - 300))
            .await
            .unwrap();
        assert_eq!(c.password.expose(), "pw-2");
        assert_eq!(cache.source.calls.lock().unwrap().len(), 2);
        // A refused login drops the cached one.
        cache.invalidate(&t).await;
        let d = cache
            .get_at(&t, t0 + Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(d.password.expose(), "pw-3");
        // Another workgroup / cluster has its own entry.
        let w = CredentialTarget::Workgroup {
            region: "us-east-1".into(),
            workgroup: "wg".into(),
            db_name: "dev".into(),
        };
        assert_eq!(
            cache.get_at(&w, t0).await.unwrap().password.expose(),
            "pw-4"
        );
        assert_eq!(
            cache
                .get_at(&t, t0 + Duration::from_secs(3600))
                .await
                .unwrap()
                .password
                .expose(),
            "pw-3"
        );
        assert_eq!(cache.source.calls.lock().unwrap().len(), 4);
    }

    #[test]
    fn secrets_never_printed() {
        let c = TempCredentials {
            user: "IAM:alice".into(),
            password: Secret::new("hunter2-temporary"),
            expiration: SystemTime::UNIX_EPOCH,
        };
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("***"), "{dbg}");
        let r = Redshift {
            password: "hunter2".into(),
            ..cluster()
        };
        assert!(!format!("{r:?}").contains("hunter2"));
    }
}
