//! What a job does in its chat, run by the chat's outbox worker in the chat's order: the engine's
//! half of every relay. The connector makes the platform calls; this module decides which, keeps
//! the job's progress so a retry resumes where it stopped, and keeps the message map and the
//! other records up to date.

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use crate::bridge::DeadLetter;
use crate::event::now_millis;
use crate::metrics::{BridgeDirection, Direction};
use crate::msgmap::MessageMap;
use crate::outbox::{Absorb, Deliver, SendError};
use crate::relay::connector::{
    Chat, Connector, Look, Parent, PartId, Place, ReactionChange, Rendering, ThreadRef,
};
use crate::relay::job::{self, Action, Job, SendProgress};
use crate::relay::streaming::ShownParts;
use crate::relay::{home, Core};
use crate::store::{Reply, StoreError};

mod rewrite;
mod uploads;

impl<C: Connector> Deliver<Job<C::Part>> for Core<C> {
    fn deliver<'a>(
        &'a self,
        destination: &'a str,
        job: &'a mut Job<C::Part>,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(async move {
            let name = self.connector.name();
            if let Some(received_at) = job.about.received_at.take() {
                self.hub
                    .metrics()
                    .relay_latency
                    .get_or_create(&BridgeDirection {
                        bridge: name,
                        direction: Direction::Outbound,
                    })
                    .observe(received_at.elapsed().as_secs_f64());
            }
            let chat = Chat(destination.to_owned());
            let result = match &mut job.action {
                Action::Send(send) => self.send(&chat, send, &job.about).await,
                Action::Edit(edit) => self.edit(&chat, edit).await,
                Action::Delete(delete) => self.delete(&chat, delete).await,
                Action::React(react) => self.react(&chat, react).await,
                Action::OpenThread(open) => self.open_thread(&chat, open).await,
                Action::Notice(notice) => self.notice(&chat, notice).await,
            };
            if result.is_ok() {
                self.hub
                    .metrics()
                    .count_relayed(name, &job.about.event_type);
                if let Action::Edit(edit) = &job.action {
                    self.cadence.note(destination, &edit.hub_message_id);
                }
            }
            if let (Err(SendError::RetryAfter(wait)), Some(budget)) =
                (&result, self.connector.budget())
            {
                // Not only this job waits: typing and every other request to the chat do too.
                budget.pause(destination, *wait);
            }
            result
        })
    }

    fn agent(&self, job: &Job<C::Part>) -> Option<String> {
        job.about.agent_id.clone()
    }

    fn deferrable(&self, job: &Job<C::Part>) -> bool {
        // A streamed answer's intermediate text yields to new messages and final edits.
        matches!(&job.action, Action::Edit(edit) if edit.streaming)
    }

    fn coalescing_key(&self, job: &Job<C::Part>) -> Option<String> {
        job.coalescing_key()
    }

    fn absorb(&self, waiting: &mut Job<C::Part>, newer: &Job<C::Part>) -> Absorb {
        waiting.absorb(newer)
    }

    fn not_before(&self, destination: &str, job: &Job<C::Part>) -> Option<Instant> {
        let Action::Edit(edit) = &job.action else {
            return None;
        };
        let every = self.connector.edit_cadence(&Chat(destination.to_owned()));
        self.cadence
            .next_edit(destination, &edit.hub_message_id, every)
    }

    fn dead_letter<'a>(
        &'a self,
        destination: &'a str,
        job: Job<C::Part>,
        reason: String,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let letter = self.letter(destination, &job.about, reason);
            self.keep_dead_letter(letter).await;
        })
    }
}

impl<C: Connector> Core<C> {
    /// A dead letter for a relay of `about` to chat `destination`.
    fn letter(&self, destination: &str, about: &job::About, reason: String) -> DeadLetter {
        DeadLetter {
            destination: format!("{}:{destination}", self.connector.name()),
            event_type: about.event_type.clone(),
            reason,
            agent_id: about.agent_id.clone(),
            channel_id: about.channel_id.clone(),
            payload: about.payload.clone(),
            at: now_millis(),
        }
    }

    /// Keeps a dead letter (its agent is told); a store that fails is logged, nothing more can be
    /// done for it.
    async fn keep_dead_letter(&self, letter: DeadLetter) {
        let destination = letter.destination.clone();
        if let Err(error) = self.hub.dead_letter(self.connector.name(), letter).await {
            tracing::error!(%error, destination, "could not keep a dead letter");
        }
    }
}

/// The store did not answer: worth retrying.
fn unavailable(error: StoreError) -> SendError {
    SendError::Transient(error.to_string())
}

