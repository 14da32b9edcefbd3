//! The HTTP intake's settings (`http:` in the config file): listen address, body limits, how
//! a request names its tag and time, credentials and TLS. Owns their defaults and the checks
//! that concern only them; it must never echo a credential in an error.

use crate::common::secret::Secret;
use crate::common::units::{ByteSize, Span};
use crate::intake::tls::TlsConfig;
use hyper::header::HeaderName;
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub enabled: bool,
    /// `host:port` (an IP address, or a name resolved at start).
    #[serde(deserialize_with = "crate::common::net::deserialize_bind")]
    pub bind: SocketAddr,
    /// Largest request body as sent (compressed or not); larger ones get 413.
    pub max_body_bytes: ByteSize,
    /// Largest body after decompression (bomb guard); larger ones get 413.
    pub max_decompressed_bytes: ByteSize,
    pub max_connections: usize,
    /// A connection that sends no complete request headers for this long is closed.
    pub idle_timeout: Span,
    /// A request's body must have arrived whole within this after its headers (a
    /// slowloris-style body gets 408 and nothing of it is stored).
    pub body_timeout: Span,
    /// Header carrying the tag (fluent-bit `header_tag`); wins over the path. Default
    /// `FLUENT-TAG`, the name in `fluent-bit/http.conf`, so fluent-bit works on the
    /// defaults. Empty: none (the path only).
    pub tag_header: String,
    /// Tag for requests to `/` without a tag header. Empty: such requests get 400.
    pub default_tag: String,
    /// Record field read as the event time (fluent-bit `json_date_key`: `date`). Empty: none.
    pub time_key: String,
    /// `Retry-After` sent with 503.
    pub retry_after: Span,
    pub auth: HttpAuth,
    /// TLS on the HTTP port; absent: plain HTTP.
    pub tls: Option<TlsConfig>,
}

/// Credentials a request must carry when any is set: a bearer token, basic auth, or either.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields, default)]
pub struct HttpAuth {
    pub bearer_token: Secret,
    pub username: String,
    pub password: Secret,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            bind: "127.0.0.1:9880".parse().unwrap(),
            max_body_bytes: ByteSize(64 << 20),
            max_decompressed_bytes: ByteSize(256 << 20),
            max_connections: 1024,
            idle_timeout: Span(Duration::from_secs(60)),
            body_timeout: Span(Duration::from_secs(60)),
            tag_header: "FLUENT-TAG".into(),
            default_tag: String::new(),
            time_key: "time".into(),
            retry_after: Span(Duration::from_secs(5)),
            auth: HttpAuth::default(),
            tls: None,
        }
    }
}

impl HttpConfig {
    /// Checks what serde cannot; errors name the field.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.max_connections == 0 {
            anyhow::bail!("field `http.max_connections`: at least 1");
        }
        if self.max_body_bytes.0 == 0 || self.max_decompressed_bytes.0 == 0 {
            anyhow::bail!("field `http.max_body_bytes`/`http.max_decompressed_bytes`: at least 1");
        }
        if !self.tag_header.is_empty()
            && HeaderName::from_bytes(self.tag_header.as_bytes()).is_err()
        {
            anyhow::bail!(
                "field `http.tag_header`: `{}` is not a valid header name",
                self.tag_header
            );
        }
        if self.auth.username.is_empty() != self.auth.password.expose().is_empty() {
            anyhow::bail!("field `http.auth`: set both username and password, or neither");
        }
        if self.auth.username.contains(':') {
            anyhow::bail!("field `http.auth.username`: must not contain `:`");
        }
        Ok(())
    }
}
