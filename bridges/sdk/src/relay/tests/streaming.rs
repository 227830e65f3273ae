//! Streamed answers: newer texts taken into the queued job, edits at the chat's cadence, deletes
//! that cancel what is not shown yet, and all of it kept across a restart. Time is paused: the
//! clock moves only when every task waits, so cadences are exact.

use super::*;

const CADENCE: Duration = Duration::from_secs(1);

fn streaming_memory() -> Memory {
    Memory {
        edit_cadence: CADENCE,
        ..Memory::new(true, 1)
    }
}

fn message(id: &str, content: &str, streaming: bool) -> Value {
    let mut message = json!({"id": id, "content": content, "senderId": "ada", "timestamp": 1});
    if streaming {
        message["metadata"] = json!({"streaming": true});
    }
    json!({"type": "channel.message", "channelId": "B", "message": message})
}

fn edit(id: &str, content: &str, streaming: bool) -> Value {
    let mut edit = json!({"type": "channel.message.edit", "channelId": "B", "messageId": id, "content": content});
    if streaming {
        edit["metadata"] = json!({"streaming": true});
    }
    edit
}

impl Harness {
    /// Routes a hub event on channel B (linked to chat 1 only) without waiting for its jobs.
    async fn hub_publish(&self, event: Value) {
        let source = Source::Channel("B".to_owned());
        let inbound = parse(&source, event.to_string().as_bytes()).expect("a valid hub event");
        let delivery = Delivery {
            id: EventId::of(&source.channel_name(), event.to_string().as_bytes()),
            source,
            inbound,
            received_at: Instant::now(),
        };
        self.relay.route(&delivery).await;
    }

    fn edits(&self) -> Vec<String> {
        self.connector
            .calls()
            .into_iter()
            .filter_map(|call| match call {
                Call::Edit { text, .. } => Some(text),
                _ => None,
            })
            .collect()
    }

    fn typings(&self) -> usize {
        self.connector
            .calls()
            .iter()
            .filter(|call| matches!(call, Call::Typing { .. }))
            .count()
    }

    fn coalesced(&self) -> i64 {
        self.hub
            .metrics()
            .outbox_coalesced
            .get_or_create(&crate::metrics::BridgeLabels { bridge: "memory" })
            .get()
            .try_into()
            .unwrap()
    }
}

