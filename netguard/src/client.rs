//! The CLI's side of the agent's HTTP API: `netguard status` and `netguard observe`.

use std::{
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::{Request, StatusCode, body::Incoming};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde::de::DeserializeOwned;

use crate::{
    api::{self, BlockedFlowRecord, ContainerStatus, FlowStreamLine, GatewayStatus, Readiness},
    config::ANSWER_TIMEOUT,
};

/// The agent at `address` (its `--listen`); an unspecified address means this host.
pub struct AgentClient {
    address: SocketAddr,
    /// The bearer token the agent asks for, if any.
    token: Option<String>,
    http: Client<HttpConnector, Empty<Bytes>>,
}

impl AgentClient {
    pub fn new(mut address: SocketAddr, token: Option<String>) -> Self {
        match address.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => address.set_ip(Ipv4Addr::LOCALHOST.into()),
            IpAddr::V6(ip) if ip.is_unspecified() => address.set_ip(Ipv6Addr::LOCALHOST.into()),
            _ => {}
        }
        Self {
            address,
            token,
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Sends `GET path`; the response's head must come within [`ANSWER_TIMEOUT`] (a stuck
    /// agent, or something else on its port, must not hang the CLI).
    async fn send(&self, path: &str) -> Result<hyper::Response<Incoming>> {
        let mut request = Request::get(self.url(path));
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request.body(Empty::new())?;
        let no_agent = || {
            format!(
                "no netguard agent answers at {} (is `netguard run` running? \
                 pass --agent or set NETGUARD_LISTEN to its --listen address)",
                self.address
            )
        };
        tokio::time::timeout(ANSWER_TIMEOUT, self.http.request(request))
            .await
            .map_err(|_| anyhow::anyhow!("no answer in {ANSWER_TIMEOUT:?}"))
            .with_context(no_agent)?
            .with_context(no_agent)
    }

    /// The whole body of a response, within [`ANSWER_TIMEOUT`].
    async fn body(&self, response: hyper::Response<Incoming>, path: &str) -> Result<Bytes> {
        let collected = tokio::time::timeout(ANSWER_TIMEOUT, response.into_body().collect())
            .await
            .with_context(|| format!("{} sent no complete answer", self.url(path)))??;
        Ok(collected.to_bytes())
    }

    async fn get(&self, path: &str) -> Result<hyper::Response<Incoming>> {
        let response = self.send(path).await?;
        if response.status() != StatusCode::OK {
            let status = response.status();
            let body = self.body(response, path).await?;
            bail!(
                "{} answered {status}: {}",
                self.url(path),
                String::from_utf8_lossy(&body).trim()
            );
        }
        Ok(response)
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let body = self.body(self.get(path).await?, path).await?;
        serde_json::from_slice(&body).with_context(|| format!("reading {}", self.url(path)))
    }

    /// `/readyz`, ready or not.
    pub async fn readiness(&self) -> Result<Readiness> {
        let body = self.body(self.send("/readyz").await?, "/readyz").await?;
        serde_json::from_slice(&body).context("reading /readyz")
    }

    pub async fn containers(&self) -> Result<Vec<ContainerStatus>> {
        self.get_json(&format!("{}/containers", api::PREFIX)).await
    }

    pub async fn gateways(&self) -> Result<Vec<GatewayStatus>> {
        self.get_json(&format!("{}/gateways", api::PREFIX)).await
    }

    /// Calls `on_flow` for each blocked flow from now on, until the agent closes the stream.
    pub async fn follow_flows(
        &self,
        mut on_line: impl FnMut(FlowStreamLine) -> Result<()>,
    ) -> Result<()> {
        let path = format!("{}/flows/stream", api::PREFIX);
        let mut body = self.get(&path).await?.into_body();
        eprintln!(
            "watching blocked flows at {} (Ctrl-C to stop)",
            self.url(&path)
        );
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.context("the agent's flow stream broke off")?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            pending.extend_from_slice(data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                on_line(serde_json::from_slice(&line).context("reading the flow stream")?)?;
            }
        }
        Ok(())
    }
}

/// `netguard observe`'s line for a blocked flow.
pub fn flow_line(flow: &BlockedFlowRecord) -> String {
    let before = if flow.before_start {
        "  (before the agent started)"
    } else {
        ""
    };
    format!(
        "{}  {}  -> {}  {}  [{}]{before}",
        flow.time,
        flow.who(),
        flow.destination,
        flow.reason,
        flow.hook
    )
}

/// Prints blocked flows as they happen until the agent goes away.
pub async fn observe(client: &AgentClient, json: bool) -> Result<()> {
    client
        .follow_flows(|line| {
            let mut out = std::io::stdout().lock();
            match line {
                FlowStreamLine::Flow(flow) if json => {
                    writeln!(out, "{}", serde_json::to_string(&flow)?)?;
                }
                FlowStreamLine::Flow(flow) => writeln!(out, "{}", flow_line(&flow))?,
                FlowStreamLine::Lagged { lagged } => eprintln!(
                    "netguard: {lagged} blocked flows skipped (this terminal fell behind; \
                     they are still dropped and counted)"
                ),
            }
            // A pipe (`| grep`) must see each flow as it happens.
            out.flush()?;
            Ok(())
        })
        .await?;
    bail!("the agent closed the flow stream (stopped or restarted)")
}

/// Human-readable byte count.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `netguard status`'s table.
pub fn status_table(gateways: &[GatewayStatus], containers: &[ContainerStatus]) -> String {
    let mut out = String::new();
    if !gateways.is_empty() {
        out.push_str(&format!(
            "{:<24} {:<7} {:>11}  {}\n",
            "GATEWAY", "TUNNEL", "TRANSITIONS", "LAST CHANGE"
        ));
        for g in gateways {
            let since = match g.last_change_secs {
                0 => "never".to_string(),
                secs => humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
                )
                .to_string(),
            };
            out.push_str(&format!(
                "{:<24} {:<7} {:>11}  {since}\n",
                g.name,
                if g.tunnel_up { "up" } else { "DOWN" },
                g.transitions
            ));
            if let Some(reason) = &g.down_reason {
                out.push_str(&format!("  why down: {reason}\n"));
            }
        }
        out.push('\n');
    }
    out.push_str(&format!(
        "{:<24} {:<12} {:<9} {:<11} {:<14} {:>10} {:>10} {:>8} {:>8}\n",
        "CONTAINER", "ID", "STATE", "POLICY", "GATEWAY", "SENT", "RECEIVED", "BLOCKED", "REFUSED"
    ));
    for c in containers {
        let policy = match (c.removed, c.vpn_gateway, c.vpn_required, c.protected) {
            _ if c.unknown => "UNKNOWN",
            (true, ..) => "-",
            (false, true, ..) => "gateway",
            (false, false, _, true) => "protected",
            (false, false, true, false) => "UNPROTECTED",
            (false, false, false, false) => "count",
        };
        let state = match (c.removed, c.running) {
            (true, _) => "removed",
            (false, true) => "running",
            (false, false) => "stopped",
        };
        out.push_str(&format!(
            "{:<24} {:<12} {:<9} {:<11} {:<14} {:>10} {:>10} {:>8} {:>8}\n",
            c.name,
            c.short_id(),
            state,
            policy,
            match (&c.gateway, &c.gateway_unresolved) {
                (Some(gateway), _) => gateway.clone(),
                (None, Some(reference)) => format!("{reference}?"),
                (None, None) => "-".into(),
            },
            bytes(c.counters.transmit_bytes),
            bytes(c.counters.receive_bytes),
            c.counters.blocked_packets_total(),
            c.counters.refused_calls_total(),
        ));
    }
    let problems: Vec<String> = containers
        .iter()
        .flat_map(|c| {
            c.problems
                .iter()
                .map(move |p| format!("  {}: {p}\n", c.name))
        })
        .collect();
    if !problems.is_empty() {
        out.push_str("\nPROBLEMS\n");
        out.extend(problems);
    }
    out
}
