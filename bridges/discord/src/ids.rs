//! Discord ids (snowflakes) as the bridge reads them from untrusted text (mentions, the store,
//! Discord's answers) and puts them into routes. Serenity's id types panic on 0, and an id that
//! is not a number must never reach a URL, so every id is read through [`parse`] and turned into
//! a route id through the checked constructors here.

use std::num::NonZeroU64;

use serenity::model::id::{ChannelId, MessageId};

use crate::rest::RestError;

/// A snowflake written as decimal digits: a non-zero `u64`, nothing else (no sign, no spaces).
pub fn parse(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u64>().ok().filter(|id| *id != 0)
}

fn non_zero(id: u64, what: &'static str) -> Result<NonZeroU64, RestError> {
    NonZeroU64::new(id).ok_or(RestError::InvalidId(what))
}

pub fn channel(id: u64) -> Result<ChannelId, RestError> {
    non_zero(id, "channel").map(ChannelId::from)
}

pub fn message(id: u64) -> Result<MessageId, RestError> {
    non_zero(id, "message").map(MessageId::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_non_zero_decimal_u64_are_ids() {
        assert_eq!(
            parse("1300000000000000002"),
            Some(1_300_000_000_000_000_002)
        );
        for bad in [
            "0",
            "",
            "+1",
            "-1",
            " 1",
            "1 ",
            "99999999999999999999999",
            "1e3",
            "x",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert!(matches!(channel(0), Err(RestError::InvalidId("channel"))));
        assert!(message(7).is_ok());
    }
}
