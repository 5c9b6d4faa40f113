//! The agent's HTTP server: `/metrics`, the read-only JSON API, `/healthz` and `/readyz`.
//! Only GET routes exist: nothing that changes policy is reachable over HTTP. With an API
//! token, every request but `/healthz` must carry it (`Authorization: Bearer ...`): the
//! server may be reachable by containers (the Compose stack listens on 0.0.0.0). Live flow
//! streams are capped, so no client can make the agent hold unbounded state.

use std::{
    convert::Infallible,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use anyhow::{Context as _, Result};
use axum::{
    Json, Router,
    body::Body,
    extract::{Query, Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use bytes::Bytes;
use serde::Deserialize;
use tokio::{net::TcpListener, sync::broadcast::error::RecvError};

use crate::{
    api::{self, FlowStreamLine},
    config::ConfigError,
    kernel::Maps,
    metrics,
    report::{self, DockerSync, Report},
};

/// Who may use the API, and how much.
pub struct Access {
    /// The bearer token every request but `/healthz` must carry; `None`: none asked.
    pub token: Option<String>,
    /// Live flow streams served at once.
    pub max_flow_streams: usize,
}

struct Server {
    report: Arc<Report>,
    /// The agent's maps, opened from their pins: only read here.
    maps: Maps,
    access: Access,
    /// Live flow streams now.
    streams: AtomicUsize,
}

type Shared = State<Arc<Server>>;

/// Serves until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    report: Arc<Report>,
    maps: Maps,
    access: Access,
) -> Result<()> {
    let server = Arc::new(Server {
        report,
        maps,
        access,
        streams: AtomicUsize::new(0),
    });
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route(&format!("{}/containers", api::PREFIX), get(containers))
        .route(&format!("{}/gateways", api::PREFIX), get(gateways))
        .route(&format!("{}/flows", api::PREFIX), get(flows))
        .route(&format!("{}/flows/stream", api::PREFIX), get(flow_stream))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found; try /metrics, /healthz, /readyz, /api/v1/containers, \
                 /api/v1/gateways, /api/v1/flows, /api/v1/flows/stream\n",
            )
        })
        .layer(middleware::from_fn_with_state(
            Arc::clone(&server),
            authorize,
        ))
        .with_state(server);
    axum::serve(listener, app)
        .await
        .context("serving the HTTP API")
}

/// With a token, every request but `/healthz` must carry it.
async fn authorize(State(server): Shared, request: Request, next: Next) -> Response {
    if let Some(token) = &server.access.token
        && request.uri().path() != "/healthz"
    {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|given| same(given.as_bytes(), token.as_bytes())) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "this agent asks for its API token: send Authorization: Bearer <the token in \
                 its --api-token-file> (netguard status reads NETGUARD_API_TOKEN_FILE)\n",
            )
                .into_response();
        }
    }
    next.run(request).await
}

/// Compares in time independent of where the bytes differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The API token in `path`.
pub fn read_token(path: &Path) -> Result<String, ConfigError> {
    let token = std::fs::read_to_string(path).map_err(|error| {
        ConfigError(format!(
            "API token file {}: {error}: fix the path or drop --api-token-file",
            path.display()
        ))
    })?;
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(ConfigError(format!(
            "API token file {} is empty: put a token in it, or delete it and netguard run makes \
             one",
            path.display()
        )));
    }
    Ok(token)
}

/// The API token in `path`, made (32 random bytes, hex) if the file does not exist yet.
pub fn ensure_token(path: &Path) -> Result<String> {
    if path.exists() {
        return Ok(read_token(path)?);
    }
    let mut random = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut random)?;
    let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Readable by whoever may read its directory: Prometheus (another user) reads it too.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .with_context(|| format!("creating the API token file {}", path.display()))?;
    writeln!(file, "{token}")?;
    tracing::info!(path = %path.display(), "made an API token");
    Ok(token)
}

/// A failure reading the maps: the scrape fails loudly rather than showing zeros.
fn internal_error(error: anyhow::Error) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("reading the datapath's maps: {error:#}\n"),
    )
        .into_response()
}

async fn metrics_text(State(server): Shared, headers: HeaderMap) -> Response {
    // Prometheus asks for OpenMetrics; anything else gets the classic text format.
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let scrape = server
        .report
        .containers(&server.maps, false)
        .and_then(|containers| {
            Ok(metrics::Scrape {
                containers,
                gateways: explained(&server)?,
                docker_in_sync: match server.report.docker() {
                    DockerSync::Disabled => None,
                    sync => Some(sync == DockerSync::InSync),
                },
                label_problems: server.report.label_problems(),
            })
        });
    match scrape.map(metrics::render) {
        Ok(Ok(text)) if openmetrics => {
            ([(header::CONTENT_TYPE, metrics::OPENMETRICS)], text).into_response()
        }
        Ok(Ok(text)) => (
            [(header::CONTENT_TYPE, metrics::PROMETHEUS_TEXT)],
            metrics::to_prometheus_text(&text),
        )
            .into_response(),
        Ok(Err(error)) => internal_error(anyhow::anyhow!("encoding: {error}")),
        Err(error) => internal_error(error),
    }
}

async fn readyz(State(server): Shared) -> Response {
    let readiness = server.report.readiness();
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness)).into_response()
}

async fn containers(State(server): Shared) -> Response {
    match server.report.containers(&server.maps, true) {
        Ok(containers) => Json(containers).into_response(),
        Err(error) => internal_error(error),
    }
}

/// The gateways as their slots say, with why those that are down are down.
fn explained(server: &Server) -> anyhow::Result<Vec<crate::api::GatewayStatus>> {
    let mut gateways = report::gateways(&server.maps)?;
    server.report.explain(&mut gateways);
    Ok(gateways)
}

async fn gateways(State(server): Shared) -> Response {
    match explained(&server) {
        Ok(gateways) => Json(gateways).into_response(),
        Err(error) => internal_error(error),
    }
}

#[derive(Deserialize)]
struct FlowsQuery {
    limit: Option<usize>,
}

async fn flows(State(server): Shared, Query(query): Query<FlowsQuery>) -> Response {
    Json(server.report.recent_flows(query.limit.unwrap_or(100))).into_response()
}

/// A live stream's place among the capped ones, given back when the stream ends.
struct StreamSlot(Arc<Server>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Blocked flows as they happen, one JSON object per line, until the client goes away.
async fn flow_stream(State(server): Shared) -> Response {
    let max = server.access.max_flow_streams;
    if server.streams.fetch_add(1, Ordering::SeqCst) >= max {
        server.streams.fetch_sub(1, Ordering::SeqCst);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{max} live flow streams are open already: close one, or raise \
                 max_flow_streams\n"
            ),
        )
            .into_response();
    }
    let slot = StreamSlot(Arc::clone(&server));
    let live = server.report.subscribe();
    let lines = futures_util::stream::unfold((live, slot), |(mut live, slot)| async move {
        let line = match live.recv().await {
            Ok(flow) => FlowStreamLine::Flow(flow),
            Err(RecvError::Lagged(lagged)) => FlowStreamLine::Lagged { lagged },
            Err(RecvError::Closed) => return None,
        };
        let mut bytes = serde_json::to_vec(&line).expect("flow records serialize");
        bytes.push(b'\n');
        Some((Ok::<_, Infallible>(Bytes::from(bytes)), (live, slot)))
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response()
}
