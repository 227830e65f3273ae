//! Discord's REST API as the bridge calls it: serenity's routes, sent through the reqwest client
//! that serenity's own `Http` uses (same token, same `api_url` proxy), but with the response
//! headers read here.
//!
//! Why not `Http::send_message` and friends: `api_url` only works with serenity's ratelimiter
//! disabled, and then serenity turns a 429 into an error that has lost both the `Retry-After`
//! header and the body's `retry_after` (the body has no `code`, so it does not decode). So every
//! request goes through [`Rest::call`], which paces itself by the `X-RateLimit-*` headers of the
//! previous answer on the same route, honours a global 429 for every route, and returns a typed
//! [`RestError::RateLimited`] carrying the wait Discord asked for.
//!
//! Webhook URLs embed a token: no URL ever appears in an error or a log line from here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hub_bridge_sdk::outbox::SendError;
use hub_bridge_sdk::relay::Upload;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use reqwest::multipart::{Form, Part};
use serde::de::DeserializeOwned;
use serde_json::Value;
use serenity::http::{Http, HttpBuilder, LightMethod, Route};

/// How long one request may take before it counts as a transient failure.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The shortest wait after a 429, so that a `retry_after` of 0 cannot cause a hot loop.
const MIN_RETRY_AFTER: Duration = Duration::from_millis(50);
/// Added to a bucket's announced reset: the header is rounded to milliseconds, and a request
/// that arrives a hair early earns a 429 (and counts as an invalid request).
const RESET_MARGIN: Duration = Duration::from_millis(25);

/// Why a REST call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RestError {
    /// A 429: wait `retry_after`, then try again.
    #[error("rate limited by Discord (retry after {retry_after:?}, global: {global})")]
    RateLimited { retry_after: Duration, global: bool },
    /// Any other unsuccessful status, with Discord's JSON error code when it sent one.
    #[error("HTTP {status}, Discord code {code}: {message}")]
    Status {
        status: u16,
        code: i64,
        message: String,
    },
    /// The request did not get an answer (connection refused, reset, timeout).
    #[error("request failed: {0}")]
    Network(String),
    /// A successful answer whose body was not what the route returns.
    #[error("unexpected answer: {0}")]
    Decode(String),
    /// A request was not sent because an id it names is not a Discord id (0, or not a number).
    #[error("not a Discord {0} id")]
    InvalidId(&'static str),
}

impl RestError {
    /// Discord's JSON error code (`10008` Unknown Message, ...), when it sent one.
    pub fn code(&self) -> Option<i64> {
        match self {
            Self::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            Self::RateLimited { .. } => Some(429),
            _ => None,
        }
    }

    /// Whether the message or channel the request named is gone (so deleting it again is done).
    pub fn is_unknown_message(&self) -> bool {
        matches!(self.code(), Some(10008))
    }
}

impl From<RestError> for SendError {
    fn from(error: RestError) -> Self {
        match error {
            RestError::RateLimited { retry_after, .. } => Self::RetryAfter(retry_after),
            RestError::Network(_) => Self::Transient(error.to_string()),
            RestError::Status { status, .. } if status >= 500 || status == 408 => {
                Self::Transient(error.to_string())
            }
            // 4xx (403 Missing Access, 404 Unknown Channel, 400 50035 Invalid Form Body, ...)
            // will fail the same way again; and a success we cannot read must not be re-sent.
            RestError::Status { .. } | RestError::Decode(_) | RestError::InvalidId(_) => {
                Self::Permanent(error.to_string())
            }
        }
    }
}

/// What the last answer on a route said about its bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    remaining: u64,
    reset_at: Instant,
}

/// The REST client.
pub struct Rest {
    http: Http,
    client: reqwest::Client,
    /// Route key -> bucket state. A std mutex: held for a map lookup only, never across an await.
    buckets: Mutex<HashMap<String, Bucket>>,
    global_until: Mutex<Option<Instant>>,
}

