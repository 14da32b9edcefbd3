//! Rin's merge of the top-level sections into each target (a target's `redshift:` and `s3:`
//! keys override the top-level ones, key by key; `sql_option` as a whole), and the checks of
//! the result, so that nothing below ever sees a target it cannot load.
//!
//! As Rin, connection settings a target's driver does not use are not errors when they come
//! from the top level across a driver override (a `redshift-data` target under a wire-protocol
//! top level inherits `host`, `password`...): they are dropped. A user with a workgroup is
//! dropped with a warning (Serverless maps the IAM identity). A wire-protocol Redshift
//! connection with no password logs in with temporary credentials, as Rin calls
//! GetClusterCredentials then (cluster: `redshift.cluster`, else the first DNS label of
//! `host`; database user: `user`).
//!
//! Must never: accept a `$n` in a schema or table that the key matcher cannot capture; accept
//! a setting the chosen driver would misread; drop a setting without saying so (a warning, or
//! for what a driver override leaves behind, a debug line).

use super::ident::{is_identifier, split_qualified};
use super::schema::{
    DriverKind, InsertMode, Redshift, RinFile, S3Spec, SchemaPolicy, TargetSpec, Warehouse,
};
use super::template::placeholders;
use super::{Matcher, RinConfig, Target};
use anyhow::{Context, Result, anyhow, bail};
use regex::Regex;

impl RinConfig {
    /// The config a parsed file describes, every target merged and checked.
    pub(super) fn from_file(f: RinFile) -> Result<RinConfig> {
        check_top_level(&f)?;
        let mut targets = Vec::with_capacity(f.targets.len());
        let mut warnings = Vec::new();
        for (i, t) in f.targets.iter().enumerate() {
            targets.push(merge_target(i, t, &f, &mut warnings)?);
        }
        Ok(RinConfig {
            queue_name: f.queue_name,
            credentials: f.credentials,
            targets,
            ext: f.rin_ship,
            warnings,
        })
    }
}

/// The keys that concern the whole file. `queue_name` is not one: Rin requires it only
/// outside Lambda (see [`RinConfig::require_queue`]).
fn check_top_level(f: &RinFile) -> Result<()> {
    if f.targets.is_empty() {
        bail!("no targets defined");
    }
    let x = &f.rin_ship;
    if x.concurrency == 0 {
        bail!("rin_ship.concurrency must be at least 1");
    }
    if !(0..=20).contains(&x.wait_time_seconds) {
        bail!("rin_ship.wait_time_seconds must be 0..=20");
    }
    if x.visibility_timeout_seconds < 3 {
        bail!("rin_ship.visibility_timeout_seconds must be at least 3");
    }
    split_qualified(&x.ledger_table).context("rin_ship.ledger_table")?;
    if !x.catch_all_column.is_empty() && !is_identifier(&x.catch_all_column) {
        bail!("rin_ship.catch_all_column must be a plain identifier");
    }
    if !x.manifest_prefix.is_empty() && !x.manifest_prefix.starts_with("s3://") {
        bail!("rin_ship.manifest_prefix must be an s3:// URL");
    }
    if !x.quarantine_prefix.is_empty() && !x.quarantine_prefix.starts_with("s3://") {
        bail!("rin_ship.quarantine_prefix must be an s3:// URL");
    }
    Ok(())
}