impl<C: Connector> Core<C> {
    // ----- messages -----

    async fn send(
        &self,
        chat: &Chat,
        send: &mut job::Send<C::Part>,
        about: &job::About,
    ) -> Result<(), SendError> {
        if send.progress.is_none() {
            if let Some(id) = send.hub_message_id.as_deref() {
                // A hub message already shown in this chat is not shown again (SPEC section 6):
                // an event replayed after a takeover, a job sent just before a crash took it off
                // its list, an agent publishing the same message twice.
                if self
                    .already_shown(&home(chat, send.hub_channel.as_deref()), id)
                    .await?
                {
                    self.count_ignored("already_shown");
                    return Ok(());
                }
            }
            send.progress = Some(self.plan(chat, send).await?);
        }
        let Some(progress) = send.progress.as_mut() else {
            return Ok(());
        };
        let place = Place {
            chat: chat.clone(),
            hub_channel: send.hub_channel.clone(),
            thread: progress.thread.clone(),
        };
        self.upload_files(
            &place,
            send.hub_message_id.as_deref(),
            &mut send.look,
            progress,
            about,
        )
        .await?;
        while progress.done < progress.parts.len() {
            let reply_to = progress
                .shown
                .is_empty()
                .then_some(())
                .and(progress.reply_to.as_ref());
            let part = &mut progress.parts[progress.done];
            let fingerprint = ShownParts::fingerprint(part);
            let before = progress.shown.len();
            let result = self
                .connector
                .send(&place, part, reply_to, &mut progress.shown)
                .await;
            // A part that went out is done whatever happens next: a retry must not show it again.
            if result.is_ok() {
                progress.done += 1;
                if let [id] = &progress.shown[before..] {
                    self.shown_parts.note(&chat.0, &id.0, fingerprint);
                }
            }
            // Mapped part by part: a message given up on halfway still has its shown parts
            // reached by edits and deletes.
            self.record_progress(&place, send.hub_message_id.as_deref(), &send.look, progress)
                .await?;
            result?;
        }
        // A retry after a failed record finds every part done: the record is all that is left.
        self.record_progress(&place, send.hub_message_id.as_deref(), &send.look, progress)
            .await?;
        Ok(())
    }

    /// Looks up where a message goes (its platform thread, the part it answers) and renders it.
    async fn plan(
        &self,
        chat: &Chat,
        send: &mut job::Send<C::Part>,
    ) -> Result<SendProgress<C::Part>, SendError> {
        let mut place = home(chat, send.hub_channel.as_deref());
        if let Some(thread_id) = send.thread_id.as_deref() {
            place.thread = self
                .thread_for(&place, thread_id, send.reply_to.as_deref())
                .await?;
        }
        // The part it answers: its parent's first part, else (outside a platform thread) the
        // first part of the message its hub thread hangs on.
        let mut parent = send.reply_to.clone();
        if parent.is_none() && place.thread.is_none() {
            if let Some(thread_id) = send.thread_id.as_deref() {
                parent = self
                    .records
                    .thread_root(thread_id)
                    .await
                    .map_err(unavailable)?;
            }
        }
        let reply = match parent {
            Some(parent) => self
                .first_part(&place, &parent)
                .await?
                .map(|(id, thread)| Parent { id, thread }),
            None => None,
        };
        let uploads = self.plan_uploads(&mut send.look);
        let rendered = self
            .connector
            .render(
                &place,
                Rendering {
                    look: &send.look,
                    text: &send.text,
                    reply_to: reply.as_ref(),
                    edit_of: None,
                },
            )
            .await?;
        if rendered.parts.is_empty() && uploads.is_empty() {
            self.count_ignored("empty_message");
        }
        send.look.header = rendered.header;
        // Native replies stay in one place; elsewhere the connector may have quoted it.
        let native = reply.filter(|reply| rendered.native_reply && reply.thread == place.thread);
        Ok(SendProgress {
            thread: place.thread,
            reply_to: native.map(|reply| reply.id),
            caption: rendered.parts.len() == 1,
            parts: rendered.parts,
            done: 0,
            shown: Vec::new(),
            recorded: 0,
            uploads,
            uploaded: 0,
        })
    }

    /// Records the parts shown since the last record, if any.
    async fn record_progress(
        &self,
        place: &Place,
        hub_message_id: Option<&str>,
        look: &Look,
        progress: &mut SendProgress<C::Part>,
    ) -> Result<(), SendError> {
        if progress.recorded == progress.shown.len() {
            return Ok(());
        }
        self.record_sent(place, hub_message_id, look, &progress.shown)
            .await?;
        progress.recorded = progress.shown.len();
        Ok(())
    }

