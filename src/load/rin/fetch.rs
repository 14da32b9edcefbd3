//! Where a Rin config comes from (Rin's `-config`): a local path (or `file://`), an
//! `http(s)://` URL or `s3://bucket/key`, fetched within 30 s and at most 16 MiB.
//!
//! Must never: show a URL's user-info or query string (presigned URLs carry credentials
//! there), in a log line or an error.

use anyhow::{Context, Result, anyhow, bail};
use std::fmt;

/// Where a Rin config lives (Rin's `-config`): a local path (or a `file://` URL), an
/// `http(s)://` URL (fetched with one GET, no redirects) or `s3://bucket/key` (GetObject with
/// the default AWS credential chain and region; `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`
/// select an S3-compatible server, addressed path-style). Displayed without user-info or query string: presigned URLs
/// carry credentials there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigLocation {
    Path(std::path::PathBuf),
    Http(hyper::Uri),
    S3 { bucket: String, key: String },
}

/// The longest a remote config may take to fetch, and the largest it may be.
const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
const MAX_CONFIG_BYTES: usize = 16 << 20;

fn has_scheme(s: &str, scheme: &str) -> bool {
    s.get(..scheme.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(scheme))
}

impl ConfigLocation {
    pub fn parse(s: &str) -> Result<ConfigLocation> {
        if has_scheme(s, "http://") || has_scheme(s, "https://") {
            let uri: hyper::Uri = s
                .parse()
                .map_err(|e| anyhow!("invalid config URL {}: {e}", redact_url(s)))?;
            if uri.host().is_none_or(str::is_empty) {
                bail!("invalid config URL {}: no host", redact_url(s));
            }
            return Ok(ConfigLocation::Http(uri));
        }
        if has_scheme(s, "s3://") {
            let rest = &s[5..];
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() || key.is_empty() {
                bail!("invalid config URL {s}: expected s3://bucket/key");
            }
            return Ok(ConfigLocation::S3 {
                bucket: bucket.to_string(),
                key: key.to_string(),
            });
        }
        if has_scheme(s, "file://") {
            // As Rin (Go's url.Parse): the URL's path, whatever its host.
            let rest = &s[7..];
            let path = rest.find('/').map(|i| &rest[i..]).unwrap_or_default();
            if path.is_empty() {
                bail!("invalid config URL {s}: expected file:///path/to/config.yaml");
            }
            return Ok(ConfigLocation::Path(path.into()));
        }
        if s.is_empty() {
            bail!("no config given");
        }
        Ok(ConfigLocation::Path(s.into()))
    }
}

impl fmt::Display for ConfigLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigLocation::Path(p) => write!(f, "{}", p.display()),
            ConfigLocation::Http(u) => {
                let scheme = u.scheme_str().unwrap_or("http");
                let host = u.host().unwrap_or("");
                match u.port_u16() {
                    Some(port) => write!(f, "{scheme}://{host}:{port}{}", u.path()),
                    None => write!(f, "{scheme}://{host}{}", u.path()),
                }
            }
            ConfigLocation::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
        }
    }
}

/// `s` without user-info, query string or fragment (for a URL that did not even parse).
fn redact_url(s: &str) -> String {
    let s = s.split(['?', '#']).next().unwrap_or("");
    match s.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit('@').next().unwrap_or("");
            format!("{scheme}://{host}{path}")
        }
        None => s.to_string(),
    }
}

/// The text of a config at `loc` (a local file, an HTTP(S) GET or an S3 GetObject), within
/// 30 s. Errors name the location without its query string.
pub async fn fetch_config(loc: &ConfigLocation) -> Result<String> {
    let bytes = match loc {
        ConfigLocation::Path(p) => tokio::fs::read(p)
            .await
            .with_context(|| format!("cannot read {}", p.display()))?,
        remote => {
            let fetch = async {
                match remote {
                    ConfigLocation::Http(u) => fetch_http(u).await,
                    #[cfg(feature = "s3")]
                    ConfigLocation::S3 { bucket, key } => fetch_s3(bucket, key).await,
                    #[cfg(not(feature = "s3"))]
                    ConfigLocation::S3 { .. } => {
                        bail!("this rin-ship was built without the `s3` feature")
                    }
                    ConfigLocation::Path(_) => unreachable!(),
                }
            };
            tokio::time::timeout(FETCH_TIMEOUT, fetch)
                .await
                .map_err(|_| anyhow!("no answer within {}s", FETCH_TIMEOUT.as_secs()))
                .and_then(|r| r)
                .with_context(|| format!("cannot fetch the config {remote}"))?
        }
    };
    String::from_utf8(bytes).map_err(|_| anyhow!("config {loc} is not UTF-8"))
}

