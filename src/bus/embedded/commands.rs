//! The ops that are plain Redis commands (strings, hashes, sorted sets, sets, lists, publish),
//! run on the in-process keyspace with Redis' semantics, and the dispatch of every op.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use hub_bridge_sdk::metrics::Metrics;
use hub_bridge_sdk::{Op, Reply, StoreError};

use super::{wrong_type, Entry, State, Value};
use crate::bus::BusMessage;

impl State {
    /// Runs one op, as Redis would run the command (or the script) it stands for.
    pub(super) fn apply(
        &mut self,
        op: Op,
        now: Instant,
        metrics: &Metrics,
    ) -> Result<Reply, StoreError> {
        match op {
            Op::Get { key } => self.get(key, now),
            Op::Set {
                key,
                value,
                ttl,
                only_if_absent,
            } => self.set(key, value, ttl, only_if_absent, now),
            Op::Del { key } => Ok(Reply::Int(i64::from(
                self.live(&key, now).is_some() && self.keys.remove(&key).is_some(),
            ))),
            Op::Exists { key } => Ok(Reply::Int(i64::from(self.live(&key, now).is_some()))),
            Op::Expire { key, ttl } => self.expire(key, ttl, now),
            Op::TtlMillis { key } => self.ttl_millis(key, now),
            Op::HSet { key, fields } => self.hset(key, fields, now),
            Op::HGetAll { key } => self.hgetall(key, now),
            Op::ZAdd { key, score, member } => self.zadd(key, score, member, now),
            Op::ZRem { key, member } => self.zrem(key, member, now),
            Op::ZRangeByScore { key, min, max } => self.zrange_by_score(key, min, max, now),
            Op::SAdd { key, member } => self.sadd(key, member, now),
            Op::SRem { key, member } => self.srem(key, member, now),
            Op::SMembers { key } => self.smembers(key, now),
            Op::IncrWindow { key, window } => self.incr_window(key, window, now),
            Op::TouchPresence { key, fields, ttl } => {
                self.touch_presence(key, fields, ttl, now, metrics)
            }
            Op::MergeJson { key, patch, ttl } => self.merge_json(key, patch, ttl, now),
            Op::RPush { key, value } => self.rpush(key, value, now),
            Op::TrimToNewest { key, max_len } => self.trim_to_newest(key, max_len, now),
            Op::LPush { key, value } => self.lpush(key, value, now),
            Op::LRem { key, count, value } => self.lrem(key, count, value, now),
            Op::LRange { key, start, stop } => self.lrange(key, start, stop, now),
            Op::LReplace { key, old, new } => self.lreplace(key, old, new, now),
            Op::IncrWindowOnce {
                key,
                window,
                claim_key,
                claim_ttl,
            } => self.incr_window_once(key, window, claim_key, claim_ttl, now, metrics),
            Op::ForgetIfEmpty {
                index,
                member,
                list,
            } => self.forget_if_empty(index, member, list, now, metrics),
            Op::AcquireLease {
                key,
                fence_key,
                owner,
                ttl,
            } => self.acquire_lease(key, fence_key, owner, ttl, now),
            Op::RenewLease { fence, ttl } => self.renew_lease(&fence, ttl, now),
            Op::CheckFence { fence } => Ok(Reply::Int(i64::from(self.holds(&fence, now)))),
            Op::UpdateJob {
                fence,
                list,
                remove,
                head,
                index,
                member,
            } => self.update_job(fence, list, remove, head, index, member, now, metrics),
            Op::ReleaseLease { fence } => self.release_lease(&fence, now),
            Op::PushJob {
                fence,
                list,
                value,
                index,
                member,
            } => {
                if fence.is_some_and(|fence| !self.holds(&fence, now)) {
                    return Ok(Reply::Int(0));
                }
                self.rpush(list, value, now)?;
                self.sadd(index, member, now)?;
                Ok(Reply::Int(1))
            }
            Op::SetFenced { fence, key, value } => {
                if fence.is_some_and(|fence| !self.holds(&fence, now)) {
                    return Ok(Reply::Int(0));
                }
                self.set(key, value, None, false, now)?;
                Ok(Reply::Int(1))
            }
            Op::PublishOnce {
                claim_key,
                claim_value,
                ttl,
                channel,
                payload,
            } => {
                let claim = Op::Set {
                    key: claim_key,
                    value: claim_value,
                    ttl: Some(ttl),
                    only_if_absent: true,
                };
                if self.apply(claim, now, metrics)? == Reply::Nil {
                    return Ok(Reply::Int(0));
                }
                self.apply(Op::Publish { channel, payload }, now, metrics)?;
                Ok(Reply::Int(1))
            }
            Op::Publish { channel, payload } => self.publish(channel, payload, metrics),
        }
    }

