//! The service's own HTTP endpoints: for the operator `/healthz` (the process is alive),
//! `/readyz` (Redis and every bridge connected, as JSON; 503 otherwise) and `/metrics`
//! (Prometheus text); for agents `/media/{token}`, the people's files their messages link to
//! (SPEC section 5), streamed from the platform.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hub_bridge_sdk::health::Health;
use hub_bridge_sdk::media::{LinkError, Media, ServeError, SourceError};
use prometheus_client::registry::Registry;
use serde_json::json;

#[derive(Clone)]
struct AppState {
    health: Health,
    registry: Arc<Registry>,
    media: Arc<Media>,
}

/// The router for the service's own endpoints.
pub fn router(health: Health, registry: Arc<Registry>, media: Arc<Media>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/media/{token}", get(media_file))
        .with_state(AppState {
            health,
            registry,
            media,
        })
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

/// Streams the file a media link names from its platform. The token is checked first: a bad
/// signature (403) or an expired link (410) costs no platform call.
async fn media_file(State(state): State<AppState>, Path(token): Path<String>) -> Response {
    let download = match state.media.serve(&token).await {
        Ok(download) => download,
        Err(error) => {
            let status = match &error {
                ServeError::Link(LinkError::BadSignature) => StatusCode::FORBIDDEN,
                ServeError::Link(LinkError::Expired) => StatusCode::GONE,
                ServeError::NoSource(_) | ServeError::Source(SourceError::Gone) => {
                    StatusCode::NOT_FOUND
                }
                ServeError::Source(SourceError::Unavailable(_)) => StatusCode::BAD_GATEWAY,
                ServeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            if status.is_server_error() {
                tracing::warn!(%error, "a media link could not be served");
            }
            return (status, format!("{error}\n")).into_response();
        }
    };
    let content_type = download
        .content_type
        .as_deref()
        .and_then(|value| HeaderValue::from_str(value).ok())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    // People choose what they upload: served from the operator's origin, a file is never run as a
    // page (no sniffing, a sandbox, and anything but pictures and sound downloaded).
    let inline = ["image/", "audio/", "video/"]
        .iter()
        .any(|kind| content_type.to_str().unwrap_or_default().starts_with(kind));
    let mut response = Response::new(Body::from_stream(download.body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    if let Some(length) = download.length {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    if !inline {
        headers.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment"),
        );
    }
    response
}
