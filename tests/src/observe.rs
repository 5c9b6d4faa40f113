//! `netguard observe` as the operator runs it, beside a live agent.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Instant,
};

use crate::agent::netguard_bin;

/// `netguard observe` as a child: its stdout lines with the instant each arrived.
pub struct Observer {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Observer {
    pub fn start(agent: SocketAddr) -> Self {
        let mut child = Command::new(netguard_bin())
            .args(["observe", "--agent", &agent.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("netguard observe");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                sink.lock().unwrap().push((Instant::now(), line));
            }
        });
        // It says on stderr when it is attached to the stream.
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut first = String::new();
        stderr.read_line(&mut first).unwrap();
        assert!(first.contains("watching blocked flows"), "{first:?}");
        Self { child, lines }
    }

    pub fn line_with(&self, needle: &str) -> Option<(Instant, String)> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .find(|(_, l)| l.contains(needle))
            .cloned()
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
