//! How users name gateways (container, Compose or Swarm service, id prefix), and who is
//! stranded when a gateway restarts.

use super::{GATEWAY, PROTECTED, World, id};
use crate::reconcile::{GatewayChoice, gateways::stranded};

#[test]
fn a_gateway_is_named_as_compose_and_swarm_users_write_it() {
    // Compose v1 names the container media_gluetun_1, v2 media-gluetun-1; a Swarm task is
    // media_gluetun.1.<task id>. The user writes the service name (or the full name, or an
    // id prefix).
    for (container_name, project, service, reference) in [
        ("media_gluetun_1", "media", "gluetun", "gluetun"),
        ("media-gluetun-1", "media", "gluetun", "gluetun"),
        ("media_gluetun.1.x7k2", "media", "media_gluetun", "gluetun"),
        ("media-gluetun-1", "media", "gluetun", "media-gluetun-1"),
        ("media-gluetun-1", "media", "gluetun", "ffff"),
    ] {
        let mut w = World::new();
        w.run('f', container_name, &[GATEWAY], 10, 20);
        w.container('f').project = Some(project.into());
        w.container('f').service = Some(service.into());
        w.run(
            'a',
            "media-qbittorrent-1",
            &[PROTECTED, ("netguard.gateway", reference)],
            11,
            21,
        );
        w.container('a').project = Some("media".into());
        w.apply();
        assert_eq!(
            w.decide().decisions[&id('a')].gateway,
            GatewayChoice::Named(container_name.into()),
            "{reference} -> {container_name}"
        );
        assert_eq!(w.policy(11), Some((true, Some(container_name.into()))));
    }
}

#[test]
fn a_service_name_does_not_reach_into_another_project_and_ambiguity_matches_nothing() {
    let mut w = World::new();
    w.run('f', "other-gluetun-1", &[GATEWAY], 10, 20);
    w.container('f').project = Some("other".into());
    w.container('f').service = Some("gluetun".into());
    w.run('e', "eeee-named", &[GATEWAY], 13, 23);
    w.run(
        'a',
        "media-qbittorrent-1",
        &[PROTECTED, ("netguard.gateway", "gluetun")],
        11,
        21,
    );
    w.container('a').project = Some("media".into());
    // Not hex, too short or shared by two ids: no prefix match.
    w.run(
        'b',
        "short",
        &[PROTECTED, ("netguard.gateway", "fff")],
        12,
        22,
    );
    w.run(
        'd',
        "not-a-gateway",
        &[PROTECTED, ("netguard.gateway", "dddd")],
        14,
        24,
    );
    w.apply();
    let decisions = w.decide().decisions;
    assert_eq!(
        decisions[&id('a')].gateway,
        GatewayChoice::Missing("gluetun".into())
    );
    assert_eq!(
        decisions[&id('b')].gateway,
        GatewayChoice::Missing("fff".into())
    );
    assert_eq!(
        decisions[&id('d')].gateway,
        GatewayChoice::Missing("dddd".into()),
        "its own id prefix is no gateway's"
    );
    assert_eq!(
        w.policy(11),
        Some((true, None)),
        "no tunnel for an unresolved reference"
    );
}

#[test]
fn joining_a_gateways_namespace_needs_no_label() {
    let mut w = World::new();
    w.run('f', "media-gluetun-1", &[GATEWAY], 10, 20);
    w.run('e', "media-wireguard-1", &[GATEWAY], 13, 23);
    w.run('a', "media-qbittorrent-1", &[PROTECTED], 11, 20);
    w.container('a').network_mode = format!("container:{}", id('f'));
    w.apply();
    assert_eq!(w.policy(11), Some((true, Some("media-gluetun-1".into()))));
}

#[test]
fn a_gateway_restart_strands_the_containers_in_its_old_namespace() {
    let mut w = World::new();
    w.run('f', "media-gluetun-1", &[GATEWAY], 10, 20);
    w.run('a', "media-qbittorrent-1", &[PROTECTED], 11, 20);
    w.container('a').network_mode = format!("container:{}", id('f'));
    w.run('b', "media-sabnzbd-1", &[PROTECTED], 12, 22);
    assert!(stranded(&w.containers).is_empty(), "same namespace");
    // The gateway restarts: a new process in a new namespace.
    w.run('f', "media-gluetun-1", &[GATEWAY], 30, 40);
    assert_eq!(
        stranded(&w.containers),
        [(id('a'), "media-gluetun-1".to_string())].into()
    );
    // Restarted, it joins the new one.
    w.run('a', "media-qbittorrent-1", &[PROTECTED], 31, 40);
    w.container('a').network_mode = format!("container:{}", id('f'));
    assert!(stranded(&w.containers).is_empty());
}

#[test]
fn a_gateway_of_another_project_named_like_the_service_does_not_stand_in() {
    // `docker run --name gluetun` elsewhere, and the media project's own gluetun service.
    let mut w = World::new();
    w.run('e', "gluetun", &[GATEWAY], 13, 23);
    w.run('f', "media-gluetun-1", &[GATEWAY], 10, 20);
    w.container('f').project = Some("media".into());
    w.container('f').service = Some("gluetun".into());
    w.run(
        'a',
        "media-qbittorrent-1",
        &[PROTECTED, ("netguard.gateway", "gluetun")],
        11,
        21,
    );
    w.container('a').project = Some("media".into());
    // Outside any project the name alone decides.
    w.run(
        'b',
        "standalone",
        &[PROTECTED, ("netguard.gateway", "gluetun")],
        12,
        22,
    );
    w.apply();
    let decisions = w.decide().decisions;
    assert_eq!(
        decisions[&id('a')].gateway,
        GatewayChoice::Missing("gluetun".into()),
        "two gateways answer to gluetun for it: neither"
    );
    assert_eq!(
        decisions[&id('b')].gateway,
        GatewayChoice::Named("gluetun".into())
    );
}
