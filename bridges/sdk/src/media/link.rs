//! Signed media links (SPEC section 5, "Media"): a person's photo reaches an agent as
//! `{http.public_url}/media/{token}`, where the token names the platform file and when the link
//! expires, signed with HMAC-SHA256. Nothing is stored per link and nothing local is needed to
//! serve one: every instance signs with the same key, kept in the store (made once, by whichever
//! instance comes first; in memory on the embedded bus), so any instance can serve any link. A bad
//! signature and an expired link are told apart before any platform call: 403 and 410.
//!
//! A token is `{payload}.{signature}`, both URL-safe base64 without padding; the payload is the
//! JSON of [`Signed`]. It carries platform file ids, never a bot token or a URL with one.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::event::Millis;
use crate::store::{Keys, Op, Store, StoreError};

/// The platform file a link names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "platform", rename_all = "lowercase")]
pub enum FileRef {
    /// A Telegram file, fetched with `getFile` and downloaded inside the service.
    Telegram { file_id: String },
    /// A Discord attachment; its URL is read (and refreshed) from the message.
    Discord {
        channel: u64,
        message: u64,
        attachment: u64,
    },
    /// A Discord sticker's image, from Discord's media CDN (`extension`: `png` or `gif`).
    DiscordSticker { sticker: u64, extension: String },
}

impl FileRef {
    /// The platform whose [`MediaSource`](crate::media::MediaSource) opens it.
    pub fn platform(&self) -> &'static str {
        match self {
            Self::Telegram { .. } => "telegram",
            Self::Discord { .. } | Self::DiscordSticker { .. } => "discord",
        }
    }
}

/// What a token carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Signed {
    file: FileRef,
    /// Unix milliseconds after which the link is gone.
    expires: Millis,
}

/// Why a token does not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Not made by this service (or changed since): HTTP 403.
    #[error("not a valid media link")]
    BadSignature,
    /// Made by this service, but past its expiry: HTTP 410.
    #[error("the media link has expired")]
    Expired,
}

/// Makes and opens media links.
pub struct MediaLinks {
    key: hmac::Key,
    /// `http.public_url`, without a trailing slash.
    public_url: String,
    /// `media.link_ttl_secs`, in milliseconds.
    ttl: Millis,
}

/// Bytes in a signing key: as long as the HMAC-SHA256 output.
const KEY_BYTES: usize = 32;