async fn fetch_http(uri: &hyper::Uri) -> Result<Vec<u8>> {
    use http_body_util::{BodyExt, Empty, Limited};
    use hyper::body::Bytes;
    let https = uri
        .scheme_str()
        .is_some_and(|s| s.eq_ignore_ascii_case("https"));
    let host = uri.host().unwrap_or("");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    // An IPv6 literal comes bracketed.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = tokio::net::TcpStream::connect((bare, port))
        .await
        .with_context(|| format!("cannot connect to {host}:{port}"))?;
    let req = hyper::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(
            hyper::header::HOST,
            match uri.port_u16() {
                Some(p) => format!("{host}:{p}"),
                None => host.to_string(),
            },
        )
        .header(
            hyper::header::USER_AGENT,
            concat!("rin-ship/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())?;
    let resp = if https {
        let name = rustls::pki_types::ServerName::try_from(bare.to_string())
            .map_err(|e| anyhow!("{host}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(
            crate::common::tls::client_config()?,
        ))
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
        send_request(hyper_util::rt::TokioIo::new(tls), req).await?
    } else {
        send_request(hyper_util::rt::TokioIo::new(tcp), req).await?
    };
    let status = resp.status();
    if !status.is_success() {
        bail!("HTTP {status}");
    }
    let body = Limited::new(resp.into_body(), MAX_CONFIG_BYTES)
        .collect()
        .await
        .map_err(|e| anyhow!("reading the body: {e}"))?;
    Ok(body.to_bytes().to_vec())
}

async fn send_request<T>(
    io: T,
    req: hyper::Request<http_body_util::Empty<hyper::body::Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender.send_request(req).await?)
}

/// An endpoint override the AWS SDK reads itself (`AWS_ENDPOINT_URL_S3`, else
/// `AWS_ENDPOINT_URL`, unless `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true`).
#[cfg_attr(not(feature = "s3"), allow(dead_code))]
fn s3_endpoint_from_env(env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    if env("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return None;
    }
    ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
        .into_iter()
        .filter_map(env)
        .find(|v| !v.is_empty())
}

#[cfg(feature = "s3")]
async fn fetch_s3(bucket: &str, key: &str) -> Result<Vec<u8>> {
    use crate::common::aws;
    let shared = aws::sdk_config(&aws::AwsSettings::default()).await;
    // The SDK applies the endpoint override itself; S3-compatible servers want path-style.
    let path_style = s3_endpoint_from_env(&|k| std::env::var(k).ok()).is_some();
    let client = aws::s3_client(&shared, None, path_style);
    let out = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| anyhow!("GetObject: {}", aws_sdk_s3::error::DisplayErrorContext(&e)))?;
    if out
        .content_length
        .is_some_and(|n| n > MAX_CONFIG_BYTES as i64)
    {
        bail!("larger than {MAX_CONFIG_BYTES} bytes");
    }
    let body = out
        .body
        .collect()
        .await
        .map_err(|e| anyhow!("reading the object: {e}"))?;
    let bytes = body.into_bytes();
    if bytes.len() > MAX_CONFIG_BYTES {
        bail!("larger than {MAX_CONFIG_BYTES} bytes");
    }
    Ok(bytes.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_locations() {
        let p = |s: &str| ConfigLocation::parse(s).unwrap();
        assert_eq!(p("rin.yaml"), ConfigLocation::Path("rin.yaml".into()));
        assert_eq!(p("./a/s3:/b"), ConfigLocation::Path("./a/s3:/b".into()));
        assert_eq!(
            p("s3://my-bucket/conf/rin.yaml"),
            ConfigLocation::S3 {
                bucket: "my-bucket".into(),
                key: "conf/rin.yaml".into()
            }
        );
        assert_eq!(p("S3://b/k?x").to_string(), "s3://b/k?x");
        assert!(ConfigLocation::parse("s3://bucket").is_err());
        assert!(ConfigLocation::parse("s3://bucket/").is_err());
        assert!(ConfigLocation::parse("s3:///key").is_err());
        assert!(ConfigLocation::parse("").is_err());
        assert_eq!(
            p("file:///etc/rin/config.yaml"),
            ConfigLocation::Path("/etc/rin/config.yaml".into())
        );
        assert_eq!(
            p("file://localhost/c.yaml"),
            ConfigLocation::Path("/c.yaml".into())
        );
        assert!(ConfigLocation::parse("file://c.yaml").is_err());
        let presigned =
            "https://user:pw@b.s3.amazonaws.com:8443/c/rin.yaml?X-Amz-Signature=SECRET#f";
        let l = p(presigned);
        assert!(matches!(&l, ConfigLocation::Http(u) if u.query().is_some()));
        assert_eq!(l.to_string(), "https://b.s3.amazonaws.com:8443/c/rin.yaml");
        assert_eq!(
            p("HTTP://127.0.0.1/rin.yaml").to_string(),
            "http://127.0.0.1/rin.yaml"
        );
        assert_eq!(p("http://[::1]:80").to_string(), "http://[::1]:80/");
        let e = format!(
            "{:#}",
            ConfigLocation::parse("http://exa mple/x?sig=SECRET").unwrap_err()
        );
        assert!(!e.contains("SECRET"), "{e}");
        assert!(ConfigLocation::parse("http:///x").is_err());
        assert_eq!(redact_url("https://u:p@h/a?b"), "https://h/a");
    }

    #[test]
    fn s3_endpoint_env() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(s3_endpoint_from_env(&env(&[])), None);
        assert_eq!(
            s3_endpoint_from_env(&env(&[("AWS_ENDPOINT_URL", "http://a")])).as_deref(),
            Some("http://a")
        );
        assert_eq!(
            s3_endpoint_from_env(&env(&[
                ("AWS_ENDPOINT_URL", "http://a"),
                ("AWS_ENDPOINT_URL_S3", "http://s3")
            ]))
            .as_deref(),
            Some("http://s3")
        );
        assert_eq!(
            s3_endpoint_from_env(&env(&[
                ("AWS_ENDPOINT_URL", "http://a"),
                ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")
            ])),
            None
        );
    }

    /// One-shot HTTP server on 127.0.0.1: answers every request with `status` and `body`,
    /// and hands back the request head it read.
    async fn serve_once(
        status: &'static str,
        body: &'static str,
    ) -> (u16, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let h = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(resp.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&head).into_owned()
        });
        (port, h)
    }

    #[tokio::test]
    async fn fetch_over_http() {
        let (port, h) = serve_once("200 OK", "queue_name: q\n").await;
        let loc =
            ConfigLocation::parse(&format!("http://127.0.0.1:{port}/c/rin.yaml?a=1")).unwrap();
        assert_eq!(fetch_config(&loc).await.unwrap(), "queue_name: q\n");
        let head = h.await.unwrap();
        assert!(
            head.starts_with("GET /c/rin.yaml?a=1 HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("host: 127.0.0.1:{port}")),
            "{head}"
        );

        let (port, _h) = serve_once("403 Forbidden", "denied").await;
        let url = format!("http://127.0.0.1:{port}/rin.yaml?X-Amz-Signature=SECRET");
        let e = format!(
            "{:#}",
            fetch_config(&ConfigLocation::parse(&url).unwrap())
                .await
                .unwrap_err()
        );
        assert!(
            e.contains(&format!("http://127.0.0.1:{port}/rin.yaml")),
            "{e}"
        );
        assert!(e.contains("403"), "{e}");
        assert!(!e.contains("SECRET") && !e.contains('?'), "{e}");

        // Nothing listening.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let loc = ConfigLocation::parse(&format!("http://127.0.0.1:{port}/x?sig=SECRET")).unwrap();
        let e = format!("{:#}", fetch_config(&loc).await.unwrap_err());
        assert!(
            e.contains("cannot fetch the config") && !e.contains("SECRET"),
            "{e}"
        );
    }
}
