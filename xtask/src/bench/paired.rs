//! The paired measure: what a 64-byte datagram costs its sender without a filter, protected
//! by netguard, and filtered by the iptables + ipset equivalent, measured side by side in one
//! process ([`super::flood`]): batches of a thousand datagrams on each of five sockets in a
//! shuffled turn, thousands of times, each batch timed by the thread's CPU clock. The batches
//! are milliseconds apart, so a shared machine's drift (up to 2× over minutes here) is the
//! same for all; each round's ratio and difference cancel it.
//!
//! In the sender's namespace:
//! - netguard, protected: the protected sender cgroup (10 internal CIDRs);
//! - the host's own traffic: a sibling without a policy under the parent netguard attaches
//!   at (what every process pays where netguard attaches at the cgroup2 root);
//! - no filter: a cgroup outside that parent.
//!
//! In the second sender's namespace (its own veth to the receiver), so that no other socket's
//! packets pass its chain:
//! - iptables + ipset: a cgroup below the outside one, which the rule matches;
//! - the traffic of another cgroup there: the outside cgroup itself, which the rule does not
//!   match (what every other process of that namespace pays for it).
//!
//! Every arm is compared with the no-filter socket of the first namespace: the two
//! namespaces and veths are made alike, and only the rule tells them apart.
//!
//! The agent is up throughout: what it costs every process's system calls (the raw-socket
//! guard's `sys_enter`) is the same for all and cancels; the main rounds' "unprotected" case
//! has it.

use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{
    Case, Filter, cidrs, filter,
    lab::{self, Lab, RECEIVER_ADDR, RECEIVER_NS, SECOND_LINK, SECOND_SENDER_NS, SENDER_NS},
    rules,
};
use crate::cmd::step;

/// The sink's port in the receiver's namespace (discard).
const SINK_PORT: u16 = 9;

/// The arms, in the order of the flood's sockets (the last one's cgroup is where the flood
/// process stays: outside netguard's).
const NETGUARD: usize = 0;
const UNPROTECTED: usize = 1;
const IPTABLES: usize = 2;
const IPTABLES_OTHER: usize = 3;
const NO_FILTER: usize = 4;
const ARMS: usize = 5;

/// netguard's case: one protected cgroup, 10 internal CIDRs.
const PROTECTED: Case = Case::Protected {
    cidrs: 10,
    cgroups: 1,
    depth: 2,
};

/// Starts of the agent the rounds are shared among: where a start of netguard lands in
/// memory moves its per-packet cost by tens of ns (the same build measured +54 and +91 ns a
/// datagram for the host's own traffic in two runs), so one start is not enough.
const STARTS: usize = 5;

/// Each socket's CPU ns a datagram, one figure a round, the starts one after another.
pub struct Paired {
    batch: u64,
    ns: [Vec<f64>; ARMS],
    /// Rounds of each start.
    starts: Vec<usize>,
}

pub fn run(lab: &Lab, netguard: &Path, rounds: usize) -> Result<Paired> {
    let outside = lab.outside_cgroup()?;
    let sender = lab.sender_cgroup(PROTECTED.depth())?;
    // A sibling of the sender: under the parent, without a policy.
    let unprotected = lab.others(1)?.remove(0);
    // xt_cgroup matches a cgroup and its descendants: the rule's is below the outside one.
    let filtered = outside.join("iptables");
    std::fs::create_dir_all(&filtered)?;
    step(&format!(
        "paired: no filter, netguard (protected, unprotected), iptables + ipset; {rounds} \
         rounds of a batch each, over {STARTS} starts of the agent"
    ));
    let mut paired = Paired {
        batch: 0,
        ns: Default::default(),
        starts: Vec::new(),
    };
    for start in 0..STARTS {
        let share = rounds / STARTS + usize::from(start < rounds % STARTS);
        if share == 0 {
            continue;
        }
        let result = flood_once(
            lab,
            netguard,
            share,
            [&sender, &unprotected, &filtered, &outside],
        )?;
        paired.batch = result["batch"].as_u64().unwrap_or(0);
        for (at, column) in paired.ns.iter_mut().enumerate() {
            column.extend(
                result["ns_per_datagram"][at]
                    .as_array()
                    .context("the flood printed no figures")?
                    .iter()
                    .map(|ns| ns.as_f64().context("not a figure"))
                    .collect::<Result<Vec<f64>>>()?,
            );
        }
        paired.starts.push(share);
    }
    Ok(paired)
}

