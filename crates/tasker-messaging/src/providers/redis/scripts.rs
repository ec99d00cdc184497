//! Every Lua script the provider runs: one script (one round trip) per operation, atomic.
//!
//! Each script gets the queue's `meta` key as `KEYS[1]` (the slot redis-rs routes by) and the
//! queue's key base `tmq:{root}:name:` as `ARGV[1]`; the other keys are that base plus a part
//! (`ready` a list, `leased` / `delayed` / `moved` sorted sets, `m:<seq>`, the channel
//! `wake`), all in the same slot, as are the dead-letter queue's (see `keys.rs`). Time is the
//! server's (`TIME`), read
//! once per script, so every process sees one clock per queue. Numbers stay below 2^53 (Lua's
//! doubles) and 10^14 (printed without an exponent): sequences and tokens count up from 1.

use std::sync::LazyLock;

use redis::Script;

/// Helpers shared by the scripts (prepended to each).
macro_rules! common {
    () => {
        r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function zadd_pairs(key, list)
  local n = #list
  local i = 1
  while i <= n do
    local j = math.min(i + 999, n)
    redis.call('ZADD', key, unpack(list, i, j))
    i = j + 1
  end
end

-- Due delayed messages go to the tail of `ready`, ended leases to its head.
local function back_to_ready(base, from, push, now)
  local due = redis.call('ZRANGEBYSCORE', base .. from, '-inf', now, 'LIMIT', 0, 1000)
  if #due == 0 then return 0 end
  redis.call(push, base .. 'ready', unpack(due))
  redis.call('ZREM', base .. from, unpack(due))
  return #due
end

local function promote(base, now)
  return back_to_ready(base, 'delayed', 'RPUSH', now) + back_to_ready(base, 'leased', 'LPUSH', now)
end

-- A message a receipt acts on is leased, or (its lease ended, nobody received it since) back
-- in `ready`; take it out of whichever holds it (LREM only on that rare path).
local function unlease(base, seq)
  if redis.call('ZREM', base .. 'leased', seq) == 0 then
    redis.call('LREM', base .. 'ready', 1, seq)
  end
end

local function check_receipt(base, inc, tag, seq, tok32)
  if tonumber(inc) ~= tonumber(tag) then return -3 end
  local key = base .. 'm:' .. seq
  local tok = redis.call('HGET', key, 'tok')
  if tok then
    if tonumber(tok) % 4294967296 == tonumber(tok32) then return 1 end
    return -1
  end
  if redis.call('EXISTS', key) == 1 then return -1 end
  if redis.call('ZSCORE', base .. 'moved', seq) then return -2 end
  return 0
end

local function ensure_meta(meta, now)
  if redis.call('EXISTS', meta) == 0 then
    local t = redis.call('TIME')
    local inc = (tonumber(t[2]) * 4099 + tonumber(t[1])) % 4294967296
    redis.call('HSET', meta, 'inc', inc, 'mrc', 0, 'dlq', '0', 'seq', 0, 'tok', 0, 'created', now)
  end
end

-- f: HMGET rc id cid at body
local function move_to_dlq(base, seq, f, dlq, src, kind, reason, rc, now)
  ensure_meta(dlq .. 'meta', now)
  local dseq = redis.call('HINCRBY', dlq .. 'meta', 'seq', 1)
  local at = f[4] or now
  local args = {'id', f[2] or '', 'at', at, 'rc', 0, 'body', f[5] or '', 'dls', src,
    'dlk', kind, 'dlc', rc, 'dla', now, 'dlo', at}
  if f[3] then args[#args + 1] = 'cid'; args[#args + 1] = f[3] end
  if reason ~= '' then args[#args + 1] = 'dlr'; args[#args + 1] = reason end
  redis.call('HSET', dlq .. 'm:' .. dseq, unpack(args))
  redis.call('RPUSH', dlq .. 'ready', dseq)
  redis.call('DEL', base .. 'm:' .. seq)
  redis.call('ZADD', base .. 'moved', now, seq)
  redis.call('ZREMRANGEBYSCORE', base .. 'moved', '-inf', now - 86400000)
  redis.call('PUBLISH', dlq .. 'wake', '1')
end

local function purge(base)
  local n = 0
  while true do
    local seqs = redis.call('LRANGE', base .. 'ready', 0, 999)
    if #seqs == 0 then break end
    local keys = {}
    for i, s in ipairs(seqs) do keys[i] = base .. 'm:' .. s end
    redis.call('DEL', unpack(keys))
    redis.call('LTRIM', base .. 'ready', #seqs, -1)
    n = n + #seqs
  end
  for _, part in ipairs({'leased', 'delayed'}) do
    local key = base .. part
    while true do
      local seqs = redis.call('ZRANGE', key, 0, 999)
      if #seqs == 0 then break end
      local keys = {}
      for i, s in ipairs(seqs) do keys[i] = base .. 'm:' .. s end
      redis.call('DEL', unpack(keys))
      redis.call('ZREM', key, unpack(seqs))
      n = n + #seqs
    end
  end
  return n
end
"#
    };
}

/// ARGV: base, inc, max receive count, DLQ base ('' for none), DLQ inc. Returns 1 when it
/// created the queue, 0 when it existed (its first options stay).
pub(super) static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        common!(),
        r#"
local now = now_ms()
local created = 0
if redis.call('EXISTS', KEYS[1]) == 0 then
  local has = '0'
  if ARGV[4] ~= '' then has = '1' end
  redis.call('HSET', KEYS[1], 'inc', ARGV[2], 'mrc', ARGV[3], 'dlq', has, 'seq', 0, 'tok', 0,
    'created', now)
  created = 1
end
if ARGV[4] ~= '' and redis.call('HGET', KEYS[1], 'dlq') == '1'
    and redis.call('EXISTS', ARGV[4] .. 'meta') == 0 then
  redis.call('HSET', ARGV[4] .. 'meta', 'inc', ARGV[5], 'mrc', 0, 'dlq', '0', 'seq', 0, 'tok', 0,
    'created', now)
end
return created
"#
    ))
});

