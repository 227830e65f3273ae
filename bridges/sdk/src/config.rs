//! Config pieces every bridge's section uses: secrets that never print, URL checks, and the
//! [`ConfigIssue`] a section's validation reports, naming the key.

use std::fmt;

use serde::Deserialize;

/// A token or password. `Debug` and `Display` print `***`, so it cannot reach a log by accident.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that sends it to the platform.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_blank(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A problem with one key of the config: `key` is the dotted path inside the section
/// (`links[1].chat`), `message` says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub key: String,
    pub message: String,
}

impl ConfigIssue {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Checks that `value` is an absolute http(s) URL with a host.
pub fn check_http_url(key: &str, value: &str) -> Result<(), ConfigIssue> {
    let (scheme, rest) = value
        .split_once("://")
        .ok_or_else(|| ConfigIssue::new(key, format!("`{value}` is not a URL (no scheme)")))?;
    if !matches!(scheme, "http" | "https") {
        return Err(ConfigIssue::new(
            key,
            format!("`{value}` must start with http:// or https://"),
        ));
    }
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.contains(char::is_whitespace) || value.contains(char::is_whitespace)
    {
        return Err(ConfigIssue::new(
            key,
            format!("`{value}` has no valid host"),
        ));
    }
    Ok(())
}

/// Checks a token is present.
pub fn check_token(key: &str, token: &Secret) -> Result<(), ConfigIssue> {
    if token.is_blank() {
        return Err(ConfigIssue::new(key, "must not be empty"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new("123:ABC");
        assert_eq!(format!("{secret:?} {secret}"), "*** ***");
        assert_eq!(secret.expose(), "123:ABC");
    }

    #[test]
    fn urls_are_checked() {
        assert!(check_http_url("k", "https://api.telegram.org").is_ok());
        assert!(check_http_url("k", "http://127.0.0.1:8080/x").is_ok());
        for bad in [
            "api.telegram.org",
            "ftp://x",
            "http://",
            "http://a b",
            "not a url",
        ] {
            assert!(check_http_url("k", bad).is_err(), "{bad}");
        }
    }
}