/// Target `i` with the top-level sections merged in, and checked.
fn merge_target(
    i: usize,
    t: &TargetSpec,
    f: &RinFile,
    warnings: &mut Vec<String>,
) -> Result<Target> {
    let mut redshift = merge_redshift(t.redshift.as_ref(), f.redshift.as_ref());
    let s3 = merge_s3(t.s3.as_ref(), f.s3.as_ref());
    let sql_option = if t.sql_option.is_empty() {
        f.sql_option.clone()
    } else {
        t.sql_option.clone()
    };
    let matcher = if !s3.key_prefix.is_empty() {
        Matcher::Prefix(s3.key_prefix.clone())
    } else if !s3.key_regexp.is_empty() {
        Matcher::Regexp(
            Regex::new(&s3.key_regexp).with_context(|| format!("targets[{i}].s3.key_regexp"))?,
        )
    } else {
        bail!("targets[{i}]: target.key_prefix or key_regexp is not defined");
    };
    let insert_mode = t.insert_mode.or(f.insert_mode).unwrap_or_default();
    let key_columns = if t.key_columns.is_empty() {
        f.key_columns.clone()
    } else {
        t.key_columns.clone()
    };
    let order_column = if t.order_column.is_empty() {
        f.order_column.clone()
    } else {
        t.order_column.clone()
    };
    let schema = t.schema.or(f.schema).unwrap_or_default();
    let warehouse = f.rin_ship.warehouse;
    let driver = if t.discard {
        // Nothing loads through a discarding target: its connection is never used.
        DriverKind::from_rin(&redshift.driver, warehouse).unwrap_or(DriverKind::Redshift)
    } else {
        if redshift.table.is_empty() {
            bail!("targets[{i}]: redshift.table is empty");
        }
        check_placeholders(i, &redshift, &matcher)?;
        let driver = DriverKind::from_rin(&redshift.driver, warehouse).ok_or_else(|| {
            anyhow!(
                "targets[{i}]: redshift.driver {:?}: expected postgres, redshift-data or sqlite",
                redshift.driver
            )
        })?;
        drop_inherited_unused(
            i,
            &mut redshift,
            t.redshift.as_ref(),
            f.redshift.as_ref(),
            driver,
            warehouse,
        );
        check_connection(i, &mut redshift, driver, warehouse, warnings)?;
        check_insert_mode(i, insert_mode, &key_columns, &order_column, warehouse)?;
        if schema != SchemaPolicy::Report && driver != DriverKind::Postgres {
            bail!(
                "targets[{i}]: schema: {} is for PostgreSQL targets: Redshift's COPY reads \
                 the objects itself, so rin-ship never sees their keys there (yet), and the \
                 embedded SQLite warehouse always adds a column for a new key",
                schema.name()
            );
        }
        driver
    };
    Ok(Target {
        index: i,
        redshift,
        driver,
        s3,
        sql_option,
        break_: t.break_,
        discard: t.discard,
        insert_mode,
        key_columns,
        order_column,
        schema,
        matcher,
    })
}

/// A target's `redshift:` over the top-level one, key by key.
fn merge_redshift(target: Option<&Redshift>, top: Option<&Redshift>) -> Redshift {
    let top = top.cloned().unwrap_or_default();
    let Some(r) = target else {
        return top;
    };
    let mut r = r.clone();
    macro_rules! inherit {
        ($($f:ident),*) => {$(
            if is_default(&r.$f) { r.$f = top.$f.clone(); }
        )*};
    }
    inherit!(
        driver, host, port, dbname, user, password, schema, table, cluster, workgroup, secret_arn,
        region
    );
    r.reconnect_on_error |= top.reconnect_on_error;
    r.iam_auth |= top.iam_auth;
    r.auto_create |= top.auto_create;
    r
}

/// A target's `s3:` over the top-level one, key by key.
fn merge_s3(target: Option<&S3Spec>, top: Option<&S3Spec>) -> S3Spec {
    let top = top.cloned().unwrap_or_default();
    let Some(s) = target else {
        return top;
    };
    let mut s = s.clone();
    for (mine, theirs) in [
        (&mut s.bucket, &top.bucket),
        (&mut s.region, &top.region),
        (&mut s.key_prefix, &top.key_prefix),
        (&mut s.key_regexp, &top.key_regexp),
    ] {
        if mine.is_empty() {
            mine.clone_from(theirs);
        }
    }
    s
}

/// Every `$n` in the schema and table must be a capture of the key matcher.
fn check_placeholders(i: usize, redshift: &Redshift, matcher: &Matcher) -> Result<()> {
    let groups = match matcher {
        Matcher::Prefix(_) => 0,
        Matcher::Regexp(r) => r.captures_len() - 1,
    };
    for (what, v) in [("schema", &redshift.schema), ("table", &redshift.table)] {
        for n in placeholders(v) {
            if n > groups {
                bail!(
                    "targets[{i}].redshift.{what}: ${n} but the key matcher has {groups} \
                     capture group(s)"
                );
            }
        }
    }
    Ok(())
}

