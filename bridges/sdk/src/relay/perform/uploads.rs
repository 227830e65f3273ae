//! A message's files, uploaded as files (SPEC section 5, "Media"): taken out of the text when the
//! message is planned, read when their turn comes (an agent's URL through the vetting fetcher, a
//! hub-bridge link straight from its platform), uploaded a platform message's worth at a time
//! ahead of the text, which rides along as the caption when it is a single part the platform takes
//! as one. A file that is too large is shown as its name and size (and an agent's URL) and the
//! agent told; one that cannot be read is shown by name and dead-lettered with the reason.

use crate::bridge::DeadLetter;
use crate::event::ContentBlock;
use crate::media::{human_size, LoadError, Media};
use crate::outbox::SendError;
use crate::relay::connector::{Connector, Look, MediaLimits, Place, Upload};
use crate::relay::job::{About, SendProgress};
use crate::relay::streaming::ShownParts;
use crate::relay::Core;

impl<C: Connector> Core<C> {
    /// Takes the files the platform uploads out of `look` (the text no longer lists them) and
    /// groups them a platform message's worth each. Without uploads, nothing changes.
    pub(super) fn plan_uploads(&self, look: &mut Look) -> Vec<Vec<ContentBlock>> {
        let (Some(limits), Some(_)) = (self.connector.media_limits(), self.hub.media()) else {
            return Vec::new();
        };
        let (files, rest): (Vec<ContentBlock>, Vec<ContentBlock>) =
            std::mem::take(&mut look.blocks)
                .into_iter()
                // Any URL: one that is not http(s) is refused when read, and its agent told.
                .partition(|block| block.url.is_some());
        look.blocks = rest;
        files
            .chunks(limits.files_per_message.max(1))
            .map(<[ContentBlock]>::to_vec)
            .collect()
    }

    /// Uploads the files still to go, each upload mapped as it lands.
    pub(super) async fn upload_files(
        &self,
        place: &Place,
        hub_message_id: Option<&str>,
        look: &mut Look,
        progress: &mut SendProgress<C::Part>,
        about: &About,
    ) -> Result<(), SendError> {
        let (Some(limits), Some(media)) = (self.connector.media_limits(), self.hub.media()) else {
            return Ok(());
        };
        while progress.uploaded < progress.uploads.len() {
            let files = self
                .load_group(media, &limits, place, progress, about)
                .await;
            if !files.is_empty() {
                // The text rides with the first upload that happens, when nothing is shown yet.
                let caption_part =
                    (progress.caption && progress.done == 0 && progress.shown.is_empty())
                        .then_some(())
                        .and(progress.parts.first());
                let reply_to = progress
                    .shown
                    .is_empty()
                    .then_some(())
                    .and(progress.reply_to.as_ref());
                let before = progress.shown.len();
                let captioned = self
                    .connector
                    .upload(
                        place,
                        look,
                        &files,
                        caption_part,
                        reply_to,
                        &mut progress.shown,
                    )
                    .await;
                let files_from = match (&captioned, caption_part) {
                    (Ok(true), Some(part)) => {
                        if let Some(id) = progress.shown.get(before) {
                            let fingerprint = ShownParts::fingerprint(part);
                            self.shown_parts.note(&place.chat.0, &id.0, fingerprint);
                        }
                        before + 1
                    }
                    _ => before,
                };
                look.file_parts
                    .extend(progress.shown.iter().skip(files_from).cloned());
                // The text rode as the caption only when there was one to ride.
                if let (Ok(true), Some(_)) = (&captioned, caption_part) {
                    progress.done = 1;
                }
                self.record_progress(place, hub_message_id, look, progress)
                    .await?;
                match captioned {
                    Ok(_) => {}
                    // The platform refused these files for good (not a picture after all, too
                    // large for it): they are named instead, and the text still goes.
                    Err(SendError::Permanent(reason)) => {
                        self.refused_upload(place, progress, about, reason).await;
                    }
                    Err(retry) => return Err(retry),
                }
            }
            progress.uploaded += 1;
        }
        Ok(())
    }

    /// Reads the files of the next upload. A file that cannot go is taken out of the upload for
    /// good (so a retry does not report it twice): a line of text stands for it after the text,
    /// and its agent is told.
    async fn load_group(
        &self,
        media: &Media,
        limits: &MediaLimits,
        place: &Place,
        progress: &mut SendProgress<C::Part>,
        about: &About,
    ) -> Vec<Upload> {
        let group = progress.uploads[progress.uploaded].clone();
        let mut kept = Vec::with_capacity(group.len());
        let mut files = Vec::with_capacity(group.len());
        for block in group {
            let url = block.url.clone().unwrap_or_default();
            let name = file_name(&block, &url);
            match media.load(&url, limits.max_file_bytes).await {
                Ok(loaded) => {
                    let as_image =
                        block.is_image() && loaded.bytes.len() as u64 <= limits.max_image_bytes;
                    files.push(Upload {
                        name,
                        content_type: block.mime_type.clone().or(loaded.content_type),
                        bytes: loaded.bytes.into(),
                        as_image,
                    });
                    kept.push(block);
                }
                Err(LoadError::TooLarge { limit, size }) => {
                    let size = size.or(block.size);
                    let shown_size =
                        size.map_or_else(|| format!("over {}", human_size(limit)), human_size);
                    // An agent's URL is its own words; a person's file has no URL to show but ours.
                    let line = if media.is_own_link(&url) {
                        format!("📎 {name} ({shown_size})")
                    } else {
                        format!("📎 {name} ({shown_size}): {url}")
                    };
                    progress
                        .parts
                        .extend(self.connector.render_notice(&line, None));
                    let why = format!(
                        "Your file {name} was not uploaded to {}:{}: it is larger than {} (the limit there); its name{} was shown instead.",
                        self.connector.name(),
                        place.chat,
                        human_size(limit),
                        if media.is_own_link(&url) { "" } else { " and URL" },
                    );
                    self.tell_agent(about, why).await;
                }
                Err(LoadError::Failed(reason)) => {
                    let line = format!("📎 {name} (could not be fetched)");
                    progress
                        .parts
                        .extend(self.connector.render_notice(&line, None));
                    self.dead_letter_file(place, about, &block, reason).await;
                }
            }
        }
        progress.uploads[progress.uploaded] = kept;
        files
    }

