//! The Gluetun stand-in's processes (no registry is reachable, so `qmcgaw/gluetun` cannot be
//! pulled): its control server and its health server and HEALTHCHECK client, behaving as
//! Gluetun's source does today (v3, `internal/server`, `internal/healthcheck`):
//!
//! ```text
//! gluetun-standin control       the control server on HTTP_CONTROL_SERVER_ADDRESS (:8000)
//!                               and the health server on HEALTH_SERVER_ADDRESS
//!                               (127.0.0.1:9999), until killed
//! gluetun-standin healthcheck   what `/gluetun-entrypoint healthcheck` (the image's
//!                               HEALTHCHECK) does: exit 0 if the health server says healthy
//! ```
//!
//! Control server: every route needs a role (`HTTP_CONTROL_SERVER_AUTH_CONFIG_FILEPATH`,
//! default `/gluetun/auth/config.toml`, `[[roles]]` with `name`, `routes`, `auth` =
//! `none`/`apikey`/`basic`, `apikey`, `username`, `password`; unknown fields are an error;
//! plus `HTTP_CONTROL_SERVER_AUTH_DEFAULT_ROLE`, JSON, for the routes no role names). An
//! unknown path is 404, a wrong method 405, a route without a role or with no role
//! authorizing the request 401 with body `Unauthorized`. The API key comes in `X-API-Key`
//! or `?api_key=`. `GET /v1/vpn/status` answers `{"status":"running"}` while the WireGuard
//! interface `wg0` is up, else `{"status":"stopped"}`.
//!
//! Health: healthy while a TCP connection to the first of `HEALTH_TARGET_ADDRESSES` succeeds
//! (through the tunnel, as Gluetun's check does).

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream, ToSocketAddrs as _},
    time::Duration,
};

use serde::Deserialize;

/// Gluetun's routes and their methods (`internal/server/middlewares/auth/settings.go`).
const ROUTES: [(&str, &[&str]); 15] = [
    ("/openvpn/actions/restart", &["GET"]),
    ("/openvpn/portforwarded", &["GET"]),
    ("/openvpn/settings", &["GET"]),
    ("/unbound/actions/restart", &["GET"]),
    ("/updater/restart", &["GET"]),
    ("/v1/version", &["GET"]),
    ("/v1/vpn/status", &["GET", "PUT"]),
    ("/v1/vpn/settings", &["GET", "PUT"]),
    ("/v1/openvpn/status", &["GET", "PUT"]),
    ("/v1/openvpn/portforwarded", &["GET"]),
    ("/v1/openvpn/settings", &["GET"]),
    ("/v1/dns/status", &["GET", "PUT"]),
    ("/v1/updater/status", &["GET", "PUT"]),
    ("/v1/publicip/ip", &["GET"]),
    ("/v1/portforward", &["GET", "PUT"]),
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    roles: Vec<Role>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Role {
    #[serde(default)]
    name: String,
    #[serde(default)]
    auth: String,
    #[serde(default)]
    apikey: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    routes: Vec<String>,
}

fn env(key: &str, default: &str) -> String {
    std::env::var(key)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// The roles as Gluetun builds them at start: the file's, then the default role for every
/// route the file names for no role.
fn roles() -> Vec<Role> {
    let path = env(
        "HTTP_CONTROL_SERVER_AUTH_CONFIG_FILEPATH",
        "/gluetun/auth/config.toml",
    );
    let mut settings: Settings = match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).unwrap_or_else(|e| {
            eprintln!("ERROR auth file {path}: {e}");
            std::process::exit(1)
        }),
        Err(_) => Settings::default(),
    };
    let default = env("HTTP_CONTROL_SERVER_AUTH_DEFAULT_ROLE", "{}");
    let mut role: Role = serde_json::from_str(&default).unwrap_or_else(|e| {
        eprintln!("ERROR default role: {e}");
        std::process::exit(1)
    });
    if !role.auth.is_empty() {
        let named: Vec<&String> = settings.roles.iter().flat_map(|r| &r.routes).collect();
        role.routes = ROUTES
            .iter()
            .flat_map(|(path, methods)| methods.iter().map(move |m| format!("{m} {path}")))
            .filter(|route| !named.contains(&route))
            .collect();
        settings.roles.push(role);
    }
    settings.roles
}

