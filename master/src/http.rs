//! The master's HTTP listener (`--http-listen`) beside its gRPC API, on the stack of
//! [`drover_http`]:
//! - `GET /metrics`: Prometheus text (the same as `Operator.GetMetrics`);
//! - `GET /health`: `leader` or `follower` (plain text), so that a load balancer or a
//!   script finds the leader without a gRPC client;
//! - `GET /state`: agents, frameworks, tasks and roles as JSON (`GetStateResponse`).
//!
//! Every master answers, leader or not; only the leader's `/state` is current.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::server::Master;

/// Serves the master's HTTP endpoints on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, master: Arc<Master>, shutdown: impl Future<Output = ()>) {
    drover_http::serve(listener, router(master), shutdown).await
}

/// The routes, with the shared `404` and `405` answers.
pub fn router(master: Arc<Master>) -> Router {
    let routes = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/state", get(state))
        .with_state(master);
    drover_http::with_fallbacks(routes, &["/metrics", "/health", "/state"])
}

async fn metrics(State(master): State<Arc<Master>>) -> Response {
    master.update_gauges();
    drover_http::prometheus::response(master.metrics.render())
}

async fn health(State(master): State<Arc<Master>>) -> &'static str {
    if master.serving() {
        "leader\n"
    } else {
        "follower\n"
    }
}

async fn state(State(master): State<Arc<Master>>) -> Response {
    let info = master.master_info();
    let state = master.view(|reg, leader| crate::views::state(reg, leader, info));
    // Pretty: people read this with curl more often than programs do.
    match serde_json::to_string_pretty(&state) {
        Ok(body) => ([(CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => {
            tracing::error!("/state: cannot encode the state as JSON: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode the state as JSON: {e}\n"),
            )
                .into_response()
        }
    }
}