impl MediaLinks {
    /// The links of a service whose store holds (or will now hold) the shared signing key.
    pub async fn load(
        store: &dyn Store,
        keys: &Keys,
        public_url: &str,
        ttl_secs: u64,
    ) -> Result<Self, StoreError> {
        let mut fresh = [0u8; KEY_BYTES];
        SystemRandom::new()
            .fill(&mut fresh)
            .map_err(|_| StoreError::Unavailable("no randomness for the media key".to_owned()))?;
        let key = keys.media_key();
        // The first instance's key wins; every later one reads it.
        let replies = store
            .exec(vec![
                Op::Set {
                    key: key.clone(),
                    value: URL_SAFE_NO_PAD.encode(fresh),
                    ttl: None,
                    only_if_absent: true,
                },
                Op::Get { key },
            ])
            .await?;
        let stored = replies
            .into_iter()
            .nth(1)
            .and_then(|reply| reply.into_text())
            .and_then(|text| URL_SAFE_NO_PAD.decode(text).ok())
            .filter(|bytes| bytes.len() == KEY_BYTES)
            .ok_or_else(|| {
                StoreError::Unavailable("the stored media key is unreadable".to_owned())
            })?;
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &stored),
            public_url: public_url.trim_end_matches('/').to_owned(),
            ttl: i64::try_from(ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
        })
    }

    /// The link to `file`, valid for the configured time from `now`.
    pub fn link(&self, file: &FileRef, now: Millis) -> String {
        format!("{}/media/{}", self.public_url, self.token(file, now))
    }

    fn token(&self, file: &FileRef, now: Millis) -> String {
        let signed = Signed {
            file: file.clone(),
            expires: now.saturating_add(self.ttl),
        };
        // Serialising this type cannot fail: every map key is a string.
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&signed).unwrap_or_default());
        let signature = hmac::sign(&self.key, payload.as_bytes());
        format!("{payload}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }

    /// The file a token names, if this service signed it and it has not expired at `now`. The
    /// signature is checked (in constant time) before anything in the payload is read.
    pub fn open(&self, token: &str, now: Millis) -> Result<FileRef, LinkError> {
        let (payload, signature) = token.split_once('.').ok_or(LinkError::BadSignature)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| LinkError::BadSignature)?;
        hmac::verify(&self.key, payload.as_bytes(), &signature)
            .map_err(|_| LinkError::BadSignature)?;
        let signed: Signed = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(LinkError::BadSignature)?;
        if now > signed.expires {
            return Err(LinkError::Expired);
        }
        Ok(signed.file)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::memory::MemoryStore;

    const HOUR: u64 = 3600;

    async fn links(store: &MemoryStore) -> MediaLinks {
        MediaLinks::load(store, &Keys::new("t:"), "https://bridge.example/", HOUR)
            .await
            .unwrap()
    }

    fn photo() -> FileRef {
        FileRef::Telegram {
            file_id: "AgACAgQAAxkBAAIB".to_owned(),
        }
    }

    fn token_of(link: &str) -> &str {
        link.strip_prefix("https://bridge.example/media/").unwrap()
    }

    #[tokio::test]
    async fn a_link_opens_until_it_expires() {
        let store = MemoryStore::default();
        let links = links(&store).await;
        let link = links.link(&photo(), 1_000);
        let token = token_of(&link);
        assert_eq!(links.open(token, 1_000), Ok(photo()));
        assert_eq!(links.open(token, 1_000 + 3_600_000), Ok(photo()));
        assert_eq!(
            links.open(token, 1_001 + 3_600_000),
            Err(LinkError::Expired)
        );
        let attachment = FileRef::Discord {
            channel: 1,
            message: 2,
            attachment: 3,
        };
        let link = links.link(&attachment, 0);
        assert_eq!(links.open(token_of(&link), 0), Ok(attachment));
    }

    #[tokio::test]
    async fn every_instance_opens_every_instances_links() {
        let store = Arc::new(MemoryStore::default());
        let first = links(&store).await;
        let second = links(&store).await;
        let link = first.link(&photo(), 0);
        assert_eq!(second.open(token_of(&link), 0), Ok(photo()));
        // Another deployment (another store) has another key.
        let stranger = links(&MemoryStore::default()).await;
        assert_eq!(
            stranger.open(token_of(&link), 0),
            Err(LinkError::BadSignature)
        );
    }

    #[tokio::test]
    async fn a_changed_token_is_refused_before_its_payload_is_read() {
        let store = MemoryStore::default();
        let links = links(&store).await;
        let link = links.link(&photo(), 0);
        let (payload, signature) = token_of(&link).split_once('.').unwrap();
        // A later expiry, signed with the old signature.
        let forged = Signed {
            file: photo(),
            expires: i64::MAX,
        };
        let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        for token in [
            format!("{forged}.{signature}"),
            format!("{payload}.{}", &signature[1..]),
            format!("{payload}x.{signature}"),
            payload.to_owned(),
            String::new(),
            ".".to_owned(),
        ] {
            assert_eq!(
                links.open(&token, 0),
                Err(LinkError::BadSignature),
                "{token}"
            );
        }
    }

    proptest::proptest! {
        /// Whatever a client puts in the path, opening it never panics and opens nothing.
        #[test]
        fn any_text_is_refused(token in ".{0,300}") {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let store = MemoryStore::default();
            let links = runtime.block_on(links(&store));
            proptest::prop_assert_eq!(links.open(&token, 0), Err(LinkError::BadSignature));
        }
    }
}
