//! Rin's merge of the top-level sections into each target (a target's `redshift:` and `s3:`
//! keys override the top-level ones, key by key; `sql_option` as a whole), and the checks of
//! the result, so that nothing below ever sees a target it cannot load.
//!
//! Must never: accept a `$n` in a schema or table that the key matcher cannot capture; accept
//! connection settings the chosen driver would ignore or misread.

use super::ident::{is_identifier, split_qualified};
use super::schema::{DriverKind, InsertMode, Redshift, RinFile, S3Spec, TargetSpec, Warehouse};
use super::template::placeholders;
use super::{Matcher, RinConfig, Target};
use anyhow::{Context, Result, bail};
use regex::Regex;

impl RinConfig {
    /// The config a parsed file describes, every target merged and checked.
    pub(super) fn from_file(f: RinFile) -> Result<RinConfig> {
        check_top_level(&f)?;
        let mut targets = Vec::with_capacity(f.targets.len());
        for (i, t) in f.targets.iter().enumerate() {
            targets.push(merge_target(i, t, &f)?);
        }
        Ok(RinConfig {
            queue_name: f.queue_name,
            credentials: f.credentials,
            targets,
            ext: f.rin_ship,
        })
    }
}

/// The keys that concern the whole file.
fn check_top_level(f: &RinFile) -> Result<()> {
    if f.queue_name.is_empty() && f.rin_ship.queue_url.is_empty() {
        bail!("queue_name required (or rin_ship.queue_url)");
    }
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
fn merge_target(i: usize, t: &TargetSpec, f: &RinFile) -> Result<Target> {
    let redshift = merge_redshift(t.redshift.as_ref(), f.redshift.as_ref());
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
    let warehouse = f.rin_ship.warehouse;
    let driver = if t.discard {
        // Nothing loads through a discarding target: its connection is never used.
        DriverKind::from_rin(&redshift.driver, warehouse).unwrap_or(DriverKind::Redshift)
    } else {
        if redshift.table.is_empty() {
            bail!("targets[{i}]: redshift.table is empty");
        }
        check_placeholders(i, &redshift, &matcher)?;
        let driver = check_connection(i, &redshift, warehouse)?;
        check_insert_mode(i, insert_mode, &key_columns, &order_column, warehouse)?;
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

/// The driver of target `i` and the checks of its connection settings: the Data API driver
/// and IAM logins need their own keys (and the `redshift` feature).
fn check_connection(i: usize, r: &Redshift, warehouse: Warehouse) -> Result<DriverKind> {
    let Some(kind) = DriverKind::from_rin(&r.driver, warehouse) else {
        bail!(
            "targets[{i}]: redshift.driver {:?}: expected postgres, redshift-data or sqlite",
            r.driver
        )
    };
    let data_api = match kind {
        DriverKind::Postgres | DriverKind::Redshift => false,
        // The embedded warehouse: `dbname` is the SQLite file (see load::warehouse::sqlite).
        DriverKind::Sqlite => return Ok(kind),
        DriverKind::RedshiftData => true,
    };
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
        return Ok(kind);
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
            bail!(
                "targets[{i}]: redshift.user is not used with a workgroup (Serverless maps the \
                 IAM identity to a database user); remove it{}",
                if data_api { " or use secret_arn" } else { "" }
            );
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
    Ok(kind)
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}
