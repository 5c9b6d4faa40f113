//! The firewall equivalents of a protected container, in a sender's namespace: one rule per
//! protected cgroup (the sender's last), dropping what goes outside 10 internal CIDRs.

use std::path::PathBuf;

use anyhow::Result;

use super::lab::{Lab, SENDER_NS, sh};

/// Runs `args` in the namespace `ns`.
fn in_ns(ns: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["netns", "exec", ns];
    all.extend_from_slice(args);
    sh("ip", &all)
}

/// iptables (xt_cgroup `--path`) + an ipset `hash:net`, in the namespace `ns`.
pub fn iptables(lab: &Lab, ns: &str, cgroups: &[PathBuf], cidrs: &[String]) -> Result<()> {
    in_ns(ns, &["ipset", "create", "ngbench", "hash:net"])?;
    for cidr in cidrs {
        in_ns(ns, &["ipset", "add", "ngbench", cidr])?;
    }
    for cgroup in cgroups {
        let path = lab.relative(cgroup);
        in_ns(
            ns,
            &[
                "iptables",
                "-A",
                "OUTPUT",
                "-m",
                "cgroup",
                "--path",
                &path,
                "-m",
                "set",
                "!",
                "--match-set",
                "ngbench",
                "dst",
                "-j",
                "DROP",
            ],
        )?;
    }
    Ok(())
}

/// Removes the rules, the set, and the table itself: with the nf_tables backend an emptied
/// `OUTPUT` chain stays hooked and would cost every later case's packets (the no-filter one
/// included) a pass through an empty chain.
pub fn remove_iptables(ns: &str) {
    let _ = in_ns(ns, &["iptables", "-F", "OUTPUT"]);
    let _ = in_ns(ns, &["ipset", "destroy", "ngbench"]);
    if in_ns(ns, &["iptables", "-V"]).is_ok_and(|version| version.contains("nf_tables")) {
        let _ = in_ns(ns, &["nft", "delete", "table", "ip", "filter"]);
    }
}

/// nftables: `socket cgroupv2 level N "<path>"` + an interval set. nft resolves the path under
/// `/sys/fs/cgroup` only, so it fails where cgroup2 is mounted elsewhere (hybrid hosts); the
/// error says so.
pub fn nftables(lab: &Lab, cgroups: &[PathBuf], cidrs: &[String]) -> Result<()> {
    let mut script = format!(
        "table inet ngbench {{\n set internal {{ type ipv4_addr; flags interval; elements = {{ {} }} }}\n chain output {{ type filter hook output priority 0; policy accept;\n",
        cidrs.join(", ")
    );
    for cgroup in cgroups {
        let path = lab.relative(cgroup);
        let level = path.split('/').filter(|part| !part.is_empty()).count();
        script.push_str(&format!(
            "  socket cgroupv2 level {level} \"{path}\" ip daddr != @internal drop\n"
        ));
    }
    script.push_str(" }\n}\n");
    let file = std::env::temp_dir().join("ngbench.nft");
    std::fs::write(&file, script)?;
    let loaded = in_ns(SENDER_NS, &["nft", "-f", &file.to_string_lossy()]);
    let _ = std::fs::remove_file(&file);
    loaded.map(drop).map_err(|error| {
        // nft repeats its error for every rule: the first says it.
        let text = format!("{error:#}");
        let first = text
            .lines()
            .find_map(|line| line.split_once("Error: ").map(|(_, e)| e.to_string()))
            .unwrap_or(text);
        anyhow::anyhow!(
            "nft: {first} (socket cgroupv2 looks cgroup paths up under /sys/fs/cgroup; is \
             cgroup2 mounted elsewhere here?)"
        )
    })
}

pub fn remove_nftables() {
    let _ = in_ns(SENDER_NS, &["nft", "delete", "table", "inet", "ngbench"]);
}