    /// Maps the parts shown so far to their hub message, keeps how it looks, and where.
    async fn record_sent(
        &self,
        place: &Place,
        hub_message_id: Option<&str>,
        look: &Look,
        shown: &[PartId],
    ) -> Result<(), SendError> {
        let Some(hub_message_id) = hub_message_id else {
            return Ok(());
        };
        let name = self.connector.name();
        let ids: Vec<String> = shown.iter().map(|id| id.0.clone()).collect();
        let map_chat = self.map_chat(place);
        let mut ops = self.map.record_ops(name, hub_message_id, &map_chat, &ids);
        ops.extend(self.records.look_ops(hub_message_id, &map_chat, look));
        if let Some(thread) = &place.thread {
            let home = self.map_chat(&home(&place.chat, place.hub_channel.as_deref()));
            ops.push(self.records.shown_in_op(hub_message_id, &home, thread));
        }
        self.hub
            .store()
            .exec(ops)
            .await
            .map(drop)
            .map_err(unavailable)
    }

    /// The place a hub message was shown in, in the chat of `home`, and the map chat there.
    async fn locate(&self, home: &Place, hub_message_id: &str) -> Result<Place, SendError> {
        let thread = self
            .records
            .shown_in(hub_message_id, &self.map_chat(home))
            .await
            .map_err(unavailable)?;
        Ok(Place {
            thread,
            ..home.clone()
        })
    }

    async fn parts(&self, place: &Place, hub_message_id: &str) -> Result<Vec<PartId>, SendError> {
        let ids = self
            .map
            .parts(self.connector.name(), hub_message_id, &self.map_chat(place))
            .await
            .map_err(unavailable)?;
        Ok(ids.into_iter().map(PartId).collect())
    }

    /// Whether a hub message shows in the chat of `home` already: in a platform thread there
    /// (noted when it was shown), or outside any. One round trip, on every new send.
    async fn already_shown(&self, home: &Place, hub_message_id: &str) -> Result<bool, SendError> {
        let map_chat = self.map_chat(home);
        let reads = vec![
            self.records.shown_in_read(hub_message_id, &map_chat),
            self.map
                .parts_read(self.connector.name(), hub_message_id, &map_chat),
        ];
        let replies = self.hub.store().exec(reads).await.map_err(unavailable)?;
        let mut replies = replies.into_iter();
        let in_thread = replies.next().is_some_and(|reply| reply != Reply::Nil);
        let outside = replies.next().map(MessageMap::parts_of).unwrap_or_default();
        Ok(in_thread || !outside.is_empty())
    }

    /// The first part showing a hub message in the chat of `home`, and the thread it is in.
    async fn first_part(
        &self,
        home: &Place,
        hub_message_id: &str,
    ) -> Result<Option<(PartId, Option<ThreadRef>)>, SendError> {
        let place = self.locate(home, hub_message_id).await?;
        let first = self.parts(&place, hub_message_id).await?.into_iter().next();
        Ok(first.map(|id| (id, place.thread)))
    }

    // ----- threads -----

    /// The platform thread of a hub thread in the chat of `home`. When none is known and the
    /// platform opens threads on demand, one is opened on the first of the thread's id (agents
    /// often make it the parent's id) and the message's parent that the chat shows.
    async fn thread_for(
        &self,
        home: &Place,
        thread_id: &str,
        reply_to: Option<&str>,
    ) -> Result<Option<ThreadRef>, SendError> {
        if let Some(thread) = self.known_thread(home, thread_id).await? {
            return Ok(Some(thread));
        }
        if !self.connector.capabilities().open_threads_on_demand {
            return Ok(None);
        }
        for hint in std::iter::once(thread_id).chain(reply_to) {
            if let Some((parent, _)) = self.first_part(home, hint).await? {
                return self.open_on(home, thread_id, hint, &parent).await;
            }
        }
        Ok(None)
    }

    /// Opens a platform thread for `thread_id` on a part of the hub message `parent`.
    async fn open_on(
        &self,
        home: &Place,
        thread_id: &str,
        parent: &str,
        part: &PartId,
    ) -> Result<Option<ThreadRef>, SendError> {
        let look = self.records.look(parent).await.map_err(unavailable)?;
        let name = crate::relay::thread_name(look.and_then(|look| look.topic_name).as_deref());
        let opened = self.connector.open_thread(home, Some(part), &name).await?;
        if let Some(thread) = &opened {
            self.records
                .record_platform_thread(&self.map_chat(home), thread_id, thread)
                .await
                .map_err(unavailable)?;
        }
        Ok(opened)
    }

