//! The forward protocol's optional authentication (fluentd's `<security>`): the server opens
//! with HELO (a nonce, and an auth salt when user auth is on), the client answers PING with a
//! SHA-512 digest of its salt, hostname, the nonce and the shared key (and optionally a user's
//! password digest), and the server answers PONG with its own digest, or a refusal.
//!
//! Digests, `+` being byte concatenation, lowercase hex:
//! - PING: sha512(shared_key_salt + client_hostname + nonce + shared_key)
//! - password: sha512(auth_salt + username + password)
//! - PONG: sha512(shared_key_salt + server_hostname + nonce + shared_key)
//!
//! Nonce, auth salt and the client's salt are raw bytes: fluentd sends them as msgpack bin,
//! fluent-bit as str holding random bytes that are not UTF-8. Secrets never leave this module
//! in a log line or a reason string.

use crate::intake::msgpack::Reader;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

pub struct Security {
    pub self_hostname: String,
    shared_key: Vec<u8>,
    /// Empty: no user authentication.
    users: Vec<(Vec<u8>, Vec<u8>)>,
}

/// What the server sent in its HELO, needed to check the PING.
pub struct Helo {
    nonce: [u8; 16],
    auth_salt: Vec<u8>,
}

/// The outcome of a PING: the PONG to send, and why it was refused (a metric label and a
/// log text, neither holding a secret).
pub struct Verdict {
    pub pong: Vec<u8>,
    pub refused: Option<(&'static str, String)>,
}

impl Security {
    pub fn new(self_hostname: String, shared_key: &str, users: Vec<(String, String)>) -> Security {
        Security {
            self_hostname,
            shared_key: shared_key.as_bytes().to_vec(),
            users: users
                .into_iter()
                .map(|(u, p)| (u.into_bytes(), p.into_bytes()))
                .collect(),
        }
    }

    /// A fresh HELO for one connection, with its encoded message.
    pub fn helo(&self) -> (Helo, Vec<u8>) {
        let nonce: [u8; 16] = rand::random();
        let auth_salt = if self.users.is_empty() {
            Vec::new()
        } else {
            rand::random::<[u8; 16]>().to_vec()
        };
        let mut out = Vec::with_capacity(64);
        let w = &mut out;
        rmp::encode::write_array_len(w, 2).unwrap();
        rmp::encode::write_str(w, "HELO").unwrap();
        rmp::encode::write_map_len(w, 3).unwrap();
        rmp::encode::write_str(w, "nonce").unwrap();
        rmp::encode::write_bin(w, &nonce).unwrap();
        rmp::encode::write_str(w, "auth").unwrap();
        rmp::encode::write_bin(w, &auth_salt).unwrap();
        rmp::encode::write_str(w, "keepalive").unwrap();
        rmp::encode::write_bool(w, true).unwrap();
        (Helo { nonce, auth_salt }, out)
    }

    /// Checks a PING message (one complete msgpack value).
    pub fn check_ping(&self, helo: &Helo, ping: &[u8]) -> Verdict {
        match self.verify(helo, ping) {
            Ok(salt) => {
                let digest = hex_sha512(&[
                    &salt,
                    self.self_hostname.as_bytes(),
                    &helo.nonce,
                    &self.shared_key,
                ]);
                Verdict {
                    pong: pong(true, "", &self.self_hostname, &digest),
                    refused: None,
                }
            }
            Err((reason, detail)) => Verdict {
                pong: pong(false, &detail, "", ""),
                refused: Some((reason, detail)),
            },
        }
    }