    /// Names the files of the current upload after the text and dead-letters them with the
    /// platform's reason.
    async fn refused_upload(
        &self,
        place: &Place,
        progress: &mut SendProgress<C::Part>,
        about: &About,
        reason: String,
    ) {
        let group = std::mem::take(&mut progress.uploads[progress.uploaded]);
        for block in &group {
            let name = file_name(block, block.url.as_deref().unwrap_or_default());
            let line = format!("📎 {name} (could not be uploaded)");
            progress
                .parts
                .extend(self.connector.render_notice(&line, None));
            self.dead_letter_file(place, about, block, reason.clone())
                .await;
        }
    }

    async fn tell_agent(&self, about: &About, text: String) {
        let Some(agent) = about.agent_id.as_deref() else {
            return;
        };
        if let Err(error) = self
            .hub
            .notify_agent(agent, about.channel_id.as_deref(), text)
            .await
        {
            tracing::warn!(%error, agent, "could not tell an agent about its file");
        }
    }

    async fn dead_letter_file(
        &self,
        place: &Place,
        about: &About,
        block: &ContentBlock,
        reason: String,
    ) {
        let letter = DeadLetter {
            event_type: "message.file".to_owned(),
            payload: serde_json::to_value(block).unwrap_or_default(),
            ..self.letter(&place.chat.0, about, reason)
        };
        self.keep_dead_letter(letter).await;
    }
}

/// The longest file name used, in characters.
const MAX_NAME: usize = 128;

/// The name a file is uploaded and named under: the block's, else the last segment of its URL's
/// path, else `image` or `file`. An agent chose it, so it is made one line with no path in it and
/// at most [`MAX_NAME`] characters.
fn file_name(block: &ContentBlock, url: &str) -> String {
    let given = block
        .name
        .as_deref()
        .map(clean)
        .filter(|name| !name.is_empty());
    let from_url = || {
        let url = reqwest::Url::parse(url).ok()?;
        let last = url.path_segments()?.next_back()?;
        Some(clean(last)).filter(|name| !name.is_empty())
    };
    given
        .or_else(from_url)
        .unwrap_or_else(|| if block.is_image() { "image" } else { "file" }.to_owned())
}

fn clean(name: &str) -> String {
    let name: String = name
        .chars()
        // Nor may it reorder what people read ("invoice\u{202E}fdp.exe" shows as ".pdf").
        .filter(|c| !c.is_control() && !is_bidi_control(*c))
        .map(|c| if matches!(c, '/' | '\\') { '_' } else { c })
        .take(MAX_NAME)
        .collect();
    name.trim().to_owned()
}

/// The Unicode marks that change the direction text is shown in.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_named_by_its_block_then_its_url() {
        let named = ContentBlock {
            name: Some("report.pdf".to_owned()),
            ..ContentBlock::default()
        };
        assert_eq!(file_name(&named, "https://x.test/a/b.bin"), "report.pdf");
        let unnamed = ContentBlock::default();
        assert_eq!(file_name(&unnamed, "https://x.test/a/b.bin?x=1"), "b.bin");
        assert_eq!(file_name(&unnamed, "https://x.test"), "file");
        assert_eq!(file_name(&unnamed, "https://x.test/"), "file");
        let image = ContentBlock {
            kind: ContentBlock::IMAGE.to_owned(),
            ..ContentBlock::default()
        };
        assert_eq!(file_name(&image, "https://x.test/"), "image");
        // An agent's name is one line without a path, and bounded.
        let hostile = ContentBlock {
            name: Some("../../etc/pass\r\nwd".to_owned()),
            ..ContentBlock::default()
        };
        assert_eq!(file_name(&hostile, "https://x.test/a"), ".._.._etc_passwd");
        let reversed = ContentBlock {
            name: Some("invoice\u{202E}fdp.exe".to_owned()),
            ..ContentBlock::default()
        };
        assert_eq!(file_name(&reversed, ""), "invoicefdp.exe");
        let long = ContentBlock {
            name: Some("x".repeat(1000)),
            ..ContentBlock::default()
        };
        assert_eq!(file_name(&long, "").chars().count(), MAX_NAME);
    }
}
