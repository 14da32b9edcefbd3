//! TLS as a client: rustls trusting the operating system's certificate store, for warehouse
//! connections and for configs fetched over `https://`. (The intake's server-side TLS is
//! `intake::tls`.)

use anyhow::{Context, Result};
use std::sync::Arc;

/// A TLS client config trusting the OS certificate store.
pub fn client_config() -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for c in found.certs {
        let _ = roots.add(c);
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS set-up")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
