//! Stand-ins for the images of the shipped Compose stack, built locally under their real
//! names (no registry is reachable here): Gluetun with a real WireGuard tunnel
//! (wireguard-go), its control server's current auth and its HEALTHCHECK; qBittorrent,
//! SABnzbd and Grafana as web servers on their ports; Prometheus as Debian's real binary.
//! A stand-in never replaces an image that is not one (a real pulled image): that panics.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{
    TempDir,
    docker::{IMAGE, TEST_LABEL, build_image, static_probe},
    sh, sh_quiet,
};

pub const GLUETUN: &str = "qmcgaw/gluetun:v3";
pub const QBITTORRENT: &str = "lscr.io/linuxserver/qbittorrent:latest";
pub const SABNZBD: &str = "lscr.io/linuxserver/sabnzbd:latest";
pub const PROMETHEUS: &str = "prom/prometheus:latest";
pub const GRAFANA: &str = "grafana/grafana:latest";

/// Gluetun's entrypoint, as the stand-in has it: `healthcheck` is the image's HEALTHCHECK;
/// otherwise bring up WireGuard from Gluetun's settings (custom provider), route everything
/// through it but the VPN server, and run the control and health servers.
const GLUETUN_ENTRYPOINT: &str = r#"#!/bin/sh
[ "$1" = healthcheck ] && exec /gluetun-standin healthcheck
set -e
mkdir -p /var/run/wireguard
rm -f /var/run/wireguard/wg0.sock
wireguard-go -f wg0 &
while [ ! -S /var/run/wireguard/wg0.sock ]; do sleep 1; done
umask 077
echo "$WIREGUARD_PRIVATE_KEY" > /tmp/wg.key
wg set wg0 private-key /tmp/wg.key peer "$WIREGUARD_PUBLIC_KEY" \
  endpoint "$VPN_ENDPOINT_IP:$VPN_ENDPOINT_PORT" allowed-ips 0.0.0.0/0 persistent-keepalive 25
ip addr add "$WIREGUARD_ADDRESSES" dev wg0
ip link set wg0 up
gw=$(ip route | awk '/^default/ {print $3}')
ip route add "$VPN_ENDPOINT_IP/32" via "$gw" dev eth0
ip route replace default dev wg0
echo "INFO [vpn] wireguard up to $VPN_ENDPOINT_IP:$VPN_ENDPOINT_PORT"
exec /gluetun-standin control
"#;

/// The stand-in images, removed on drop.
pub struct StandIns {
    built: Vec<&'static str>,
}

impl StandIns {
    pub fn build() -> Self {
        build_image();
        let mut built = Vec::new();
        let mut build = |tag: &'static str, dir: &TempDir, dockerfile: String| {
            refuse_real(tag);
            std::fs::write(dir.path.join("Dockerfile"), dockerfile).unwrap();
            sh(&[
                "docker",
                "build",
                "-q",
                "-t",
                tag,
                &dir.path.to_string_lossy(),
            ]);
            built.push(tag);
        };

