//! The Lua scripts that keep cluster mode's pushes in Redis: the offline
//! queue, at-least-once pushes sent but not acked yet, receipts, and the
//! `queued` / `expired` events (in the one presence stream). Each script is
//! one atomic step.
//!
//! Keys:
//! - `ll:q:ID` list: pushes waiting for ID, in order, as
//!   `push-id␟expires-ms␟frame`;
//! - `ll:qexp` sorted set: `ID␟push-id` → expires-ms of every waiting push
//!   (the expiry sweep's index);
//! - `ll:u:ID` hash: push id → `node␟generation␟seq␟expires-ms␟frame` for
//!   every at-least-once push sent to a connection of ID and not acked yet
//!   (seq: `ll:useq`, the order they were sent in);
//! - `ll:unodes:NODE` set: ids with such pushes sent by NODE (what a
//!   survivor hands back when NODE dies);
//! - `ll:r:PUSH` hash: the receipt (to, status, created, sent, acked,
//!   expires, redelivered);
//! - `ll:idem:KEY` hash: the answer to the request with `Idempotency-Key`
//!   KEY (see `IDEM_BEGIN`).
//!
//! A waiting push leaves the queue when it is sent (`SENT`), not when a
//! login reads the queue (`TAKE`): a connection that ends before the
//! pushes it read were written leaves them where they were.

/// Functions the push scripts (and the node cleanup and reconcile, which
/// hand pushes back) share; after the presence prelude.
pub(super) const PUSH_PRELUDE: &str = r#"
local function qitem(mid, exp, frame) return mid .. SEP .. exp .. SEP .. frame end
local function parse_q(item) return string.match(item, '^([^\31]*)\31([^\31]*)\31(.*)$') end
local function parse_u(v)
  return string.match(v, '^([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31(.*)$')
end
-- Takes push `mid` out of `id`'s queue; true if it was there.
local function unqueue(id, mid, exact)
  local q = 'll:q:' .. id
  redis.call('ZREM', 'll:qexp', id .. SEP .. mid)
  if exact and redis.call('LREM', q, 1, exact) == 1 then return true end
  for _, item in ipairs(redis.call('LRANGE', q, 0, -1)) do
    if parse_q(item) == mid then
      redis.call('LREM', q, 1, item)
      return true
    end
  end
  return false
