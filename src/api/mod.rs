//! The agent API (SPEC section 7): `POST /v1/events`, `GET /v1/events` (Server-Sent Events) and
//! `GET /v1/ws` (WebSocket) on the service's HTTP listener, for agents that do not speak Redis and
//! as the way into the embedded bus.
//!
//! It owns the trust boundary of the bearer token: the token decides who the agent is, tokens are
//! compared in constant time and never logged, and the routes exist only when at least one
//! `[agents.{id}]` has an `api_token` (otherwise `/v1` answers 404). Publishing goes through the
//! same [`Store`] the service uses, so the hub loop sees API events exactly as it sees any other
//! publisher's; streaming reads a tap of the hub loop (see [`stream`]), never a Redis subscription
//! of its own.

pub mod publish;
pub mod stream;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hub_bridge_sdk::config::ConfigIssue;
use hub_bridge_sdk::limits::RateLimiter;
use hub_bridge_sdk::metrics::ReasonLabel;
use hub_bridge_sdk::{AgentProfile, Keys, Store};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use stream::{StreamTap, Tapped};

/// `[api]`: how the agent API streams. The API itself is enabled by `[agents.{id}] api_token`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Events buffered per stream subscriber (default 256). A subscriber whose buffer is full
    /// misses events and is told so (`event: lagged`); one that misses more than this many in a
    /// row, or lags [`stream::LAGS_ALLOWED`] times within a minute, is disconnected.
    pub stream_buffer: usize,
    /// Seconds between keep-alive comment lines on an idle Server-Sent Events stream (default 15).
    pub keepalive_secs: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            stream_buffer: 256,
            keepalive_secs: 15,
        }
    }
}

/// The shortest `api_token` accepted: a bearer token is the agent's whole identity.
pub const MIN_TOKEN_CHARS: usize = 16;

/// The token of the example config's demo agent (`config/hub-bridge.example.toml`).
pub const DEMO_TOKEN: &str = "demo-token-change-me";

/// Checks the API settings and every agent's `api_token` (non-empty, long enough, usable in an
/// HTTP header, and no two agents sharing one: a shared token could not say who the agent is).
pub fn validate_config(
    agents: &BTreeMap<String, AgentProfile>,
    api: &ApiConfig,
    listen: std::net::SocketAddr,
) -> Result<(), ConfigIssue> {
    if api.stream_buffer == 0 {
        return Err(ConfigIssue::new("api.stream_buffer", "must be at least 1"));
    }
    if api.keepalive_secs == 0 {
        return Err(ConfigIssue::new("api.keepalive_secs", "must be at least 1"));
    }
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for (id, profile) in agents {
        let Some(token) = &profile.api_token else {
            continue;
        };
        let key = format!("agents.{id}.api_token");
        let value = token.expose();
        if value.chars().count() < MIN_TOKEN_CHARS {
            return Err(ConfigIssue::new(
                key,
                format!("must be at least {MIN_TOKEN_CHARS} characters"),
            ));
        }
        if !value.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(ConfigIssue::new(
                key,
                "must be printable ASCII without spaces (it travels in an HTTP header)",
            ));
        }
        // The example config's token is public: fine for trying the service on this machine,
        // never on a listener others can reach (the Docker image listens on 0.0.0.0).
        if value == DEMO_TOKEN && !listen.ip().is_loopback() {
            return Err(ConfigIssue::new(
                key,
                format!(
                    "is the example config's public demo token, accepted only on a loopback \
                     http.listen (this one is {listen}); set a secret token or remove it"
                ),
            ));
        }
        if let Some((other, _)) = seen.iter().find(|(_, known)| *known == value) {
            return Err(ConfigIssue::new(
                key,
                format!("is the same as agents.{other}.api_token; each agent needs its own"),
            ));
        }
        seen.push((id, value));
    }
    Ok(())
}

/// The agents that may use the API, by the SHA-256 digest of their token.
///
/// Digests rather than the tokens themselves: comparing two fixed-size digests with
/// `subtle::ConstantTimeEq` takes the same time whatever the presented token is, including its
/// length (a plain comparison of the tokens stops at the first differing byte, and `subtle` on
/// slices of different lengths returns early), so the time of a refusal says nothing about a token.
pub struct Tokens {
    entries: Vec<(String, [u8; 32])>,
}

impl Tokens {
    pub fn from_agents(agents: &BTreeMap<String, AgentProfile>) -> Self {
        let entries = agents
            .iter()
            .filter_map(|(id, profile)| {
                let token = profile.api_token.as_ref()?;
                Some((id.clone(), digest(token.expose())))
            })
            .collect();
        Self { entries }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The agents with a token, for `hub-bridge check` and the startup log.
    pub fn agents(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(id, _)| id.as_str())
    }

