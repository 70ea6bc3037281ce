//! The Lua scripts that keep presence, node liveness and the event stream
//! consistent in Redis: each is one atomic step, so two nodes racing for an
//! id, or two survivors cleaning up after the same dead node, cannot
//! interleave inside it.
//!
//! Keys (one Redis, or a primary with replicas; not Redis Cluster, whose
//! slots would split these keys):
//! - `ll:presence` hash: id → `node␟generation␟since-ms␟peer`;
//! - `ll:ids` sorted set of the online ids (score 0: ordered by id, for
//!   `/clients` paging with a stable cursor);
//! - `ll:nodeids:NODE` set: the ids a node holds (its cleanup list);
//! - `ll:nodes` sorted set: node → the Redis time (ms) its liveness lapses;
//! - `ll:cleanup:NODE`: which survivor claimed a dead node's cleanup;
//! - `ll:seen:NODE`: ids re-asserted since a node's reconnect;
//! - `ll:evseq`, `ll:events`: the presence event counter and stream;
//! - `ll:q:ID` list and `ll:r:PUSH` hash: the offline queue and receipts.

use sha1::{Digest, Sha1};

/// Separates the fields of a presence value (ASCII unit separator: ids,
/// node ids and peers never contain it).
pub const SEP: char = '\u{1f}';