    fn get(&mut self, key: String, now: Instant) -> Result<Reply, StoreError> {
        Ok(match self.live(&key, now) {
            Some(Entry {
                value: Value::Text(text),
                ..
            }) => Reply::Text(text.clone()),
            Some(_) => return Err(wrong_type(&key)),
            None => Reply::Nil,
        })
    }

    fn set(
        &mut self,
        key: String,
        value: String,
        ttl: Option<Duration>,
        only_if_absent: bool,
        now: Instant,
    ) -> Result<Reply, StoreError> {
        if only_if_absent && self.live(&key, now).is_some() {
            return Ok(Reply::Nil);
        }
        self.keys.insert(
            key,
            Entry {
                value: Value::Text(value),
                expires_at: ttl.map(|ttl| now + ttl),
            },
        );
        Ok(Reply::Ok)
    }

    fn expire(&mut self, key: String, ttl: Duration, now: Instant) -> Result<Reply, StoreError> {
        Ok(match self.live(&key, now) {
            Some(entry) => {
                entry.expires_at = Some(now + ttl);
                Reply::Int(1)
            }
            None => Reply::Int(0),
        })
    }

    fn ttl_millis(&mut self, key: String, now: Instant) -> Result<Reply, StoreError> {
        Ok(match self.live(&key, now) {
            Some(Entry {
                expires_at: Some(at),
                ..
            }) => Reply::Int(i64::try_from(at.duration_since(now).as_millis()).unwrap_or(0)),
            Some(_) => Reply::Int(-1),
            None => Reply::Int(-2),
        })
    }

    fn hset(
        &mut self,
        key: String,
        fields: Vec<(String, String)>,
        now: Instant,
    ) -> Result<Reply, StoreError> {
        let Value::Hash(map) = self.value_or_insert(
            &key,
            now,
            || Value::Hash(BTreeMap::new()),
            |v| matches!(v, Value::Hash(_)),
        )?
        else {
            return Err(wrong_type(&key));
        };
        let added = fields
            .into_iter()
            .filter(|(field, value)| map.insert(field.clone(), value.clone()).is_none())
            .count();
        Ok(Reply::Int(i64::try_from(added).unwrap_or(0)))
    }

