//! State keeping (SPEC section 3): which key updates each hub event implies.
//!
//! Planning is pure: an event becomes a list of [`Op`]s plus [`FollowUp`]s that read the ops'
//! replies (a presence that just came online, a person's first message). The hub loop runs the ops
//! of many events in one pipeline, so every event's updates cost one round trip at most.

use std::time::Duration;

use hub_bridge_sdk::event::{ChannelEvent, HubEvent, Millis, Presence, PresenceStatus};
use hub_bridge_sdk::{ExternalId, Keys, Op};

/// TTLs of the state keys.
#[derive(Debug, Clone)]
pub struct StateSettings {
    /// Presence hash TTL (SPEC: 300 s); shorter in tests.
    pub presence_ttl: Duration,
    pub typing_ttl: Duration,
    pub channel_ttl: Duration,
}

impl Default for StateSettings {
    fn default() -> Self {
        Self {
            presence_ttl: Duration::from_secs(300),
            typing_ttl: Duration::from_secs(10),
            channel_ttl: Duration::from_secs(3600),
        }
    }
}

/// Something to do once the ops' replies are known. `reply` indexes the plan's ops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowUp {
    /// When the reply is 1, `agent_id` just came online in the channel: publish the transition.
    PresenceTransition {
        reply: usize,
        channel_id: String,
        agent_id: String,
    },
    /// When the reply is 1, this is the person's first message in the channel: publish a join.
    FirstMessage {
        reply: usize,
        channel_id: String,
        agent_id: String,
    },
}

/// What the presence-expiry tracker must learn from an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tracking {
    /// The presence key was (re)written with the full TTL.
    Refreshed {
        channel_id: String,
        agent_id: String,
    },
    /// The agent went offline explicitly; nothing to expire.
    Gone {
        channel_id: String,
        agent_id: String,
    },
}

/// The key updates for one event.
#[derive(Debug, Default)]
pub struct Plan {
    pub ops: Vec<Op>,
    pub follow_ups: Vec<FollowUp>,
    pub tracking: Vec<Tracking>,
    /// Which state kinds were written, for the `state_writes` metric.
    pub writes: Vec<&'static str>,
}

impl Plan {
    fn push(&mut self, kind: &'static str, op: Op) -> usize {
        self.ops.push(op);
        self.writes.push(kind);
        self.ops.len() - 1
    }

    /// Shifts reply indexes when this plan's ops are appended after `offset` other ops.
    pub fn follow_ups_at(&self, offset: usize) -> impl Iterator<Item = FollowUp> + '_ {
        self.follow_ups.iter().cloned().map(move |f| match f {
            FollowUp::PresenceTransition {
                reply,
                channel_id,
                agent_id,
            } => FollowUp::PresenceTransition {
                reply: reply + offset,
                channel_id,
                agent_id,
            },
            FollowUp::FirstMessage {
                reply,
                channel_id,
                agent_id,
            } => FollowUp::FirstMessage {
                reply: reply + offset,
                channel_id,
                agent_id,
            },
        })
    }
}