/// Functions every script starts with.
const PRELUDE: &str = r#"
local SEP = '\31'
local function nodeof(v) return string.match(v, '^([^\31]*)') end
local function fields(v)
  local out = {}
  for f in string.gmatch(v .. SEP, '([^\31]*)\31') do out[#out + 1] = f end
  return out
end
local function event(kind, id, node, conn, peer, reason, at)
  local seq = redis.call('INCR', 'll:evseq')
  if seq == 1 then
    -- A new counter (a new or emptied Redis) starts from the time, so that
    -- numbers keep growing and a consumer resuming with an older one resets.
    local t = redis.call('TIME')
    seq = tonumber(t[1]) * 1000000 + tonumber(t[2])
    redis.call('SET', 'll:evseq', string.format('%.0f', seq))
  end
  redis.call('XADD', 'll:events', 'MAXLEN', '~', '@BACKLOG@',
    '0-' .. string.format('%.0f', seq),
    'k', kind, 'id', id, 'node', node, 'conn', conn, 'peer', peer,
    'reason', reason, 'at', at)
end
local function drop(id, node)
  redis.call('HDEL', 'll:presence', id)
  redis.call('ZREM', 'll:ids', id)
  redis.call('SREM', 'll:nodeids:' .. node, id)
  redis.call('SREM', 'll:seen:' .. node, id)
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"#;

/// ARGV: id, value, me, reasserting (0/1). Returns the value it replaced.
const CLAIM: &str = r#"
local id, value, me = ARGV[1], ARGV[2], ARGV[3]
local old = redis.call('HGET', 'll:presence', id)
redis.call('HSET', 'll:presence', id, value)
redis.call('ZADD', 'll:ids', 0, id)
redis.call('SADD', 'll:nodeids:' .. me, id)
if ARGV[4] == '1' then redis.call('SADD', 'll:seen:' .. me, id) end
if old then
  local n = nodeof(old)
  if n ~= me then redis.call('SREM', 'll:nodeids:' .. n, id) end
end
return old or false
"#;

/// ARGV: id, `node␟generation␟`. Removes the id only if it still names this
/// node and this connection's generation (compare-and-delete: a late close
/// of a replaced connection never takes its successor offline). Returns 1
/// if it did.
const RELEASE: &str = r#"
local cur = redis.call('HGET', 'll:presence', ARGV[1])
if not cur or string.sub(cur, 1, #ARGV[2]) ~= ARGV[2] then return 0 end
drop(ARGV[1], nodeof(cur))
return 1
"#;

/// ARGV: kind, id, node, conn, peer, reason, at.
const EVENT: &str = r#"
event(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
return 1
"#;

/// ARGV: me, ttl-ms. Refreshes this node's liveness; returns the nodes
/// whose liveness lapsed.
const REFRESH: &str = r#"
local now = now_ms()
redis.call('ZADD', 'll:nodes', now + tonumber(ARGV[2]), ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', 'll:nodes', '-inf', now)
local out = {}
for _, n in ipairs(dead) do if n ~= ARGV[1] then out[#out + 1] = n end end
return out
"#;

/// ARGV: dead node, me, at, batch. Claims the dead node's cleanup (one
/// survivor does it: exactly one `offline` per client) and removes up to
/// `batch` of its clients, each with an `offline` event, reason
/// `node-lost`. Returns {claimed (0/1), done (0/1), removed}.
const CLEANUP: &str = r#"
local dead, me = ARGV[1], ARGV[2]
local claim = 'll:cleanup:' .. dead
local holder = redis.call('GET', claim)
if holder and holder ~= me then return {0, 0, 0} end
-- Still dead? A node that came back refreshed its liveness.
local lapse = redis.call('ZSCORE', 'll:nodes', dead)
if lapse and tonumber(lapse) > now_ms() then
  redis.call('DEL', claim)
  return {0, 1, 0}
end
redis.call('SET', claim, me, 'PX', 30000)
local removed = 0
local ids = redis.call('SPOP', 'll:nodeids:' .. dead, tonumber(ARGV[4]))
for _, id in ipairs(ids) do
  local v = redis.call('HGET', 'll:presence', id)
  if v and nodeof(v) == dead then
    local f = fields(v)
    drop(id, dead)
    event('offline', id, dead, f[2] or '0', f[4] or '', 'node-lost', ARGV[3])
    removed = removed + 1
  end
end
if redis.call('SCARD', 'll:nodeids:' .. dead) == 0 then
  redis.call('ZREM', 'll:nodes', dead)
  redis.call('DEL', claim, 'll:seen:' .. dead)
  return {1, 1, removed}
end
return {1, 0, removed}
"#;

/// ARGV: me, at, then (id, value) pairs. Puts this node's clients back
/// after a reconnect: an id nobody holds (Redis lost it, or a survivor
/// cleaned it up) is claimed again with an `online` event; an id another
/// node holds now is returned (this node's connection is the stale one).
const REASSERT: &str = r#"
local me, at = ARGV[1], ARGV[2]
local lost = {}
for i = 3, #ARGV, 2 do
  local id, value = ARGV[i], ARGV[i + 1]
  local cur = redis.call('HGET', 'll:presence', id)
  if cur and nodeof(cur) ~= me then
    lost[#lost + 1] = id
  else
    redis.call('HSET', 'll:presence', id, value)
    redis.call('ZADD', 'll:ids', 0, id)
    redis.call('SADD', 'll:nodeids:' .. me, id)
    redis.call('SADD', 'll:seen:' .. me, id)
    if not cur then
      local f = fields(value)
      event('online', id, me, f[2] or '0', f[4] or '', '', at)
    end
  end
end
return lost
"#;

/// ARGV: me, at. Ends a re-assert: ids Redis still lists for this node but
/// that were not re-asserted (they closed while Redis was unreachable) go
/// offline, reason `closed`. Returns how many.
const RECONCILE: &str = r#"
local me = ARGV[1]
local gone = redis.call('SDIFF', 'll:nodeids:' .. me, 'll:seen:' .. me)
local n = 0
for _, id in ipairs(gone) do
  local v = redis.call('HGET', 'll:presence', id)
  redis.call('SREM', 'll:nodeids:' .. me, id)
  if v and nodeof(v) == me then
    local f = fields(v)
    drop(id, me)
    event('offline', id, me, f[2] or '0', f[4] or '', 'closed', ARGV[2])
    n = n + 1
  end
end
redis.call('DEL', 'll:seen:' .. me)
return n
"#;

/// ARGV: after ('' for the start), limit. One page of the cluster's online
/// ids in id order: {seq, online, id1, value1, id2, value2, ...}, where seq
/// is the last presence event the page is consistent with.
const PAGE: &str = r#"
local from = '-'
if ARGV[1] ~= '' then from = '(' .. ARGV[1] end
local ids = redis.call('ZRANGEBYLEX', 'll:ids', from, '+', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {redis.call('GET', 'll:evseq') or '0', redis.call('HLEN', 'll:presence')}
for _, id in ipairs(ids) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', 'll:presence', id) or ''
end
return out
"#;

/// ARGV: push id, to, frame, expires-ms (unix), created-ms, receipt ttl ms,
/// max per client. Holds a push for an offline client unless it came
/// online meanwhile. Returns {status, node}: 'queued', 'online' (node), or
/// 'full'.
const HOLD: &str = r#"
local cur = redis.call('HGET', 'll:presence', ARGV[2])
if cur then return {'online', nodeof(cur)} end
local q = 'll:q:' .. ARGV[2]
if redis.call('LLEN', q) >= tonumber(ARGV[7]) then return {'full', ''} end
redis.call('RPUSH', q, ARGV[1] .. SEP .. ARGV[4] .. SEP .. ARGV[3])
redis.call('PEXPIREAT', q, tonumber(ARGV[4]))
local r = 'll:r:' .. ARGV[1]
redis.call('HSET', r, 'to', ARGV[2], 'status', 'queued', 'created', ARGV[5], 'expires', ARGV[4])
redis.call('PEXPIRE', r, tonumber(ARGV[6]))
return {'queued', ''}
"#;

/// ARGV: id, now-ms. Takes every push held for `id`, in order: a list of
/// {push id, expires-ms, frame}; receipts of expired ones say so.
const TAKE: &str = r#"
local q = 'll:q:' .. ARGV[1]
local items = redis.call('LRANGE', q, 0, -1)
redis.call('DEL', q)
local out = {}
for _, item in ipairs(items) do
  local mid, exp, frame = string.match(item, '^([^\31]*)\31([^\31]*)\31(.*)$')
  if mid then
    if tonumber(exp) <= tonumber(ARGV[2]) then
      redis.call('HSET', 'll:r:' .. mid, 'status', 'expired')
    else
      out[#out + 1] = mid
      out[#out + 1] = frame
    end
  end
end
return out
"#;

/// ARGV: push id, to, status, at-ms, receipt ttl ms. Records a receipt
/// step: `sent` (creates it), `acked` (only for a sent push to `to`).
const RECEIPT: &str = r#"
local r = 'll:r:' .. ARGV[1]
if ARGV[3] == 'acked' then
  if redis.call('HGET', r, 'to') ~= ARGV[2] or redis.call('HGET', r, 'status') ~= 'sent' then
    return 0
  end
  redis.call('HSET', r, 'status', 'acked', 'acked', ARGV[4])
  return 1
end
if redis.call('EXISTS', r) == 0 then
  redis.call('HSET', r, 'to', ARGV[2], 'created', ARGV[4])
  redis.call('PEXPIRE', r, tonumber(ARGV[5]))
end
redis.call('HSET', r, 'status', 'sent', 'sent', ARGV[4])
return 1
"#;

/// The scripts, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    Claim,
    Release,
    Event,
    Refresh,
    Cleanup,
    Reassert,
    Reconcile,
    Page,
    Hold,
    Take,
    Receipt,
}

impl Script {
    pub const ALL: [Script; 11] = [
        Script::Claim,
        Script::Release,
        Script::Event,
        Script::Refresh,
        Script::Cleanup,
        Script::Reassert,
        Script::Reconcile,
        Script::Page,
        Script::Hold,
        Script::Take,
        Script::Receipt,
    ];

    fn body(self) -> &'static str {
        match self {
            Script::Claim => CLAIM,
            Script::Release => RELEASE,
            Script::Event => EVENT,
            Script::Refresh => REFRESH,
            Script::Cleanup => CLEANUP,
            Script::Reassert => REASSERT,
            Script::Reconcile => RECONCILE,
            Script::Page => PAGE,
            Script::Hold => HOLD,
            Script::Take => TAKE,
            Script::Receipt => RECEIPT,
        }
    }
}

/// Every script's text and SHA1, for EVALSHA (and EVAL when Redis does not
/// know it: NOSCRIPT after a restart or a SCRIPT FLUSH).
pub struct Scripts {
    texts: Vec<(String, String)>,
}

impl Scripts {
    /// The event stream is trimmed to `backlog` entries (approximately:
    /// `MAXLEN ~`, which trims whole macro nodes and is much cheaper).
    pub fn new(backlog: usize) -> Scripts {
        let texts = Script::ALL
            .iter()
            .map(|s| {
                let text =
                    format!("{PRELUDE}{}", s.body()).replace("@BACKLOG@", &backlog.to_string());
                let sha = hex::encode(Sha1::digest(text.as_bytes()));
                (text, sha)
            })
            .collect();
        Scripts { texts }
    }

    pub fn text(&self, script: Script) -> &str {
        &self.texts[script as usize].0
    }

    pub fn sha(&self, script: Script) -> &str {
        &self.texts[script as usize].1
    }
}