    /// The agent whose token this is. Every entry is compared (no early exit on a match).
    pub fn agent_for(&self, presented: &str) -> Option<&str> {
        let presented = digest(presented);
        let mut found = None;
        for (id, known) in &self.entries {
            if bool::from(known.ct_eq(&presented)) {
                found = Some(id.as_str());
            }
        }
        found
    }
}

fn digest(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The agent API's own metrics (`hub_bridge_api_*`).
#[derive(Debug, Default)]
pub struct ApiMetrics {
    /// Requests and WebSocket frames answered, by route and status.
    pub requests: Family<RouteStatus, Counter>,
    /// Times a stream subscriber was told it had fallen behind.
    pub lagged: Counter,
    /// Events a slow stream subscriber missed.
    pub missed: Counter,
    /// Streams closed by the service, by reason.
    pub disconnects: Family<ReasonLabel, Counter>,
    /// Streams open now.
    pub streams: Gauge,
}

/// `{route, status}`: an API route (`POST /v1/events`) and the HTTP status it answered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    pub route: &'static str,
    pub status: u16,
}

impl ApiMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("hub_bridge_api");
        registry.register(
            "requests",
            "Agent API requests and WebSocket frames answered, by route and status",
            self.requests.clone(),
        );
        registry.register(
            "lagged",
            "Times a stream subscriber fell behind and was told how many events it missed",
            self.lagged.clone(),
        );
        registry.register(
            "missed_events",
            "Events slow stream subscribers missed",
            self.missed.clone(),
        );
        registry.register(
            "disconnects",
            "Streams the service closed, by reason",
            self.disconnects.clone(),
        );
        registry.register("streams", "Streams open now", self.streams.clone());
    }

    fn count(&self, route: &'static str, status: StatusCode) {
        self.requests
            .get_or_create(&RouteStatus {
                route,
                status: status.as_u16(),
            })
            .inc();
    }
}

/// Everything the API's handlers share.
pub struct Api {
    tokens: Tokens,
    store: Arc<dyn Store>,
    keys: Keys,
    limiter: RateLimiter,
    max_payload_bytes: usize,
    counts_limits: bool,
    config: ApiConfig,
    tap: StreamTap,
    metrics: Arc<ApiMetrics>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// What [`Api::new`] needs from the service.
pub struct ApiParts {
    pub agents: BTreeMap<String, AgentProfile>,
    pub config: ApiConfig,
    pub store: Arc<dyn Store>,
    pub keys: Keys,
    pub limiter: RateLimiter,
    pub max_payload_bytes: usize,
    /// Whether the API counts agents' rate limits itself: only when this service runs no bridge,
    /// since the hub loop counts only what it hands to a bridge (see `publish`).
    pub counts_limits: bool,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
}

impl Api {
    /// The API, or `None` when no agent has a token (then `/v1` is not routed at all).
    pub fn new(parts: ApiParts) -> Option<Arc<Self>> {
        let tokens = Tokens::from_agents(&parts.agents);
        if tokens.is_empty() {
            return None;
        }
        Some(Arc::new(Self {
            tokens,
            store: parts.store,
            keys: parts.keys,
            limiter: parts.limiter,
            max_payload_bytes: parts.max_payload_bytes,
            counts_limits: parts.counts_limits,
            tap: StreamTap::new(stream::TAP_CAPACITY),
            config: parts.config,
            metrics: Arc::default(),
            shutdown: parts.shutdown,
            tasks: parts.tasks,
        }))
    }

    /// The tap the hub loop feeds the streams through.
    pub fn tap(&self) -> StreamTap {
        self.tap.clone()
    }

    pub fn metrics(&self) -> &ApiMetrics {
        &self.metrics
    }

    pub fn agents(&self) -> impl Iterator<Item = &str> {
        self.tokens.agents()
    }

    /// The agent the request's `Authorization: Bearer` token belongs to.
    fn authenticate(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        bearer_agent(&self.tokens, headers)
            .map(str::to_owned)
            .ok_or(ApiError::Unauthorized)
    }
}

/// The agent named by an `Authorization: Bearer {token}` header (scheme case-insensitive).
fn bearer_agent<'a>(tokens: &'a Tokens, headers: &HeaderMap) -> Option<&'a str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    tokens.agent_for(token.trim())
}

/// The `/v1` routes.
pub fn router(api: Arc<Api>) -> Router {
    let body_limit = api.max_payload_bytes;
    Router::new()
        .route("/v1/events", post(publish::handle).get(stream::handle_sse))
        .route("/v1/ws", get(stream::handle_ws))
        // Checked before the body is read: a larger body is answered 413 unread.
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(api)
}

