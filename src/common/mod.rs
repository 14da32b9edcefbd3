//! What every stage uses and none owns: human-friendly units for the config files
//! ([`units`]), listen addresses and bind errors ([`net`]), the time of an event ([`time`]),
//! the compression of an object ([`codec`]), folders and names that survive a power cut
//! ([`durable`]), secrets that cannot reach a log line
//! ([`secret`]), the process's shutdown signal ([`shutdown`]), retry backoff ([`retry`]), the
//! TLS client ([`tls`]) and the AWS client factory ([`aws`]).
//!
//! Must never: depend on a stage (every stage depends on this, so an import back would be a
//! cycle); hold state of the data path.

#[cfg(any(feature = "s3", feature = "sqs"))]
pub mod aws;
pub mod codec;
pub mod durable;
pub mod net;
pub mod retry;
pub mod secret;
pub mod shutdown;
pub mod time;
pub mod tls;
pub mod units;
