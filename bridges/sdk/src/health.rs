//! Readiness of the service's components (Redis, each bridge), as `/readyz` reports it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

use crate::event::{now_millis, Millis};

/// One component's state as `/readyz` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComponentState {
    pub ready: bool,
    pub detail: String,
    /// When the component last changed between ready and not ready.
    pub since: Millis,
}

/// The shared registry of component states.
#[derive(Debug, Clone, Default)]
pub struct Health {
    // A std mutex: held for a map update only, never across an await.
    components: Arc<Mutex<BTreeMap<String, ComponentState>>>,
}

impl Health {
    /// Registers a component, not ready until it says so.
    pub fn component(&self, name: &str) -> Component {
        let component = Component {
            name: name.to_owned(),
            health: self.clone(),
        };
        component.set(false, "starting");
        component
    }

    pub fn snapshot(&self) -> BTreeMap<String, ComponentState> {
        self.components
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Ready when every registered component is.
    pub fn is_ready(&self) -> bool {
        self.snapshot().values().all(|state| state.ready)
    }
}

/// A handle through which one component reports its state.
#[derive(Debug, Clone)]
pub struct Component {
    name: String,
    health: Health,
}

impl Component {
    pub fn ready(&self, detail: &str) {
        self.set(true, detail);
    }

    pub fn not_ready(&self, detail: &str) {
        self.set(false, detail);
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn set(&self, ready: bool, detail: &str) {
        let mut components = self
            .health
            .components
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = components
            .entry(self.name.clone())
            .or_insert_with(|| ComponentState {
                ready,
                detail: String::new(),
                since: now_millis(),
            });
        if entry.ready != ready {
            entry.since = now_millis();
        }
        entry.ready = ready;
        detail.clone_into(&mut entry.detail);
    }
}
