//! The bridges this build can run, named in one place: [`REGISTERED`]. Each entry is a bridge's
//! config type (its crate's `hub_bridge_sdk::registry::BridgeConfig`), which knows its section's
//! name, its checks and the bridge it builds; the rest of the hub only sees [`Section`]s and
//! `Bridge`s. Adding a platform is one line here, one dependency and one cargo feature.

use std::marker::PhantomData;

use figment::Figment;
use hub_bridge_sdk::registry::{BridgeConfig, Section};

/// Every bridge this build can run (by cargo feature).
pub const REGISTERED: &[&dyn Registration] = &[
    #[cfg(feature = "telegram")]
    &Registered::<hub_bridge_telegram::TelegramConfig>::NEW,
    #[cfg(feature = "discord")]
    &Registered::<hub_bridge_discord::DiscordConfig>::NEW,
];

/// A bridge the config loader knows: its section's name, and how figment reads that section.
pub trait Registration: Sync {
    /// The section's name (`telegram`).
    fn section(&self) -> &'static str;

    /// Reads the section out of the loaded config. An error names the key inside the section the
    /// way figment names every other key (`telegram.links.0.chat`), with where it came from.
    fn extract(&self, figment: &Figment) -> Result<Section, Box<figment::Error>>;
}

/// The [`Registration`] of bridge config type `C`.
pub struct Registered<C>(PhantomData<fn() -> C>);

impl<C> Registered<C> {
    pub const NEW: Self = Self(PhantomData);
}

impl<C: BridgeConfig> Registration for Registered<C> {
    fn section(&self) -> &'static str {
        C::SECTION
    }

    fn extract(&self, figment: &Figment) -> Result<Section, Box<figment::Error>> {
        figment
            .extract_inner::<C>(C::SECTION)
            .map(Section::new)
            .map_err(|mut error| {
                // `extract_inner` appends the section to the path of the key that failed; the
                // section comes first, as when the whole file is read in one go.
                if error.path.last().map(String::as_str) == Some(C::SECTION) {
                    error.path.pop();
                    error.path.insert(0, C::SECTION.to_owned());
                }
                Box::new(error)
            })
    }
}