end
-- Puts `id`'s unacked pushes sent by `node` back at the front of its queue,
-- in the order they were sent: those sent on connection `gen` (any when
-- nil), except on connection `keep`. Those past their time are dropped
-- (they were delivered once). While `id` is online nowhere each is a
-- `queued` event. Returns how many went back.
local function handback(id, node, gen, keep, now, at)
  local u = 'll:u:' .. id
  local all = redis.call('HGETALL', u)
  local back, mine = {}, 0
  for i = 1, #all, 2 do
    local n, g, seq, exp, frame = parse_u(all[i + 1])
    if n == node then
      if (gen == nil or g == gen) and (keep == nil or g ~= keep) then
        redis.call('HDEL', u, all[i])
        if tonumber(exp) > now then
          back[#back + 1] = {tonumber(seq), all[i], exp, frame}
        end
      else
        mine = mine + 1
      end
    end
  end
  if mine == 0 then redis.call('SREM', 'll:unodes:' .. node, id) end
  if #back == 0 then return 0 end
  table.sort(back, function(a, b) return a[1] < b[1] end)
  local q = 'll:q:' .. id
  local online = redis.call('HEXISTS', 'll:presence', id) == 1
  for i = #back, 1, -1 do
    local e = back[i]
    redis.call('LPUSH', q, qitem(e[2], e[3], e[4]))
    redis.call('ZADD', 'll:qexp', tonumber(e[3]), id .. SEP .. e[2])
    redis.call('HSET', 'll:r:' .. e[2], 'status', 'queued')
  end
  if not online then
    for i = 1, #back do event('queued', id, node, '0', '', '', at, back[i][2]) end
  end
  return #back
end
"#;

/// ARGV: push id, to, frame, expires-ms (unix), created-ms, receipt ttl ms,
/// max per client, me, at. Holds a push for an offline client unless it
/// came online meanwhile (a `queued` event). Held and unacked pushes count
/// together against the bound. Returns {status, node}: 'queued', 'online'
/// (node), or 'full'.
pub(super) const HOLD: &str = r#"
local to = ARGV[2]
local cur = redis.call('HGET', 'll:presence', to)
if cur then return {'online', nodeof(cur)} end
local q = 'll:q:' .. to
local kept = redis.call('LLEN', q) + redis.call('HLEN', 'll:u:' .. to)
if kept >= tonumber(ARGV[7]) then return {'full', ''} end
redis.call('RPUSH', q, qitem(ARGV[1], ARGV[4], ARGV[3]))
redis.call('ZADD', 'll:qexp', tonumber(ARGV[4]), to .. SEP .. ARGV[1])
local r = 'll:r:' .. ARGV[1]
redis.call('HSET', r, 'to', to, 'status', 'queued', 'created', ARGV[5], 'expires', ARGV[4])
redis.call('PEXPIRE', r, tonumber(ARGV[6]))
event('queued', to, ARGV[8], '0', '', '', ARGV[9], ARGV[1])
return {'queued', ''}
"#;

/// ARGV: id, now-ms, me, at. Reads the pushes waiting for `id`, in order
/// (they stay until sent); those past their time leave with an `expired`
/// event. Returns {expired, push id, expires-ms, frame, redelivery (0/1),
/// ...}.
pub(super) const TAKE: &str = r#"
local id, now = ARGV[1], tonumber(ARGV[2])
local q = 'll:q:' .. id
local out = {0}
for _, item in ipairs(redis.call('LRANGE', q, 0, -1)) do
  local mid, exp, frame = parse_q(item)
  if mid and tonumber(exp) <= now then
    redis.call('LREM', q, 1, item)
    redis.call('ZREM', 'll:qexp', id .. SEP .. mid)
    redis.call('HSET', 'll:r:' .. mid, 'status', 'expired')
    event('expired', id, ARGV[3], '0', '', '', ARGV[4], mid)
    out[1] = out[1] + 1
  elseif mid then
    local again = redis.call('HEXISTS', 'll:r:' .. mid, 'sent')
    out[#out + 1] = mid
    out[#out + 1] = exp
    out[#out + 1] = frame
    out[#out + 1] = again
  end
end
return out
"#;

/// ARGV: push id, to, at-ms, receipt ttl ms, then for an at-least-once push
/// node, generation, expires-ms, frame. A push handed to `to`'s connection:
/// its receipt says `sent` (counting a redelivery); an at-least-once one is
/// kept until acked, and leaves the queue if it waited there.
pub(super) const SENT: &str = r#"
local mid, to = ARGV[1], ARGV[2]
local r = 'll:r:' .. mid
if redis.call('EXISTS', r) == 0 then
  redis.call('HSET', r, 'to', to, 'created', ARGV[3])
  redis.call('PEXPIRE', r, tonumber(ARGV[4]))
elseif redis.call('HEXISTS', r, 'sent') == 1 then
  redis.call('HINCRBY', r, 'redelivered', 1)
end
redis.call('HSET', r, 'status', 'sent', 'sent', ARGV[3])
if ARGV[5] then
  local seq = redis.call('INCR', 'll:useq')
  local value = ARGV[5] .. SEP .. ARGV[6] .. SEP .. seq .. SEP .. ARGV[7] .. SEP .. ARGV[8]
  redis.call('HSET', 'll:u:' .. to, mid, value)
  redis.call('SADD', 'll:unodes:' .. ARGV[5], to)
  unqueue(to, mid, qitem(mid, ARGV[7], ARGV[8]))
end
return 1
"#;

/// ARGV: push id, to, at-ms. Client `to` acked the push: kept no longer
/// (nor its copy back in the queue, if it was handed back and waits to be
/// sent again). Only a push sent to `to` counts. Returns 1 if it did.
pub(super) const ACKED: &str = r#"
local mid, to = ARGV[1], ARGV[2]
local u = 'll:u:' .. to
local v = redis.call('HGET', u, mid)
if v then
  redis.call('HDEL', u, mid)
  if redis.call('HLEN', u) == 0 then redis.call('SREM', 'll:unodes:' .. nodeof(v), to) end
end
local r = 'll:r:' .. mid
if redis.call('HGET', r, 'to') ~= to then return 0 end
local status = redis.call('HGET', r, 'status')
local handed_back = status == 'queued' and redis.call('HEXISTS', r, 'sent') == 1
if status ~= 'sent' and not handed_back then return 0 end
if handed_back then unqueue(to, mid, nil) end
redis.call('HSET', r, 'status', 'acked', 'acked', ARGV[3])
return 1
"#;

/// ARGV: id, me, generation, now-ms, at. Connection `generation` of `id` on
/// this node ended: its unacked pushes go back to the front of the queue.
/// Returns {handed back, the node `id` is online on now ('' if none)}.
pub(super) const HANDBACK: &str = r#"
local n = handback(ARGV[1], ARGV[2], ARGV[3], nil, tonumber(ARGV[4]), ARGV[5])
local cur = redis.call('HGET', 'll:presence', ARGV[1])
return {n, cur and nodeof(cur) or ''}
"#;

/// ARGV: now-ms, at, limit, me. Waiting pushes past their time leave their
/// queue, each with an `expired` event. Returns how many.
pub(super) const SWEEP: &str = r#"
local due = redis.call('ZRANGEBYSCORE', 'll:qexp', '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local n = 0
for _, m in ipairs(due) do
  local id, mid = string.match(m, '^(.*)\31([^\31]*)$')
  redis.call('ZREM', 'll:qexp', m)
  if id and unqueue(id, mid, nil) then
    redis.call('HSET', 'll:r:' .. mid, 'status', 'expired')
    event('expired', id, ARGV[4], '0', '', '', ARGV[2], mid)
    n = n + 1
  end
end
return n
"#;

/// `Idempotency-Key` answers for the whole cluster: `ll:idem:KEY` hash
/// (fp: the request's fingerprint, state: pending | waiting | done, status,
/// body, until: when a pending or waiting entry stops holding repeats back,
/// owner: the request that made a pending entry). ARGV: key, fingerprint,
/// owner, pending-ms, ttl-ms. Returns {'new'} (the entry is now this
/// request's, pending), {'replay', status, body}, {'in-progress'} or
/// {'reused'}. A pending entry whose node never answered (it died) gives
/// way after pending-ms; a waiting one then answers as it stood (`sent`).
pub(super) const IDEM_BEGIN: &str = r#"
local k = 'll:idem:' .. ARGV[1]
local e = redis.call('HMGET', k, 'fp', 'state', 'status', 'body', 'until')
local now = now_ms()
local lapsed = e[5] and tonumber(e[5]) < now
if e[1] and e[1] ~= ARGV[2] then return {'reused'} end
if not e[1] or (e[2] == 'pending' and lapsed) then
  redis.call('DEL', k)
  redis.call('HSET', k, 'fp', ARGV[2], 'state', 'pending', 'owner', ARGV[3],
    'until', now + tonumber(ARGV[4]))
  redis.call('PEXPIRE', k, tonumber(ARGV[5]))
  return {'new'}
end
if e[2] == 'done' or (e[2] == 'waiting' and lapsed) then return {'replay', e[3], e[4]} end
return {'in-progress'}
"#;

/// ARGV: key, fingerprint, state (waiting | done), status, body, ttl-ms,
/// hold-ms (waiting: how long repeats are held back). The answer to the
/// request with this key.
pub(super) const IDEM_SET: &str = r#"
local k = 'll:idem:' .. ARGV[1]
local fp = redis.call('HGET', k, 'fp')
if fp and fp ~= ARGV[2] then return 0 end
redis.call('HSET', k, 'fp', ARGV[2], 'state', ARGV[3], 'status', ARGV[4], 'body', ARGV[5],
  'until', now_ms() + tonumber(ARGV[7]))
redis.call('HDEL', k, 'owner')
redis.call('PEXPIRE', k, tonumber(ARGV[6]))
return 1
"#;

/// ARGV: key, owner. The pending request was refused: a repeat is a retry.
pub(super) const IDEM_DROP: &str = r#"
local k = 'll:idem:' .. ARGV[1]
if redis.call('HGET', k, 'owner') == ARGV[2] and redis.call('HGET', k, 'state') == 'pending' then
  redis.call('DEL', k)
  return 1
end
return 0
"#;
