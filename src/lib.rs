//! rin-ship: a log-shipping sidecar and warehouse loader.
//!
//! The pipeline, one module per stage:
//! - [`intake`]: protocol servers (Fluent forward) that accept events and ack them once durable;
//! - [`buffer`]: events written once, on disk, as the final gzip NDJSON object bytes;
//! - [`ship`]: sealed chunks uploaded under deterministic keys to a folder or S3.
//!
//! - [`store`] and [`queue`]: the objects and the notifications between shipping and loading;
//! - [`load`]: the warehouse loader (`rin-ship import`, and `serve`'s embedded loader);
//! - [`ops`]: commands on top (`backfill`, `maintain`, `query`, `top`, `health`).
//!
//! Around them: [`config`] (serve's YAML), [`common`] (units, secrets, shutdown, retry, AWS),
//! [`telemetry`] (logs, metrics), [`pipeline`] (serve's wiring and shutdown). The hot path
//! (`intake::msgpack`, `intake::transcode`) and routing (`intake::route`) live with the intake.
//! `fuzzing` (hidden) holds the fuzz targets' bodies (docs/fuzzing.md).

pub mod buffer;
pub mod common;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod intake;
pub mod load;
pub mod ops;
pub mod pipeline;
pub mod queue;
pub mod ship;
pub mod store;
pub mod sync;
pub mod telemetry;