/// Why a request was refused; each becomes its status with `{"error": reason}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or unknown bearer token")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("the event is over hub.max_payload_bytes ({max} bytes)")]
    TooLarge { max: usize },
    #[error("over the limit of {limit} {action} per minute; retry in {retry_after_secs} s")]
    RateLimited {
        action: &'static str,
        limit: u32,
        retry_after_secs: u64,
    },
    #[error("the hub's store is unavailable; retry later")]
    Unavailable,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, Json(json!({ "error": self.to_string() }))).into_response();
        let headers = response.headers_mut();
        match &self {
            Self::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::RateLimited {
                retry_after_secs, ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            Self::Unavailable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

/// How long a stream may stay silent before a keep-alive comment.
fn keepalive(config: &ApiConfig) -> Duration {
    Duration::from_secs(config.keepalive_secs)
}

#[cfg(test)]
mod tests {
    use hub_bridge_sdk::config::Secret;

    use super::*;

    fn agents(tokens: &[(&str, &str)]) -> BTreeMap<String, AgentProfile> {
        tokens
            .iter()
            .map(|(id, token)| {
                let profile = AgentProfile {
                    api_token: Some(Secret::new(*token)),
                    ..AgentProfile::default()
                };
                ((*id).to_owned(), profile)
            })
            .collect()
    }

    #[test]
    fn a_token_names_its_agent_and_nothing_else_does() {
        let tokens = Tokens::from_agents(&agents(&[
            ("alpha", "alpha-token-0123456789"),
            ("beta", "beta-token-0123456789"),
        ]));
        assert_eq!(tokens.agent_for("alpha-token-0123456789"), Some("alpha"));
        assert_eq!(tokens.agent_for("beta-token-0123456789"), Some("beta"));
        for wrong in [
            "",
            "alpha",
            "alpha-token-012345678",
            "alpha-token-0123456789x",
        ] {
            assert_eq!(tokens.agent_for(wrong), None, "{wrong}");
        }
    }

    #[test]
    fn agents_without_a_token_leave_the_api_off() {
        let mut directory = agents(&[]);
        directory.insert("shown-only".to_owned(), AgentProfile::default());
        assert!(Tokens::from_agents(&directory).is_empty());
    }

    #[test]
    fn weak_or_shared_tokens_are_rejected_naming_the_key() {
        let api = ApiConfig::default();
        let short = validate_config(&agents(&[("a", "short")]), &api, LOOPBACK).unwrap_err();
        assert_eq!(short.key, "agents.a.api_token");
        let spaced = validate_config(&agents(&[("a", "has a space in it, 0123")]), &api, LOOPBACK);
        assert_eq!(spaced.unwrap_err().key, "agents.a.api_token");
        let shared = validate_config(
            &agents(&[
                ("a", "same-token-0123456789"),
                ("b", "same-token-0123456789"),
            ]),
            &api,
            LOOPBACK,
        )
        .unwrap_err();
        assert_eq!(shared.key, "agents.b.api_token");
        assert!(!shared.message.contains("same-token"), "{}", shared.message);
        assert!(
            validate_config(&agents(&[("a", "good-token-0123456789")]), &api, LOOPBACK).is_ok()
        );
    }

    #[test]
    fn the_demo_token_is_refused_on_a_listener_others_can_reach() {
        let api = ApiConfig::default();
        let demo = agents(&[("demo", DEMO_TOKEN)]);
        assert!(validate_config(&demo, &api, LOOPBACK).is_ok());
        let exposed = "0.0.0.0:9464".parse().expect("address");
        let issue = validate_config(&demo, &api, exposed).unwrap_err();
        assert_eq!(issue.key, "agents.demo.api_token");
        assert!(issue.message.contains("0.0.0.0:9464"), "{}", issue.message);
    }

    const LOOPBACK: std::net::SocketAddr = std::net::SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::LOCALHOST,
        9464,
    ));

    #[test]
    fn the_bearer_scheme_is_required() {
        let api = Tokens::from_agents(&agents(&[("alpha", "alpha-token-0123456789")]));
        let header = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            headers
        };
        let check = |headers: &HeaderMap| bearer_agent(&api, headers);
        assert_eq!(
            check(&header("Bearer alpha-token-0123456789")),
            Some("alpha")
        );
        assert_eq!(
            check(&header("bearer alpha-token-0123456789")),
            Some("alpha")
        );
        assert_eq!(check(&header("Basic alpha-token-0123456789")), None);
        assert_eq!(check(&header("alpha-token-0123456789")), None);
    }
}
