//! A real Prometheus (Debian's `prometheus`) scraping the agent every second.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
};

use crate::{TempDir, http, wait_for};

pub struct Prometheus {
    child: Child,
    pub address: SocketAddr,
    _dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (job `netguard`) and loading `rule_files`.
    pub fn start(target: SocketAddr, rule_files: &[&Path]) -> Self {
        let dir = TempDir::new("prometheus");
        let rules: Vec<String> = rule_files
            .iter()
            .map(|p| format!("  - {:?}\n", p.display().to_string()))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n{}\
             scrape_configs:\n  - job_name: netguard\n    static_configs:\n      - targets: [\"{target}\"]\n",
            rules.concat()
        );
        let config_path = dir.path.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        // A free port on loopback: taken from the kernel, released, handed to Prometheus.
        let address = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let log = std::fs::File::create(dir.path.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path.join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting prometheus (apt-get install prometheus; `cargo xtask test` does)");
        let mut prometheus = Self {
            child,
            address,
            _dir: dir,
        };
        wait_for("Prometheus to be ready", || {
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                panic!("prometheus exited with {status}: {}", prometheus.log());
            }
            std::net::TcpStream::connect(address).is_ok() && http::get(address, "/-/ready").0 == 200
        });
        prometheus
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path.join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/<endpoint>?query=<expr>`: the parsed answer.
    pub fn api(&self, endpoint: &str, expr: &str) -> serde_json::Value {
        let path = format!("/api/v1/{endpoint}?query={}", encode(expr));
        let (status, body) = http::get(self.address, &path);
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {status} {body:?}: {e}"))
    }

    /// The instant vector `expr` evaluates to: (labels, value) pairs. Panics on an error.
    pub fn query(&self, expr: &str) -> Vec<(serde_json::Map<String, serde_json::Value>, f64)> {
        let answer = self.api("query", expr);
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
        answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|series| {
                let labels = series["metric"].as_object().cloned().unwrap_or_default();
                let value = series["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN);
                (labels, value)
            })
            .collect()
    }
}

/// Percent-encodes a query parameter.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
