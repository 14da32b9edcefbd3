//! Quarantine: an object with a data error is set aside instead of blocking its queue. Its
//! record (a manifest of the object, as a COPY manifest lists it, plus the table, the object's
//! identity and the error) goes under `rin_ship.quarantine_prefix` (default
//! `s3://<the target's bucket>/rin-ship/quarantine/`; a local store's folder for the embedded
//! loader), at a key deterministic in (table, bucket, key, ETag), so a redelivery rewrites the
//! same record. Sending the object's event again after a fix loads it: a quarantined object
//! has no ledger row.
//!
//! Must never: write the record anywhere a target would load it as data (the importer ignores
//! its own prefixes, [`RinConfig::is_own_object`]).

use super::{Item, LoadFailure};
use crate::load::rin::{Destination, RinConfig};
use crate::store::Objects;
use anyhow::{Context, Result};

/// The quarantine record's key: deterministic in (table, bucket, key, ETag), so a redelivery
/// rewrites the same record.
pub fn quarantine_key(prefix: &str, qualified: &str, it: &Item) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [qualified, &it.bucket, &it.key, &it.etag] {
        h.update(part.as_bytes());
        h.update(b"\n");
    }
    format!("{prefix}{}.json", hex::encode(&h.finalize()[..16]))
}

/// The quarantine record: a manifest of the object (`entries`, as a COPY manifest lists it)
/// plus the table, the object's identity, the error and the time.
pub fn quarantine_record(
    dest: &Destination,
    it: &Item,
    f: &LoadFailure,
    at: chrono::DateTime<chrono::Utc>,
) -> String {
    serde_json::json!({
        "entries": [{"url": it.url(), "mandatory": true}],
        "table": dest.qualified(),
        "target": dest.target,
        "bucket": it.bucket,
        "key": it.key,
        "etag": it.etag,
        "version_id": it.version_id,
        "error": {
            "kind": f.kind.label(),
            "sqlstate": f.sqlstate,
            "message": f.message,
            "details": f.details_of(&it.url()),
        },
        "quarantined_at": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
    .to_string()
}

/// Writes the quarantine record of `it` (no ledger row: the ledger lists loaded objects only,
/// so sending the object's event again after a fix loads it). Returns the record's URL.
pub async fn quarantine(
    objects: &Objects,
    cfg: &RinConfig,
    dest: &Destination,
    it: &Item,
    f: &LoadFailure,
) -> Result<String> {
    let (bucket, prefix) = cfg.quarantine_location(&cfg.target(dest.target).s3.bucket);
    let key = quarantine_key(&prefix, &dest.qualified(), it);
    let body = quarantine_record(dest, it, f, chrono::Utc::now());
    objects
        .put_small(&bucket, &key, body)
        .await
        .context("writing the quarantine record")?;
    Ok(format!("s3://{bucket}/{key}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::ledger::{ErrorDetail, ErrorKind};

    #[test]
    fn quarantine_records() {
        let cfg = RinConfig::parse(
            "queue_name: q\ns3: {bucket: logs}\ntargets:\n  - redshift: {schema: s, table: t}\n    s3: {key_prefix: a/}\nrin_ship: {warehouse: postgres}\n",
            &|_| None,
        )
        .unwrap();
        assert_eq!(
            cfg.quarantine_location("logs"),
            ("logs".to_string(), "rin-ship/quarantine/".to_string())
        );
        let mut cfg2 = cfg.clone();
        cfg2.ext.quarantine_prefix = "s3://q/bad".into();
        assert_eq!(
            cfg2.quarantine_location("logs"),
            ("q".to_string(), "bad/".to_string())
        );
        let it = Item {
            bucket: "logs".into(),
            key: "a/x.json.gz".into(),
            etag: "e1".into(),
            version_id: String::new(),
            size: 0,
        };
        let k = quarantine_key("p/", "\"s\".\"t\"", &it);
        assert!(k.starts_with("p/") && k.ends_with(".json"), "{k}");
        assert_eq!(k, quarantine_key("p/", "\"s\".\"t\"", &it.clone()));
        let other = Item {
            etag: "e2".into(),
            ..it.clone()
        };
        assert_ne!(k, quarantine_key("p/", "\"s\".\"t\"", &other));
        assert_ne!(k, quarantine_key("p/", "\"s\".\"u\"", &it));
        let dest = Destination {
            target: 0,
            schema: "s".into(),
            table: "t".into(),
        };
        let f = LoadFailure {
            sqlstate: crate::load::ledger::failure::SqlState::new("22P02"),
            items: vec![0],
            details: vec![
                ErrorDetail {
                    url: "s3://logs/a/x.json.gz".into(),
                    line: Some(3),
                    column: Some("i".into()),
                    reason: "invalid input syntax for type bigint: \"x\"".into(),
                },
                ErrorDetail {
                    url: "s3://logs/a/other.json.gz".into(),
                    line: Some(1),
                    column: None,
                    reason: "other".into(),
                },
            ],
            ..LoadFailure::new(ErrorKind::Data, "loading into \"s\".\"t\": bad".into())
        };
        let at = chrono::DateTime::parse_from_rfc3339("2024-05-01T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let v: serde_json::Value =
            serde_json::from_str(&quarantine_record(&dest, &it, &f, at)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "entries": [{"url": "s3://logs/a/x.json.gz", "mandatory": true}],
                "table": "\"s\".\"t\"",
                "target": 0,
                "bucket": "logs",
                "key": "a/x.json.gz",
                "etag": "e1",
                "version_id": "",
                "error": {
                    "kind": "data",
                    "sqlstate": "22P02",
                    "message": "loading into \"s\".\"t\": bad",
                    "details": [{
                        "url": "s3://logs/a/x.json.gz",
                        "line": 3,
                        "column": "i",
                        "reason": "invalid input syntax for type bigint: \"x\""
                    }]
                },
                "quarantined_at": "2024-05-01T00:00:00.000Z"
            })
        );
        assert_eq!(
            f.to_string(),
            "loading into \"s\".\"t\": bad (SQLSTATE 22P02); s3://logs/a/x.json.gz line 3 column i: \
             invalid input syntax for type bigint: \"x\"; s3://logs/a/other.json.gz line 1: other"
        );
    }
}
