//! Where a person's file comes from when a media link is opened: each platform's connector
//! implements [`MediaSource`] (Telegram: `getFile` and the download inside the service; Discord:
//! the attachment's URL, refreshed when it expired), and the hub serves the bytes as a
//! [`Download`] that streams, so serving a link holds no whole file in memory.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use crate::media::link::FileRef;

/// A file being read from its platform.
pub struct Download {
    /// The MIME type the platform gave, if any.
    pub content_type: Option<String>,
    /// The length in bytes, when the platform said.
    pub length: Option<u64>,
    pub body: BoxStream<'static, Result<Bytes, std::io::Error>>,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("content_type", &self.content_type)
            .field("length", &self.length)
            .finish_non_exhaustive()
    }
}

/// Why a platform file could not be read. The text is safe to show: it never carries a token or
/// a URL that embeds one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The platform no longer has the file (deleted message, unknown file id): HTTP 404.
    #[error("the platform no longer has this file")]
    Gone,
    /// The platform did not answer or failed: HTTP 502, worth trying again later.
    #[error("the platform could not be reached: {0}")]
    Unavailable(String),
}

/// A platform's half of serving media links: opening one of its files by reference.
pub trait MediaSource: Send + Sync + 'static {
    /// Starts reading `file` from the platform.
    fn open<'a>(&'a self, file: &'a FileRef) -> BoxFuture<'a, Result<Download, SourceError>>;
}
