//! Listen addresses in config files and environment variables (`host:port`), and what a failed
//! bind tells the user. Owns the grammar of a bind address: an IP address and port, or a host
//! name this machine resolves (as Vector and fluent-bit take them). It must never accept a
//! value it has to guess at (a bare port could mean this machine or every interface), and a
//! failed listen must always name the setting that moves it.

use serde::{Deserialize, Deserializer};
use std::net::{SocketAddr, ToSocketAddrs};

/// Parses a listen address: `127.0.0.1:24224`, `[::1]:24224`, `0.0.0.0:24224`, or a host name
/// with a port (`localhost:24224`), resolved now. A name with both IPv4 and IPv6 addresses
/// listens on the IPv4 one (what `localhost` means to most clients).
pub fn parse_bind(text: &str) -> Result<SocketAddr, String> {
    let t = text.trim();
    if let Ok(addr) = t.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let port_only = t.strip_prefix(':').unwrap_or(t);
    if !port_only.is_empty() && port_only.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "`{t}` has no host: write `127.0.0.1:{port_only}` (this machine only) or \
             `0.0.0.0:{port_only}` (every interface)"
        ));
    }
    let Some((host, port)) = t.rsplit_once(':').filter(|(h, _)| !h.is_empty()) else {
        return Err(format!(
            "`{t}` has no port: write host:port, e.g. `127.0.0.1:24224` or `localhost:24224`"
        ));
    };
    if host.contains(':') && !host.starts_with('[') {
        return Err(format!(
            "`{t}`: write an IPv6 address in brackets, e.g. `[::1]:24224`"
        ));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{t}`: the port `{port}` is not a number from 0 to 65535"))?;
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| {
            format!(
                "`{t}`: cannot resolve the host `{host}` ({e}); write an IP address \
                 (127.0.0.1, 0.0.0.0) or a name this machine resolves"
            )
        })?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("`{t}`: the host `{host}` resolves to no address"))
}

/// serde `deserialize_with` for a listen address (see [`parse_bind`]).
pub fn deserialize_bind<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Port(u64),
    }
    let text = match Raw::deserialize(d).map_err(|_| {
        serde::de::Error::custom("expected a listen address such as `127.0.0.1:24224`")
    })? {
        Raw::Text(s) => s,
        Raw::Port(p) => p.to_string(),
    };
    parse_bind(&text).map_err(serde::de::Error::custom)
}

/// The error of a listen that failed: what was to listen, where, and which setting (and, for
/// the defaults without a config file, which environment variable) moves it.
pub fn bind_error(
    what: &str,
    addr: SocketAddr,
    setting: &str,
    env: Option<&str>,
    e: std::io::Error,
) -> anyhow::Error {
    let moved_by = match env {
        Some(var) => {
            format!("set `{setting}` in the config file (or {var} when running without one)")
        }
        None => format!("set `{setting}`"),
    };
    let advice = match e.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "another process listens there (find it with `ss -ltnp 'sport = :{}'`): stop it, or {moved_by} to a free port",
            addr.port()
        ),
        std::io::ErrorKind::PermissionDenied => {
            format!("ports below 1024 need privileges: {moved_by} to a port above 1023")
        }
        std::io::ErrorKind::AddrNotAvailable => format!(
            "{} is not an address of this machine: {moved_by} to one of its addresses, or 0.0.0.0",
            addr.ip()
        ),
        _ => moved_by,
    };
    anyhow::anyhow!("cannot listen for {what} on {addr}: {e}; {advice}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_names() {
        assert_eq!(parse_bind("127.0.0.1:24224").unwrap().port(), 24224);
        assert_eq!(
            parse_bind("[::1]:9880").unwrap(),
            "[::1]:9880".parse().unwrap()
        );
        let local = parse_bind("localhost:24224").unwrap();
        assert!(local.ip().is_loopback() && local.port() == 24224, "{local}");
        assert!(local.is_ipv4(), "{local}");
    }

    #[test]
    fn errors_say_what_to_write() {
        let e = parse_bind("24224").unwrap_err();
        assert!(
            e.contains("127.0.0.1:24224") && e.contains("0.0.0.0:24224"),
            "{e}"
        );
        let e = parse_bind(":24224").unwrap_err();
        assert!(e.contains("127.0.0.1:24224"), "{e}");
        let e = parse_bind("localhost").unwrap_err();
        assert!(e.contains("no port"), "{e}");
        let e = parse_bind("localhost:many").unwrap_err();
        assert!(e.contains("`many`"), "{e}");
        let e = parse_bind("no-such-host.invalid:1").unwrap_err();
        assert!(e.contains("cannot resolve"), "{e}");
    }

    #[test]
    fn a_port_in_use_names_the_setting() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let e = std::net::TcpListener::bind(addr).unwrap_err();
        let msg = bind_error(
            "forward",
            addr,
            "forward.bind",
            Some("RIN_SHIP_FORWARD_BIND"),
            e,
        )
        .to_string();
        assert!(
            msg.contains("forward.bind") && msg.contains("RIN_SHIP_FORWARD_BIND"),
            "{msg}"
        );
    }
}
