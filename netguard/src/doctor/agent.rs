//! Checks that ask the running agent: does it answer, and do the gateways' control servers
//! accept its credentials.

use super::{Check, Outcome, pass, short_of};
use crate::client::AgentClient;

/// Whether the agent answers and is ready.
pub async fn answers(agent: &AgentClient) -> Check {
    match agent.readiness().await {
        Ok(readiness) if readiness.ready => pass("agent", format!("{} ready", agent.url(""))),
        Ok(readiness) => short_of(
            Outcome::Warn,
            "agent",
            format!("{} not ready (Docker {})", agent.url(""), readiness.docker),
            "see the agent's log: it waits for Docker",
        ),
        Err(error) => short_of(
            Outcome::Warn,
            "agent",
            format!("{error:#}"),
            "start `netguard run` (enforcement pinned in the kernel continues without it)",
        ),
    }
}

/// Gateways whose Gluetun control server refuses netguard's credentials: their tunnels count
/// as down (fail closed), though the VPN may well be up.
pub async fn gluetun_credentials(agent: &AgentClient) -> Option<Check> {
    let gateways = agent.gateways().await.ok()?;
    let refused: Vec<String> = gateways
        .iter()
        .filter(|g| {
            g.down_reason
                .as_deref()
                .is_some_and(|r| r.contains(crate::tunnel::gluetun::REFUSED))
        })
        .map(|g| g.name.clone())
        .collect();
    Some(if refused.is_empty() {
        pass(
            "gluetun auth",
            "no control server refuses netguard's credentials",
        )
    } else {
        short_of(
            Outcome::Fail,
            "gluetun auth",
            format!(
                "{}: the control server refused netguard's credentials (their tunnels count as \
                 down, everything behind them is blocked)",
                refused.join(", ")
            ),
            "give Gluetun a role with routes = [\"GET /v1/vpn/status\"] and its key to netguard \
             (--gluetun-api-key-file, NETGUARD_GLUETUN_API_KEY or [[gluetun_auth]]); see the \
             README",
        )
    })
}
