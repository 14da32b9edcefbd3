//! Where a synced table stands: its last pass, its watermark, and the pass whose objects are
//! all in the store but not yet known loaded (`pending`). Kept as one small JSON object in the
//! store itself, at `<prefix>_state/<target>.json`, beside the objects it describes.
//!
//! Why there: the watermark must never run ahead of the data. A pass first puts every object,
//! then records them with the new watermark as `pending` (one whole-object write: a store
//! replaces an object atomically), then loads them, then clears `pending`. A crash before the
//! record redoes the pass from the old watermark (same keys, [`super::objects`]); after it, the
//! next run loads the recorded objects first — the ledger skips those that committed — and
//! only then reads on. The state lives and fails with the objects (the same bucket or
//! folder), and needs nothing on the machine that runs the sync (a CronJob's disk is gone
//! after each run).
//!
//! Must never: record a watermark before every object of its pass is in the store.

use super::objects::Written;
use crate::store::{Fetched, ObjectRef, Objects};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TableState {
    /// The last pass whose objects all loaded (0: none yet).
    pub pass: u64,
    /// The newest watermark that pass read (as the source printed it).
    pub watermark: Option<String>,
    pub pending: Option<Pending>,
    /// When the key reconciliation last ran (Unix seconds; `delete_missing`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconciled_at: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Pending {
    pub pass: u64,
    pub watermark: Option<String>,
    pub objects: Vec<PendingObject>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingObject {
    pub key: String,
    pub etag: String,
    pub size: u64,
    pub rows: u64,
}

impl PendingObject {
    pub fn of(w: &Written) -> PendingObject {
        PendingObject {
            key: w.stored.key.clone(),
            etag: w.stored.etag.clone(),
            size: w.size,
            rows: w.rows,
        }
    }
}

/// One table's state object.
pub struct StateObject<'a> {
    pub objects: &'a Objects,
    pub bucket: String,
    pub key: String,
}

impl StateObject<'_> {
    pub async fn read(&self) -> Result<TableState> {
        let what = || format!("the sync state {}", self.key);
        let obj = ObjectRef {
            bucket: &self.bucket,
            key: &self.key,
            etag: "",
            version_id: "",
        };
        // Both stores answer a missing object with `Gone`; any error stays an error (taken for
        // "no state", it would start the table over from a full snapshot).
        let mut body = match self.objects.open(obj).await.with_context(what)? {
            Fetched::Body(b) => b,
            Fetched::Gone => return Ok(TableState::default()),
        };
        let mut text = String::new();
        body.read_to_string(&mut text).await.with_context(what)?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a sync state rin-ship wrote; move it away to sync the table from \
                 the start",
                what()
            )
        })
    }

    pub async fn write(&self, state: &TableState) -> Result<()> {
        let body = serde_json::to_string_pretty(state)?;
        self.objects
            .put_small(&self.bucket, &self.key, body)
            .await
            .with_context(|| format!("writing the sync state {}", self.key))
    }
}
