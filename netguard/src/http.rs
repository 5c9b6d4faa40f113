//! The agent's HTTP server: `/metrics`, the read-only JSON API, `/healthz` and `/readyz`.
//! Only GET routes exist: nothing that changes policy is reachable over HTTP.

use std::{convert::Infallible, sync::Arc};

use anyhow::{Context as _, Result};
use axum::{
    Json, Router,
    body::Body,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use bytes::Bytes;
use serde::Deserialize;
use tokio::{net::TcpListener, sync::broadcast::error::RecvError};

use crate::{
    api::{self, FlowStreamLine},
    kernel::Maps,
    metrics,
    report::{self, DockerSync, Report},
};

struct Server {
    report: Arc<Report>,
    /// The agent's maps, opened from their pins: only read here.
    maps: Maps,
}

type Shared = State<Arc<Server>>;

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, report: Arc<Report>, maps: Maps) -> Result<()> {
    let server = Arc::new(Server { report, maps });
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
        .with_state(server);
    axum::serve(listener, app)
        .await
        .context("serving the HTTP API")
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
                gateways: report::gateways(&server.maps)?,
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

async fn gateways(State(server): Shared) -> Response {
    match report::gateways(&server.maps) {
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

/// Blocked flows as they happen, one JSON object per line, until the client goes away.
async fn flow_stream(State(server): Shared) -> Response {
    let live = server.report.subscribe();
    let lines = futures_util::stream::unfold(live, |mut live| async move {
        let line = match live.recv().await {
            Ok(flow) => FlowStreamLine::Flow(flow),
            Err(RecvError::Lagged(lagged)) => FlowStreamLine::Lagged { lagged },
            Err(RecvError::Closed) => return None,
        };
        let mut bytes = serde_json::to_vec(&line).expect("flow records serialize");
        bytes.push(b'\n');
        Some((Ok::<_, Infallible>(Bytes::from(bytes)), live))
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response()
}
