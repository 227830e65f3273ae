//! One event's panic stays that event's (SPEC section 9): the bridges' inbound handling, the
//! routing of hub events and every outbox job run each event under [`isolate`], count and log a
//! panic, and go on with the next event instead of losing the task (a dead inbound task once left
//! Discord deaf while `/readyz` stayed green). The supervisor uses [`panic_message`] for a
//! bridge whose whole run panicked.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;

use crate::metrics::Metrics;

/// Runs `future`; a panic in it becomes `Err` with the panic's message.
///
/// `AssertUnwindSafe` is sound here because what a handler shares across events (caches behind
/// mutexes that recover from poisoning, the store) stays consistent at every await point: a
/// half-done event leaves at most a cache entry missing.
pub async fn isolate<F: Future>(future: F) -> Result<F::Output, String> {
    AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .map_err(|panic| panic_message(panic.as_ref()))
}

/// Handles one event of a bridge under [`isolate`]: a panic is counted
/// (`ignored_total{bridge, reason="event_panicked"}`) and logged with `what` the event was, and
/// `None` tells the caller to go on with the next event.
pub async fn handle_event<F: Future>(
    metrics: &Metrics,
    bridge: &'static str,
    what: &str,
    future: F,
) -> Option<F::Output> {
    match isolate(future).await {
        Ok(output) => Some(output),
        Err(panic) => {
            metrics.count_ignored(bridge, "event_panicked");
            tracing::error!(
                bridge,
                what,
                panic,
                "handling an event panicked; it is skipped"
            );
            None
        }
    }
}

/// The longest panic message shown in logs and `/readyz`.
const PANIC_MESSAGE_MAX: usize = 300;

/// What a panic said, when it said it with a string (as `panic!` and `unwrap` do), shortened and
/// with credentials taken out: an `unwrap` of an HTTP error prints the URL, and a Telegram URL
/// holds the bot token (`/bot123:ABC/...`), a Discord webhook URL its token.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        return "a panic without a message".to_owned();
    };
    let text = redact_credentials(&text);
    match text.char_indices().nth(PANIC_MESSAGE_MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// Replaces what follows `bot{digits}:` and `webhooks/{digits}/` up to the next delimiter.
fn redact_credentials(text: &str) -> String {
    let is_delimiter = |c: char| c.is_whitespace() || matches!(c, '/' | '"' | '\'' | ')' | '?');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let id_follows = |after: &str, separator: char| {
            let digits = after.chars().take_while(char::is_ascii_digit).count();
            digits > 0 && after[digits..].starts_with(separator)
        };
        let bot = rest
            .match_indices("bot")
            .map(|(at, _)| at)
            .find(|at| id_follows(&rest[at + 3..], ':'));
        let webhook = rest
            .match_indices("webhooks/")
            .map(|(at, _)| at)
            .find(|at| id_follows(&rest[at + 9..], '/'));
        let secret_from = match (bot, webhook) {
            (Some(b), Some(w)) if w < b => w + 9,
            (Some(b), _) => b + 3,
            (None, Some(w)) => w + 9,
            (None, None) => break,
        };
        let after_prefix = &rest[secret_from..];
        let id_len = after_prefix
            .chars()
            .take_while(char::is_ascii_digit)
            .count();
        // Keep the id (not a secret) and its separator; drop the token after it.
        let secret_start = secret_from + id_len + 1;
        let secret_len = rest[secret_start..]
            .find(is_delimiter)
            .unwrap_or(rest.len() - secret_start);
        out.push_str(&rest[..secret_start]);
        out.push_str("<redacted>");
        rest = &rest[secret_start + secret_len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn handle(event: u32) -> u32 {
        assert!(event != 2, "event {event} is poison");
        event
    }

    #[tokio::test]
    async fn a_panicking_event_is_reported_and_the_next_one_is_handled() {
        let mut handled = Vec::new();
        let mut failed = Vec::new();
        for event in 0..5 {
            match isolate(handle(event)).await {
                Ok(event) => handled.push(event),
                Err(panic) => failed.push(panic),
            }
        }
        assert_eq!(handled, vec![0, 1, 3, 4]);
        assert_eq!(failed, vec!["event 2 is poison".to_owned()]);
        assert_eq!(
            isolate(async { panic!("static") }).await,
            Err::<(), _>("static".to_owned())
        );
    }

    #[test]
    fn panic_messages_lose_their_credentials() {
        let telegram = r#"called `Result::unwrap()` on an `Err` value: reqwest::Error { url: "https://api.telegram.org/bot123456:AAH-secret_x/getMe" }"#;
        let shown = redact_credentials(telegram);
        assert!(!shown.contains("AAH-secret_x"), "{shown}");
        assert!(shown.contains("/bot123456:<redacted>/getMe"), "{shown}");
        let discord = "POST https://discord.com/api/webhooks/42/tok.en-value?wait=true failed";
        let shown = redact_credentials(discord);
        assert!(!shown.contains("tok.en-value"), "{shown}");
        assert!(
            shown.contains("webhooks/42/<redacted>?wait=true"),
            "{shown}"
        );
        let plain = "zero id in a mention; robot 7: fine";
        assert_eq!(redact_credentials(plain), plain);
        let later = "robot said: see https://api.telegram.org/bot1:SECRET/x and bot2:OTHER";
        let shown = redact_credentials(later);
        assert!(
            !shown.contains("SECRET") && !shown.contains("OTHER"),
            "{shown}"
        );
    }

    #[test]
    fn long_panic_messages_are_cut() {
        let panic: Box<dyn std::any::Any + Send> = Box::new("é".repeat(1000));
        let shown = panic_message(panic.as_ref());
        assert_eq!(shown.chars().count(), PANIC_MESSAGE_MAX + 1);
    }
}
