use super::*;

#[test]
fn vpn_required_protects() {
    let labels = ContainerLabels::parse([
        ("vpn", "required"),
        ("netguard.allow", "10.0.0.0/8, 192.168.1.5"),
    ]);
    assert!(labels.protected);
    assert_eq!(
        labels.allow,
        vec![
            "10.0.0.0/8".parse().unwrap(),
            "192.168.1.5/32".parse().unwrap()
        ]
    );
    assert!(labels.problems.is_empty());
}

#[test]
fn malformed_values_are_reported_and_read_strictly() {
    let labels =
        ContainerLabels::parse([("vpn", "yes"), ("netguard.allow", "10.0.0.0/8,10.1.0.0/33")]);
    assert!(labels.protected, "an unexpected vpn value still protects");
    assert_eq!(
        labels.allow,
        vec!["10.0.0.0/8".parse().unwrap()],
        "the bad CIDR is dropped"
    );
    assert_eq!(labels.problems.len(), 2);
    assert!(labels.problems[1].contains("10.1.0.0/33"));
}

#[test]
fn unknown_netguard_keys_are_named_with_the_known_ones() {
    let labels = ContainerLabels::parse([("vpn", "required"), ("netguard.alow", "10.0.0.0/8")]);
    assert!(labels.protected && labels.allow.is_empty());
    assert!(labels.problems[0].contains("netguard.alow") && labels.problems[0].contains(ALLOW));
}

#[test]
fn health_labels() {
    let labels = ContainerLabels::parse([
        ("netguard.role", "vpn-gateway"),
        ("netguard.health", "handshake,gluetun,bogus"),
        ("netguard.handshake.max-age", "5"),
        ("netguard.gluetun.apikey", "s3cret"),
        ("netguard.health.combine", "any"),
    ]);
    let health = labels.health.unwrap();
    assert_eq!(
        health.sources[0],
        Source::Handshake {
            max_age: Duration::from_secs(5)
        }
    );
    assert!(
        matches!(&health.sources[1], Source::Gluetun { api_key: Some(k), .. } if k == "s3cret")
    );
    assert!(
        matches!(health.sources[2], Source::Misconfigured(_)),
        "a typo counts as down"
    );
    assert_eq!(health.combine, Combine::Any);
    assert_eq!(labels.problems.len(), 1, "{:?}", labels.problems);
}

#[test]
fn loosening_labels_from_the_image_are_ignored_and_reported_but_vpn_required_protects() {
    let image: std::collections::HashMap<String, String> = [
        ("netguard.allow", "0.0.0.0/0,::/0"),
        ("netguard.role", "vpn-gateway"),
        ("netguard.endpoints", "198.51.100.9:1194/udp"),
        ("vpn", "required"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .into();
    let merged = [
        ("netguard.allow", "0.0.0.0/0,::/0"),
        ("netguard.role", "vpn-gateway"),
        ("netguard.endpoints", "198.51.100.9:1194/udp"),
        ("vpn", "required"),
        ("com.example", "x"),
    ];
    let labels = ContainerLabels::parse_container(merged, ImageLabels::Known(&image));
    assert!(
        labels.protected,
        "vpn=required from the image still protects"
    );
    assert!(!labels.is_gateway && labels.allow.is_empty() && labels.endpoints.is_empty());
    assert_eq!(labels.problems.len(), 3, "{:?}", labels.problems);
    assert!(labels.problems[0].contains("comes from the image"));

    // Set on the container (a value of its own overrides the image's): it counts.
    let own = [("netguard.allow", "10.0.0.0/8"), ("vpn", "required")];
    let labels = ContainerLabels::parse_container(own, ImageLabels::Known(&image));
    assert_eq!(labels.allow, vec!["10.0.0.0/8".parse().unwrap()]);
    assert!(labels.problems.is_empty());

    // Before the image is known (a create event), nothing loosening counts yet.
    let labels = ContainerLabels::parse_container(own, ImageLabels::Unknown);
    assert!(labels.protected && labels.allow.is_empty() && labels.problems.is_empty());
}

#[test]
fn gateway_labels() {
    let labels = ContainerLabels::parse([
        ("netguard.role", "vpn-gateway"),
        ("netguard.endpoints", "203.0.113.7:51820/udp"),
    ]);
    assert!(labels.is_gateway && !labels.protected);
    assert_eq!(labels.endpoints.len(), 1);
    assert_eq!(labels.tunnel_interfaces, vec!["wg0", "tun0"]);
}

#[test]
fn a_resolver_label_takes_an_address_with_or_without_a_port() {
    let parsed = |value: &str| ContainerLabels::parse([(DNS, value)]);
    assert_eq!(
        parsed("10.64.0.1").dns,
        Some("10.64.0.1:53".parse().unwrap())
    );
    assert_eq!(
        parsed("10.64.0.1:5353").dns,
        Some("10.64.0.1:5353".parse().unwrap())
    );
    assert_eq!(
        parsed("[fd00::1]:53").dns,
        Some("[fd00::1]:53".parse().unwrap())
    );
    assert_eq!(
        parsed("127.0.0.11").dns,
        None,
        "Docker's resolver forwards outside the tunnel"
    );
    let bad = parsed("pihole.lan");
    assert_eq!(bad.dns, None);
    assert!(bad.problems[0].contains("pihole.lan"), "{:?}", bad.problems);
}
