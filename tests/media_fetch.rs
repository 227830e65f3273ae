//! Fetching agents' URLs (SPEC section 5, "Media"): against a real HTTP server on loopback, which
//! is itself an address agents must not reach unless the host is allowed.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hub_bridge_sdk::media::fetch::{FetchError, FetchPolicy, Fetcher};

/// A file server on 127.0.0.1 with the routes the tests need; returns its port.
async fn server() -> u16 {
    let app = Router::new()
        .route(
            "/cat.png",
            get(|| async { ([(header::CONTENT_TYPE, "image/png")], vec![7u8; 1000]) }),
        )
        .route(
            "/to-private",
            get(|| async { redirect("http://10.0.0.1/secret") }),
        )
        .route(
            "/to-metadata",
            get(|| async { redirect("http://169.254.169.254/latest/meta-data/") }),
        )
        .route("/to-cat", get(|| async { redirect("/cat.png") }))
        .route("/loop", get(|| async { redirect("/loop") }))
        .route(
            "/big",
            get(|| async { ([(header::CONTENT_TYPE, "video/mp4")], vec![0u8; 5000]) }),
        )
        .route(
            "/big-chunked",
            get(|| async {
                let chunks = (0..50).map(|_| Ok::<_, std::io::Error>(vec![1u8; 200]));
                Body::from_stream(futures_util::stream::iter(chunks))
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

fn redirect(to: &str) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, to.to_owned())]).into_response()
}

fn fetcher(allow_hosts: &[&str]) -> Fetcher {
    Fetcher::new(FetchPolicy {
        allow_hosts: allow_hosts.iter().map(|host| (*host).to_owned()).collect(),
        max_bytes: 2000,
        connect_timeout: Duration::from_secs(2),
        total_timeout: Duration::from_millis(500),
    })
    .unwrap()
}

#[tokio::test]
async fn an_allowed_host_is_fetched_with_its_type() {
    let port = server().await;
    let fetched = fetcher(&["127.0.0.1"])
        .fetch(&format!("http://127.0.0.1:{port}/to-cat"))
        .await
        .unwrap();
    assert_eq!(fetched.bytes, vec![7u8; 1000]);
    assert_eq!(fetched.content_type.as_deref(), Some("image/png"));
    assert!(fetched.url.ends_with("/cat.png"), "{}", fetched.url);
}

#[tokio::test]
async fn loopback_is_refused_unless_the_host_as_written_is_allowed() {
    let port = server().await;
    let refused = fetcher(&[])
        .fetch(&format!("http://127.0.0.1:{port}/cat.png"))
        .await;
    assert!(
        matches!(
            refused,
            Err(FetchError::Refused {
                range: "loopback",
                ..
            })
        ),
        "{refused:?}"
    );
    // `localhost` is not `127.0.0.1`: it resolves to loopback and is refused after resolution.
    let by_name = fetcher(&["127.0.0.1"])
        .fetch(&format!("http://localhost:{port}/cat.png"))
        .await;
    assert!(
        matches!(
            by_name,
            Err(FetchError::Refused {
                range: "loopback",
                ..
            })
        ),
        "{by_name:?}"
    );
}

#[tokio::test]
async fn every_redirect_is_checked_like_the_first_url() {
    let port = server().await;
    let fetcher = fetcher(&["127.0.0.1"]);
    for (route, range) in [("to-private", "private"), ("to-metadata", "link-local")] {
        let result = fetcher
            .fetch(&format!("http://127.0.0.1:{port}/{route}"))
            .await;
        assert!(
            matches!(&result, Err(FetchError::Refused { range: r, .. }) if *r == range),
            "{route}: {result:?}"
        );
    }
    let looping = fetcher
        .fetch(&format!("http://127.0.0.1:{port}/loop"))
        .await;
    assert_eq!(looping, Err(FetchError::TooManyRedirects));
}

#[tokio::test]
async fn the_size_is_enforced_before_and_while_reading() {
    let port = server().await;
    let fetcher = fetcher(&["127.0.0.1"]);
    for route in ["big", "big-chunked"] {
        let result = fetcher
            .fetch(&format!("http://127.0.0.1:{port}/{route}"))
            .await;
        assert!(
            matches!(result, Err(FetchError::TooLarge { limit: 2000, .. })),
            "{route}: {result:?}"
        );
    }
}

#[tokio::test]
async fn only_http_is_fetched_and_a_slow_server_times_out() {
    let port = server().await;
    let fetcher = fetcher(&["127.0.0.1"]);
    for url in [
        "file:///etc/passwd",
        "ftp://127.0.0.1/x",
        "gopher://x",
        "not a url",
    ] {
        let result = fetcher.fetch(url).await;
        assert!(
            matches!(result, Err(FetchError::NotHttp(_))),
            "{url}: {result:?}"
        );
    }
    let slow = fetcher
        .fetch(&format!("http://127.0.0.1:{port}/slow"))
        .await;
    assert_eq!(slow, Err(FetchError::Timeout(Duration::from_millis(500))));
}
