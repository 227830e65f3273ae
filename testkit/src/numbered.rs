//! An agent publishing numbered messages (`m-0`, `m-1`, ...) into a hub channel at a steady pace,
//! and the numbers read back off the fake Bot API: the load of the handover tests and benchmark,
//! where every message must show exactly once however the instances change hands.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::fake_telegram::FakeTelegram;
use crate::redis_server::RedisServer;

/// Publishes `m-0`, `m-1`, ... as agent `ada` into a channel, one every `pace`, until finished.
pub struct NumberedAgent {
    published: Arc<AtomicU32>,
    paused: Arc<AtomicBool>,
    stopped: Arc<AtomicBool>,
    pace: Duration,
    task: tokio::task::JoinHandle<()>,
}

impl NumberedAgent {
    pub async fn start(redis: &RedisServer, channel: &str, pace: Duration) -> Self {
        let published = Arc::new(AtomicU32::new(0));
        let paused = Arc::new(AtomicBool::new(false));
        let stopped = Arc::new(AtomicBool::new(false));
        let mut connection = redis.connection().await;
        let channel = channel.to_owned();
        let task = tokio::spawn({
            let (published, paused, stopped) = (published.clone(), paused.clone(), stopped.clone());
            async move {
                let mut tick = tokio::time::interval(pace);
                while !stopped.load(Ordering::SeqCst) {
                    tick.tick().await;
                    if paused.load(Ordering::SeqCst) {
                        continue;
                    }
                    let n = published.load(Ordering::SeqCst);
                    let at = 1_708_554_000_000_i64 + i64::from(n);
                    let payload = json!({
                        "event": {"type": "channel.message", "channelId": channel, "message": {
                            "id": format!("m-{n}"), "content": format!("m-{n}"),
                            "senderId": "ada", "timestamp": at}},
                        "timestamp": at,
                        "channelId": channel,
                    });
                    let sent: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                        .arg(format!("pubsub:channel:{channel}"))
                        .arg(payload.to_string())
                        .query_async(&mut connection)
                        .await;
                    // Redis gone (the end of a benchmark): nothing more is published.
                    if sent.is_err() {
                        return;
                    }
                    published.store(n + 1, Ordering::SeqCst);
                }
            }
        });
        Self {
            published,
            paused,
            stopped,
            pace,
            task,
        }
    }

    /// How many were published so far: `m-0` up to `m-{count - 1}`.
    pub fn count(&self) -> u32 {
        self.published.load(Ordering::SeqCst)
    }

    /// Holds publishing until [`Self::resume`]; returns once a publish under way has landed.
    pub async fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
        tokio::time::sleep(self.pace * 2).await;
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }

    /// Stops publishing; returns how many were published.
    pub async fn finish(self) -> u32 {
        self.stopped.store(true, Ordering::SeqCst);
        let published = self.published.clone();
        let _ = self.task.await;
        published.load(Ordering::SeqCst)
    }
}

/// `17` for a text showing `m-17`.
pub fn number(text: &str) -> Option<u32> {
    let at = text.find("m-")?;
    let digits: String = text[at + 2..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The numbers of the messages `chat` shows, one per message, in order.
pub fn shown(tg: &FakeTelegram, chat: i64) -> Vec<u32> {
    tg.messages_in(chat)
        .iter()
        .filter_map(|message| number(&message.plain))
        .collect()
}

/// The numbers in the `sendMessage` calls the fake answered, with when it received each.
pub fn sends(tg: &FakeTelegram) -> Vec<(u32, Instant)> {
    tg.calls_of("sendMessage")
        .iter()
        .filter(|call| call.status == 200)
        .filter_map(|call| Some((number(call.body["text"].as_str()?)?, call.at)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::number;

    #[test]
    fn message_numbers_are_read_from_the_shown_text() {
        assert_eq!(number("ada: m-17"), Some(17));
        assert_eq!(number("m-0\n"), Some(0));
        assert_eq!(number("ada: hello"), None);
    }
}
