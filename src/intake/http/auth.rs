//! HTTP credentials: a bearer token, basic auth, or either, as `http.auth` sets them. Owns the
//! comparison; it must never compare a secret in variable time, and never reveal a secret's
//! length (both sides are hashed first).

use super::config::HttpAuth;
use super::handler::Reject;
use hyper::StatusCode;
use hyper::header::{self, HeaderMap};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// SHA-256 of the bearer token and of `user:password`, when set.
pub struct Credentials {
    bearer: Option<[u8; 32]>,
    basic: Option<[u8; 32]>,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl Credentials {
    pub fn new(auth: &HttpAuth) -> Credentials {
        Credentials {
            bearer: (!auth.bearer_token.expose().is_empty())
                .then(|| sha256(auth.bearer_token.expose().as_bytes())),
            basic: (!auth.username.is_empty()).then(|| {
                sha256(format!("{}:{}", auth.username, auth.password.expose()).as_bytes())
            }),
        }
    }

    /// Whether requests must carry credentials at all.
    pub fn required(&self) -> bool {
        self.bearer.is_some() || self.basic.is_some()
    }

    /// The `WWW-Authenticate` challenge sent with 401.
    pub fn challenge(&self) -> &'static str {
        if self.basic.is_some() {
            "Basic realm=\"rin-ship\""
        } else {
            "Bearer realm=\"rin-ship\""
        }
    }

    /// Checks the `Authorization` header (401 when it does not match).
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Reject> {
        if !self.required() {
            return Ok(());
        }
        let fail = |detail: &str| Reject::new(StatusCode::UNAUTHORIZED, "auth", detail);
        let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return Err(fail("credentials required (Authorization header)"));
        };
        let (scheme, credential) = value.trim().split_once(' ').unwrap_or((value, ""));
        let credential = credential.trim();
        let ok = if scheme.eq_ignore_ascii_case("bearer") {
            self.bearer
                .is_some_and(|want| bool::from(sha256(credential.as_bytes()).ct_eq(&want)))
        } else if scheme.eq_ignore_ascii_case("basic") {
            use base64::Engine;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(credential)
                .unwrap_or_default();
            self.basic
                .is_some_and(|want| bool::from(sha256(&decoded).ct_eq(&want)))
        } else {
            false
        };
        if ok {
            Ok(())
        } else {
            Err(fail("invalid credentials"))
        }
    }
}