/// ARGV: base, n, then per message: id, correlation id ('' for none), delay ms, body.
/// Returns the first message's sequence number.
pub(super) static SEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        common!(),
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('TMQ_NOQUEUE') end
local base = ARGV[1]
local n = tonumber(ARGV[2])
local now = now_ms()
local first = redis.call('HINCRBY', KEYS[1], 'seq', n) - n + 1
local ready, delayed = {}, {}
for i = 0, n - 1 do
  local j = 3 + i * 4
  local seq = first + i
  local key = base .. 'm:' .. seq
  local cid = ARGV[j + 1]
  if cid == '' then
    redis.call('HSET', key, 'id', ARGV[j], 'at', now, 'rc', 0, 'body', ARGV[j + 3])
  else
    redis.call('HSET', key, 'id', ARGV[j], 'cid', cid, 'at', now, 'rc', 0, 'body', ARGV[j + 3])
  end
  local d = tonumber(ARGV[j + 2])
  if d > 0 then
    delayed[#delayed + 1] = now + d; delayed[#delayed + 1] = seq
  else
    ready[#ready + 1] = seq
  end
end
if #ready > 0 then
  redis.call('RPUSH', base .. 'ready', unpack(ready))
  redis.call('PUBLISH', base .. 'wake', '1')
end
if #delayed > 0 then zadd_pairs(base .. 'delayed', delayed) end
return first
"#
    ))
});

/// ARGV: base, max, visibility ms, DLQ base ('' for none), queue name. Moves due delayed
/// messages and ended leases back to `ready`, then leases up to max, dead-lettering (not
/// counting) those already received max receive count times. Returns {now, inc, messages...},
/// each message {seq, token, rc, id, cid, at, body, dls, dlk, dlr, dlc, dla, dlo}.
pub(super) static RECEIVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        common!(),
        r#"
local meta = redis.call('HMGET', KEYS[1], 'inc', 'mrc')
if not meta[1] then return redis.error_reply('TMQ_NOQUEUE') end
local base, max, vt, dlq, qname = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5]
local mrc = tonumber(meta[2]) or 0
local now = now_ms()
promote(base, now)
local out = {now, meta[1]}
if max <= 0 then return out end
local deadline = now + vt
local leased = {}
local got = 0
while got < max do
  local popped = redis.call('LPOP', base .. 'ready', max - got)
  if not popped then break end
  local n = #popped
  local tok = redis.call('HINCRBY', KEYS[1], 'tok', n) - n
  for _, seq in ipairs(popped) do
    local key = base .. 'm:' .. seq
    local f = redis.call('HMGET', key, 'rc', 'id', 'cid', 'at', 'body', 'dls', 'dlk', 'dlr',
      'dlc', 'dla', 'dlo')
    if f[2] or f[5] then
      local rc = tonumber(f[1]) or 0
      if mrc > 0 and rc >= mrc and dlq ~= '' then
        move_to_dlq(base, seq, f, dlq, qname, 'max_receive_count_exceeded', tostring(mrc), rc, now)
      else
        tok = tok + 1
        rc = rc + 1
        redis.call('HSET', key, 'rc', rc, 'tok', tok)
        leased[#leased + 1] = deadline; leased[#leased + 1] = seq
        out[#out + 1] = {seq, tok, rc, f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11]}
        got = got + 1
      end
    end
  end
end
if #leased > 0 then zadd_pairs(base .. 'leased', leased) end
return out
"#
    ))
});

