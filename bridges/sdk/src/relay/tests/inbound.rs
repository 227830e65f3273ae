//! The engine's inbound half: what people do on the platform, published into the linked channels
//! once, with the ids the hub knows.

use std::time::Instant;

use serde_json::Value;

use super::*;
use crate::ids::{ExternalId, Platform};
use crate::relay::{Handled, Parent, Person, PlatformEvent, Said, Whisper};

fn person(id: &str) -> Person {
    Person {
        id: ExternalId::new(Platform::named("memory"), id),
        name: format!("Person {id} (Memory)"),
        addressed_as: format!("P{id}"),
        mention: None,
    }
}

fn place(chat: &str, thread: Option<&str>) -> Place {
    Place::on_platform(Chat(chat.into()), thread.map(|t| ThreadRef(t.into())))
}

fn said(chat: &str, id: &str, content: &str) -> Said {
    Said {
        place: place(chat, None),
        id: PartId(id.into()),
        author: person("7"),
        content: content.into(),
        files: Vec::new(),
        timestamp: 1_700_000_000_000,
        reply_to: None,
        thread_root: None,
        received: Some(Instant::now()),
        claim: format!("message:{id}"),
    }
}

impl Harness {
    async fn publish(&self, event: PlatformEvent) -> Handled {
        self.relay.publish(&event).await.expect("the store answers")
    }

    /// The hub events published so far, as (channel, envelope).
    fn published(&self) -> Vec<(String, Value)> {
        self.store
            .published()
            .into_iter()
            .map(|(channel, payload)| (channel, serde_json::from_str(&payload).unwrap()))
            .collect()
    }

    fn published_of(&self, kind: &str) -> Vec<(String, Value)> {
        self.published()
            .into_iter()
            .filter(|(_, envelope)| envelope["event"]["type"] == kind)
            .collect()
    }
}

#[tokio::test]
async fn a_persons_message_reaches_every_linked_channel_once_under_one_id() {
    let h = Harness::new(Memory::new(true, 1));
    // Chat 1 is linked to A and B.
    h.publish(PlatformEvent::Message(said("1", "50", "hello hub")))
        .await;
    let published = h.published_of("channel.message");
    let channels: Vec<&str> = published.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(channels, ["pubsub:channel:A", "pubsub:channel:B"]);
    let (_, first) = &published[0];
    assert_eq!(first["origin"], "memory:1");
    let message = &first["event"]["message"];
    assert_eq!(message["content"], "hello hub");
    assert_eq!(message["senderId"], "external:memory:7");
    assert_eq!(message["authorName"], "Person 7 (Memory)");
    assert_eq!(message["authorType"], "external");
    assert_eq!(message["externalPlatform"], "memory");
    assert_eq!(message["externalSourceId"], "1:50");
    assert_eq!(message["id"], published[1].1["event"]["message"]["id"]);
    let hub_id = message["id"].as_str().unwrap();
    // Mapped for each link, so replies, edits and reactions through either find it.
    for chat in ["1", "1/B"] {
        let mapped = h.relay.map().hub_id("memory", chat, "50").await.unwrap();
        assert_eq!(mapped.as_deref(), Some(hub_id), "under {chat}");
    }

    // Handled again (a redelivery, a replay after a crash): nothing new.
    h.publish(PlatformEvent::Message(said("1", "50", "hello hub")))
        .await;
    assert_eq!(h.published_of("channel.message").len(), 2);
    h.stop().await;
}

#[tokio::test]
async fn a_link_that_missed_a_message_gets_it_under_the_first_links_id() {
    let h = Harness::new(Memory::new(true, 1));
    // A crash after the first link published: its map entry is there, the second link's not.
    h.store
        .exec(vec![Op::Set {
            key: "t:bridge:msgmap:memory:1:51".into(),
            value: "published-before".into(),
            ttl: None,
            only_if_absent: false,
        }])
        .await
        .unwrap();
    h.publish(PlatformEvent::Message(said("1", "51", "again")))
        .await;
    let published = h.published_of("channel.message");
    assert_eq!(published.len(), 1, "{published:?}");
    assert_eq!(published[0].0, "pubsub:channel:B");
    assert_eq!(published[0].1["event"]["message"]["id"], "published-before");
    h.stop().await;
}

