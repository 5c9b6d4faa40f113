//! `netguard run`: load or adopt the datapath, apply the configured policy, follow Docker,
//! report blocked flows and serve the API; on shutdown, leave enforcement in place.

mod blocked;
mod release;
mod start;

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context as _, Result};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

pub use self::start::{Started, start};
use crate::{
    cgroup::Hierarchy,
    config::{Config, ConfigError},
    docker::{Follow, Watcher},
    http,
    kernel::{Maps, PinnedOwners, events, log},
    report::Report,
};

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(config: Config) -> Result<()> {
    let Started {
        mut datapath,
        applier,
        statics,
        root,
        attach_cgroups,
    } = start(&config)?;
    // netguard's resolver holds sockets for every protected container and their queries.
    if let Err(error) = crate::sys::raise_open_files_limit() {
        warn!("raising the open files limit: {error} (the resolver may run short)");
    }
    // After enforcement is in place: an agent that cannot serve HTTP exits (64), but what it
    // attached stays pinned and enforcing; exiting before attaching could let a container
    // that Docker starts meanwhile out unguarded.
    let listener = config.listen.map(listen).transpose()?;
    let token = config
        .api_token_file
        .as_deref()
        .map(http::ensure_token)
        .transpose()?;
    let pin_dir = datapath.pin_dir().to_path_buf();
    let report = Arc::new(Report::new(
        attach_cgroups,
        config.metrics_grace,
        config.docker_socket.is_some(),
        Hierarchy::open(&root).ok(),
    ));
    report.set_static_cgroups(statics.cgroups.clone());

    let ring = datapath
        .take_events()
        .context("event ring buffer already taken")?;
    match PinnedOwners::open(&pin_dir) {
        Ok(owners) => report.set_pinned_owners(owners),
        Err(error) => warn!("{error:#}: blocked flows of gone cgroups are named by cgroup only"),
    }
    let flows = Arc::clone(&report);
    let log = Arc::new(std::sync::Mutex::new(blocked::BlockedLog::default()));
    let batch_log = Arc::clone(&log);
    let mut reader = tokio::spawn(events::read_blocked_flows(
        ring,
        move |event| {
            let record = flows.blocked(&event);
            log.lock().unwrap().flow(&record, &event);
        },
        move || batch_log.lock().unwrap().batch_end(),
    ));
    let kernel_log = datapath.take_logs().context("kernel log already taken")?;
    let mut forwarder = tokio::spawn(log::forward(kernel_log));
    let mut releaser = tokio::spawn(release::release_stopped(pin_dir.clone(), root.clone()));
    let mut server = match listener {
        Some(listener) => {
            let maps = Maps::open_pinned(&pin_dir)?;
            info!(
                "serving /metrics and /api/v1 on http://{}",
                listener.local_addr()?
            );
            let access = http::Access {
                token,
                max_flow_streams: config.max_flow_streams,
            };
            tokio::spawn(http::serve(listener, Arc::clone(&report), maps, access))
        }
        None => tokio::spawn(std::future::pending::<Result<()>>()),
    };
    // The Docker watcher owns the datapath from here on; without Docker it just stays open.
    let mut watcher = match &config.docker_socket {
        Some(socket) => {
            let hierarchy = Hierarchy::open(&root)?;
            let watcher = Watcher::new(
                Follow {
                    socket: socket.clone(),
                    resync: config.resync,
                    heal_stranded: config.heal_stranded,
                    gluetun_auth: config.gluetun_auth.clone(),
                },
                datapath,
                applier,
                hierarchy,
                statics,
                Arc::clone(&report),
            );
            tokio::spawn(watcher.run())
        }
        None => tokio::spawn(async move {
            let _datapath = datapath;
            std::future::pending::<Result<()>>().await
        }),
    };

    if let Err(error) = crate::host::notify_ready() {
        warn!("telling systemd we are ready: {error}");
    }
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => info!("SIGTERM received"),
        _ = interrupt.recv() => info!("SIGINT received"),
        result = &mut reader => warn!("blocked-flow reader stopped: {result:?}"),
        result = &mut forwarder => warn!("kernel log reader stopped: {result:?}"),
        result = &mut releaser => warn!("raw-socket hold releaser stopped: {result:?}"),
        result = &mut watcher => warn!("Docker watcher stopped: {result:?}"),
        result = &mut server => warn!("HTTP server stopped: {result:?}"),
    }
    reader.abort();
    forwarder.abort();
    releaser.abort();
    watcher.abort();
    server.abort();
    info!(
        "stopping; enforcement stays in place (pinned under {}); `netguard unload` removes it",
        pin_dir.display()
    );
    Ok(())
}

/// The HTTP server's socket.
fn listen(address: SocketAddr) -> Result<tokio::net::TcpListener> {
    let listener = std::net::TcpListener::bind(address)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|error| {
            ConfigError(format!(
                "cannot listen on {address}: {error}: pick a free address with --listen \
                 (NETGUARD_LISTEN), or --listen off"
            ))
        })?;
    Ok(tokio::net::TcpListener::from_std(listener)?)
}