/// ARGV: base, tag, then (seq, token) pairs. Returns one code per pair: 1 deleted, 0 already
/// gone, -1 received again since, -2 dead-lettered, -3 another queue (or incarnation).
pub(super) static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        common!(),
        r#"
local inc = redis.call('HGET', KEYS[1], 'inc')
if not inc then return redis.error_reply('TMQ_NOQUEUE') end
local base = ARGV[1]
local res, keys, seqs = {}, {}, {}
for i = 3, #ARGV, 2 do
  local code = check_receipt(base, inc, ARGV[2], ARGV[i], ARGV[i + 1])
  if code == 1 then
    keys[#keys + 1] = base .. 'm:' .. ARGV[i]
    seqs[#seqs + 1] = ARGV[i]
  end
  res[#res + 1] = code
end
if #keys > 0 then
  redis.call('DEL', unpack(keys))
  if redis.call('ZREM', base .. 'leased', unpack(seqs)) < #seqs then
    -- Some leases had ended and their messages were back in ready (rare): take them out.
    for _, seq in ipairs(seqs) do redis.call('LREM', base .. 'ready', 1, seq) end
  end
end
return res
"#
    ))
});

/// ARGV: base, tag, seq, token, visibility ms. 0 releases at once; more moves the lease end.
/// Returns a receipt code (see `DELETE`).
pub(super) static VISIBILITY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        common!(),
        r#"
local inc = redis.call('HGET', KEYS[1], 'inc')
if not inc then return redis.error_reply('TMQ_NOQUEUE') end
local base, seq, vt = ARGV[1], ARGV[3], tonumber(ARGV[5])
local code = check_receipt(base, inc, ARGV[2], seq, ARGV[4])
if code ~= 1 then return code end
if vt <= 0 then
  -- Released to the head of ready (unless its ended lease already put it there).
  if redis.call('ZREM', base .. 'leased', seq) == 1 then
    redis.call('LPUSH', base .. 'ready', seq)
  end
  redis.call('PUBLISH', base .. 'wake', '1')
elseif redis.call('ZADD', base .. 'leased', now_ms() + vt, seq) == 1 then
  -- Its ended lease had put it back in ready: it is leased again, so out of ready.
  redis.call('LREM', base .. 'ready', 1, seq)
end
return 1
"#
    ))
});

/// ARGV: base, tag, seq, token, DLQ base, queue name, reason. Returns a receipt code, or -4
/// when the queue has no dead-letter queue.
pub(super) static DEAD_LETTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        common!(),
        r#"
local meta = redis.call('HMGET', KEYS[1], 'inc', 'dlq')
if not meta[1] then return redis.error_reply('TMQ_NOQUEUE') end
local base, seq, dlq = ARGV[1], ARGV[3], ARGV[5]
local code = check_receipt(base, meta[1], ARGV[2], seq, ARGV[4])
if code ~= 1 then return code end
if meta[2] ~= '1' or dlq == '' then return -4 end
local f = redis.call('HMGET', base .. 'm:' .. seq, 'rc', 'id', 'cid', 'at', 'body')
unlease(base, seq)
move_to_dlq(base, seq, f, dlq, ARGV[6], 'rejected', ARGV[7], tonumber(f[1]) or 0, now_ms())
return 1
"#
    ))
});

/// ARGV: base, DLQ base, max. Moves up to max receivable dead letters back (ids kept, count
/// reset, first enqueue time kept). Returns how many.
pub(super) static REDRIVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        common!(),
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('TMQ_NOQUEUE') end
local base, dlq, max = ARGV[1], ARGV[2], tonumber(ARGV[3])
if dlq == '' or redis.call('EXISTS', dlq .. 'meta') == 0 then
  return redis.error_reply('TMQ_NODLQ')
