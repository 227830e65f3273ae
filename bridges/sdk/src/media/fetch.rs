//! Fetching an agent's URL safely (SPEC section 5, "Media"; section 9). An agent's `image` or
//! `file` block names a URL the bridge downloads to upload it to a platform, and a prompt-injected
//! agent may name anything: the cloud's metadata service, a database on the private network,
//! `file:///etc/passwd`. So:
//!
//! - only `http` and `https`;
//! - the host's addresses are checked after resolution, and the connection goes only to an address
//!   that passed (the resolver hands reqwest the vetted addresses, so a second lookup cannot swap
//!   in another): loopback, private, link-local (with the metadata address), CGNAT, unspecified,
//!   multicast and reserved ranges are refused, unless the host as written in the URL is in
//!   `media.allow_hosts`;
//! - redirects are followed here, at most [`MAX_REDIRECTS`], each checked like the first URL;
//! - the size is enforced while the body streams, not after, and a `Content-Length` over it is
//!   refused before reading;
//! - connecting and the whole download have timeouts.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{StatusCode, Url};

/// Redirects followed before the download is given up.
pub const MAX_REDIRECTS: usize = 5;

/// What may be fetched, and how long it may take.
#[derive(Debug, Clone)]
pub struct FetchPolicy {
    /// Hosts (as written in URLs) allowed to resolve to addresses that are otherwise refused.
    pub allow_hosts: Vec<String>,
    /// The largest body accepted, in bytes.
    pub max_bytes: u64,
    pub connect_timeout: Duration,
    /// The whole download, redirects included.
    pub total_timeout: Duration,
}

/// Why a URL was not fetched. The text is what the agent is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("`{0}` is not an http(s) URL")]
    NotHttp(String),
    #[error("{host} is refused: it resolves to {address}, a {range} address")]
    Refused {
        host: String,
        address: IpAddr,
        range: &'static str,
    },
    #[error("{host} does not resolve")]
    Unresolved { host: String },
    /// Over the limit: refused by its `Content-Length` (then `size` is that length), or cut off
    /// while it streamed.
    #[error("the file is larger than {limit} bytes")]
    TooLarge { limit: u64, size: Option<u64> },
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects,
    #[error("the server answered {0}")]
    Status(u16),
    #[error("the download took longer than {0:?}")]
    Timeout(Duration),
    #[error("the download failed: {0}")]
    Network(String),
}

/// A downloaded file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The URL it came from, after redirects.
    pub url: String,
    pub content_type: Option<String>,
    pub bytes: Vec<u8>,
}

/// The range a refused address belongs to; `None` for a public address.
pub fn forbidden_range(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            // `::ffff:10.0.0.1` reaches 10.0.0.1.
            Some(v4) => forbidden_v4(v4),
            None => forbidden_v6(v6),
        },
    }
}

fn forbidden_v4(v4: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = v4.octets();
    Some(match () {
        _ if v4.is_loopback() => "loopback",
        _ if v4.is_private() => "private",
        // 169.254.169.254 is the cloud metadata service.
        _ if v4.is_link_local() => "link-local",
        _ if a == 100 && (64..128).contains(&b) => "shared (CGNAT)",
        _ if a == 0 || v4.is_unspecified() => "unspecified",
        _ if v4.is_multicast() || v4.is_broadcast() => "multicast",
        _ if a == 192 && b == 0 && v4.octets()[2] == 0 => "IETF protocol",
        _ if a == 198 && (18..20).contains(&b) => "benchmarking",
        _ if a >= 240 => "reserved",
        _ => return None,
    })
}

fn forbidden_v6(v6: Ipv6Addr) -> Option<&'static str> {
    let first = v6.segments()[0];
    Some(match () {
        _ if v6.is_loopback() => "loopback",
        _ if v6.is_unspecified() => "unspecified",
        // fc00::/7, with AWS's metadata address fd00:ec2::254.
        _ if first & 0xfe00 == 0xfc00 => "private",
        _ if first & 0xffc0 == 0xfe80 => "link-local",
        _ if v6.is_multicast() => "multicast",
        // 64:ff9b::/96 translates to IPv4, which is not checked through it.
        _ if first == 0x64 && v6.segments()[1] == 0xff9b => "IPv4 translation",
        _ => return None,
    })
}

/// Resolves a host and keeps only the addresses the policy allows for it.
struct Vetting {
    allow_hosts: Arc<Vec<String>>,
}

impl Resolve for Vetting {
    fn resolve(&self, name: Name) -> Resolving {
        let allowed = self.allow_hosts.iter().any(|host| host == name.as_str());
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addresses: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let vetted: Vec<SocketAddr> = addresses
                .into_iter()
                .filter(|address| match forbidden_range(address.ip()) {
                    Some(range) if !allowed => {
                        refused.get_or_insert((address.ip(), range));
                        false
                    }
                    _ => true,
                })
                .collect();
            if vetted.is_empty() {
                let error: Box<dyn std::error::Error + Send + Sync> = match refused {
                    Some((address, range)) => Box::new(FetchError::Refused {
                        host,
                        address,
                        range,
                    }),
                    None => Box::new(FetchError::Unresolved { host }),
                };
                return Err(error);
            }
            let addrs: Addrs = Box::new(vetted.into_iter());
            Ok(addrs)
        })
    }
}

/// Downloads agents' URLs under a [`FetchPolicy`].
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    policy: Arc<FetchPolicy>,
}

