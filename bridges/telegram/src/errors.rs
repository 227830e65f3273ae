//! What a failed Bot API request means for the bridge: a wait (429), a retry (5xx, network), or a
//! permanent refusal (forbidden, chat or message not found) — and a description of it that is safe
//! to log. teloxide's network errors print the request URL, which embeds the bot token, so every
//! description goes through [`Redactor`] before it reaches a log, a dead letter or `/readyz`.

use hub_bridge_sdk::outbox::SendError;
use teloxide::{ApiError, RequestError};

/// Removes the bot token from error texts.
#[derive(Clone)]
pub struct Redactor {
    token: String,
}

impl Redactor {
    pub fn new(token: &str) -> Self {
        Self {
            token: token.to_owned(),
        }
    }

    /// A one-line description of `error` without the token.
    pub fn describe(&self, error: &RequestError) -> String {
        let text = match error {
            // reqwest can print "error sending request for url (https://…/bot<token>/Method)";
            // the kind of failure is what matters, the URL is known from the config.
            RequestError::Network(inner) => {
                let kind = if inner.is_timeout() {
                    "timed out"
                } else if inner.is_connect() {
                    "connection failed"
                } else {
                    "request failed"
                };
                format!("network error: {kind} ({inner})")
            }
            RequestError::InvalidJson { source, .. } => {
                // The raw body is not shown: it may be large and is of no use in a log line.
                format!("unreadable answer from the Bot API: {source}")
            }
            other => other.to_string(),
        };
        self.redact(&text)
    }

    /// `text` with every occurrence of the token replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        if self.token.is_empty() {
            return text.to_owned();
        }
        text.replace(&self.token, "***")
    }
}

/// Whether the Bot API rejected the token itself (401 / 404 on the bot path).
pub fn is_unauthorized(error: &RequestError) -> bool {
    matches!(error, RequestError::Api(ApiError::InvalidToken))
}

/// Whether Telegram refused a text for its form rather than its destination: entities it could
/// not parse, too many entities, too long, or empty once the markup was removed. The caller then
/// sends the plain text, split under the limit, instead of giving the message up.
pub fn is_form_error(error: &RequestError) -> bool {
    /// Texts of form refusals teloxide has no variant for (the Bot API's wording varies by
    /// method and version).
    const FORM_TEXTS: [&str; 8] = [
        "can't parse entities",
        "message is too long",
        "message_too_long",
        "text is empty",
        "text must be non-empty",
        "message must be non-empty",
        "entities",
        "entity",
    ];
    match error {
        RequestError::Api(
            ApiError::CantParseEntities(_)
            | ApiError::MessageIsTooLong
            | ApiError::MessageTextIsEmpty,
        ) => true,
        RequestError::Api(ApiError::Unknown(text)) => {
            let text = text.to_ascii_lowercase();
            text.starts_with("bad request") && FORM_TEXTS.iter().any(|form| text.contains(form))
        }
        _ => false,
    }
}

/// Whether an edit failed only because the text did not change.
pub fn is_not_modified(error: &RequestError) -> bool {
    matches!(error, RequestError::Api(ApiError::MessageNotModified))
}

/// Whether an edit of a message's text failed because the message is a file whose text is its
/// caption.
pub fn is_caption_message(error: &RequestError) -> bool {
    matches!(error, RequestError::Api(ApiError::Unknown(text)) if text.contains("no text in the message to edit"))
}

/// Whether a delete failed because the message is already gone, which is what was wanted.
pub fn is_already_deleted(error: &RequestError) -> bool {
    match error {
        RequestError::Api(ApiError::MessageToDeleteNotFound) => true,
        RequestError::Api(ApiError::Unknown(text)) => text.contains("message to delete not found"),
        _ => false,
    }
}

