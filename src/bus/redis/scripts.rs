//! The Lua scripts of the ops that take more than one command (windowed counters, presence,
//! JSON merges, leases, publish-once), each atomic on the server and one entry in a pipeline.

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
pub(super) const RENEW_LEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
    return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
pub(super) const RELEASE_LEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
    return redis.call('DEL', KEYS[1]) else return 0 end";
