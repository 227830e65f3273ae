//! How a bridge crate plugs into the service without the hub knowing its types: the bridge's
//! config type implements [`BridgeConfig`] (the name of its section, its checks, and the bridge it
//! builds), and the service keeps each section it read as a [`Section`].
//!
//! This crate has no list of platforms; the hub names the config types it is built with in one
//! place (`src/bridges.rs`) and reads each present section with its own config loader.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::bridge::Bridge;
use crate::config::ConfigIssue;
use crate::media::MediaSource;

/// A bridge's config section, `[{SECTION}]` in the file and `HUB_{SECTION}__*` in the environment.
/// The bridge runs when its section is present.
pub trait BridgeConfig: DeserializeOwned + Clone + fmt::Debug + Send + Sync + 'static {
    /// The section's name: `telegram` for `[telegram]`. Also the key the hub's config loader
    /// extracts, so it is lowercase like every config key.
    const SECTION: &'static str;

    /// Checks across fields after parsing; the issue's key is relative to the section
    /// (`links[0].chat`).
    fn validate(&self) -> Result<(), ConfigIssue>;

    /// The bridge this section configures.
    fn bridge(&self) -> Box<dyn Bridge>;

    /// Where this platform's files are read when one of its media links is opened. Built from
    /// the config alone, whether or not this instance runs the bridge, so that any instance serves
    /// any link. `None`: the platform has no files to serve.
    fn media_source(&self) -> Option<Arc<dyn MediaSource>> {
        None
    }
}

/// One bridge's parsed section, whatever the bridge: what the hub's config holds per configured
/// bridge. Cloning clones the section; `Debug` is the section's own (secrets print `***`).
pub struct Section(Box<dyn AnySection>);

impl Section {
    pub fn new<C: BridgeConfig>(config: C) -> Self {
        Self(Box::new(config))
    }

    /// The section's name ([`BridgeConfig::SECTION`]).
    pub fn name(&self) -> &'static str {
        self.0.name()
    }

    /// The section's checks, with the issue's key naming the section
    /// (`telegram.links[0].chat`).
    pub fn validate(&self) -> Result<(), ConfigIssue> {
        self.0.validate().map_err(|issue| {
            ConfigIssue::new(format!("{}.{}", self.name(), issue.key), issue.message)
        })
    }

    /// The bridge this section configures.
    pub fn bridge(&self) -> Box<dyn Bridge> {
        self.0.bridge()
    }

    /// The section's media source ([`BridgeConfig::media_source`]).
    pub fn media_source(&self) -> Option<Arc<dyn MediaSource>> {
        self.0.media_source()
    }

    /// The section as bridge `C`'s config, if it is that bridge's.
    pub fn get<C: BridgeConfig>(&self) -> Option<&C> {
        let any: &dyn Any = &*self.0;
        any.downcast_ref()
    }

    /// As [`Section::get`], to adjust it (tests, embedding).
    pub fn get_mut<C: BridgeConfig>(&mut self) -> Option<&mut C> {
        let any: &mut dyn Any = &mut *self.0;
        any.downcast_mut()
    }
}

impl Clone for Section {
    fn clone(&self) -> Self {
        Self(self.0.clone_box())
    }
}

impl fmt::Debug for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// [`BridgeConfig`] without its type, so sections of different bridges sit in one list.
trait AnySection: Any + fmt::Debug + Send + Sync {
    fn name(&self) -> &'static str;
    fn validate(&self) -> Result<(), ConfigIssue>;
    fn bridge(&self) -> Box<dyn Bridge>;
    fn media_source(&self) -> Option<Arc<dyn MediaSource>>;
    fn clone_box(&self) -> Box<dyn AnySection>;
}

impl<C: BridgeConfig> AnySection for C {
    fn name(&self) -> &'static str {
        C::SECTION
    }

    fn validate(&self) -> Result<(), ConfigIssue> {
        BridgeConfig::validate(self)
    }

    fn bridge(&self) -> Box<dyn Bridge> {
        BridgeConfig::bridge(self)
    }

    fn media_source(&self) -> Option<Arc<dyn MediaSource>> {
        BridgeConfig::media_source(self)
    }

    fn clone_box(&self) -> Box<dyn AnySection> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use futures_util::future::BoxFuture;
    use serde::Deserialize;

    use super::*;
    use crate::bridge::{BridgeContext, BridgeError};

    #[derive(Debug, Clone, Deserialize)]
    struct EchoConfig {
        room: String,
    }

    struct Echo;

    impl Bridge for Echo {
        fn name(&self) -> &'static str {
            "echo"
        }

        fn check(&self) -> BoxFuture<'_, Result<String, BridgeError>> {
            Box::pin(async { Ok("echo".to_owned()) })
        }

        fn run<'a>(&'a self, _: &'a mut BridgeContext) -> BoxFuture<'a, Result<(), BridgeError>> {
            Box::pin(async { Ok(()) })
        }
    }

    impl BridgeConfig for EchoConfig {
        const SECTION: &'static str = "echo";

        fn validate(&self) -> Result<(), ConfigIssue> {
            if self.room.is_empty() {
                return Err(ConfigIssue::new("room", "must not be empty"));
            }
            Ok(())
        }

        fn bridge(&self) -> Box<dyn Bridge> {
            Box::new(Echo)
        }
    }

    #[test]
    fn a_section_names_its_keys_and_builds_its_bridge() {
        let mut section = Section::new(EchoConfig {
            room: "lobby".to_owned(),
        });
        assert_eq!(section.name(), "echo");
        assert!(section.validate().is_ok());
        assert_eq!(section.bridge().name(), "echo");
        assert_eq!(format!("{section:?}"), r#"EchoConfig { room: "lobby" }"#);

        let copy = section.clone();
        section.get_mut::<EchoConfig>().expect("echo").room.clear();
        let issue = section.validate().expect_err("an empty room");
        assert_eq!(issue.key, "echo.room");
        assert_eq!(issue.message, "must not be empty");
        assert_eq!(copy.get::<EchoConfig>().expect("echo").room, "lobby");
    }
}