impl Rest {
    /// A client for `token` against `api_url` (`https://discord.com`, a proxy, or a fake).
    pub fn new(token: &str, api_url: &str) -> Self {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(REQUEST_TIMEOUT)
            .build()
            // Building fails only when the TLS backend cannot initialise, which is a broken build.
            .unwrap_or_default();
        let http = http_for(token, api_url, client.clone());
        Self {
            http,
            client,
            buckets: Mutex::new(HashMap::new()),
            global_until: Mutex::new(None),
        }
    }

    /// The serenity `Http` the gateway client is built on: the same reqwest client, token and
    /// proxy as every REST call here.
    pub fn gateway_http(&self, token: &str) -> Http {
        let api_url = self.http.proxy.clone().unwrap_or_default();
        http_for(token, &api_url, self.client.clone())
    }

    /// Sends one request and decodes the JSON answer.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: LightMethod,
        route: Route<'_>,
        params: &[(&'static str, String)],
        body: Option<&Value>,
        bucket: &str,
    ) -> Result<T, RestError> {
        let value = self
            .call(method, route, params, body, bucket)
            .await?
            .unwrap_or(Value::Null);
        serde_json::from_value(value).map_err(|error| RestError::Decode(error.to_string()))
    }

    /// Sends one request; `Ok(None)` for an answer without a body (204). `bucket` names the
    /// rate-limit bucket the route belongs to (route and major parameter, e.g. `post:123`).
    pub async fn call(
        &self,
        method: LightMethod,
        route: Route<'_>,
        params: &[(&'static str, String)],
        body: Option<&Value>,
        bucket: &str,
    ) -> Result<Option<Value>, RestError> {
        self.send(method, route, params, bucket, |request| match body {
            Some(body) => request
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_string()),
            None => request,
        })
        .await
    }

    /// Sends a message with files, as Discord takes them: the body as `payload_json` (naming
    /// each file in its `attachments`) and file `n` as `files[n]`. The files' bytes are shared
    /// with the request, not copied.
    pub async fn call_with_files(
        &self,
        route: Route<'_>,
        params: &[(&'static str, String)],
        payload: &Value,
        files: &[Upload],
        bucket: &str,
    ) -> Result<Option<Value>, RestError> {
        let mut payload = payload.clone();
        payload["attachments"] = files
            .iter()
            .enumerate()
            .map(|(index, file)| serde_json::json!({"id": index, "filename": file.name}))
            .collect();
        let mut form = Form::new().text("payload_json", payload.to_string());
        for (index, file) in files.iter().enumerate() {
            let length = file.bytes.len() as u64;
            let part = || {
                Part::stream_with_length(reqwest::Body::from(file.bytes.clone()), length)
                    .file_name(file.name.clone())
            };
            // A type reqwest cannot parse goes without one; Discord then guesses.
            let part = match &file.content_type {
                Some(mime) => part().mime_str(mime).unwrap_or_else(|_| part()),
                None => part(),
            };
            form = form.part(format!("files[{index}]"), part);
        }
        self.send(LightMethod::Post, route, params, bucket, |request| {
            request.multipart(form)
        })
        .await
    }

    /// Sends one request whose body `with_body` adds, paced by its bucket.
    async fn send(
        &self,
        method: LightMethod,
        route: Route<'_>,
        params: &[(&'static str, String)],
        bucket: &str,
        with_body: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<Option<Value>, RestError> {
        self.wait_for_bucket(bucket).await;
        let mut url = route.path().into_owned();
        if let Some(proxy) = self.http.proxy.as_deref() {
            url = url.replace("https://discord.com", proxy.trim_end_matches('/'));
        }
        for (index, (name, value)) in params.iter().enumerate() {
            url.push(if index == 0 { '?' } else { '&' });
            url.push_str(name);
            url.push('=');
            url.extend(utf8_percent_encode(value, SEGMENT));
        }
        let request = with_body(
            self.client
                .request(method.reqwest_method(), url)
                .header(USER_AGENT, serenity::constants::USER_AGENT)
                .header(AUTHORIZATION, self.http.token()),
        );
        let response = request
            .send()
            .await
            .map_err(|error| RestError::Network(error.without_url().to_string()))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        self.note_bucket(bucket, &headers);
        let bytes = response
            .bytes()
            .await
            .map_err(|error| RestError::Network(error.without_url().to_string()))?;
        let value: Option<Value> = if bytes.is_empty() {
            None
        } else {
            serde_json::from_slice(&bytes).ok()
        };
        if (200..300).contains(&status) {
            if value.is_none() && !bytes.is_empty() {
                return Err(RestError::Decode("the body is not JSON".to_owned()));
            }
            return Ok(value);
        }
        if status == 429 {
            let (retry_after, global) = retry_after(&headers, value.as_ref());
            if global {
                let until = Instant::now() + retry_after;
                *self
                    .global_until
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(until);
            }
            return Err(RestError::RateLimited {
                retry_after,
                global,
            });
        }
        let code = value
            .as_ref()
            .and_then(|v| v.get("code"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let message = value
            .as_ref()
            .and_then(|v| v.get("message"))
            .and_then(Value::as_str)
            .unwrap_or("no message")
            .to_owned();
        Err(RestError::Status {
            status,
            code,
            message,
        })
    }

    /// Waits while a global 429 lasts, then while this route's bucket is used up.
    async fn wait_for_bucket(&self, bucket: &str) {
        let now = Instant::now();
        let global = *self
            .global_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let own = self
            .buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(bucket)
            .filter(|state| state.remaining == 0)
            .map(|state| state.reset_at);
        let until = global.into_iter().chain(own).max();
        if let Some(until) = until.filter(|until| *until > now) {
            tokio::time::sleep(until - now).await;
        }
    }

    /// Remembers what the answer said about the bucket, so the next request on it waits for
    /// the reset instead of earning a 429.
    fn note_bucket(&self, bucket: &str, headers: &HeaderMap) {
        let number = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        let (Some(remaining), Some(reset_after)) = (
            number("x-ratelimit-remaining"),
            number("x-ratelimit-reset-after"),
        ) else {
            return;
        };
        let state = Bucket {
            remaining: remaining.max(0.0) as u64,
            reset_at: Instant::now() + secs(reset_after) + RESET_MARGIN,
        };
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(bucket.to_owned(), state);
    }
}

fn http_for(token: &str, api_url: &str, client: reqwest::Client) -> Http {
    let mut builder = HttpBuilder::new(token).client(client);
    if !api_url.is_empty() {
        // The proxy only applies with serenity's ratelimiter off (PLATFORMS.md); this module
        // paces requests itself instead.
        builder = builder.proxy(api_url).ratelimiter_disabled(true);
    }
    builder.build()
}

/// The wait a 429 asks for: the body's `retry_after` (fractional seconds) when present, else
/// the `Retry-After` header; and whether it is the global limit.
fn retry_after(headers: &HeaderMap, body: Option<&Value>) -> (Duration, bool) {
    let from_body = body
        .and_then(|b| b.get("retry_after"))
        .and_then(Value::as_f64);
    let from_header = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok());
    let wait = from_body
        .or(from_header)
        .map_or(Duration::from_secs(1), secs);
    let global = body
        .and_then(|b| b.get("global"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
        || headers
            .get("x-ratelimit-global")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
        || headers
            .get("x-ratelimit-scope")
            .is_some_and(|v| v.as_bytes() == b"global");
    (wait.max(MIN_RETRY_AFTER), global)
}

/// The longest wait a rate-limit header may ask for; Discord's real waits are seconds.
const MAX_HEADER_WAIT: Duration = Duration::from_secs(60);
/// The wait used when a header says something that is not a wait (`NaN`, `inf`, `-1`).
const DEFAULT_HEADER_WAIT: Duration = Duration::from_secs(1);

/// Seconds as Discord writes them (`0.5`) to a duration, within `0..=60 s`. A header is input
/// from outside (a proxy may rewrite it): a value that is not a finite, non-negative number
/// becomes the default wait instead of a panic in `Duration::from_secs_f64`.
fn secs(value: f64) -> Duration {
    if !value.is_finite() || value < 0.0 {
        return DEFAULT_HEADER_WAIT;
    }
    Duration::from_secs_f64(value.min(MAX_HEADER_WAIT.as_secs_f64()))
}

/// Every character but `A-Z a-z 0-9 - _ ~` is percent-encoded in a path segment or query value.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');

/// A value as one URL path segment: whatever it holds (`/`, `?`, `#`, `%`, `..`), it cannot
/// reach another route. Values from payloads are validated first; this is the second defence.
pub fn path_segment(value: &str) -> String {
    utf8_percent_encode(value, SEGMENT).to_string()
}

/// Shares one [`Rest`] between the gateway, the inbound processor and the outbox workers.
pub type SharedRest = Arc<Rest>;

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_prefers_the_precise_body_value() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("1"));
        let body = serde_json::json!({"message": "You are being rate limited.", "retry_after": 0.25, "global": false});
        assert_eq!(
            retry_after(&headers, Some(&body)),
            (Duration::from_millis(250), false)
        );
        assert_eq!(retry_after(&headers, None), (Duration::from_secs(1), false));
    }

    #[test]
    fn retry_after_detects_the_global_limit_and_never_returns_zero() {
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-global", HeaderValue::from_static("true"));
        let body = serde_json::json!({"retry_after": 0.0});
        assert_eq!(retry_after(&headers, Some(&body)), (MIN_RETRY_AFTER, true));
    }

    #[test]
    fn absurd_rate_limit_headers_are_clamped_instead_of_panicking() {
        for (value, expected) in [
            ("inf", DEFAULT_HEADER_WAIT),
            ("-inf", DEFAULT_HEADER_WAIT),
            ("NaN", DEFAULT_HEADER_WAIT),
            ("-1", DEFAULT_HEADER_WAIT),
            ("1e300", MAX_HEADER_WAIT),
            ("0.5", Duration::from_millis(500)),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert("retry-after", HeaderValue::from_static(value));
            assert_eq!(
                retry_after(&headers, None).0,
                expected,
                "Retry-After: {value}"
            );
            let body =
                serde_json::json!({ "retry_after": value.parse::<f64>().unwrap_or(f64::NAN) });
            // serde_json writes non-finite floats as null: the header decides then.
            assert_eq!(
                retry_after(&headers, Some(&body)).0,
                expected,
                "body {value}"
            );

            let rest = Rest::new("t", "http://127.0.0.1:9");
            let mut headers = HeaderMap::new();
            headers.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
            headers.insert("x-ratelimit-reset-after", HeaderValue::from_static(value));
            rest.note_bucket("b", &headers);
            let bucket = rest.buckets.lock().unwrap_or_else(PoisonError::into_inner)["b"];
            let wait = bucket.reset_at.saturating_duration_since(Instant::now());
            assert!(
                wait <= expected + RESET_MARGIN,
                "reset after {value}: {wait:?}"
            );
        }
    }

    #[test]
    fn path_segments_cannot_leave_their_segment() {
        assert_eq!(
            path_segment("👍/../../channels/222#?%"),
            "%F0%9F%91%8D%2F%2E%2E%2F%2E%2E%2Fchannels%2F222%23%3F%25"
        );
        assert_eq!(path_segment("party:123"), "party%3A123");
        assert_eq!(path_segment("abc-DEF_1"), "abc-DEF_1");
    }

    #[test]
    fn errors_map_to_send_errors() {
        let status = |status, code| RestError::Status {
            status,
            code,
            message: "m".into(),
        };
        assert!(matches!(
            SendError::from(status(403, 50001)),
            SendError::Permanent(_)
        ));
        assert!(matches!(
            SendError::from(status(400, 50035)),
            SendError::Permanent(_)
        ));
        assert!(matches!(
            SendError::from(status(502, 0)),
            SendError::Transient(_)
        ));
        assert_eq!(
            SendError::from(RestError::RateLimited {
                retry_after: Duration::from_secs(2),
                global: false
            }),
            SendError::RetryAfter(Duration::from_secs(2))
        );
    }
}
