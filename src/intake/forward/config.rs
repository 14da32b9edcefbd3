//! The forward server's settings (`forward:` in the config file): listen address, per-frame
//! and per-connection limits, the shared-key handshake and TLS. Owns their defaults and the
//! checks that concern only them; it must never echo a secret (shared key, password) in an
//! error.

use super::frame::Limits;
use crate::common::secret::Secret;
use crate::common::units::{ByteSize, Span};
use crate::intake::tls::TlsConfig;
use anyhow::{Result, bail};
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardConfig {
    pub enabled: bool,
    /// `host:port` (an IP address, or a name resolved at start).
    #[serde(deserialize_with = "crate::common::net::deserialize_bind")]
    pub bind: SocketAddr,
    /// Largest msgpack frame accepted on a connection.
    pub max_frame_bytes: ByteSize,
    /// Largest decompressed payload of one CompressedPackedForward frame (bomb guard).
    pub max_decompressed_bytes: ByteSize,
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout: Span,
    /// A frame begun must have arrived whole within this, however often bytes come (a
    /// slowloris-style client is closed; nothing of the frame was acked, so it is resent).
    pub frame_timeout: Span,
    /// Time a client has to finish the TLS and shared-key handshakes.
    pub handshake_timeout: Span,
    /// Most events one frame may carry.
    pub max_entries: usize,
    /// Answer fluentd's UDP heartbeat (a `0x00` datagram) on the same port.
    pub udp_heartbeat: bool,
    /// Shared-key handshake (fluentd's `<security>`); absent: no handshake.
    pub security: Option<SecurityConfig>,
    /// TLS on the forward port (certificate reloaded on SIGHUP); absent: plain TCP.
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    /// Hostname sent in PONG; it must differ from the client's own (fluentd checks).
    /// Empty: this machine's hostname.
    #[serde(default)]
    pub self_hostname: String,
    pub shared_key: Secret,
    /// Require a username and password from `users` as well.
    #[serde(default)]
    pub user_auth: bool,
    #[serde(default)]
    pub users: Vec<UserConfig>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub username: String,
    pub password: Secret,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            enabled: true,
            bind: "127.0.0.1:24224".parse().unwrap(),
            max_frame_bytes: ByteSize(64 << 20),
            max_decompressed_bytes: ByteSize(256 << 20),
            max_connections: 1024,
            idle_timeout: Span(Duration::from_secs(600)),
            frame_timeout: Span(Duration::from_secs(60)),
            handshake_timeout: Span(Duration::from_secs(10)),
            max_entries: 1_000_000,
            udp_heartbeat: true,
            security: None,
            tls: None,
        }
    }
}

impl ForwardConfig {
    /// Checks what serde cannot; errors name the field.
    pub fn validate(&self) -> Result<()> {
        if let Some(sec) = &self.security {
            if sec.shared_key.expose().is_empty() {
                bail!("field `forward.security.shared_key`: must not be empty");
            }
            if sec.user_auth && sec.users.is_empty() {
                bail!("field `forward.security.users`: user_auth needs at least one user");
            }
        }
        if self.max_entries == 0 {
            bail!("field `forward.max_entries`: at least 1");
        }
        Ok(())
    }

    /// What one frame may cost in memory and events.
    pub fn frame_limits(&self) -> Limits {
        Limits {
            max_decompressed: self.max_decompressed_bytes.0 as usize,
            max_entries: self.max_entries,
        }
    }
}
