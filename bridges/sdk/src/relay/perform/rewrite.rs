//! Edits and deletes: a message's parts re-rendered and reconciled with the parts shown (edit
//! the parts both have, send the extra new ones, delete the extra old ones), the map kept up to
//! date, parts that did not change left alone.

use super::unavailable;
use crate::outbox::SendError;
use crate::relay::connector::{Chat, Connector, Edited, PartId, Place, Rendering};
use crate::relay::job::{self, Rewrite};
use crate::relay::streaming::ShownParts;
use crate::relay::{home, Core};

impl<C: Connector> Core<C> {
    pub(super) async fn edit(
        &self,
        chat: &Chat,
        edit: &mut job::Edit<C::Part>,
    ) -> Result<(), SendError> {
        if edit.progress.is_none() {
            let place = self
                .locate(&home(chat, Some(&edit.hub_channel)), &edit.hub_message_id)
                .await?;
            let shown = self.parts(&place, &edit.hub_message_id).await?;
            if shown.is_empty() {
                // Never shown in this chat (sent before the link existed, or given up on).
                self.count_ignored("edit_of_unknown_message");
                return Ok(());
            }
            let look = self
                .records
                .look_in(&edit.hub_message_id, &self.map_chat(&place))
                .await
                .map_err(unavailable)?
                .unwrap_or_default();
            // The text changes; the files stay as they are.
            let (kept, old): (Vec<PartId>, Vec<PartId>) = shown
                .into_iter()
                .partition(|id| look.file_parts.contains(id));
            let rendered = self
                .connector
                .render(
                    &place,
                    Rendering {
                        look: &look,
                        text: &edit.text,
                        reply_to: None,
                        edit_of: old.first(),
                    },
                )
                .await?;
            edit.progress = Some(Rewrite {
                thread: place.thread,
                old,
                new: rendered.parts,
                ids: Vec::new(),
                next: 0,
                kept,
            });
        }
        let Some(rewrite) = edit.progress.as_mut() else {
            return Ok(());
        };
        self.rewrite(chat, &edit.hub_channel, &edit.hub_message_id, rewrite)
            .await
    }

    pub(super) async fn delete(
        &self,
        chat: &Chat,
        delete: &mut job::Delete<C::Part>,
    ) -> Result<(), SendError> {
        if delete.progress.is_none() {
            let place = self
                .locate(
                    &home(chat, Some(&delete.hub_channel)),
                    &delete.hub_message_id,
                )
                .await?;
            let old = self.parts(&place, &delete.hub_message_id).await?;
            if old.is_empty() {
                self.count_ignored("delete_of_unknown_message");
                return Ok(());
            }
            delete.progress = Some(Rewrite {
                thread: place.thread,
                old,
                new: Vec::new(),
                ids: Vec::new(),
                next: 0,
                kept: Vec::new(),
            });
        }
        let Some(rewrite) = delete.progress.as_mut() else {
            return Ok(());
        };
        self.rewrite(chat, &delete.hub_channel, &delete.hub_message_id, rewrite)
            .await
    }

    /// Turns the old parts into the new ones: edits the parts both have, sends the extra new
    /// ones, deletes the extra old ones; then maps the result (or forgets a deleted message).
    async fn rewrite(
        &self,
        chat: &Chat,
        hub_channel: &str,
        hub_message_id: &str,
        rewrite: &mut Rewrite<C::Part>,
    ) -> Result<(), SendError> {
        let place = Place {
            chat: chat.clone(),
            hub_channel: Some(hub_channel.to_owned()),
            thread: rewrite.thread.clone(),
        };
        let map_chat = self.map_chat(&place);
        let name = self.connector.name();
        let total = rewrite.old.len().max(rewrite.new.len());
        while rewrite.next < total {
            let index = rewrite.next;
            match (rewrite.old.get(index), rewrite.new.get_mut(index)) {
                (Some(old), Some(part)) => {
                    let fingerprint = ShownParts::fingerprint(part);
                    if self.shown_parts.shows(&chat.0, &old.0, fingerprint) {
                        // Shown as it is: a streamed answer's earlier parts stay untouched.
                        rewrite.ids.push(old.clone());
                    } else if self.connector.edit(&place, old, part).await? == Edited::Done {
                        self.shown_parts.note(&chat.0, &old.0, fingerprint);
                        rewrite.ids.push(old.clone());
                    }
                }
                (None, Some(part)) => {
                    let fingerprint = ShownParts::fingerprint(part);
                    let mut shown = Vec::new();
                    let result = self.connector.send(&place, part, None, &mut shown).await;
                    if let [id] = &shown[..] {
                        self.shown_parts.note(&chat.0, &id.0, fingerprint);
                    }
                    rewrite.ids.extend(shown);
                    let ids = rewrite.mapped();
                    self.map
                        .record_parts(name, hub_message_id, &map_chat, &ids)
                        .await
                        .map_err(unavailable)?;
                    result?;
                }
                (Some(old), None) => self.connector.delete(&place, old).await?,
                (None, None) => {}
            }
            rewrite.next += 1;
        }
        let result = if rewrite.new.is_empty() && rewrite.kept.is_empty() {
            self.map.forget(name, hub_message_id, &map_chat).await
        } else if rewrite.ids != rewrite.old {
            let ids = rewrite.mapped();
            self.map
                .record_parts(name, hub_message_id, &map_chat, &ids)
                .await
        } else {
            Ok(())
        };
        result.map_err(unavailable)
    }
}