/// `insert_mode`, `key_columns` and `order_column` of target `i`, after the merge.
fn check_insert_mode(
    i: usize,
    mode: InsertMode,
    keys: &[String],
    order: &str,
    warehouse: Warehouse,
) -> Result<()> {
    for k in keys {
        if !is_identifier(k) {
            bail!("targets[{i}]: key_columns: {k:?} is not a plain identifier");
        }
    }
    if !order.is_empty() && !is_identifier(order) {
        bail!("targets[{i}]: order_column {order:?} is not a plain identifier");
    }
    if mode.keyed() {
        if keys.is_empty() {
            bail!(
                "targets[{i}]: insert_mode {} needs key_columns (the columns that identify a row)",
                mode.name()
            );
        }
        if warehouse == Warehouse::Redshift && order.is_empty() {
            bail!(
                "targets[{i}]: insert_mode {} on Redshift needs order_column: COPY keeps no line \
                 order, so nothing else tells which row of a key in one batch is the latest",
                mode.name()
            );
        }
    }
    Ok(())
}

/// What a driver override leaves behind: a target whose `redshift.driver` names another driver
/// than the top level's inherits the top level's keys, and those the target's driver does not
/// use are dropped (Rin's drivers ignore them). Keys the target sets itself stay and are
/// checked.
fn drop_inherited_unused(
    i: usize,
    r: &mut Redshift,
    own: Option<&Redshift>,
    top: Option<&Redshift>,
    driver: DriverKind,
    warehouse: Warehouse,
) {
    let (Some(own), Some(top)) = (own, top) else {
        return;
    };
    if own.driver.is_empty() || DriverKind::from_rin(&top.driver, warehouse) == Some(driver) {
        return;
    }
    let mut dropped = Vec::new();
    macro_rules! drop_if_inherited {
        ($($f:ident),*) => {$(
            if is_default(&own.$f) && !is_default(&r.$f) {
                r.$f = Default::default();
                dropped.push(stringify!($f));
            }
        )*};
    }
    match driver {
        DriverKind::RedshiftData => {
            drop_if_inherited!(host, port, password, iam_auth, auto_create);
            if !r.workgroup.is_empty() || !r.secret_arn.is_empty() {
                drop_if_inherited!(user);
            }
        }
        DriverKind::Redshift | DriverKind::Postgres => {
            drop_if_inherited!(secret_arn);
            if !own.iam_auth {
                drop_if_inherited!(cluster, workgroup);
            }
        }
        DriverKind::Sqlite => {}
    }
    if !dropped.is_empty() {
        tracing::debug!(
            "targets[{i}]: driver {} does not use the inherited redshift.{}; dropped",
            own.driver,
            dropped.join(", redshift.")
        );
    }
}