/// One start of the agent and of the iptables rules, and `rounds` rounds of the flood under
/// them: the flood's output.
fn flood_once(
    lab: &Lab,
    netguard: &Path,
    rounds: usize,
    [sender, unprotected, filtered, outside]: [&Path; 4],
) -> Result<Value> {
    let _agent = filter(PROTECTED, lab, netguard)?;
    // The iptables arm's internal CIDRs: its own link's, then 9 that route nowhere.
    let mut internal = cidrs(10);
    internal[0] = format!("{}/24", SECOND_LINK[1]);
    rules::iptables(lab, SECOND_SENDER_NS, &[filtered.to_path_buf()], &internal)?;
    let _rules = Filter::Iptables(SECOND_SENDER_NS);
    let socket =
        |ns: &str, cgroup: &Path, to: &str| format!("{ns},{},{to}:{SINK_PORT}", cgroup.display());
    let output = Command::new("taskset")
        .args(["-c", &lab::SENDER_CPU.to_string()])
        .arg(std::env::current_exe()?)
        .args(["flood", "--receiver-ns", RECEIVER_NS, "--sink"])
        .arg(format!("0.0.0.0:{SINK_PORT}"))
        .args(["--rounds", &rounds.to_string()])
        .arg("--socket")
        .arg(socket(SENDER_NS, sender, RECEIVER_ADDR))
        .arg("--socket")
        .arg(socket(SENDER_NS, unprotected, RECEIVER_ADDR))
        .arg("--socket")
        .arg(socket(SECOND_SENDER_NS, filtered, SECOND_LINK[1]))
        .arg("--socket")
        .arg(socket(SECOND_SENDER_NS, outside, SECOND_LINK[1]))
        .arg("--socket")
        .arg(socket(SENDER_NS, outside, RECEIVER_ADDR))
        .output()
        .context("starting the flood")?;
    if !output.status.success() {
        bail!(
            "the flood: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let result: Value = serde_json::from_slice(&output.stdout).context("the flood's output")?;
    // A refused send costs less than a sent one: every datagram must have gone out.
    if let Some(refused) = result["refused_sends"].as_array()
        && let Some((arm, count)) = refused
            .iter()
            .enumerate()
            .find(|(_, count)| count.as_u64() != Some(0))
    {
        bail!("the flood's socket {arm} had {count} sends refused: its filter blocked it");
    }
    Ok(result)
}

/// The median and the quartiles of some figures.
fn quartiles(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.25), at(0.75))
}

/// Two-sided sign test: the chance of a split at least as uneven as `wins` of `n` (rounds
/// without a tie) if either filter were as likely to be the cheaper one in a round (summed
/// in logarithms, so that thousands of rounds do not overflow).
fn sign_test(wins: usize, n: usize) -> f64 {
    let extreme = wins.min(n - wins);
    let ln_all = n as f64 * std::f64::consts::LN_2;
    let mut ln_choose = 0.0f64;
    let mut tail = 0.0;
    for k in 0..=extreme {
        if k > 0 {
            ln_choose += ((n - k + 1) as f64 / k as f64).ln();
        }
        tail += (ln_choose - ln_all).exp();
    }
    (2.0 * tail).min(1.0)
}

impl Paired {
    /// Per round: `of(this arm's ns, no filter's ns)`.
    fn per_round(&self, arm: usize, of: impl Fn(f64, f64) -> f64) -> Vec<f64> {
        self.ns[arm]
            .iter()
            .zip(&self.ns[NO_FILTER])
            .map(|(a, base)| of(*a, *base))
            .collect()
    }

