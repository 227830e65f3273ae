//! Media that travels as files (SPEC section 5, "Media"). [`Media`] is the service's one media
//! desk, shared by the HTTP endpoint and every bridge:
//!
//! - a person's file reaches the hub as a signed link to hub-bridge itself ([`link`]), made with
//!   [`Media::link`] and served by [`Media::serve`] from the platform that holds the file (each
//!   platform's [`MediaSource`]), streamed;
//! - an agent's file is read with [`Media::load`] for upload: a hub-bridge link straight from its
//!   platform, any other URL through the vetting fetcher ([`fetch`]), within a size limit.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OnceCell;

use crate::event::now_millis;
use crate::store::{Keys, Store, StoreError};

pub mod fetch;
pub mod link;
mod source;

use fetch::Collect;
pub use fetch::{FetchError, FetchPolicy, Fetcher};
pub use link::{FileRef, LinkError, MediaLinks};
pub use source::{Download, MediaSource, SourceError};

/// The `[media]` settings and `http.public_url`.
#[derive(Debug, Clone)]
pub struct MediaSettings {
    /// The base of the links handed to agents (`http://127.0.0.1:9464`).
    pub public_url: String,
    /// The largest file relayed; larger ones go as a link or a line of text.
    pub max_bytes: u64,
    pub link_ttl_secs: u64,
    /// Hosts agent URLs may use although they resolve to refused addresses.
    pub allow_hosts: Vec<String>,
}

impl MediaSettings {
    pub const DEFAULT_MAX_BYTES: u64 = 20 * 1024 * 1024;
    pub const DEFAULT_LINK_TTL_SECS: u64 = 7 * 24 * 3600;
}

/// Why a media link was not served; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// 403 for a bad signature, 410 for an expired link.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// 404: the file's platform is not configured on this service.
    #[error("no {0} bridge is configured here")]
    NoSource(&'static str),
    /// 404 when the platform lost the file, 502 when it failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// 503: the store holding the signing key did not answer.
    #[error("the media key could not be read: {0}")]
    Unavailable(String),
}

/// A file read whole for an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub content_type: Option<String>,
    pub bytes: Vec<u8>,
}

/// Why a file was not read for upload. The text is what the agent is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// Over the limit; `size` when it was known before reading.
    #[error("the file is larger than {limit} bytes")]
    TooLarge { limit: u64, size: Option<u64> },
    /// Refused (an address the fetcher does not go to) or failed; the reason says which.
    #[error("{0}")]
    Failed(String),
}

/// Makes, serves and reads media files for the whole service.
pub struct Media {
    settings: MediaSettings,
    store: Arc<dyn Store>,
    keys: Keys,
    /// Read from the store on first use, so a store that is down at start only delays links.
    links: OnceCell<MediaLinks>,
    fetcher: Fetcher,
    sources: BTreeMap<&'static str, Arc<dyn MediaSource>>,
}

impl Media {
    /// Downloads of agents' files give up after this long.
    pub const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

    pub fn new(
        settings: MediaSettings,
        store: Arc<dyn Store>,
        keys: Keys,
        sources: BTreeMap<&'static str, Arc<dyn MediaSource>>,
    ) -> Result<Self, FetchError> {
        let fetcher = Fetcher::new(FetchPolicy {
            allow_hosts: settings.allow_hosts.clone(),
            max_bytes: settings.max_bytes,
            connect_timeout: Self::CONNECT_TIMEOUT,
            total_timeout: Self::FETCH_TIMEOUT,
        })?;
        Ok(Self {
            settings,
            store,
            keys,
            links: OnceCell::new(),
            fetcher,
            sources,
        })
    }

    async fn links(&self) -> Result<&MediaLinks, StoreError> {
        self.links
            .get_or_try_init(|| {
                MediaLinks::load(
                    self.store.as_ref(),
                    &self.keys,
                    &self.settings.public_url,
                    self.settings.link_ttl_secs,
                )
            })
            .await
    }

    /// A link to a platform file, for an agent to read.
    pub async fn link(&self, file: &FileRef) -> Result<String, StoreError> {
        Ok(self.links().await?.link(file, now_millis()))
    }

    /// Opens the file behind a link's token. Nothing reaches a platform unless the token is one
    /// of ours and still valid.
    pub async fn serve(&self, token: &str) -> Result<Download, ServeError> {
        let links = self
            .links()
            .await
            .map_err(|error| ServeError::Unavailable(error.to_string()))?;
        let file = links.open(token, now_millis())?;
        let source = self
            .sources
            .get(file.platform())
            .ok_or(ServeError::NoSource(file.platform()))?;
        Ok(source.open(&file).await?)
    }

    /// Reads an agent's file for upload, at most `max_bytes` (and never over `media.max_bytes`):
    /// one of our links straight from its platform, any other URL through the vetting fetcher.
    pub async fn load(&self, url: &str, max_bytes: u64) -> Result<Loaded, LoadError> {
        let limit = max_bytes.min(self.settings.max_bytes);
        let Some(token) = self.own_token(url) else {
            return match self.fetcher.fetch_at_most(url, limit).await {
                Ok(fetched) => Ok(Loaded {
                    content_type: fetched.content_type,
                    bytes: fetched.bytes,
                }),
                Err(FetchError::TooLarge { limit, size }) => {
                    Err(LoadError::TooLarge { limit, size })
                }
                Err(error) => Err(LoadError::Failed(error.to_string())),
            };
        };
        // Bounded in time as a fetch is, so a platform that drips the file holds no chat up.
        let read = async {
            let download = self
                .serve(token)
                .await
                .map_err(|error| LoadError::Failed(error.to_string()))?;
            read_at_most(download, limit).await
        };
        tokio::time::timeout(Self::FETCH_TIMEOUT, read)
            .await
            .unwrap_or_else(|_| {
                Err(LoadError::Failed(format!(
                    "the platform did not hand the file over within {:?}",
                    Self::FETCH_TIMEOUT
                )))
            })
    }

    /// Whether `url` is one of this service's media links.
    pub fn is_own_link(&self, url: &str) -> bool {
        self.own_token(url).is_some()
    }

    /// The token of a URL that is one of our own media links.
    fn own_token<'a>(&self, url: &'a str) -> Option<&'a str> {
        let base = self.settings.public_url.trim_end_matches('/');
        let token = url.strip_prefix(base)?.strip_prefix("/media/")?;
        let token = token.split(['?', '#']).next().unwrap_or_default();
        (!token.is_empty()).then_some(token)
    }
}

/// `1.5 MB`, `12 KB`, `800 B`.
pub fn human_size(bytes: u64) -> String {
    const KB: u64 = 1024;
    const MB: u64 = 1024 * 1024;
    if bytes >= MB {
        format!("{:.1} MB", bytes as f64 / MB as f64)
    } else if bytes >= KB {
        format!("{} KB", bytes.div_ceil(KB))
    } else {
        format!("{bytes} B")
    }
}

/// Reads a download whole, refusing it once it is past `limit` bytes.
async fn read_at_most(download: Download, limit: u64) -> Result<Loaded, LoadError> {
    let bytes = fetch::collect_at_most(download.length, download.body, limit)
        .await
        .map_err(|refused| match refused {
            Collect::TooLarge { size } => LoadError::TooLarge { limit, size },
            Collect::Failed(error) => LoadError::Failed(error.to_string()),
        })?;
    Ok(Loaded {
        content_type: download.content_type,
        bytes,
    })
}
