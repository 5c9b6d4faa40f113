//! One container as Docker and the host describe it: `docker inspect`, then its cgroup and
//! network namespace from `/proc`.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
};

use anyhow::{Context as _, Result};
use bollard::{
    Docker,
    models::{
        ContainerInspectResponse, ContainerSummary, ContainerSummaryStateEnum, EndpointSettings,
        HealthStatusEnum,
    },
};
use tracing::debug;

use crate::{
    cgroup::{Cgroup, process_cgroup},
    domain::{ContainerId, NetworkPlace},
    labels::{ContainerLabels, ImageLabels},
    netns,
    report::ContainerFacts,
};

/// What an inspect found.
pub struct Inspected {
    pub name: String,
    /// Its Compose project (or Swarm stack) and service, from labels set on the container
    /// itself: an image's copy of them could make a gateway reference mean another
    /// container.
    pub project: Option<String>,
    pub service: Option<String>,
    pub labels: ContainerLabels,
    pub network_mode: String,
    /// Docker's health status, if it has a HEALTHCHECK.
    pub docker_healthy: Option<bool>,
    /// The networks it is on, by id.
    pub networks: BTreeMap<String, NetworkPlace>,
    /// Its process, cgroup and namespace, if it runs; `Err` when it runs but the host's facts
    /// about it could not be read (what was known before stays).
    pub running: Option<Result<Running, String>>,
    /// What operators see besides the policy.
    pub facts: ContainerFacts,
}

pub struct Running {
    pub pid: u32,
    pub cgroup: Cgroup,
    /// The cookie and interfaces of its network namespace; `Err` when unreadable.
    pub netns: Result<(u64, Vec<(u32, crate::domain::Mac)>), String>,
}

/// Labels of images, by image id (an image never changes).
pub type ImageCache = HashMap<String, HashMap<String, String>>;

/// Inspects `id`; `None` if Docker no longer knows it.
pub async fn inspect(
    docker: &Docker,
    id: &ContainerId,
    root: &Path,
    images: &mut ImageCache,
) -> Result<Option<Inspected>> {
    let info = match docker.inspect_container(id.as_str(), None).await {
        Ok(info) => info,
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => return Ok(None),
        Err(error) => return Err(error).context("inspecting"),
    };
    if let Some(image) = info.image.as_deref()
        && !images.contains_key(image)
    {
        match docker.inspect_image(image).await {
            Ok(found) => {
                let labels = found.config.and_then(|c| c.labels).unwrap_or_default();
                images.insert(image.to_string(), labels);
            }
            // Unknown: its loosening labels are set aside until the next inspect.
            Err(error) => debug!(image, "inspecting the image: {error}"),
        }
    }
    let image_labels = info
        .image
        .as_deref()
        .and_then(|image| images.get(image))
        .map_or(ImageLabels::Unknown, ImageLabels::Known);
    let mut inspected = from_response(&info, image_labels);
    inspected.facts.privileged = info
        .host_config
        .as_ref()
        .and_then(|h| h.privileged)
        .unwrap_or(false);
    let pid = info
        .state
        .as_ref()
        .filter(|s| s.running == Some(true))
        .and_then(|s| s.pid)
        .filter(|p| *p > 0)
        .map(|p| p as u32);
    if let Some(pid) = pid {
        match process_cgroup(root, pid, id.as_str()) {
            Ok(cgroup) => {
                let netns = netns::cookie_and_interfaces(&netns::of_process(pid))
                    .map_err(|error| format!("reading its network namespace: {error}"));
                inspected.facts.cgroup_path = Some(cgroup.path.clone());
                inspected.facts.running = true;
                inspected.running = Some(Ok(Running { pid, cgroup, netns }));
            }
            // It exited between inspect and now; its die event follows.
            Err(error) if !Path::new(&format!("/proc/{pid}")).exists() => {
                debug!(
                    container = inspected.name,
                    "exited before it was classified: {error:#}"
                );
            }
            Err(error) => {
                inspected.facts.running = true;
                inspected.running = Some(Err(format!("finding its cgroup: {error:#}")));
            }
        }
    }
    Ok(Some(inspected))
}

/// What the listing says of a container that could not be inspected: enough to keep it
/// registered and its gateway known; whether and how it runs stays as known before.
pub fn from_summary(summary: &ContainerSummary, images: &ImageCache) -> Inspected {
    let name = summary
        .names
        .as_ref()
        .and_then(|names| names.first())
        .map(|n| n.trim_start_matches('/').to_string())
        .unwrap_or_default();
    let labels = summary.labels.clone().unwrap_or_default();
    let network_mode = summary
        .host_config
        .as_ref()
        .and_then(|h| h.network_mode.clone())
        .unwrap_or_default();
    let image = summary.image.clone().unwrap_or_default();
    let image_labels = summary
        .image_id
        .as_deref()
        .and_then(|id| images.get(id))
        .map_or(ImageLabels::Unknown, ImageLabels::Known);
    let mut inspected = from_parts(name, &labels, network_mode, image, None, image_labels);
    inspected.networks = networks(
        summary
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.as_ref()),
    );
    if summary.state == Some(ContainerSummaryStateEnum::RUNNING) {
        inspected.facts.running = true;
        inspected.running = Some(Err("not inspected".into()));
    }
    inspected
}

