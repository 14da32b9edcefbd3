//! Server-side TLS shared by the intake servers: certificate and key from PEM files, optional
//! client-certificate verification against a CA bundle, and a reload (on SIGHUP) that swaps the
//! certificate for new connections without touching the ones already open. A reload that fails
//! keeps the old certificate and says why; no error or log line may carry a key's bytes.

use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use tokio_rustls::TlsAcceptor;
use tracing::{error, info};

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA bundle; when set, clients must present a certificate it signed.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// A TLS acceptor whose certificate can be replaced while the server runs.
#[derive(Clone)]
pub struct ReloadableAcceptor {
    config: TlsConfig,
    /// Application protocols offered in the TLS handshake (ALPN), e.g. `h2` for HTTP/2.
    alpn: &'static [&'static [u8]],
    current: Arc<RwLock<TlsAcceptor>>,
}

impl ReloadableAcceptor {
    pub fn new(config: &TlsConfig, alpn: &'static [&'static [u8]]) -> Result<ReloadableAcceptor> {
        let acceptor = build(config, alpn)?;
        Ok(ReloadableAcceptor {
            config: config.clone(),
            alpn,
            current: Arc::new(RwLock::new(acceptor)),
        })
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        self.current.read().expect("tls lock").clone()
    }

    /// Reloads the files; on failure the current certificate stays.
    pub fn reload(&self) {
        match build(&self.config, self.alpn) {
            Ok(acceptor) => {
                *self.current.write().expect("tls lock") = acceptor;
                info!(cert = %self.config.cert.display(), "TLS certificate reloaded");
                metrics::counter!("rin_tls_reloads_total", "result" => "ok").increment(1);
            }
            Err(e) => {
                error!("TLS reload failed, keeping the previous certificate: {e:#}");
                metrics::counter!("rin_tls_reloads_total", "result" => "error").increment(1);
            }
        }
    }

    /// Reloads on every SIGHUP, for the life of the process.
    pub fn reload_on_sighup(&self) -> Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup())?;
        let this = self.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                this.reload();
            }
        });
        Ok(())
    }
}

fn build(config: &TlsConfig, alpn: &[&[u8]]) -> Result<TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.cert)
        .with_context(|| format!("cannot read certificate {}", config.cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("invalid PEM in {}", config.cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no certificate", config.cert.display());
    }
    // The error names the file only: a key's bytes must never reach a log.
    let key = PrivateKeyDer::from_pem_file(&config.key)
        .map_err(|_| anyhow::anyhow!("cannot read a private key from {}", config.key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &config.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("cannot read client CA {}", ca.display()))?
            {
                roots
                    .add(cert.with_context(|| format!("invalid PEM in {}", ca.display()))?)
                    .with_context(|| format!("unusable CA certificate in {}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .context("client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder
        .with_single_cert(certs, key)
        .context("certificate and key do not form a usable pair")?;
    server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(server)))
}