    fn hgetall(&mut self, key: String, now: Instant) -> Result<Reply, StoreError> {
        Ok(match self.live(&key, now) {
            Some(Entry {
                value: Value::Hash(map),
                ..
            }) => Reply::Pairs(map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            Some(_) => return Err(wrong_type(&key)),
            None => Reply::Pairs(Vec::new()),
        })
    }

    fn zadd(
        &mut self,
        key: String,
        score: i64,
        member: String,
        now: Instant,
    ) -> Result<Reply, StoreError> {
        let Value::ZSet(set) = self.value_or_insert(
            &key,
            now,
            || Value::ZSet(HashMap::new()),
            |v| matches!(v, Value::ZSet(_)),
        )?
        else {
            return Err(wrong_type(&key));
        };
        Ok(Reply::Int(i64::from(set.insert(member, score).is_none())))
    }

    fn zrem(&mut self, key: String, member: String, now: Instant) -> Result<Reply, StoreError> {
        let removed = match self.live(&key, now) {
            Some(Entry {
                value: Value::ZSet(set),
                ..
            }) => set.remove(&member).is_some(),
            Some(_) => return Err(wrong_type(&key)),
            None => false,
        };
        self.remove_if_empty(&key);
        Ok(Reply::Int(i64::from(removed)))
    }

    fn zrange_by_score(
        &mut self,
        key: String,
        min: i64,
        max: i64,
        now: Instant,
    ) -> Result<Reply, StoreError> {
        Ok(match self.live(&key, now) {
            Some(Entry {
                value: Value::ZSet(set),
                ..
            }) => {
                let mut members: Vec<_> = set
                    .iter()
                    .filter(|(_, score)| (min..=max).contains(*score))
                    .map(|(member, score)| (*score, member.clone()))
                    .collect();
                members.sort();
                Reply::List(members.into_iter().map(|(_, member)| member).collect())
            }
            Some(_) => return Err(wrong_type(&key)),
            None => Reply::List(Vec::new()),
        })
    }

    fn sadd(&mut self, key: String, member: String, now: Instant) -> Result<Reply, StoreError> {
        let Value::Set(set) = self.value_or_insert(
            &key,
            now,
            || Value::Set(BTreeSet::new()),
            |v| matches!(v, Value::Set(_)),
        )?
        else {
            return Err(wrong_type(&key));
        };
        Ok(Reply::Int(i64::from(set.insert(member))))
    }

    fn srem(&mut self, key: String, member: String, now: Instant) -> Result<Reply, StoreError> {
        let removed = match self.live(&key, now) {
            Some(Entry {
                value: Value::Set(set),
                ..
            }) => set.remove(&member),
            Some(_) => return Err(wrong_type(&key)),
            None => false,
        };
        self.remove_if_empty(&key);
        Ok(Reply::Int(i64::from(removed)))
    }

    fn smembers(&mut self, key: String, now: Instant) -> Result<Reply, StoreError> {
        Ok(match self.live(&key, now) {
            Some(Entry {
                value: Value::Set(set),
                ..
            }) => Reply::List(set.iter().cloned().collect()),
            Some(_) => return Err(wrong_type(&key)),
            None => Reply::List(Vec::new()),
        })
    }

    fn rpush(&mut self, key: String, value: String, now: Instant) -> Result<Reply, StoreError> {
        let Value::List(list) = self.value_or_insert(
            &key,
            now,
            || Value::List(VecDeque::new()),
            |v| matches!(v, Value::List(_)),
        )?
        else {
            return Err(wrong_type(&key));
        };
        list.push_back(value);
        Ok(Reply::Int(i64::try_from(list.len()).unwrap_or(i64::MAX)))
    }

    fn trim_to_newest(
        &mut self,
        key: String,
        max_len: usize,
        now: Instant,
    ) -> Result<Reply, StoreError> {
        if let Some(Entry {
            value: Value::List(list),
            ..
        }) = self.live(&key, now)
        {
            let excess = list.len().saturating_sub(max_len);
            list.drain(..excess);
        }
        self.remove_if_empty(&key);
        Ok(Reply::Ok)
    }

    fn lpush(&mut self, key: String, value: String, now: Instant) -> Result<Reply, StoreError> {
        let Value::List(list) = self.value_or_insert(
            &key,
            now,
            || Value::List(VecDeque::new()),
            |v| matches!(v, Value::List(_)),
        )?
        else {
            return Err(wrong_type(&key));
        };
        list.push_front(value);
        Ok(Reply::Int(i64::try_from(list.len()).unwrap_or(i64::MAX)))
    }

    fn lrem(
        &mut self,
        key: String,
        count: i64,
        value: String,
        now: Instant,
    ) -> Result<Reply, StoreError> {
        let removed = match self.live(&key, now) {
            Some(Entry {
                value: Value::List(list),
                ..
            }) => remove_from_list(list, count, &value),
            Some(_) => return Err(wrong_type(&key)),
            None => 0,
        };
        self.remove_if_empty(&key);
        Ok(Reply::Int(removed))
    }

    fn lreplace(
        &mut self,
        key: String,
        old: String,
        new: String,
        now: Instant,
    ) -> Result<Reply, StoreError> {
        let found = match self.live(&key, now) {
            Some(Entry {
                value: Value::List(list),
                ..
            }) => list.iter_mut().find(|entry| **entry == old),
            Some(_) => return Err(wrong_type(&key)),
            None => None,
        };
        Ok(Reply::Int(found.map_or(0, |entry| {
            *entry = new;
            1
        })))
    }

    fn lrange(
        &mut self,
        key: String,
        start: isize,
        stop: isize,
        now: Instant,
    ) -> Result<Reply, StoreError> {
        Ok(match self.live(&key, now) {
            Some(Entry {
                value: Value::List(list),
                ..
            }) => Reply::List(list_range(list, start, stop)),
            Some(_) => return Err(wrong_type(&key)),
            None => Reply::List(Vec::new()),
        })
    }

    fn publish(
        &mut self,
        channel: String,
        payload: String,
        metrics: &Metrics,
    ) -> Result<Reply, StoreError> {
        let mut receivers = 0;
        self.subscribers
            .retain(|subscriber| !subscriber.sender.is_closed());
        for subscriber in &self.subscribers {
            if !subscriber.patterns.iter().any(|p| p.matches(&channel)) {
                continue;
            }
            receivers += 1;
            let message = BusMessage {
                channel: channel.clone(),
                payload: payload.clone().into_bytes(),
                received_at: Instant::now(),
            };
            if subscriber.sender.try_send(message).is_err() {
                metrics.subscriber_overflow.inc();
                tracing::warn!(%channel, "hub loop queue full; message dropped");
            }
        }
        Ok(Reply::Int(receivers))
    }
}

/// `LREM` semantics: `count` > 0 removes from the head, < 0 from the tail, 0 removes all.
fn remove_from_list(list: &mut VecDeque<String>, count: i64, value: &str) -> i64 {
    let limit = if count == 0 {
        usize::MAX
    } else {
        usize::try_from(count.unsigned_abs()).unwrap_or(usize::MAX)
    };
    let mut positions: Vec<usize> = list
        .iter()
        .enumerate()
        .filter(|(_, entry)| *entry == value)
        .map(|(index, _)| index)
        .collect();
    if count < 0 {
        positions.reverse();
    }
    positions.truncate(limit);
    positions.sort_unstable_by(|a, b| b.cmp(a));
    for index in &positions {
        list.remove(*index);
    }
    i64::try_from(positions.len()).unwrap_or(i64::MAX)
}

/// `LRANGE` index semantics: negative indexes count from the end, both ends inclusive.
fn list_range(list: &VecDeque<String>, start: isize, stop: isize) -> Vec<String> {
    let len = isize::try_from(list.len()).unwrap_or(isize::MAX);
    let resolve = |index: isize| if index < 0 { len + index } else { index };
    let (start, stop) = (resolve(start).max(0), resolve(stop).min(len - 1));
    if start > stop {
        return Vec::new();
    }
    list.iter()
        .skip(start.unsigned_abs())
        .take((stop - start + 1).unsigned_abs())
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_range_follows_lrange() {
        let list: VecDeque<String> = ["a", "b", "c"].map(String::from).into();
        assert_eq!(list_range(&list, 0, -1), ["a", "b", "c"]);
        assert_eq!(list_range(&list, -2, -1), ["b", "c"]);
        assert_eq!(list_range(&list, 5, 9), Vec::<String>::new());
    }
}
