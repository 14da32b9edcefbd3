//! Operations on top of the stages, each a command of its own: `rin-ship backfill` (load what
//! is already in a bucket, through the same ledger), `rin-ship maintain` (VACUUM / ANALYZE the
//! loaded tables when their statistics call for it), `rin-ship query` (read the embedded
//! warehouse) and `rin-ship top` / `health` (watch a running process through its `/metrics`).
//!
//! Must never: be called from a stage (they call the stages, never the other way round).

#[cfg(all(feature = "s3", feature = "sqs"))]
pub mod backfill;
pub mod maintain;
pub mod query;
pub mod top;