end
local now = now_ms()
promote(dlq, now)
local popped = redis.call('LPOP', dlq .. 'ready', max) or {}
local ready = {}
local moved = 0
for _, dseq in ipairs(popped) do
  local dkey = dlq .. 'm:' .. dseq
  local f = redis.call('HMGET', dkey, 'id', 'cid', 'body', 'dlo', 'at')
  if f[1] or f[3] then
    local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
    local args = {'id', f[1] or '', 'at', f[4] or f[5] or now, 'rc', 0, 'body', f[3] or ''}
    if f[2] then args[#args + 1] = 'cid'; args[#args + 1] = f[2] end
    redis.call('HSET', base .. 'm:' .. seq, unpack(args))
    ready[#ready + 1] = seq
    redis.call('DEL', dkey)
    redis.call('ZADD', dlq .. 'moved', now, dseq)
    moved = moved + 1
  end
end
if moved > 0 then
  redis.call('RPUSH', base .. 'ready', unpack(ready))
  redis.call('PUBLISH', base .. 'wake', '1')
end
return moved
"#
    ))
});

/// ARGV: base. Removes every message of the queue; returns how many.
pub(super) static PURGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        common!(),
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('TMQ_NOQUEUE') end
return purge(ARGV[1])
"#
    ))
});

/// ARGV: base, DLQ base ('' for none). Removes the queue, its messages and its DLQ.
pub(super) static DROP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        common!(),
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('TMQ_NOQUEUE') end
local has = redis.call('HGET', KEYS[1], 'dlq')
purge(ARGV[1])
redis.call('DEL', KEYS[1], ARGV[1] .. 'moved')
if has == '1' and ARGV[2] ~= '' then
  purge(ARGV[2])
  redis.call('DEL', ARGV[2] .. 'meta', ARGV[2] .. 'moved')
end
return 1
"#
    ))
});

/// ARGV: base, DLQ base ('' for none). Returns {visible, in flight, delayed, oldest enqueue
/// ms or nil, dead letters or -1, now}; ended leases and due delays count as visible.
pub(super) static STATS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        common!(),
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('TMQ_NOQUEUE') end
local base, dlq = ARGV[1], ARGV[2]
local now = now_ms()
local ready = redis.call('LLEN', base .. 'ready')
local lease_due = redis.call('ZCOUNT', base .. 'leased', '-inf', now)
local leased = redis.call('ZCARD', base .. 'leased')
local delay_due = redis.call('ZCOUNT', base .. 'delayed', '-inf', now)
local delayed = redis.call('ZCARD', base .. 'delayed')
local oldest = nil
local first = redis.call('LINDEX', base .. 'ready', 0)
if first then oldest = tonumber(first) end
for _, part in ipairs({'leased', 'delayed'}) do
  for _, s in ipairs(redis.call('ZRANGE', base .. part, 0, 9999)) do
    local v = tonumber(s)
    if not oldest or v < oldest then oldest = v end
  end
end
local oldest_at = false
if oldest then oldest_at = redis.call('HGET', base .. 'm:' .. oldest, 'at') or false end
local dead = -1
if dlq ~= '' and redis.call('EXISTS', dlq .. 'meta') == 1 then
  dead = redis.call('LLEN', dlq .. 'ready') + redis.call('ZCARD', dlq .. 'leased')
    + redis.call('ZCARD', dlq .. 'delayed')
end
return {ready + lease_due + delay_due, leased - lease_due, delayed - delay_due, oldest_at, dead, now}
"#
    ))
});

/// ARGV: base. For a waiter: -1 no such queue, 0 something is receivable now, -2 nothing
/// pending, else milliseconds until the next delay or lease ends.
pub(super) static PEEK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        common!(),
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local base = ARGV[1]
if redis.call('LLEN', base .. 'ready') > 0 then return 0 end
local now = now_ms()
local next_at = nil
for _, part in ipairs({'delayed', 'leased'}) do
  local first = redis.call('ZRANGE', base .. part, 0, 0, 'WITHSCORES')
  if first[2] then
    local at = tonumber(first[2])
    if not next_at or at < next_at then next_at = at end
  end
end
if not next_at then return -2 end
if next_at <= now then return 0 end
return next_at - now
"#
    ))
});