#[tokio::test]
async fn what_a_chat_publishes_is_never_relayed_back_to_it() {
    let h = Harness::new(Memory::new(true, 1));
    h.publish(PlatformEvent::Message(said("2", "60", "from chat two")))
        .await;
    let (channel, envelope) = h.published_of("channel.message").remove(0);
    assert_eq!(channel, "pubsub:channel:A");
    h.channel("A", envelope).await;
    let chats: Vec<String> = h.sends().into_iter().map(|s| s.0).collect();
    assert!(
        !chats.is_empty() && chats.iter().all(|c| c == "1"),
        "{chats:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_reply_answers_the_mapped_message_and_continues_its_thread() {
    let h = Harness::new(Memory::new(false, 1));
    // An agent's message shown in chat 2, with a hub thread on it; chat 2 has no threads, so
    // the thread's message replies to it there.
    h.say("A", "root", "ada", "Shall we ship?").await;
    h.thread_create("A", "t1", "root").await;
    h.say_in_thread("A", "t1", "in-t1", "yes").await;
    let shown = h.parts("root", "2").await;
    let mut reply = said("2", "70", "agreed");
    reply.reply_to = Some(Parent {
        id: PartId(shown[0].clone()),
        thread: None,
    });
    h.publish(PlatformEvent::Message(reply)).await;
    let (_, event) = h.published_of("channel.message").remove(0);
    let message = &event["event"]["message"];
    assert_eq!(message["parentMessageId"], "root");
    assert_eq!(message["threadId"], "t1");
    // A reply to an unknown message answers nothing.
    let mut stray = said("2", "71", "what?");
    stray.reply_to = Some(Parent {
        id: PartId("999".into()),
        thread: None,
    });
    h.publish(PlatformEvent::Message(stray)).await;
    let (_, event) = h.published_of("channel.message").remove(1);
    assert!(event["event"]["message"].get("parentMessageId").is_none());
    h.stop().await;
}

#[tokio::test]
async fn a_platform_thread_people_open_becomes_a_hub_thread_once() {
    let h = Harness::new(Memory::new(true, 1));
    h.publish(PlatformEvent::Message(said("2", "80", "start here")))
        .await;
    let root_id = h.published_of("channel.message")[0].1["event"]["message"]["id"].clone();
    for (id, text) in [("81", "first in thread"), ("82", "second")] {
        let mut in_thread = said("2", id, text);
        in_thread.place = place("2", Some("80"));
        in_thread.thread_root = Some(PartId("80".into()));
        h.publish(PlatformEvent::Message(in_thread)).await;
    }
    let created = h.published_of("thread.create");
    assert_eq!(created.len(), 1, "{created:?}");
    let thread = &created[0].1["event"]["thread"];
    assert_eq!(thread["parentMessageId"], root_id);
    assert_eq!(thread["createdBy"], "external:memory:7");
    let messages = h.published_of("thread.message");
    assert_eq!(messages.len(), 2);
    for (_, envelope) in &messages {
        let event = &envelope["event"];
        assert_eq!(event["threadId"], thread["id"]);
        assert_eq!(event["message"]["threadId"], thread["id"]);
        assert_eq!(event["message"]["parentMessageId"], root_id);
    }
    assert_eq!(
        messages[0].1["event"]["message"]["externalSourceId"],
        "2:81"
    );

    // The hub's answer in that thread goes to the platform thread.
    h.clear();
    h.say_in_thread("A", thread["id"].as_str().unwrap(), "answer", "ok!")
        .await;
    let threads: Vec<Option<String>> = h
        .sends()
        .into_iter()
        .filter(|s| s.0 == "2")
        .map(|s| s.1)
        .collect();
    assert!(!threads.is_empty());
    assert!(
        threads.iter().all(|t| t.as_deref() == Some("80")),
        "{threads:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_message_in_a_topic_without_chat_threads_is_a_channel_message_of_its_thread() {
    let h = Harness::new(Memory::new(false, 1));
    h.relay
        .records()
        .record_platform_thread("2", "t9", &ThreadRef("5".into()))
        .await
        .unwrap();
    let mut in_topic = said("2", "90", "from the topic");
    in_topic.place = place("2", Some("5"));
    h.publish(PlatformEvent::Message(in_topic)).await;
    let (_, event) = h.published_of("channel.message").remove(0);
    assert_eq!(event["event"]["message"]["threadId"], "t9");
    assert!(event["event"]["message"].get("parentMessageId").is_none());
    // A topic the bridge did not open is no hub thread.
    let mut elsewhere = said("2", "91", "general");
    elsewhere.place = place("2", Some("6"));
    h.publish(PlatformEvent::Message(elsewhere)).await;
    assert!(h.published_of("thread.create").is_empty());
    let (_, event) = h.published_of("channel.message").remove(1);
    assert!(event["event"]["message"].get("threadId").is_none());
    h.stop().await;
}

#[tokio::test]
async fn edits_deletes_and_reactions_reach_the_mapped_hub_message() {
    let h = Harness::new(Memory::new(true, 1));
    h.publish(PlatformEvent::Message(said("2", "40", "typo")))
        .await;
    let hub_id = h.published_of("channel.message")[0].1["event"]["message"]["id"].clone();
    let edit = |claim: Option<&str>| PlatformEvent::Edit {
        place: place("2", None),
        id: PartId("40".into()),
        content: "fixed".into(),
        edited_at: 5,
        claim: claim.map(str::to_owned),
    };
    assert_eq!(h.publish(edit(Some("update:1"))).await, Handled::Done);
    // The same update again publishes nothing; an edit without a claim publishes each time.
    h.publish(edit(Some("update:1"))).await;
    h.publish(edit(None)).await;
    let edits = h.published_of("channel.message.edit");
    assert_eq!(edits.len(), 2);
    assert_eq!(edits[0].1["event"]["messageId"], hub_id);
    assert_eq!(edits[0].1["event"]["content"], "fixed");

    let reaction = PlatformEvent::Reaction {
        place: place("2", None),
        id: PartId("40".into()),
        person: person("8"),
        added: vec!["👍".into()],
        removed: vec!["👎".into()],
        claim: "update:2".into(),
        once: true,
    };
    h.publish(reaction.clone()).await;
    h.publish(reaction).await;
    let kinds: Vec<String> = h
        .published()
        .iter()
        .map(|(_, e)| e["event"]["type"].as_str().unwrap().to_owned())
        .filter(|k| k.starts_with("channel.reaction"))
        .collect();
    assert_eq!(kinds, ["channel.reaction.remove", "channel.reaction.add"]);
    let added = &h.published_of("channel.reaction.add")[0].1["event"];
    assert_eq!(added["agentId"], "external:memory:8");
    assert_eq!(added["messageId"], hub_id);

    let delete = PlatformEvent::Delete {
        place: place("2", None),
        id: PartId("40".into()),
    };
    h.publish(delete).await;
    assert_eq!(
        h.published_of("channel.message.delete")[0].1["event"]["messageId"],
        hub_id
    );
    h.stop().await;
}

#[tokio::test]
async fn changes_to_unknown_messages_are_unmapped_and_unlinked_chats_are_ignored() {
    let h = Harness::new(Memory::new(true, 1));
    let unknown = PlatformEvent::Delete {
        place: place("2", None),
        id: PartId("404".into()),
    };
    assert_eq!(h.publish(unknown).await, Handled::Unmapped);
    let elsewhere = PlatformEvent::Delete {
        place: place("77", None),
        id: PartId("404".into()),
    };
    assert_eq!(h.publish(elsewhere).await, Handled::Done);
    h.publish(PlatformEvent::Message(said("77", "1", "anyone?")))
        .await;
    assert!(h.published().is_empty());
    let mut registry = prometheus_client::registry::Registry::default();
    h.hub.metrics().register(&mut registry);
    let mut metrics = String::new();
    prometheus_client::encoding::text::encode(&mut metrics, &registry).unwrap();
    assert!(
        metrics.contains(r#"hub_bridge_ignored_total{bridge="memory",reason="unlinked_chat"} 2"#),
        "{metrics}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_stopped_link_publishes_nothing_and_the_others_go_on() {
    let h = Harness::new(Memory::new(true, 1));
    let b = Link::new("B", Chat("1".into()));
    h.relay.links().stop(&h.hub, &b).await.unwrap();
    h.publish(PlatformEvent::Message(said("1", "20", "still here")))
        .await;
    let channels: Vec<String> = h
        .published_of("channel.message")
        .into_iter()
        .map(|(c, _)| c)
        .collect();
    assert_eq!(channels, ["pubsub:channel:A"]);
    h.stop().await;
}

#[tokio::test]
async fn a_person_over_the_limit_is_not_published_and_told_where_they_wrote() {
    let limits = LimitsConfig {
        message: 1,
        ..LimitsConfig::default()
    };
    let h = Harness::with_limits(
        Memory::new(true, 1),
        Arc::new(MemoryStore::default()),
        limits,
    );
    h.publish(PlatformEvent::Message(said("2", "1", "one")))
        .await;
    h.publish(PlatformEvent::Message(said("2", "2", "two")))
        .await;
    // A message fetched to fill a gap was counted when it was written.
    let mut caught_up = said("2", "3", "three");
    caught_up.received = None;
    h.publish(PlatformEvent::Message(caught_up)).await;
    let contents: Vec<Value> = h
        .published_of("channel.message")
        .iter()
        .map(|(_, e)| e["event"]["message"]["content"].clone())
        .collect();
    assert_eq!(contents, ["one", "three"]);
    h.settle().await;
    let notices = h.sends();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(notices[0].0, "2");
    assert!(notices[0]
        .2
        .starts_with("⏳ P7, you are sending messages too fast"));
    h.stop().await;
}

#[tokio::test]
async fn typing_and_membership_reach_the_channels() {
    let h = Harness::new(Memory::new(true, 1));
    let typing = PlatformEvent::Typing {
        place: place("1", None),
        person: ExternalId::new(Platform::named("memory"), "7"),
    };
    h.publish(typing).await;
    let typing = h.published_of("channel.typing");
    assert_eq!(typing.len(), 2);
    assert_eq!(typing[0].1["event"]["agentId"], "external:memory:7");
    assert_eq!(typing[0].1["event"]["started"], true);

    // One join reported twice (as some platforms do) is published once per channel.
    let join = PlatformEvent::Member {
        chat: Chat("1".into()),
        person: ExternalId::new(Platform::named("memory"), "9"),
        joined: true,
        at: 1_700_000_000_000,
        claim: "1:9:join:1700000000".into(),
    };
    h.publish(join.clone()).await;
    h.publish(join).await;
    let joins = h.published_of("channel.member.join");
    assert_eq!(joins.len(), 2, "{joins:?}");
    assert_eq!(
        joins[0].1["event"]["member"]["agentId"],
        "external:memory:9"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_private_message_is_a_command_answered_there_or_goes_to_the_agent_once() {
    let h = Harness::new(Memory::new(true, 1));
    let whisper = |text: &str, claim: &str| {
        PlatformEvent::Private(Whisper {
            chat: Chat("dm:7".into()),
            author: person("7"),
            user_id: "7".into(),
            text: text.into(),
            timestamp: 3,
            live: true,
            claim: claim.into(),
        })
    };
    h.publish(whisper("/help", "message:1")).await;
    h.settle().await;
    let answers = h.sends();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].0, "dm:7");
    assert!(answers[0].2.contains("/dm"), "{answers:?}");

    h.publish(whisper("/dm ada are you there?", "message:2"))
        .await;
    h.publish(whisper("/dm ada are you there?", "message:2"))
        .await;
    h.publish(whisper("and later", "message:3")).await;
    let sent: Vec<(String, Value)> = h
        .published()
        .into_iter()
        .filter(|(c, _)| c == "pubsub:agent:ada")
        .collect();
    assert_eq!(sent.len(), 2, "once per message: {sent:?}");
    assert_eq!(sent[0].1["type"], "agent.direct_message");
    assert_eq!(sent[0].1["data"]["fromAgent"], "external:memory:7");
    assert_eq!(sent[0].1["data"]["content"], "are you there?");
    assert_eq!(sent[1].1["data"]["content"], "and later");
    h.stop().await;
}