    /// The platform thread already showing a hub thread in the chat of `home`.
    pub(crate) async fn known_thread(
        &self,
        home: &Place,
        thread_id: &str,
    ) -> Result<Option<ThreadRef>, SendError> {
        let chat = self.map_chat(home);
        let known = self
            .records
            .platform_thread(&chat, thread_id)
            .await
            .map_err(unavailable)?;
        if known.is_some() {
            return Ok(known);
        }
        let Some(key) = self.connector.legacy_thread_key(&chat, thread_id) else {
            return Ok(None);
        };
        let legacy = self
            .hub
            .store()
            .one(crate::store::Op::Get { key })
            .await
            .map_err(unavailable)?
            .into_text();
        Ok(legacy.map(ThreadRef))
    }

    async fn open_thread(&self, chat: &Chat, open: &mut job::OpenThread) -> Result<(), SendError> {
        let home = home(chat, Some(&open.hub_channel));
        if self.known_thread(&home, &open.thread_id).await?.is_some() {
            return Ok(());
        }
        match self.first_part(&home, &open.parent).await? {
            Some((part, _)) => self
                .open_on(&home, &open.thread_id, &open.parent, &part)
                .await
                .map(drop),
            None if self.connector.capabilities().open_threads_on_demand => {
                tracing::debug!(thread = %open.thread_id, "thread on a message this chat does not show; not opened");
                Ok(())
            }
            // A platform whose threads do not hang on a message (forum topics) opens it anyway.
            None => {
                let look = self.records.look(&open.parent).await.map_err(unavailable)?;
                let name =
                    crate::relay::thread_name(look.and_then(|look| look.topic_name).as_deref());
                if let Some(thread) = self.connector.open_thread(&home, None, &name).await? {
                    self.records
                        .record_platform_thread(&self.map_chat(&home), &open.thread_id, &thread)
                        .await
                        .map_err(unavailable)?;
                }
                Ok(())
            }
        }
    }

    // ----- reactions -----

    /// Keeps which agents stand behind which reaction on a message, and shows the most recent
    /// ones the platform allows the bot.
    async fn react(&self, chat: &Chat, react: &job::React) -> Result<(), SendError> {
        let home = home(chat, Some(&react.hub_channel));
        let place = self.locate(&home, &react.hub_message_id).await?;
        let Some(target) = self
            .parts(&place, &react.hub_message_id)
            .await?
            .into_iter()
            .next()
        else {
            self.count_ignored("reaction_to_unknown_message");
            return Ok(());
        };
        let map_chat = self.map_chat(&place);
        let mut standing = self
            .records
            .reactions(&map_chat, &target)
            .await
            .map_err(unavailable)?;
        let limit = self.connector.capabilities().reactions_per_message;
        let before = shown_reactions(&standing, limit);
        standing.retain(|(agent, emoji)| !(agent == &react.agent_id && emoji == &react.emoji));
        if react.add {
            standing.push((react.agent_id.clone(), react.emoji.clone()));
        }
        let change = ReactionChange {
            emoji: react.emoji.clone(),
            add: react.add,
            after: shown_reactions(&standing, limit),
            before,
        };
        self.connector.react(&place, &target, &change).await?;
        self.records
            .record_reactions(&map_chat, &target, &standing)
            .await
            .map_err(unavailable)
    }

    // ----- notices -----

    async fn notice(
        &self,
        chat: &Chat,
        notice: &mut job::Notice<C::Part>,
    ) -> Result<(), SendError> {
        let place = home(chat, None);
        let parts = notice.parts.get_or_insert_with(|| {
            self.connector
                .render_notice(&notice.text, notice.mention.as_deref())
        });
        while notice.sent < parts.len() {
            let mut shown = Vec::new();
            self.connector
                .send(&place, &mut parts[notice.sent], None, &mut shown)
                .await?;
            notice.sent += 1;
        }
        Ok(())
    }
}

/// The reactions shown for `standing`: distinct emoji, the most recent first, at most `limit`.
pub(crate) fn shown_reactions(standing: &[(String, String)], limit: usize) -> Vec<String> {
    let mut shown: Vec<String> = Vec::new();
    for (_, emoji) in standing.iter().rev() {
        if shown.len() == limit {
            break;
        }
        if !shown.contains(emoji) {
            shown.push(emoji.clone());
        }
    }
    shown
}
