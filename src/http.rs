//! The operator's HTTP endpoints: `/healthz` (the process is alive), `/readyz` (Redis and every
//! bridge connected, as JSON; 503 otherwise) and `/metrics` (Prometheus text).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use hub_bridge_sdk::health::Health;
use prometheus_client::registry::Registry;
use serde_json::json;

#[derive(Clone)]
struct AppState {
    health: Health,
    registry: Arc<Registry>,
}

/// The router for the operator's endpoints.
pub fn router(health: Health, registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AppState { health, registry })
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let components = state.health.snapshot();
    let ready = components.values().all(|component| component.ready);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "ready": ready, "components": components })),
    )
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("could not encode metrics: {error}\n"),
        ),
    }
}
