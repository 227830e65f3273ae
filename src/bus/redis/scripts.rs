//! The Lua scripts of the ops that take more than one command (windowed counters, presence,
//! JSON merges, leases and their fences, outbox jobs, publish-once), each atomic on the server and
//! one entry in a pipeline.

// Scripts are sent as text with EVAL, not by hash with EVALSHA: a restarted Redis has forgotten
// every script, an EVALSHA in a pipeline then fails while the commands around it still run, and
// retrying the pipeline would run those twice (a second PUBLISH, a counter counted twice).
// Redis caches the compiled script, so EVAL costs only hashing the text again.

/// Increments a fixed-window counter and starts the window on the first increment, atomically.
pub(super) const INCR_WINDOW: &str = "local n = redis.call('INCR', KEYS[1]) \
    if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end return n";
/// Refreshes a presence hash; writes all fields only when it was absent. Returns 1 when absent.
pub(super) const TOUCH_PRESENCE: &str = "local existed = redis.call('EXISTS', KEYS[1]) \
    if existed == 1 then redis.call('HSET', KEYS[1], 'lastSeen', ARGV[2]) \
    else redis.call('HSET', KEYS[1], unpack(ARGV, 3)) end \
    redis.call('PEXPIRE', KEYS[1], ARGV[1]) return 1 - existed";
/// Merges a JSON object into the stored one. Redis' cjson turns `{}` into `[]`, hence the guard.
pub(super) const MERGE_JSON: &str = "local current = redis.call('GET', KEYS[1]) \
    local object = {} \
    if current then local ok, decoded = pcall(cjson.decode, current) \
      if ok and type(decoded) == 'table' then object = decoded end end \
    for k, v in pairs(cjson.decode(ARGV[1])) do object[k] = v end \
    local encoded = next(object) == nil and '{}' or cjson.encode(object) \
    redis.call('SET', KEYS[1], encoded, 'PX', ARGV[2]) return 1";
/// Counts once per claim: the count the first increment made is kept under the claim key.
pub(super) const INCR_WINDOW_ONCE: &str = "local kept = redis.call('GET', KEYS[2]) \
    if kept then return tonumber(kept) end \
    local n = redis.call('INCR', KEYS[1]) \
    if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end \
    redis.call('SET', KEYS[2], n, 'PX', ARGV[2]) return n";
pub(super) const FORGET_IF_EMPTY: &str = "if redis.call('LLEN', KEYS[1]) == 0 then \
    return redis.call('SREM', KEYS[2], ARGV[1]) else return 0 end";
pub(super) const LIST_REPLACE: &str = "local at = redis.call('LPOS', KEYS[1], ARGV[1]) \
    if at then redis.call('LSET', KEYS[1], at, ARGV[2]) return 1 else return 0 end";
pub(super) const PUBLISH_ONCE: &str =
    "if redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX') then \
    redis.call('PUBLISH', ARGV[3], ARGV[4]) return 1 else return 0 end";
/// Takes a lease that is free or already this owner's, with the next fencing token; returns the
/// token, or 0 when another owner holds the lease. The value is `{owner}:{token}`, as
/// `Fence::holder` writes it.
pub(super) const ACQUIRE_LEASE: &str = "local held = redis.call('GET', KEYS[1]) \
    local ours = ARGV[1] .. ':' \
    if held and string.sub(held, 1, #ours) ~= ours then return 0 end \
    local token = redis.call('INCR', KEYS[2]) \
    redis.call('SET', KEYS[1], ours .. token, 'PX', ARGV[2]) return token";
/// 1 while the lease holds this value.
pub(super) const CHECK_FENCE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 else return 0 end";
/// A job's entries rewritten in its outbox list (KEYS[1]) while the fence holds: ARGV[1] is the
/// lease's expected value ('' when unfenced, then KEYS[3] is absent), ARGV[2] the destination in
/// the index (KEYS[2]), ARGV[3] the entry to push at the head ('' for none: an entry is a JSON
/// object, never empty), ARGV[4..] the entries to remove.
pub(super) const UPDATE_JOB: &str = "if ARGV[1] ~= '' and \
      redis.call('GET', KEYS[3]) ~= ARGV[1] then return 0 end \
    for i = 4, #ARGV do redis.call('LREM', KEYS[1], 1, ARGV[i]) end \
    if ARGV[3] ~= '' then redis.call('LPUSH', KEYS[1], ARGV[3]) end \
    if redis.call('LLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end \
    return 1";
/// A job queued in its outbox list (KEYS[1]) and its destination (ARGV[3]) in the index (KEYS[2])
/// while the fence holds: ARGV[1] is the lease's expected value ('' when unfenced, then KEYS[3]
/// is absent), ARGV[2] the entry.
pub(super) const PUSH_JOB: &str = "if ARGV[1] ~= '' and \
      redis.call('GET', KEYS[3]) ~= ARGV[1] then return 0 end \
    redis.call('RPUSH', KEYS[1], ARGV[2]) redis.call('SADD', KEYS[2], ARGV[3]) return 1";
/// KEYS[1] set to ARGV[2] while the fence holds (ARGV[1] and KEYS[2] as in `PUSH_JOB`).
pub(super) const SET_FENCED: &str = "if ARGV[1] ~= '' and \
      redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end \
    redis.call('SET', KEYS[1], ARGV[2]) return 1";
pub(super) const RENEW_LEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
    return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
pub(super) const RELEASE_LEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
    return redis.call('DEL', KEYS[1]) else return 0 end";