/// Everything but the host's facts.
fn from_response(info: &ContainerInspectResponse, image_labels: ImageLabels<'_>) -> Inspected {
    let name = info
        .name
        .as_deref()
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_string();
    let raw_labels: HashMap<String, String> = info
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default();
    let network_mode = info
        .host_config
        .as_ref()
        .and_then(|h| h.network_mode.clone())
        .unwrap_or_default();
    let image = info
        .config
        .as_ref()
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    let docker_healthy = info
        .state
        .as_ref()
        .and_then(|s| s.health.as_ref())
        .and_then(|h| h.status)
        .filter(|status| *status != HealthStatusEnum::EMPTY && *status != HealthStatusEnum::NONE)
        .map(|status| status == HealthStatusEnum::HEALTHY);
    let mut inspected = from_parts(
        name,
        &raw_labels,
        network_mode,
        image,
        docker_healthy,
        image_labels,
    );
    inspected.networks = networks(
        info.network_settings
            .as_ref()
            .and_then(|n| n.networks.as_ref()),
    );
    inspected
}

/// The networks a container is on (by id) and what Docker's resolver answers for it there.
fn networks(
    endpoints: Option<&HashMap<String, EndpointSettings>>,
) -> BTreeMap<String, NetworkPlace> {
    endpoints
        .into_iter()
        .flatten()
        .filter_map(|(network, endpoint)| {
            let id = endpoint.network_id.clone().filter(|id| !id.is_empty())?;
            let mut names: Vec<String> = endpoint
                .aliases
                .iter()
                .chain(endpoint.dns_names.iter())
                .flatten()
                .map(|name| name.to_ascii_lowercase())
                .collect();
            names.sort();
            names.dedup();
            let place = NetworkPlace {
                network: network.clone(),
                names,
                ipv4: endpoint.ip_address.as_deref().and_then(|a| a.parse().ok()),
                ipv6: endpoint
                    .global_ipv6_address
                    .as_deref()
                    .and_then(|a| a.parse().ok()),
            };
            Some((id, place))
        })
        .collect()
}

fn from_parts(
    name: String,
    raw_labels: &HashMap<String, String>,
    network_mode: String,
    image: String,
    docker_healthy: Option<bool>,
    image_labels: ImageLabels<'_>,
) -> Inspected {
    let labels = ContainerLabels::parse_container(
        raw_labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        image_labels,
    );
    let label = |key: &str| raw_labels.get(key).cloned();
    // Compose's and Swarm's labels count for gateway references only when the container's own.
    let own = |key: &str| {
        raw_labels
            .get(key)
            .filter(|v| !v.is_empty() && !image_labels.may_have_given(key, v))
            .cloned()
    };
    let project = own("com.docker.compose.project").or_else(|| own("com.docker.stack.namespace"));
    let service =
        own("com.docker.compose.service").or_else(|| own("com.docker.swarm.service.name"));
    let facts = ContainerFacts {
        name: name.clone(),
        image,
        // Compose's labels, else a Swarm stack's.
        compose_project: label("com.docker.compose.project")
            .or_else(|| label("com.docker.stack.namespace"))
            .unwrap_or_default(),
        compose_service: label("com.docker.compose.service")
            .or_else(|| label("com.docker.swarm.service.name"))
            .unwrap_or_default(),
        vpn_required: labels.protected,
        vpn_gateway: labels.is_gateway,
        decided: Default::default(),
        cgroup_path: None,
        running: false,
        privileged: false,
        problems: labels.problems.clone(),
    };
    Inspected {
        name,
        project,
        service,
        network_mode,
        docker_healthy,
        labels,
        networks: BTreeMap::new(),
        running: None,
        facts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image could carry Compose's labels and pose as a project's service, so that a
    /// gateway reference means it: only the container's own count.
    #[test]
    fn compose_labels_from_the_image_name_no_project() {
        let labels: HashMap<String, String> = [
            ("com.docker.compose.project", "media"),
            ("com.docker.compose.service", "gluetun"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into();
        let parts = |image: ImageLabels<'_>| {
            let found = from_parts("x".into(), &labels, String::new(), "i".into(), None, image);
            (found.project, found.service)
        };
        assert_eq!(
            parts(ImageLabels::Known(&labels)),
            (None, None),
            "the image's own values"
        );
        assert_eq!(parts(ImageLabels::Unknown), (None, None), "not known yet");
        let empty = HashMap::new();
        assert_eq!(
            parts(ImageLabels::Known(&empty)),
            (Some("media".into()), Some("gluetun".into()))
        );
    }
}