/// Plans the state updates an event implies. `now` is the hub's clock in milliseconds.
pub fn plan(event: &HubEvent, now: Millis, keys: &Keys, settings: &StateSettings) -> Plan {
    let mut plan = Plan::default();
    let HubEvent::Channel(event) = event else {
        return plan;
    };
    let channel_id = event.channel_id();
    match event {
        ChannelEvent::Message { message, .. } | ChannelEvent::ThreadMessage { message, .. } => {
            invalidate_recent(&mut plan, keys, channel_id);
            let sender = &message.sender_id;
            touch_presence(&mut plan, keys, settings, channel_id, sender, now);
            if ExternalId::is_external(sender) {
                note_person_wrote(&mut plan, keys, channel_id, sender);
            }
        }
        ChannelEvent::MessageEdit { .. } | ChannelEvent::MessageDelete { .. } => {
            invalidate_recent(&mut plan, keys, channel_id);
        }
        ChannelEvent::ReactionAdd { agent_id, .. } => {
            touch_presence(&mut plan, keys, settings, channel_id, agent_id, now);
        }
        ChannelEvent::Typing {
            agent_id, started, ..
        } => {
            plan_typing(
                &mut plan, keys, settings, channel_id, agent_id, *started, now,
            );
            if *started {
                touch_presence(&mut plan, keys, settings, channel_id, agent_id, now);
            }
        }
        ChannelEvent::Presence { presence, .. } => {
            plan_presence(&mut plan, keys, settings, channel_id, presence)
        }
        ChannelEvent::MemberJoin { member, .. } => {
            plan.push(
                "members",
                Op::SAdd {
                    key: keys.members(channel_id),
                    member: member.agent_id.clone(),
                },
            );
        }
        ChannelEvent::MemberLeave { agent_id, .. } => {
            plan.push(
                "members",
                Op::SRem {
                    key: keys.members(channel_id),
                    member: agent_id.clone(),
                },
            );
        }
        ChannelEvent::Update { channel, .. } => {
            plan.push(
                "channel",
                Op::MergeJson {
                    key: keys.channel(channel_id),
                    patch: serde_json::Value::Object(channel.clone()).to_string(),
                    ttl: settings.channel_ttl,
                },
            );
        }
        ChannelEvent::Delete { .. } => {
            plan.push(
                "channel",
                Op::Del {
                    key: keys.channel(channel_id),
                },
            );
        }
        ChannelEvent::ReactionRemove { .. }
        | ChannelEvent::MemberUpdate { .. }
        | ChannelEvent::Archive { .. }
        | ChannelEvent::ThreadCreate { .. }
        | ChannelEvent::ThreadUpdate { .. }
        | ChannelEvent::Collaboration { .. } => {}
    }
    plan
}

/// A person's message: they are a member of the channel from now on; the first time, the hub
/// says so (`channel.member.join`, a follow-up on the SADD's reply).
fn note_person_wrote(plan: &mut Plan, keys: &Keys, channel_id: &str, sender: &str) {
    let reply = plan.push(
        "members",
        Op::SAdd {
            key: keys.members(channel_id),
            member: sender.to_owned(),
        },
    );
    plan.follow_ups.push(FollowUp::FirstMessage {
        reply,
        channel_id: channel_id.to_owned(),
        agent_id: sender.to_owned(),
    });
}

fn plan_typing(
    plan: &mut Plan,
    keys: &Keys,
    settings: &StateSettings,
    channel_id: &str,
    agent_id: &str,
    started: bool,
    now: Millis,
) {
    let key = keys.typing(channel_id);
    if !started {
        plan.push(
            "typing",
            Op::ZRem {
                key,
                member: agent_id.to_owned(),
            },
        );
        return;
    }
    plan.push(
        "typing",
        Op::ZAdd {
            key: key.clone(),
            score: now,
            member: agent_id.to_owned(),
        },
    );
    plan.push(
        "typing",
        Op::Expire {
            key,
            ttl: settings.typing_ttl,
        },
    );
}

fn plan_presence(
    plan: &mut Plan,
    keys: &Keys,
    settings: &StateSettings,
    channel_id: &str,
    presence: &Presence,
) {
    let key = keys.presence(channel_id, &presence.agent_id);
    let tracked = (channel_id.to_owned(), presence.agent_id.clone());
    if presence.status == PresenceStatus::Offline {
        plan.push("presence", Op::Del { key });
        plan.tracking.push(Tracking::Gone {
            channel_id: tracked.0,
            agent_id: tracked.1,
        });
        return;
    }
    let mut fields = vec![
        ("agentId".to_owned(), presence.agent_id.clone()),
        ("status".to_owned(), presence.status.as_str().to_owned()),
        ("lastSeen".to_owned(), presence.last_seen.to_string()),
    ];
    if let Some(custom) = &presence.custom_status {
        fields.push(("customStatus".to_owned(), custom.clone()));
    }
    if let Some(avatar) = &presence.avatar {
        fields.push(("avatar".to_owned(), avatar.clone()));
    }
    plan.push(
        "presence",
        Op::HSet {
            key: key.clone(),
            fields,
        },
    );
    plan.push(
        "presence",
        Op::Expire {
            key,
            ttl: settings.presence_ttl,
        },
    );
    plan.tracking.push(Tracking::Refreshed {
        channel_id: tracked.0,
        agent_id: tracked.1,
    });
}

