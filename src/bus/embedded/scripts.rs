//! The ops the Redis bus runs as Lua scripts (windowed counters, presence, JSON merges, leases,
//! forgetting an emptied list), each one step on the in-process keyspace.

use std::time::{Duration, Instant};

use hub_bridge_sdk::metrics::Metrics;
use hub_bridge_sdk::{Op, Reply, StoreError};

use super::{wrong_type, Entry, State, Value};

impl State {
    pub(super) fn incr_window(
        &mut self,
        key: String,
        window: Duration,
        now: Instant,
    ) -> Result<Reply, StoreError> {
        let entry = match self.live(&key, now) {
            Some(entry) => entry,
            None => self.keys.entry(key.clone()).or_insert(Entry {
                value: Value::Text("0".to_owned()),
                expires_at: None,
            }),
        };
        let Value::Text(text) = &mut entry.value else {
            return Err(wrong_type(&key));
        };
        let count = text.parse::<i64>().map_err(|_| wrong_type(&key))? + 1;
        *text = count.to_string();
        if count == 1 {
            entry.expires_at = Some(now + window);
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

    pub(super) fn renew_lease(
        &mut self,
        key: String,
        owner: String,
        ttl: Duration,
        now: Instant,
    ) -> Result<Reply, StoreError> {
        Ok(match self.live(&key, now) {
            Some(entry) if matches!(&entry.value, Value::Text(holder) if *holder == owner) => {
                entry.expires_at = Some(now + ttl);
                Reply::Int(1)
            }
            _ => Reply::Int(0),
        })
    }

    pub(super) fn release_lease(
        &mut self,
        key: String,
        owner: String,
        now: Instant,
    ) -> Result<Reply, StoreError> {
        Ok(match self.live(&key, now) {
            Some(entry) if matches!(&entry.value, Value::Text(holder) if *holder == owner) => {
                self.keys.remove(&key);
                Reply::Int(1)
            }
            _ => Reply::Int(0),
        })
    }
}