/// A request: method, path, query, headers (names lowercased).
struct Request {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn read(stream: &TcpStream) -> Option<Self> {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let mut parts = line.split_whitespace();
        let method = parts.next()?.to_string();
        let target = parts.next()?;
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).ok()? == 0 || line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_lowercase(), value.trim().to_string()));
            }
        }
        Some(Self {
            method,
            path: path.to_string(),
            query: query.to_string(),
            headers,
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn authorized(role: &Role, request: &Request) -> bool {
    match role.auth.as_str() {
        "none" => true,
        "apikey" => {
            let key = request.header("x-api-key").map(str::to_string).or_else(|| {
                request
                    .query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("api_key=").map(str::to_string))
            });
            key.as_deref() == Some(role.apikey.as_str())
        }
        "basic" => {
            let expected = base64(format!("{}:{}", role.username, role.password).as_bytes());
            request.header("authorization") == Some(&format!("Basic {expected}"))
        }
        _ => false,
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

fn respond(mut stream: &TcpStream, status: &str, content_type: &str, body: &str) {
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Gluetun's `http.Error`: the status text and a newline, as plain text.
fn error(stream: &TcpStream, status: &str) {
    let text = status.split_once(' ').map_or(status, |(_, t)| t);
    respond(
        stream,
        status,
        "text/plain; charset=utf-8",
        &format!("{text}\n"),
    );
}

fn control(stream: TcpStream, roles: &[Role]) {
    let Some(request) = Request::read(&stream) else {
        return;
    };
    let Some((_, methods)) = ROUTES.iter().find(|(p, _)| *p == request.path) else {
        return error(&stream, "404 Not Found");
    };
    if !methods.contains(&request.method.as_str()) {
        return error(&stream, "405 Method Not Allowed");
    }
    let route = format!("{} {}", request.method, request.path);
    let mut allowed = roles
        .iter()
        .filter(|r| r.routes.contains(&route))
        .peekable();
    if allowed.peek().is_none() {
        return error(&stream, "401 Unauthorized");
    }
    if !allowed.any(|role| authorized(role, &request)) {
        return error(&stream, "401 Unauthorized");
    }
    match route.as_str() {
        "GET /v1/vpn/status" | "GET /v1/openvpn/status" => {
            let up = std::fs::read_to_string("/sys/class/net/wg0/operstate")
                .is_ok_and(|s| s.trim() != "down");
            let status = if up { "running" } else { "stopped" };
            respond(
                &stream,
                "200 OK",
                "application/json",
                &format!("{{\"status\":\"{status}\"}}\n"),
            );
        }
        _ => respond(&stream, "200 OK", "application/json", "{}\n"),
    }
}

/// Healthy while the first health target answers a TCP connection.
fn healthy() -> Result<(), String> {
    let targets = env("HEALTH_TARGET_ADDRESSES", "cloudflare.com:443");
    let target = targets.split(',').next().unwrap_or_default().trim();
    let address = target
        .to_socket_addrs()
        .map_err(|e| format!("resolving {target}: {e}"))?
        .next()
        .ok_or_else(|| format!("{target}: no address"))?;
    TcpStream::connect_timeout(&address, Duration::from_secs(2))
        .map(drop)
        .map_err(|e| format!("dialing {target}: {e}"))
}

fn health(stream: TcpStream) {
    let _ = Request::read(&stream);
    match healthy() {
        Ok(()) => respond(&stream, "200 OK", "text/plain", ""),
        Err(why) => respond(&stream, "500 Internal Server Error", "text/plain", &why),
    }
}

fn serve(
    address: &str,
    handle: impl Fn(TcpStream) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let address = if address.starts_with(':') {
        format!("0.0.0.0{address}")
    } else {
        address.to_string()
    };
    let listener = TcpListener::bind(&address).unwrap_or_else(|e| {
        eprintln!("ERROR listening on {address}: {e}");
        std::process::exit(1)
    });
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            handle(stream);
        }
    })
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("control") => {
            let roles = roles();
            for role in &roles {
                println!(
                    "INFO [http server] role {}: auth {}, {} routes",
                    role.name,
                    role.auth,
                    role.routes.len()
                );
            }
            let control_server = serve(&env("HTTP_CONTROL_SERVER_ADDRESS", ":8000"), move |s| {
                control(s, &roles)
            });
            let _health_server = serve(&env("HEALTH_SERVER_ADDRESS", "127.0.0.1:9999"), health);
            let _ = control_server.join();
        }
        Some("healthcheck") => {
            let address = env("HEALTH_SERVER_ADDRESS", "127.0.0.1:9999");
            let answer = TcpStream::connect(&address).and_then(|mut stream| {
                write!(
                    stream,
                    "GET / HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
                )?;
                let mut answer = String::new();
                stream.read_to_string(&mut answer)?;
                Ok(answer)
            });
            match answer {
                Ok(answer) if answer.starts_with("HTTP/1.1 200") => {}
                Ok(answer) => {
                    eprintln!("unhealthy: {}", answer.lines().last().unwrap_or_default());
                    std::process::exit(1)
                }
                Err(error) => {
                    eprintln!("health server: {error}");
                    std::process::exit(1)
                }
            }
        }
        _ => {
            eprintln!("usage: gluetun-standin control|healthcheck");
            std::process::exit(2)
        }
    }
}
