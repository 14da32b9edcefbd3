//! A dry run (`rin-ship import --dry-run [KEY...]`, `RIN_DRY_RUN=true`, also under Lambda):
//! the targets, as Rin's `-dry-run` lists them, and for each key given where it would load and
//! the whole transaction that would run, secrets masked.
//!
//! Must never: load, write or contact anything (every step here only reads the config); print
//! a secret.

use super::rin::{MatchOutcome, RinConfig};
use super::warehouse::driver;
use anyhow::{Result, anyhow};
use std::io::Write;

/// Writes the dry run of `keys` (`s3://bucket/key`, or a key in the first target's bucket).
pub fn write(cfg: &RinConfig, keys: &[String], out: &mut dyn Write) -> Result<()> {
    writeln!(out, "dry run: nothing is loaded")?;
    for t in &cfg.targets {
        writeln!(out, "target {}: {}", t.index, t.describe())?;
    }
    if keys.is_empty() {
        writeln!(
            out,
            "the statements a load runs for a key: rin-ship import --config FILE --dry-run KEY \
             (s3://bucket/key, or a key in the first target's bucket)"
        )?;
    }
    for arg in keys {
        let (bucket, key) = match arg.strip_prefix("s3://") {
            Some(rest) => {
                let (b, k) = rest
                    .split_once('/')
                    .ok_or_else(|| anyhow!("{arg}: expected s3://bucket/key"))?;
                (b.to_string(), k.to_string())
            }
            None => (
                cfg.targets
                    .first()
                    .map(|t| t.s3.bucket.clone())
                    .unwrap_or_default(),
                arg.clone(),
            ),
        };
        if cfg.is_own_object(&bucket, &key) {
            writeln!(
                out,
                "s3://{bucket}/{key} => the importer's own object, never loaded"
            )?;
            continue;
        }
        match cfg.route(&bucket, &key) {
            Err(e) => writeln!(out, "s3://{bucket}/{key} => rejected: {e}")?,
            Ok(MatchOutcome::NoTarget) => writeln!(out, "s3://{bucket}/{key} => no target")?,
            Ok(MatchOutcome::Discarded) => writeln!(out, "s3://{bucket}/{key} => discarded")?,
            Ok(MatchOutcome::Load(dests)) => {
                for d in dests {
                    let t = cfg.target(d.target);
                    writeln!(
                        out,
                        "s3://{bucket}/{key} => target {} {} ({:?} {})",
                        d.target,
                        d.qualified(),
                        t.driver,
                        t.redshift.visible_dsn()
                    )?;
                    let objects = [(bucket.as_str(), key.as_str())];
                    for line in driver(t.driver).dry_run(cfg, &d, &objects) {
                        writeln!(out, "  {line}")?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// [`write`] to stdout.
pub fn print(cfg: &RinConfig, keys: &[String]) -> Result<()> {
    write(cfg, keys, &mut std::io::stdout().lock())
}