        let dir = TempDir::new("gluetun-image");
        let mut files = BTreeSet::new();
        for binary in ["/bin/busybox", "/usr/bin/wireguard-go", "/usr/bin/wg"] {
            files.insert(PathBuf::from(binary));
            files.extend(libraries(Path::new(binary)));
        }
        let mut dockerfile = String::from("FROM scratch\n");
        for (n, file) in files.iter().enumerate() {
            std::fs::copy(file, dir.path.join(n.to_string())).unwrap();
            dockerfile += &format!("COPY {n} {}\n", file.display());
        }
        std::fs::copy(standin_binary(), dir.path.join("gluetun-standin")).unwrap();
        std::fs::write(dir.path.join("entrypoint"), GLUETUN_ENTRYPOINT).unwrap();
        dockerfile += "COPY gluetun-standin /gluetun-standin\n\
             COPY entrypoint /gluetun-entrypoint\n\
             RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
             RUN [\"/bin/busybox\", \"chmod\", \"755\", \"/gluetun-entrypoint\"]\n\
             RUN [\"/bin/busybox\", \"mkdir\", \"-m\", \"1777\", \"/tmp\"]\n\
             ENV HTTP_CONTROL_SERVER_ADDRESS=\":8000\" \
                 HTTP_CONTROL_SERVER_AUTH_CONFIG_FILEPATH=/gluetun/auth/config.toml \
                 HTTP_CONTROL_SERVER_AUTH_DEFAULT_ROLE=\"{}\" \
                 HEALTH_SERVER_ADDRESS=127.0.0.1:9999 \
                 HEALTH_TARGET_ADDRESSES=cloudflare.com:443,github.com:443\n\
             ENTRYPOINT [\"/gluetun-entrypoint\"]\n\
             HEALTHCHECK --interval=5s --timeout=5s --start-period=10s --retries=3 \
                 CMD /gluetun-entrypoint healthcheck\n";
        dockerfile += &format!("LABEL {TEST_LABEL}\n");
        build(GLUETUN, &dir, dockerfile);

        for (tag, port) in [(QBITTORRENT, 8080), (SABNZBD, 8080), (GRAFANA, 3000)] {
            let dir = TempDir::new("web-image");
            let dockerfile = format!(
                "FROM {IMAGE}\nRUN [\"mkdir\", \"-p\", \"/www\"]\n\
                 CMD [\"httpd\", \"-f\", \"-p\", \"{port}\", \"-h\", \"/www\"]\nLABEL {TEST_LABEL}\n"
            );
            build(tag, &dir, dockerfile);
        }

        let dir = TempDir::new("prometheus-image");
        let binary = PathBuf::from("/usr/bin/prometheus");
        let mut dockerfile = format!("FROM {IMAGE}\nCOPY prometheus /bin/prometheus\n");
        std::fs::copy(&binary, dir.path.join("prometheus")).expect("prometheus installed");
        for (n, library) in libraries(&binary).iter().enumerate() {
            std::fs::copy(library, dir.path.join(format!("lib{n}"))).unwrap();
            dockerfile += &format!("COPY lib{n} {}\n", library.display());
        }
        dockerfile += &format!(
            "RUN [\"mkdir\", \"-p\", \"/prometheus\"]\nENTRYPOINT [\"/bin/prometheus\"]\n\
             CMD [\"--config.file=/etc/prometheus/prometheus.yml\", \
                  \"--storage.tsdb.path=/prometheus\"]\nLABEL {TEST_LABEL}\n"
        );
        build(PROMETHEUS, &dir, dockerfile);
        Self { built }
    }
}

impl Drop for StandIns {
    fn drop(&mut self) {
        for tag in &self.built {
            sh_quiet(&["docker", "rmi", "-f", tag]);
        }
    }
}

/// Panics if `tag` names an image that is not a stand-in: a real image stays.
fn refuse_real(tag: &str) {
    let output = Command::new("docker")
        .args([
            "image",
            "inspect",
            "--format",
            "{{json .Config.Labels}}",
            tag,
        ])
        .output()
        .unwrap();
    if output.status.success() {
        let labels = String::from_utf8_lossy(&output.stdout);
        assert!(
            labels.contains("\"netguard.test\":\"1\""),
            "{tag} exists and is not a test stand-in: the Compose test builds its stand-in \
             under that name; remove or retag your image first"
        );
    }
}

/// The shared libraries `binary` loads (with the loader), as `ldd` lists them; none for a
/// static binary.
fn libraries(binary: &Path) -> Vec<PathBuf> {
    let output = Command::new("ldd").arg(binary).output().expect("ldd");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().find(|w| w.starts_with('/')))
        .map(PathBuf::from)
        .collect()
}

/// The static Gluetun stand-in binary, built beside the static probe.
fn standin_binary() -> PathBuf {
    let path = static_probe().with_file_name("gluetun-standin");
    assert!(
        path.exists(),
        "{} missing: run through `cargo xtask test`",
        path.display()
    );
    path
}