    /// The table for stdout and its JSON.
    pub fn report(&self) -> Result<(String, Value)> {
        let n = self.ns[NO_FILTER].len();
        let base = quartiles(&self.ns[NO_FILTER]);
        let mut table = format!(
            "| paired: {n} rounds of {} datagrams a socket | datagrams a CPU second vs no filter (median, quartiles) | CPU ns a datagram over no filter (median, quartiles) |\n|---|---|---|\n| no filter | 1 ({:.0} ns a datagram) | |\n",
            self.batch, base.0
        );
        let mut json_arms = serde_json::Map::new();
        for (arm, name) in [
            (
                UNPROTECTED,
                "netguard, unprotected cgroup (the host's own traffic)",
            ),
            (NETGUARD, "netguard, protected"),
            (IPTABLES_OTHER, "iptables + ipset, another cgroup's traffic"),
            (IPTABLES, "iptables + ipset, the protected cgroup"),
        ] {
            let ratio = quartiles(&self.per_round(arm, |a, base| base / a));
            let extra = quartiles(&self.per_round(arm, |a, base| a - base));
            writeln!(
                table,
                "| {name} | {:.3} ({:.3}–{:.3}) | {:+.0} ({:+.0} to {:+.0}) |",
                ratio.0, ratio.1, ratio.2, extra.0, extra.1, extra.2
            )?;
            json_arms.insert(
                name.into(),
                json!({"rate_ratio": [ratio.0, ratio.1, ratio.2], "cpu_ns_extra": [extra.0, extra.1, extra.2]}),
            );
        }
        let difference: Vec<f64> = self.ns[NETGUARD]
            .iter()
            .zip(&self.ns[IPTABLES])
            .map(|(g, i)| g - i)
            .collect();
        let wins = difference.iter().filter(|d| **d < 0.0).count();
        let untied = difference.iter().filter(|d| **d != 0.0).count();
        let (median, low, high) = quartiles(&difference);
        let p = sign_test(wins, untied);
        // Below f64's range, the sum is 0.
        let p_text = if p > 0.0 {
            format!("= {p:.1e}")
        } else {
            "< 1e-300".into()
        };
        writeln!(
            table,
            "\nnetguard, protected − iptables + ipset, protected, CPU ns a datagram, same round: median \
             {median:+.0} (quartiles {low:+.0} to {high:+.0}); netguard cheaper in {wins} of \
             {untied} rounds without a tie (sign test p {p_text})"
        )?;
        let mut first = 0;
        let per_start: Vec<f64> = self
            .starts
            .iter()
            .map(|&rounds| {
                let median = quartiles(&difference[first..first + rounds]).0;
                first += rounds;
                median
            })
            .collect();
        writeln!(
            table,
            "the same, each start of the agent's median: {}",
            per_start
                .iter()
                .map(|ns| format!("{ns:+.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        Ok((
            table,
            json!({
                "starts": self.starts,
                "netguard_minus_iptables_ns_per_start": per_start,
                "rounds": n,
                "batch": self.batch,
                "no_filter_ns": [base.0, base.1, base.2],
                "arms": json_arms,
                "netguard_minus_iptables_ns": [median, low, high],
                "netguard_cheaper_rounds": wins,
                "untied_rounds": untied,
                "sign_test_p": p,
                "ns_per_datagram": {"netguard": self.ns[NETGUARD], "unprotected": self.ns[UNPROTECTED], "iptables": self.ns[IPTABLES], "iptables_other_cgroup": self.ns[IPTABLES_OTHER], "no_filter": self.ns[NO_FILTER]},
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sign_test_is_two_sided_and_holds_thousands_of_rounds() {
        assert!((sign_test(5, 10) - 1.0).abs() < 1e-9);
        // 0 or 10 of 10: 2 / 1024.
        assert!((sign_test(10, 10) - 2.0 / 1024.0).abs() < 1e-9);
        assert!((sign_test(0, 10) - 2.0 / 1024.0).abs() < 1e-9);
        // 8 of 10: 2 * (1 + 10 + 45) / 1024.
        assert!((sign_test(8, 10) - 112.0 / 1024.0).abs() < 1e-9);
        assert!(sign_test(1500, 3000) > 0.9);
        assert!(sign_test(1700, 3000) < 1e-10);
    }

    #[test]
    fn quartiles_of_a_short_list() {
        assert_eq!(quartiles(&[3.0, 1.0, 2.0, 5.0, 4.0]), (3.0, 2.0, 4.0));
    }
}