impl Fetcher {
    pub fn new(policy: FetchPolicy) -> Result<Self, FetchError> {
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(Vetting {
                allow_hosts: Arc::new(policy.allow_hosts.clone()),
            }))
            // Followed here, each hop checked.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(policy.connect_timeout)
            .build()
            .map_err(|error| FetchError::Network(error.without_url().to_string()))?;
        Ok(Self {
            client,
            policy: Arc::new(policy),
        })
    }

    /// Downloads `url`, following redirects, within the policy.
    pub async fn fetch(&self, url: &str) -> Result<Fetched, FetchError> {
        self.fetch_at_most(url, self.policy.max_bytes).await
    }

    /// As [`Fetcher::fetch`], with a size limit under the policy's (a platform's upload limit).
    pub async fn fetch_at_most(&self, url: &str, max_bytes: u64) -> Result<Fetched, FetchError> {
        let limit = self.policy.total_timeout;
        let max_bytes = max_bytes.min(self.policy.max_bytes);
        tokio::time::timeout(limit, self.fetch_within(url, max_bytes))
            .await
            .map_err(|_| FetchError::Timeout(limit))?
    }

    async fn fetch_within(&self, url: &str, max_bytes: u64) -> Result<Fetched, FetchError> {
        let mut url = Url::parse(url).map_err(|_| FetchError::NotHttp(url.to_owned()))?;
        for _ in 0..=MAX_REDIRECTS {
            self.check(&url)?;
            let response = self.client.get(url.clone()).send().await.map_err(network)?;
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|value| value.to_str().ok())
                    .ok_or(FetchError::Status(status.as_u16()))?;
                url = url
                    .join(location)
                    .map_err(|_| FetchError::NotHttp(location.to_owned()))?;
                continue;
            }
            if status != StatusCode::OK {
                return Err(FetchError::Status(status.as_u16()));
            }
            return read(url, response, max_bytes).await;
        }
        Err(FetchError::TooManyRedirects)
    }

    /// The scheme, and an address written in the URL itself (which no resolver sees).
    fn check(&self, url: &Url) -> Result<(), FetchError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(FetchError::NotHttp(url.to_string()));
        }
        let host = url.host_str().unwrap_or_default();
        if self
            .policy
            .allow_hosts
            .iter()
            .any(|allowed| allowed == host)
        {
            return Ok(());
        }
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(address) = literal.parse::<IpAddr>() {
            if let Some(range) = forbidden_range(address) {
                return Err(FetchError::Refused {
                    host: host.to_owned(),
                    address,
                    range,
                });
            }
        }
        Ok(())
    }
}

/// Reads a response's body, refusing it once it is past `limit` bytes.
async fn read(url: Url, response: reqwest::Response, limit: u64) -> Result<Fetched, FetchError> {
    let announced = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let bytes = collect_at_most(announced, response.bytes_stream(), limit)
        .await
        .map_err(|refused| match refused {
            Collect::TooLarge { size } => FetchError::TooLarge { limit, size },
            Collect::Failed(error) => network(error),
        })?;
    Ok(Fetched {
        url: url.to_string(),
        content_type,
        bytes,
    })
}

/// Why a body was not collected.
pub(crate) enum Collect<E> {
    /// Over the limit; `size` when it was announced.
    TooLarge {
        size: Option<u64>,
    },
    Failed(E),
}

/// Collects a body of at most `limit` bytes: refused at once when its announced `length` is over
/// it, else as soon as the bytes streamed pass it (SPEC section 5: enforced while streaming, not
/// after). The buffer is sized for the announced length, never past the limit.
pub(crate) async fn collect_at_most<E>(
    length: Option<u64>,
    body: impl Stream<Item = Result<Bytes, E>>,
    limit: u64,
) -> Result<Vec<u8>, Collect<E>> {
    if let Some(size) = length.filter(|length| *length > limit) {
        return Err(Collect::TooLarge { size: Some(size) });
    }
    let capacity = usize::try_from(length.unwrap_or(0).min(limit)).unwrap_or(0);
    let mut bytes = Vec::with_capacity(capacity);
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(Collect::Failed)?;
        if (bytes.len() + chunk.len()) as u64 > limit {
            return Err(Collect::TooLarge { size: None });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// A request error as the agent is told it: the vetting resolver's refusal when that was the
/// cause, else the error without its URL.
fn network(error: reqwest::Error) -> FetchError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<FetchError>() {
            return refused.clone();
        }
        source = cause.source();
    }
    if error.is_timeout() {
        return FetchError::Network("timed out".to_owned());
    }
    FetchError::Network(error.without_url().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_refused_public_ones_not() {
        for (address, range) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("100.64.0.1", "shared (CGNAT)"),
            ("0.0.0.0", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "multicast"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fd00:ec2::254", "private"),
            ("fe80::1", "link-local"),
            ("::ffff:10.0.0.1", "private"),
            ("::ffff:127.0.0.1", "loopback"),
            ("64:ff9b::a00:1", "IPv4 translation"),
        ] {
            let parsed: IpAddr = address.parse().unwrap();
            assert_eq!(forbidden_range(parsed), Some(range), "{address}");
        }
        for public in ["1.1.1.1", "93.184.216.34", "100.128.0.1", "2606:4700::1111"] {
            let parsed: IpAddr = public.parse().unwrap();
            assert_eq!(forbidden_range(parsed), None, "{public}");
        }
    }

    proptest::proptest! {
        /// Every IPv4 address reads the same through its IPv4-mapped IPv6 form, so the mapped
        /// form is no way around the check.
        #[test]
        fn a_mapped_address_is_judged_as_its_ipv4(bits: u32) {
            let v4 = Ipv4Addr::from(bits);
            let mapped = IpAddr::V6(v4.to_ipv6_mapped());
            proptest::prop_assert_eq!(forbidden_range(mapped), forbidden_range(IpAddr::V4(v4)));
        }
    }
}
