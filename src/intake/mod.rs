//! Intake: protocol servers that accept events from clients and hand them to the buffer.
//! `forward/` and `http/` each own one protocol; `ingest.rs` is what they share below them
//! (routing, dedupe claims, submission), `accept.rs` the accept loop around them, and
//! `msgpack.rs`, `transcode.rs` (the hot path), `decompress.rs`, `route.rs` and `tls.rs`
//! the pieces both protocols use. It must never tell a client "stored" (ack, 2xx) before the
//! buffer made the events durable.

mod accept;
pub mod decompress;
pub mod forward;
pub mod http;
mod ingest;
pub mod msgpack;
pub mod route;
pub mod tls;
pub mod transcode;

pub use ingest::{InboundCounters, Ingest, IngestError, Intake, Route, TargetFormat};
