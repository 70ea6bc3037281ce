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
//! - `ll:evseq`, `ll:events`: the presence event counter and stream (push
//!   events too: `queued`, `expired`);
//! - the pushes' keys: see [`super::push_scripts`].

use sha1::{Digest, Sha1};

use super::push_scripts::{
    ACKED, HANDBACK, HOLD, IDEM_BEGIN, IDEM_DROP, IDEM_SET, PUSH_PRELUDE, SENT, SWEEP, TAKE,
};

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
local function event(kind, id, node, conn, peer, reason, at, message)
  local seq = redis.call('INCR', 'll:evseq')
  if seq == 1 then
    -- A new counter (a new or emptied Redis) starts from the time, so that
    -- numbers keep growing and a consumer resuming with an older one resets.
    local t = redis.call('TIME')
    seq = tonumber(t[1]) * 1000000 + tonumber(t[2])
    redis.call('SET', 'll:evseq', string.format('%.0f', seq))
  end
  local fields = {'k', kind, 'id', id, 'node', node, 'conn', conn, 'peer', peer,
    'reason', reason, 'at', at}
  if message then
    fields[#fields + 1] = 'message'
    fields[#fields + 1] = message
  end
  redis.call('XADD', 'll:events', 'MAXLEN', '~', '@BACKLOG@',
    '0-' .. string.format('%.0f', seq), unpack(fields))
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

/// ARGV: dead node, me, at, batch, now-ms. Claims the dead node's cleanup
/// (one survivor does it: exactly one `offline` per client) and removes up
/// to `batch` of its clients, each with an `offline` event, reason
/// `node-lost`; then, `batch` ids at a time, hands back the at-least-once
/// pushes it had sent and not seen acked. Returns {claimed (0/1), done
/// (0/1), removed, then (id, node) for each client online elsewhere that
/// was handed pushes back: that node delivers them}.
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
local out = {1, 0, 0}
local ids = redis.call('SPOP', 'll:nodeids:' .. dead, tonumber(ARGV[4]))
for _, id in ipairs(ids) do
  local v = redis.call('HGET', 'll:presence', id)
  if v and nodeof(v) == dead then
    local f = fields(v)
    drop(id, dead)
    event('offline', id, dead, f[2] or '0', f[4] or '', 'node-lost', ARGV[3])
    out[3] = out[3] + 1
  end
end
if redis.call('SCARD', 'll:nodeids:' .. dead) > 0 then return out end
local unacked = redis.call('SPOP', 'll:unodes:' .. dead, tonumber(ARGV[4]))
for _, id in ipairs(unacked) do
  if handback(id, dead, nil, nil, tonumber(ARGV[5]), ARGV[3]) > 0 then
    local cur = redis.call('HGET', 'll:presence', id)
    if cur then
      out[#out + 1] = id
      out[#out + 1] = nodeof(cur)
    end
  end
end
if redis.call('SCARD', 'll:unodes:' .. dead) == 0 then
  redis.call('ZREM', 'll:nodes', dead)
  redis.call('DEL', claim, 'll:seen:' .. dead)
  out[2] = 1
end
return out
"#;

/// ARGV: me, at, then (id, value) pairs. Puts this node's clients back
/// after a reconnect: an id nobody holds (Redis lost it, or a survivor
/// cleaned it up) is claimed again with an `online` event. Returns {the ids
/// another node holds now (this node's connection is the stale one), the
/// ids with pushes waiting (logged in while Redis was away: read them)}.
const REASSERT: &str = r#"
local me, at = ARGV[1], ARGV[2]
local lost, waiting = {}, {}
for i = 3, #ARGV, 2 do
  local id, value = ARGV[i], ARGV[i + 1]
  local cur = redis.call('HGET', 'll:presence', id)
  if cur and nodeof(cur) ~= me then
    lost[#lost + 1] = id
  else
    if redis.call('EXISTS', 'll:q:' .. id) == 1 then waiting[#waiting + 1] = id end
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
return {lost, waiting}
"#;

/// ARGV: me, at, now-ms. Ends a re-assert: ids Redis still lists for this
/// node but that were not re-asserted (they closed while Redis was
/// unreachable) go offline, reason `closed`; at-least-once pushes this node
/// sent on connections that are gone go back to their queues. Returns
/// {gone, then (id, node) for each client online that was handed pushes
/// back: that node delivers them}.
const RECONCILE: &str = r#"
local me = ARGV[1]
local gone = redis.call('SDIFF', 'll:nodeids:' .. me, 'll:seen:' .. me)
local out = {0}
for _, id in ipairs(gone) do
  local v = redis.call('HGET', 'll:presence', id)
  redis.call('SREM', 'll:nodeids:' .. me, id)
  if v and nodeof(v) == me then
    local f = fields(v)
    drop(id, me)
    event('offline', id, me, f[2] or '0', f[4] or '', 'closed', ARGV[2])
    out[1] = out[1] + 1
  end
end
redis.call('DEL', 'll:seen:' .. me)
for _, id in ipairs(redis.call('SMEMBERS', 'll:unodes:' .. me)) do
  local cur = redis.call('HGET', 'll:presence', id)
  local keep = nil
  if cur and nodeof(cur) == me then keep = fields(cur)[2] end
  if handback(id, me, nil, keep, tonumber(ARGV[3]), ARGV[2]) > 0 and cur then
    out[#out + 1] = id
    out[#out + 1] = nodeof(cur)
  end
end
return out
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
    Sent,
    Acked,
    Handback,
    Sweep,
    IdemBegin,
    IdemSet,
    IdemDrop,
}

impl Script {
    pub const ALL: [Script; 17] = [
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
        Script::Sent,
        Script::Acked,
        Script::Handback,
        Script::Sweep,
        Script::IdemBegin,
        Script::IdemSet,
        Script::IdemDrop,
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
            Script::Sent => SENT,
            Script::Acked => ACKED,
            Script::Handback => HANDBACK,
            Script::Sweep => SWEEP,
            Script::IdemBegin => IDEM_BEGIN,
            Script::IdemSet => IDEM_SET,
            Script::IdemDrop => IDEM_DROP,
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
                let text = format!("{PRELUDE}{PUSH_PRELUDE}{}", s.body())
                    .replace("@BACKLOG@", &backlog.to_string());
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