/// Maps a failed request onto the outbox's retry policy.
pub fn classify(error: &RequestError, redactor: &Redactor) -> SendError {
    let description = redactor.describe(error);
    match error {
        RequestError::RetryAfter(wait) => SendError::RetryAfter(wait.duration()),
        RequestError::Network(_) | RequestError::InvalidJson { .. } | RequestError::Io(_) => {
            SendError::Transient(description)
        }
        RequestError::MigrateToChatId(new_id) => SendError::Permanent(format!(
            "the group became supergroup {}; link that chat id in telegram.links",
            new_id.0
        )),
        // An error Telegram has no name for: 5xx pages and new texts. Only the ones Telegram
        // marks as the client's fault are final.
        RequestError::Api(ApiError::Unknown(text)) => {
            let permanent = ["Bad Request", "Forbidden", "Unauthorized"]
                .iter()
                .any(|prefix| text.starts_with(prefix));
            if permanent {
                SendError::Permanent(redactor.redact(text))
            } else {
                SendError::Transient(description)
            }
        }
        // Every named API error is an explicit refusal (blocked, kicked, chat or message not
        // found, too old to edit or delete, ...): asking again gives the same answer.
        RequestError::Api(_) => SendError::Permanent(description),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use teloxide::types::Seconds;

    use super::*;

    fn unknown(text: &str) -> RequestError {
        RequestError::Api(ApiError::Unknown(text.to_owned()))
    }

    #[test]
    fn rate_limits_wait_and_refusals_are_permanent() {
        let redactor = Redactor::new("123:SECRET");
        assert_eq!(
            classify(
                &RequestError::RetryAfter(Seconds::from_seconds(3)),
                &redactor
            ),
            SendError::RetryAfter(std::time::Duration::from_secs(3))
        );
        assert!(matches!(
            classify(&RequestError::Api(ApiError::BotBlocked), &redactor),
            SendError::Permanent(_)
        ));
        assert!(matches!(
            classify(&RequestError::Api(ApiError::ChatNotFound), &redactor),
            SendError::Permanent(_)
        ));
        assert!(matches!(
            classify(&unknown("Forbidden: bot is not a member"), &redactor),
            SendError::Permanent(_)
        ));
        assert!(matches!(
            classify(&unknown("Internal Server Error"), &redactor),
            SendError::Transient(_)
        ));
        let json = RequestError::InvalidJson {
            source: Arc::new(serde_json::from_str::<u8>("x").unwrap_err()),
            raw: "x".into(),
        };
        assert!(matches!(
            classify(&json, &redactor),
            SendError::Transient(_)
        ));
    }

    #[test]
    fn refusals_of_the_form_are_told_apart_from_refusals_of_the_chat() {
        for form in [
            RequestError::Api(ApiError::CantParseEntities(
                "Bad Request: can't parse entities: unexpected end tag".to_owned(),
            )),
            RequestError::Api(ApiError::MessageIsTooLong),
            RequestError::Api(ApiError::MessageTextIsEmpty),
            unknown("Bad Request: text must be non-empty"),
            unknown("Bad Request: MESSAGE_TOO_LONG"),
            unknown("Bad Request: too many entities"),
            unknown("Bad Request: ENTITY_BOUNDS_INVALID"),
        ] {
            assert!(is_form_error(&form), "{form:?}");
        }
        for other in [
            RequestError::Api(ApiError::ChatNotFound),
            RequestError::Api(ApiError::BotBlocked),
            unknown("Forbidden: bot is not a member"),
            unknown("Internal Server Error: entity store down"),
            RequestError::RetryAfter(Seconds::from_seconds(1)),
        ] {
            assert!(!is_form_error(&other), "{other:?}");
        }
    }

    #[tokio::test]
    async fn network_errors_are_described_without_the_token() {
        use teloxide::prelude::*;

        // Nothing listens on port 1. (teloxide 0.17 already drops the URL from network errors;
        // the redaction is there for the day it does not.)
        let url = reqwest::Url::parse("http://127.0.0.1:1").unwrap();
        let bot = Bot::new("123:SECRET").set_api_url(url);
        let error = bot.get_me().await.expect_err("nothing listens there");
        let text = Redactor::new("123:SECRET").describe(&error);
        assert!(!text.contains("SECRET"), "{text}");
        assert!(
            text.starts_with("network error: connection failed"),
            "{text}"
        );
        assert!(matches!(
            classify(&error, &Redactor::new("123:SECRET")),
            SendError::Transient(_)
        ));
    }

    #[test]
    fn the_token_never_survives_a_description() {
        let redactor = Redactor::new("123:SECRET");
        let error = unknown("Bad Request: weird http://x/bot123:SECRET/SendMessage");
        let SendError::Permanent(text) = classify(&error, &redactor) else {
            panic!("not permanent");
        };
        assert!(!text.contains("SECRET"), "{text}");
        assert!(text.contains("bot***"), "{text}");
    }
}