/// The checks of target `i`'s connection settings for its driver: the Data API driver and
/// IAM logins need their own keys (and the `redshift` feature). A wire-protocol Redshift
/// connection without a password becomes an IAM login, as in Rin.
fn check_connection(
    i: usize,
    r: &mut Redshift,
    kind: DriverKind,
    warehouse: Warehouse,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let data_api = match kind {
        DriverKind::Postgres | DriverKind::Redshift => false,
        // The embedded warehouse: `dbname` is the SQLite file (see load::warehouse::sqlite).
        DriverKind::Sqlite => return Ok(()),
        DriverKind::RedshiftData => true,
    };
    if kind == DriverKind::Redshift && !r.iam_auth && r.password.is_empty() {
        if !r.secret_arn.is_empty() {
            bail!("targets[{i}]: redshift.secret_arn is for driver redshift-data");
        }
        return rin_temporary_login(i, r, warnings);
    }
    let what = if data_api {
        "redshift.driver redshift-data (the Redshift Data API)"
    } else if r.iam_auth {
        "redshift.iam_auth (temporary credentials)"
    } else {
        if !r.secret_arn.is_empty() {
            bail!("targets[{i}]: redshift.secret_arn is for driver redshift-data");
        }
        if r.auto_create {
            bail!("targets[{i}]: redshift.auto_create needs iam_auth: true");
        }
        return Ok(());
    };
    if !cfg!(feature = "redshift") {
        bail!("targets[{i}]: {what} needs rin-ship built with `--features redshift`");
    }
    if warehouse != Warehouse::Redshift {
        bail!("targets[{i}]: {what} needs rin_ship.warehouse: redshift");
    }
    if r.cluster.is_empty() == r.workgroup.is_empty() {
        bail!(
            "targets[{i}]: {what} needs exactly one of redshift.cluster (provisioned) or \
             redshift.workgroup (Serverless)"
        );
    }
    if r.dbname.is_empty() {
        bail!("targets[{i}]: {what} needs redshift.dbname");
    }
    if !r.password.is_empty() {
        bail!(
            "targets[{i}]: redshift.password is not used with {what}; remove it{}",
            if data_api { " (or use secret_arn)" } else { "" }
        );
    }
    if data_api && r.iam_auth {
        bail!(
            "targets[{i}]: redshift.iam_auth is for the wire protocol; the Data API always \
             logs in with the AWS credentials (or secret_arn)"
        );
    }
    if !data_api && !r.secret_arn.is_empty() {
        bail!("targets[{i}]: redshift.secret_arn is for driver redshift-data, not iam_auth");
    }
    if !r.workgroup.is_empty() {
        if !r.user.is_empty() {
            // Rin's Data API driver ignores it too: a warning, not a refusal.
            warnings.push(format!(
                "targets[{i}]: redshift.user {:?} is not used with a workgroup (Serverless maps \
                 the IAM identity to a database user{}); ignored",
                r.user,
                if data_api { ", or use secret_arn" } else { "" }
            ));
            r.user.clear();
        }
        if r.auto_create {
            bail!("targets[{i}]: redshift.auto_create is for a provisioned cluster");
        }
    } else if data_api {
        if r.user.is_empty() == r.secret_arn.is_empty() {
            bail!(
                "targets[{i}]: {what} on a cluster needs exactly one of redshift.user (temporary \
                 credentials for that database user) or redshift.secret_arn"
            );
        }
        if r.auto_create {
            bail!("targets[{i}]: redshift.auto_create needs iam_auth: true");
        }
    } else if r.user.is_empty() {
        bail!("targets[{i}]: {what} on a cluster needs redshift.user (the database user)");
    }
    if !data_api && r.host.is_empty() {
        bail!("targets[{i}]: {what} needs redshift.host (the endpoint to connect to)");
    }
    Ok(())
}

/// Rin's login when `redshift.password` is empty: GetClusterCredentials for the cluster named
/// by the first DNS label of `host` (or `redshift.cluster`, or Serverless GetCredentials for
/// `redshift.workgroup`) and the database user `user`. Nothing is refused here, as Rin finds
/// out only when it connects; what cannot work is a warning, and the connect fails saying why.
fn rin_temporary_login(i: usize, r: &mut Redshift, warnings: &mut Vec<String>) -> Result<()> {
    r.iam_auth = true;
    if r.cluster.is_empty() && r.workgroup.is_empty() {
        r.cluster = r.host.split('.').next().unwrap_or_default().to_string();
    }
    let fix = "set redshift.password to log in with a password";
    if !cfg!(feature = "redshift") {
        warnings.push(format!(
            "targets[{i}]: redshift.password is empty, so (as Rin) the login would use \
             temporary credentials, which need rin-ship built with `--features redshift`; {fix}"
        ));
    } else if r.host.is_empty() || r.dbname.is_empty() {
        warnings.push(format!(
            "targets[{i}]: redshift.password is empty (temporary credentials, as Rin) but \
             redshift.host or redshift.dbname is not set: loads will fail; set them, or {fix}"
        ));
    } else if r.workgroup.is_empty() && r.user.is_empty() {
        warnings.push(format!(
            "targets[{i}]: redshift.password is empty, so the login uses GetClusterCredentials \
             (as Rin), which needs redshift.user (the database user): loads will fail; set it, \
             or {fix}"
        ));
    }
    Ok(())
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}
