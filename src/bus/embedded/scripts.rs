//! The ops the Redis bus runs as Lua scripts (windowed counters, presence, JSON merges, leases and
//! their fences, outbox jobs, forgetting an emptied list), each one step on the in-process keyspace
//! (the bus holds its lock for the whole step).

use std::time::{Duration, Instant};

use hub_bridge_sdk::metrics::Metrics;
use hub_bridge_sdk::{Fence, Op, Reply, StoreError};

use super::{wrong_type, Entry, State, Value};

impl State {
    pub(super) fn incr_window(
        &mut self,
        key: String,
        window: Duration,
        now: Instant,
    ) -> Result<Reply, StoreError> {
        let count = self.incr(&key, now)?;
        if count == 1 {
            if let Some(entry) = self.live(&key, now) {
                entry.expires_at = Some(now + window);
            }
        }
        Ok(Reply::Int(count))
    }

    pub(super) fn touch_presence(
        &mut self,
        key: String,
        fields: Vec<(String, String)>,
        ttl: Duration,
        now: Instant,
        metrics: &Metrics,
    ) -> Result<Reply, StoreError> {
        let existed = self.live(&key, now).is_some();
        let fields = if existed {
            fields
                .into_iter()
                .filter(|(field, _)| field == "lastSeen")
                .collect()
        } else {
            fields
        };
        self.apply(
            Op::HSet {
                key: key.clone(),
                fields,
            },
            now,
            metrics,
        )?;
        self.apply(Op::Expire { key, ttl }, now, metrics)?;
        Ok(Reply::Int(i64::from(!existed)))
    }

    pub(super) fn merge_json(
        &mut self,
        key: String,
        patch: String,
        ttl: Duration,
        now: Instant,
    ) -> Result<Reply, StoreError> {
        let mut object = match self.live(&key, now) {
            Some(Entry {
                value: Value::Text(text),
                ..
            }) => serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text)
                .unwrap_or_default(),
            Some(_) => return Err(wrong_type(&key)),
            None => serde_json::Map::new(),
        };
        let patch: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&patch)
            .map_err(|e| StoreError::Command(format!("patch is not a JSON object: {e}")))?;
        object.extend(patch);
        self.keys.insert(
            key,
            Entry {
                value: Value::Text(serde_json::Value::Object(object).to_string()),
                expires_at: Some(now + ttl),
            },
        );
        Ok(Reply::Int(1))
    }

    pub(super) fn incr_window_once(
        &mut self,
        key: String,
        window: Duration,
        claim_key: String,
        claim_ttl: Duration,
        now: Instant,
        metrics: &Metrics,
    ) -> Result<Reply, StoreError> {
        if let Some(entry) = self.live(&claim_key, now) {
            let Value::Text(kept) = &entry.value else {
                return Err(wrong_type(&claim_key));
            };
            return Ok(Reply::Int(
                kept.parse().map_err(|_| wrong_type(&claim_key))?,
            ));
        }
        let count = self.apply(Op::IncrWindow { key, window }, now, metrics)?;
        let kept = Op::Set {
            key: claim_key,
            value: count.as_int().unwrap_or(0).to_string(),
            ttl: Some(claim_ttl),
            only_if_absent: false,
        };
        self.apply(kept, now, metrics)?;
        Ok(count)
    }

    pub(super) fn forget_if_empty(
        &mut self,
        index: String,
        member: String,
        list: String,
        now: Instant,
        metrics: &Metrics,
    ) -> Result<Reply, StoreError> {
        Ok(match self.live(&list, now) {
            Some(_) => Reply::Int(0),
            None => self.apply(Op::SRem { key: index, member }, now, metrics)?,
        })
    }

    pub(super) fn acquire_lease(
        &mut self,
        key: String,
        fence_key: String,
        owner: String,
        ttl: Duration,
        now: Instant,
    ) -> Result<Reply, StoreError> {
        let ours = format!("{owner}:");
        match self.live(&key, now) {
            Some(Entry {
                value: Value::Text(held),
                ..
            }) if held.starts_with(&ours) => {}
            Some(_) => return Ok(Reply::Int(0)),
            None => {}
        }
        // The counter has no TTL: a token is never drawn twice.
        let token = self.incr(&fence_key, now)?;
        self.keys.insert(
            key,
            Entry {
                value: Value::Text(format!("{ours}{token}")),
                expires_at: Some(now + ttl),
            },
        );
        Ok(Reply::Int(token))
    }

    /// `INCR` of a counter without a TTL.
    fn incr(&mut self, key: &str, now: Instant) -> Result<i64, StoreError> {
        let entry = match self.live(key, now) {
            Some(entry) => entry,
            None => self.keys.entry(key.to_owned()).or_insert(Entry {
                value: Value::Text("0".to_owned()),
                expires_at: None,
            }),
        };
        let Value::Text(text) = &mut entry.value else {
            return Err(wrong_type(key));
        };
        let count = text.parse::<i64>().map_err(|_| wrong_type(key))? + 1;
        *text = count.to_string();
        Ok(count)
    }

    /// Whether `fence`'s lease still holds its value.
    pub(super) fn holds(&mut self, fence: &Fence, now: Instant) -> bool {
        matches!(
            self.live(fence.key(), now),
            Some(Entry { value: Value::Text(held), .. }) if *held == fence.holder()
        )
    }

    pub(super) fn renew_lease(
        &mut self,
        fence: &Fence,
        ttl: Duration,
        now: Instant,
    ) -> Result<Reply, StoreError> {
        if !self.holds(fence, now) {
            return Ok(Reply::Int(0));
        }
        if let Some(entry) = self.live(fence.key(), now) {
            entry.expires_at = Some(now + ttl);
        }
        Ok(Reply::Int(1))
    }

    #[allow(clippy::too_many_arguments)] // The op's fields, as the other ops are dispatched.
    pub(super) fn update_job(
        &mut self,
        fence: Option<Fence>,
        list: String,
        remove: Vec<String>,
        head: Option<String>,
        index: String,
        member: String,
        now: Instant,
        metrics: &Metrics,
    ) -> Result<Reply, StoreError> {
        if fence.is_some_and(|fence| !self.holds(&fence, now)) {
            return Ok(Reply::Int(0));
        }
        for value in remove {
            self.apply(
                Op::LRem {
                    key: list.clone(),
                    count: 1,
                    value,
                },
                now,
                metrics,
            )?;
        }
        if let Some(value) = head {
            self.apply(
                Op::LPush {
                    key: list.clone(),
                    value,
                },
                now,
                metrics,
            )?;
        }
        self.forget_if_empty(index, member, list, now, metrics)?;
        Ok(Reply::Int(1))
    }

    pub(super) fn release_lease(
        &mut self,
        fence: &Fence,
        now: Instant,
    ) -> Result<Reply, StoreError> {
        if !self.holds(fence, now) {
            return Ok(Reply::Int(0));
        }
        self.keys.remove(fence.key());
        Ok(Reply::Int(1))
    }
}