#[tokio::test(start_paused = true)]
async fn a_streamed_answer_is_edited_at_the_cadence_and_ends_with_its_last_text() {
    let h = Harness::new(streaming_memory());
    h.hub_publish(message("m1", "a0", true)).await;
    // 60 edits, 50 ms apart: 3 s of streaming.
    for n in 1..60 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        h.hub_publish(edit("m1", &format!("a{n}"), true)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.hub_publish(edit("m1", "done", false)).await;
    // The last text lands within one cadence of the last edit.
    tokio::time::sleep(CADENCE + Duration::from_millis(100)).await;

    assert_eq!(h.sends().len(), 1, "one send: {:?}", h.sends());
    let edits = h.edits();
    assert_eq!(edits.last().map(String::as_str), Some("Ada: done"));
    // 3 s at one edit per second, plus the first edit at once and the last one.
    assert!(edits.len() <= 5, "a handful of edits, not 60: {edits:?}");
    let times = h.connector.edited_at.lock().unwrap().clone();
    for pair in times.windows(2) {
        assert!(pair[1] - pair[0] >= CADENCE, "edits too close: {times:?}");
    }
    assert!(h.coalesced() >= 55, "the other edits were taken in");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_edit_queued_behind_its_send_is_taken_into_the_send() {
    let h = Harness::new(streaming_memory());
    // Both are queued before the chat's worker runs: the send goes out with the newer text.
    h.hub_publish(message("m1", "first", true)).await;
    h.hub_publish(edit("m1", "second", false)).await;
    h.settle().await;
    assert_eq!(h.sends().len(), 1);
    assert_eq!(text(&h.sends()[0]), "Ada: second");
    assert!(h.edits().is_empty(), "no edit call: {:?}", h.edits());
    assert_eq!(h.parts("m1", "1/B").await.len(), 1, "mapped");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_delete_cancels_a_send_not_shown_yet_and_a_waiting_edit() {
    let h = Harness::new(streaming_memory());
    h.hub_publish(message("m1", "oops", false)).await;
    h.hub_publish(json!({"type": "channel.message.delete", "channelId": "B", "messageId": "m1"}))
        .await;
    h.settle().await;
    assert!(h.connector.calls().is_empty(), "{:?}", h.connector.calls());

    h.say("B", "m2", "ada", "kept").await;
    h.hub_publish(edit("m2", "one", false)).await;
    h.settle().await;
    // The second edit waits for the cadence; the delete takes its place.
    h.hub_publish(edit("m2", "two", false)).await;
    h.hub_publish(json!({"type": "channel.message.delete", "channelId": "B", "messageId": "m2"}))
        .await;
    tokio::time::sleep(CADENCE * 2).await;
    assert_eq!(h.edits(), vec!["Ada: one".to_owned()]);
    let deletes = h
        .connector
        .calls()
        .into_iter()
        .filter(|call| matches!(call, Call::Delete { .. }))
        .count();
    assert_eq!(deletes, 1);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_newest_text_of_a_waiting_edit_survives_a_restart() {
    let store = Arc::new(MemoryStore::default());
    let h = Harness::with_store(streaming_memory(), store.clone());
    h.say("B", "m1", "ada", "v0").await;
    h.hub_publish(edit("m1", "v1", true)).await;
    h.settle().await;
    // v2 waits for the cadence, v3 is taken into it; then the service stops.
    h.hub_publish(edit("m1", "v2", true)).await;
    h.hub_publish(edit("m1", "v3", false)).await;
    h.settle().await;
    assert_eq!(h.edits(), vec!["Ada: v1".to_owned()]);
    h.stop().await;

    let h = Harness::with_store(streaming_memory(), store);
    assert_eq!(h.relay.resume().await.unwrap(), 1, "one job left: the edit");
    h.settle().await;
    assert_eq!(h.edits(), vec!["Ada: v3".to_owned()]);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_chat_shows_typing_while_an_answer_streams() {
    let h = Harness::new(streaming_memory());
    h.hub_publish(message("m1", "thinking", true)).await;
    h.settle().await;
    assert_eq!(h.typings(), 1, "typing as the answer starts");
    tokio::time::sleep(Duration::from_secs(4)).await;
    h.hub_publish(edit("m1", "thinking harder", true)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(h.typings(), 2, "refreshed while it streams");
    h.hub_publish(edit("m1", "done", false)).await;
    let after_last = h.typings();
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(h.typings(), after_last, "no typing after the last edit");
    let elsewhere = h
        .connector
        .calls()
        .into_iter()
        .filter(|call| matches!(call, Call::Typing { chat } if chat != "1"))
        .count();
    assert_eq!(elsewhere, 0, "typing only where the answer streams");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_new_message_goes_before_a_streamed_answers_next_edit() {
    let h = Harness::new(streaming_memory());
    h.say("B", "m1", "ada", "a").await;
    h.hub_publish(edit("m1", "ab", true)).await;
    h.settle().await;
    // The next intermediate edit waits for the cadence; a new message behind it does not.
    h.hub_publish(edit("m1", "abc", true)).await;
    h.hub_publish(message("m2", "news", false)).await;
    h.settle().await;
    assert_eq!(h.sends().len(), 2, "m2 is shown at once: {:?}", h.sends());
    assert_eq!(h.edits(), vec!["Ada: ab".to_owned()]);
    tokio::time::sleep(CADENCE).await;
    assert_eq!(h.edits().last().map(String::as_str), Some("Ada: abc"));

    // Both ready at once: the new message first, the intermediate edit after it.
    tokio::time::sleep(CADENCE).await;
    h.clear();
    h.hub_publish(edit("m1", "abcd", true)).await;
    h.hub_publish(message("m3", "more", false)).await;
    h.settle().await;
    let calls = h.connector.calls();
    assert!(
        matches!(&calls[..], [Call::Send { .. }, Call::Edit { text, .. }] if text == "Ada: abcd"),
        "{calls:?}"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn after_a_429_nothing_reaches_the_chat_until_it_passes_then_all_in_order() {
    use crate::relay::budget::{FloodLimits, Window};
    let memory = Memory {
        budget: Some(FloodBudget::new(
            FloodLimits {
                chat: vec![Window::per_second(100)],
                ..FloodLimits::default()
            },
            |_| false,
        )),
        ..streaming_memory()
    };
    *memory.retry_after_once.lock().unwrap() = Some(Duration::from_secs(5));
    let h = Harness::new(memory);
    let start = tokio::time::Instant::now();
    h.hub_publish(message("m1", "one", false)).await;
    h.hub_publish(message("m2", "two", true)).await;
    h.hub_publish(message("m3", "three", false)).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        h.connector.calls().is_empty(),
        "not even typing: {:?}",
        h.connector.calls()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let texts: Vec<String> = h.sends().iter().map(|send| text(send).to_owned()).collect();
    assert_eq!(texts, ["Ada: one", "Ada: two", "Ada: three"]);
    assert!(start.elapsed() >= Duration::from_secs(5));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn past_the_limit_the_parts_shown_stay_and_only_the_last_one_grows() {
    let h = Harness::new(streaming_memory());
    // Parts are 12 characters: "Ada: aaaaaaa" fills the first one.
    h.say("B", "m1", "ada", "aaaaaaa").await;
    h.hub_publish(edit("m1", "aaaaaaab", true)).await;
    h.settle().await;
    tokio::time::sleep(CADENCE).await;
    h.hub_publish(edit("m1", "aaaaaaabc", false)).await;
    tokio::time::sleep(CADENCE).await;
    // The first part went out with the message and never changed: no edit of it.
    let calls = h.connector.calls();
    let edited: Vec<&Call> = calls
        .iter()
        .filter(|call| matches!(call, Call::Edit { id, .. } if id == "100"))
        .collect();
    assert!(edited.is_empty(), "{calls:?}");
    let texts: Vec<String> = h.sends().iter().map(|send| text(send).to_owned()).collect();
    assert_eq!(texts, ["Ada: aaaaaaa", "b"]);
    assert_eq!(h.edits(), vec!["bc".to_owned()]);
    assert_eq!(h.parts("m1", "1/B").await.len(), 2, "both mapped");
    h.stop().await;
}