fn invalidate_recent(plan: &mut Plan, keys: &Keys, channel_id: &str) {
    plan.push(
        "recent_cache",
        Op::Del {
            key: keys.recent_messages(channel_id),
        },
    );
}

/// Activity refreshes presence (SPEC section 3) and reports the absent -> online transition.
fn touch_presence(
    plan: &mut Plan,
    keys: &Keys,
    settings: &StateSettings,
    channel_id: &str,
    agent_id: &str,
    now: Millis,
) {
    let reply = plan.push(
        "presence",
        Op::TouchPresence {
            key: keys.presence(channel_id, agent_id),
            fields: vec![
                ("agentId".to_owned(), agent_id.to_owned()),
                ("status".to_owned(), "online".to_owned()),
                ("lastSeen".to_owned(), now.to_string()),
            ],
            ttl: settings.presence_ttl,
        },
    );
    plan.follow_ups.push(FollowUp::PresenceTransition {
        reply,
        channel_id: channel_id.to_owned(),
        agent_id: agent_id.to_owned(),
    });
    plan.tracking.push(Tracking::Refreshed {
        channel_id: channel_id.to_owned(),
        agent_id: agent_id.to_owned(),
    });
}

#[cfg(test)]
mod tests {
    use hub_bridge_sdk::event::{parse, Source};

    use super::*;

    fn plan_for(json: &str) -> Plan {
        let inbound = parse(&Source::Channel("C".into()), json.as_bytes()).unwrap();
        plan(
            &inbound.event,
            1_000,
            &Keys::new("p:"),
            &StateSettings::default(),
        )
    }

    #[test]
    fn an_external_message_invalidates_refreshes_and_may_join() {
        let plan = plan_for(
            r#"{"type":"channel.message","message":{"id":"m","content":"hi","senderId":"external:telegram:1","timestamp":1}}"#,
        );
        assert_eq!(
            plan.ops[0],
            Op::Del {
                key: "p:messages:C:recent".into()
            }
        );
        assert!(
            matches!(&plan.ops[1], Op::TouchPresence { key, .. } if key == "p:presence:C:external:telegram:1")
        );
        assert_eq!(
            plan.ops[2],
            Op::SAdd {
                key: "p:channel:C:members".into(),
                member: "external:telegram:1".into()
            }
        );
        assert_eq!(plan.follow_ups.len(), 2);
    }

    #[test]
    fn an_agent_message_does_not_touch_members() {
        let plan = plan_for(
            r#"{"type":"channel.message","message":{"id":"m","content":"hi","senderId":"agent","timestamp":1}}"#,
        );
        assert!(!plan.ops.iter().any(|op| matches!(op, Op::SAdd { .. })));
    }

    #[test]
    fn offline_presence_deletes_and_stops_tracking() {
        let plan = plan_for(
            r#"{"type":"channel.presence","presence":{"agentId":"a","status":"offline","lastSeen":1}}"#,
        );
        assert_eq!(
            plan.ops,
            vec![Op::Del {
                key: "p:presence:C:a".into()
            }]
        );
        assert_eq!(
            plan.tracking,
            vec![Tracking::Gone {
                channel_id: "C".into(),
                agent_id: "a".into()
            }]
        );
    }

    #[test]
    fn follow_ups_shift_with_their_offset() {
        let plan = plan_for(
            r#"{"type":"channel.reaction.add","messageId":"m","emoji":"x","agentId":"a"}"#,
        );
        let shifted: Vec<_> = plan.follow_ups_at(10).collect();
        assert!(matches!(
            shifted[0],
            FollowUp::PresenceTransition { reply: 10, .. }
        ));
    }
}