    /// Returns the client's salt when the PING is good.
    fn verify(&self, helo: &Helo, ping: &[u8]) -> Result<Vec<u8>, (&'static str, String)> {
        let bad = |what: &str| ("malformed", format!("malformed PING: {what}"));
        let mut r = Reader::new(ping);
        match r.array_len() {
            Ok(Some(6)) => {}
            _ => return Err(bad("expected an array of 6 elements")),
        }
        let mut field = |name: &str| -> Result<&[u8], (&'static str, String)> {
            r.bytes()
                .ok()
                .flatten()
                .ok_or_else(|| bad(&format!("{name} must be a string")))
        };
        if field("the message type")? != b"PING" {
            return Err(bad("the first element must be \"PING\""));
        }
        let hostname = field("the hostname")?.to_vec();
        let salt = field("the shared key salt")?.to_vec();
        let digest = field("the shared key digest")?.to_vec();
        let username = field("the username")?.to_vec();
        let password = field("the password digest")?.to_vec();
        let expected = hex_sha512(&[&salt, &hostname, &helo.nonce, &self.shared_key]);
        if !bool::from(expected.as_bytes().ct_eq(&digest)) {
            return Err(("shared_key_mismatch", "shared_key mismatch".into()));
        }
        if !self.users.is_empty() {
            let ok = self.users.iter().any(|(user, pass)| {
                let expected = hex_sha512(&[&helo.auth_salt, user, pass]);
                // Both compared in constant time, and every user checked, so timing says
                // nothing about which part was wrong.
                bool::from(user.ct_eq(&username) & expected.as_bytes().ct_eq(&password))
            });
            if !ok {
                return Err(("user_auth_failed", "username/password mismatch".into()));
            }
        }
        Ok(salt)
    }
}

fn hex_sha512(parts: &[&[u8]]) -> String {
    let mut h = Sha512::new();
    for p in parts {
        h.update(p);
    }
    hex::encode(h.finalize())
}

fn pong(ok: bool, reason: &str, hostname: &str, digest: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(200);
    let w = &mut out;
    rmp::encode::write_array_len(w, 5).unwrap();
    rmp::encode::write_str(w, "PONG").unwrap();
    rmp::encode::write_bool(w, ok).unwrap();
    rmp::encode::write_str(w, reason).unwrap();
    rmp::encode::write_str(w, hostname).unwrap();
    rmp::encode::write_str(w, digest).unwrap();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmpv::Value;

    fn ping(host: &[u8], salt: &[u8], digest: &str, user: &str, pass: &str) -> Vec<u8> {
        let v = Value::Array(vec![
            Value::from("PING"),
            Value::Binary(host.to_vec()),
            Value::Binary(salt.to_vec()),
            Value::from(digest),
            Value::from(user),
            Value::from(pass),
        ]);
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, &v).unwrap();
        out
    }

    fn decode(bytes: &[u8]) -> Vec<Value> {
        match rmpv::decode::read_value(&mut &bytes[..]).unwrap() {
            Value::Array(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn good_ping_gets_pong_with_server_digest() {
        let sec = Security::new("server".into(), "secret", vec![]);
        let (helo, msg) = sec.helo();
        let fields = decode(&msg);
        assert_eq!(fields[0].as_str(), Some("HELO"));
        // fluent-bit style: a salt of raw random bytes, not UTF-8.
        let salt = [
            0xff, 0x00, 0x80, 0x7f, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0xfe,
        ];
        let digest = hex_sha512(&[&salt, b"client", &helo.nonce, b"secret"]);
        let verdict = sec.check_ping(&helo, &ping(b"client", &salt, &digest, "", ""));
        assert!(verdict.refused.is_none());
        let pong = decode(&verdict.pong);
        assert_eq!(pong[1], Value::Boolean(true));
        assert_eq!(pong[3].as_str(), Some("server"));
        assert_eq!(
            pong[4].as_str().unwrap(),
            hex_sha512(&[&salt, b"server", &helo.nonce, b"secret"])
        );
    }

    #[test]
    fn wrong_key_is_refused_without_leaking_it() {
        let sec = Security::new("server".into(), "secret", vec![]);
        let (helo, _) = sec.helo();
        let digest = hex_sha512(&[b"s", b"client", &helo.nonce, b"guess"]);
        let verdict = sec.check_ping(&helo, &ping(b"client", b"s", &digest, "", ""));
        let (reason, detail) = verdict.refused.unwrap();
        assert_eq!(reason, "shared_key_mismatch");
        assert!(!detail.contains("secret"));
        let pong = decode(&verdict.pong);
        assert_eq!(pong[1], Value::Boolean(false));
        assert_eq!(pong[3].as_str(), Some(""));
        assert_eq!(pong[4].as_str(), Some(""));
    }

    #[test]
    fn user_auth() {
        let sec = Security::new("server".into(), "k", vec![("alice".into(), "pw".into())]);
        let (helo, msg) = sec.helo();
        let fields = decode(&msg);
        let Value::Map(m) = &fields[1] else { panic!() };
        let auth = m
            .iter()
            .find(|(k, _)| k.as_str() == Some("auth"))
            .unwrap()
            .1
            .clone();
        let Value::Binary(auth_salt) = auth else {
            panic!()
        };
        assert_eq!(auth_salt.len(), 16);
        let digest = hex_sha512(&[b"s", b"c", &helo.nonce, b"k"]);
        let good = hex_sha512(&[&auth_salt, b"alice", b"pw"]);
        assert!(
            sec.check_ping(&helo, &ping(b"c", b"s", &digest, "alice", &good))
                .refused
                .is_none()
        );
        let bad = hex_sha512(&[&auth_salt, b"alice", b"nope"]);
        let v = sec.check_ping(&helo, &ping(b"c", b"s", &digest, "alice", &bad));
        assert_eq!(v.refused.unwrap().0, "user_auth_failed");
        assert_eq!(
            sec.check_ping(&helo, b"\x93\xa4PING\x01\x02")
                .refused
                .unwrap()
                .0,
            "malformed"
        );
    }
}
