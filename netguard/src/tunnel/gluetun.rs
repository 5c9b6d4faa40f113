//! Gluetun's control server: `GET /v1/vpn/status` says `{"status":"running"}` when the VPN
//! is up. Current Gluetun asks for credentials on every route (`401 Unauthorized` without
//! them or with wrong ones): an API key in `X-API-Key`, or basic auth, per the role its
//! `/gluetun/auth/config.toml` gives netguard.

use std::{
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
};

use super::Evidence;
use crate::config::{
    HEALTH_CHECK_TIMEOUT,
    gluetun::{Method, Secret},
};

/// What the reason of a refused request starts with (`status` and `doctor` look for it).
pub const REFUSED: &str = "the control server refused netguard's credentials";

/// How to authenticate, resolved for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    None,
    /// From the configuration.
    Configured(Method),
    /// From the gateway's `netguard.gluetun.apikey` label (readable by `docker inspect`).
    Label(String),
}

/// `GET /v1/vpn/status` (Gluetun ≥ 3.40), else `/v1/openvpn/status` (older): running is up.
pub fn status(address: SocketAddr, credentials: &Credentials) -> io::Result<Evidence> {
    let header = match header(credentials) {
        Ok(header) => header,
        Err(error) => return Ok(Evidence::Down(error)),
    };
    let mut last = Evidence::Down("no answer".into());
    for path in ["/v1/vpn/status", "/v1/openvpn/status"] {
        let (status, body) = match http_get(address, path, &header) {
            Ok(answer) => answer,
            Err(error) => return Ok(Evidence::Down(format!("control server {address}: {error}"))),
        };
        match status {
            404 => {
                last = Evidence::Down(format!("{path}: 404"));
                continue;
            }
            401 | 403 => return Ok(Evidence::Down(refused(status, credentials))),
            200 => {}
            _ => return Ok(Evidence::Down(format!("{path}: HTTP {status}"))),
        }
        let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
        return Ok(if compact.contains("\"status\":\"running\"") {
            Evidence::Up
        } else {
            Evidence::Down(format!("{path}: {}", body.trim()))
        });
    }
    Ok(last)
}

/// Why a 401/403 came, and the fix: not a tunnel outage, but still down (fail closed).
fn refused(status: u16, credentials: &Credentials) -> String {
    let gave = match credentials {
        Credentials::None => "none were configured",
        Credentials::Configured(Method::ApiKey(_)) => "the configured API key was refused",
        Credentials::Configured(Method::Basic { .. }) => {
            "the configured username and password were refused"
        }
        Credentials::Label(_) => "the API key of the netguard.gluetun.apikey label was refused",
    };
    format!(
        "{REFUSED} (HTTP {status}: {gave}): give Gluetun a role with routes = [\"GET \
         /v1/vpn/status\"] and give netguard its key (--gluetun-api-key-file, \
         NETGUARD_GLUETUN_API_KEY or [[gluetun_auth]]); the tunnel itself may be fine, but \
         it counts as down until netguard can ask"
    )
}

/// The request header carrying the credentials (with its line end), or why there is none.
fn header(credentials: &Credentials) -> Result<String, String> {
    let read = |secret: &Secret| {
        secret
            .read()
            .map_err(|e| format!("Gluetun credentials: {e}"))
    };
    Ok(match credentials {
        Credentials::None => String::new(),
        Credentials::Label(key) => {
            crate::config::gluetun::printable(key)
                .map_err(|e| format!("Gluetun credentials: {e}"))?;
            format!("X-API-Key: {key}\r\n")
        }
        Credentials::Configured(Method::ApiKey(key)) => format!("X-API-Key: {}\r\n", read(key)?),
        Credentials::Configured(Method::Basic { username, password }) => {
            let pair = format!("{username}:{}", read(password)?);
            format!("Authorization: Basic {}\r\n", base64(pair.as_bytes()))
        }
    })
}

/// Standard base64 with padding (RFC 4648), for basic auth.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A minimal HTTP/1.1 GET with `Connection: close` (the control server is local and simple).
fn http_get(address: SocketAddr, path: &str, header: &str) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, HEALTH_CHECK_TIMEOUT)?;
    stream.set_read_timeout(Some(HEALTH_CHECK_TIMEOUT))?;
    stream.set_write_timeout(Some(HEALTH_CHECK_TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\n{header}Connection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an HTTP response"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
            ("netguard:s3cret", "bmV0Z3VhcmQ6czNjcmV0"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain}");
        }
    }

    #[test]
    fn credentials_become_the_header_gluetun_reads() {
        assert_eq!(header(&Credentials::None).unwrap(), "");
        assert_eq!(
            header(&Credentials::Configured(Method::ApiKey(Secret::Value(
                "k".into()
            ))))
            .unwrap(),
            "X-API-Key: k\r\n"
        );
        assert_eq!(
            header(&Credentials::Configured(Method::Basic {
                username: "netguard".into(),
                password: Secret::Value("s3cret".into())
            }))
            .unwrap(),
            "Authorization: Basic bmV0Z3VhcmQ6czNjcmV0\r\n"
        );
        let missing = Credentials::Configured(Method::ApiKey(Secret::File("/nonexistent".into())));
        assert!(header(&missing).unwrap_err().contains("/nonexistent"));
    }

    #[test]
    fn a_refusal_is_named_as_such_not_as_an_outage() {
        let reason = refused(401, &Credentials::None);
        assert!(reason.starts_with(REFUSED) && reason.contains("none were configured"));
        assert!(reason.contains("GET /v1/vpn/status"));
    }
}
