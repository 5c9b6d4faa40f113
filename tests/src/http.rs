//! A minimal HTTP/1.0 GET for the tests: independent of the agent's own client, so that the
//! API is checked from the outside.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
};

/// Status code and body of `GET path`.
pub fn get(address: SocketAddr, path: &str) -> (u16, String) {
    request(address, "GET", path)
}

/// Status code and body of `method path` with an empty body.
pub fn request(address: SocketAddr, method: &str, path: &str) -> (u16, String) {
    request_with(address, method, path, None)
}

/// Status code and body of `GET path` with `Authorization: Bearer <token>`.
pub fn get_with_token(address: SocketAddr, path: &str, token: &str) -> (u16, String) {
    request_with(address, "GET", path, Some(token))
}

fn send_head(address: SocketAddr, method: &str, path: &str, token: Option<&str>) -> TcpStream {
    let mut stream = TcpStream::connect(address)
        .unwrap_or_else(|e| panic!("connecting to the agent at {address}: {e}"));
    let authorization = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {address}\r\n{authorization}Content-Length: 0\r\n\r\n"
    )
    .unwrap();
    stream
}

/// Opens `GET path` and reads only the status line: the connection stays open (a stream).
pub fn open(address: SocketAddr, path: &str, token: Option<&str>) -> (u16, TcpStream) {
    let mut stream = send_head(address, "GET", path, token);
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") {
        if stream.read(&mut byte).unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&head);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {line:?}"));
    (status, stream)
}

fn request_with(
    address: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut stream = send_head(address, method, path, token);
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP header in {response:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_string())
}

/// One sample of an OpenMetrics/Prometheus text exposition.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the samples of an exposition (label values without escapes, as netguard's are).
pub fn parse_exposition(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("sample value");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').expect("label pair");
                    (key.to_string(), value.trim_matches('"').to_string())
                })
                .collect();
            Sample {
                name: name.to_string(),
                labels,
                value: value.parse().expect("sample value is a number"),
            }
        })
        .collect()
}
