-- tierlimit: apply pending post-charges, then decide requests one after
-- the other (every limit of a request checked and charged all or nothing),
-- in one atomic call: requests that arrived together share one round trip,
-- and each sees the charges of those before it.
--
-- Times are whole milliseconds since the epoch (below 2^53, exact in Lua
-- numbers), as in the memory store: a charge at instant t is stamped t
-- rounded up to the millisecond; cost whose window ends at the millisecond
-- e still counts while t rounded down is below e. A counter is a hash per
-- (tier, scope key); field TAG holds the buckets of the limit TAG (see HEAD
-- below).
--
-- ARGV[1], ARGV[2]  now rounded down and up to the millisecond, or "" to
--                   read the server's clock (TIME)
-- ARGV[3]  every number of the call, packed as little-endian doubles
--          (read with one `struct.unpack` a limit, rather than parsed from
--          one argument each: `cargo bench --bench redis_store`):
--   R, the number of requests; C, the number of post-charges; S, the
--   number of distinct window shapes; LIFE, the longest a lease lives, in
--   ms (see `want`); K, the number of keys of the limits; then R counts:
--   the number of limits of each request (L, their sum); then S SHAPEs
--   (each read once, however many limits use it); then per limit, 8
--   values: tag, shape number (from 1), capacity, check, charge, cascade
--   group (0: none), want (units to reserve for the caller's lease besides
--   the charge), key number (from 1); per post-charge, 5: tag, shape
--   number, cost (negative: given back), when it was measured
--   (microseconds since the epoch on the caller's clock, or -N for N
--   microseconds before now), and the bucket index to charge (-1: the
--   bucket of that instant)
-- KEYS[1..K]      the counter hashes of the limits, each once a request
--                 (a request's limits mostly share their caller's hash)
-- KEYS[K+1..K+C]  the counter hash of each post-charge
-- SHAPE, 6 values:      bucket, reach, offset, window (0: a fixed window),
--                       and for a fixed window in a time zone the window
--                       the caller's clock puts the request in and its end
--                       (else -1 -1): zone rules are the caller's, Lua has
--                       no time zone database
-- A limit's tag names its field in the counter hash (as text).
-- bucket, offset, window and ends are milliseconds; a fixed window's
-- bucket is its length. A fixed window's record keeps its end instant
-- where a sliding bucket keeps its last stamp.
--
-- Returns, as one string of little-endian doubles: the stamp, then per
-- request its admission (1 or 0), then per limit: verdict, used, reset,
-- retry, index, granted, until (instants in ms). verdict: 0 room (retry =
-- when the oldest counted record of a sliding window leaves, 0 when none
-- or not known), 1 passed (cascade member after the one charged), 2 full
-- (retry = when it has room), 3 never fits. `used` counts what was
-- granted.
--
-- A lease: an admitted limit asked to `want` units more is charged up to
-- that many more (`granted`; never more than half the room its charge
-- leaves), stamped `until`, the latest instant the caller may use them:
-- at most LIFE after the stamp and never past the last millisecond of the
-- charged bucket (a fixed window's: of the window). Every unit the caller
-- later admits locally, at an instant up to `until`, was thus counted in
-- the bucket it belongs to, for at least as long as its own charge would
-- count; the caller gives back what it did not use.

-- Globals are table lookups on every use: the ones used per limit are
-- read once, here.
local tonumber, unpack_, pack = tonumber, struct.unpack, struct.pack
local sub, max, min, mfloor, ceil = string.sub, math.max, math.min, math.floor, math.ceil
local KEYS, ARGV, tostring = KEYS, ARGV, tostring
local P = ARGV[3]

local floor, stamp
if ARGV[1] == '' then
  local t = redis.call('TIME')
  local s, us = tonumber(t[1]), tonumber(t[2])
  floor = s * 1000 + mfloor(us / 1000)
  stamp = s * 1000 + ceil(us / 1000)
else
  floor, stamp = tonumber(ARGV[1]), tonumber(ARGV[2])
end
local R, C, S, LIFE, K = unpack_('<ddddd', P)
-- The number of limits of each request.
local counts = {}
local L = 0
for r = 1, R do
  local n = unpack_('<d', P, 8 * (4 + r) + 1)
  counts[r] = n
  L = L + n
end
-- The byte offsets (from 1) of the shapes, the limits and the post-charges.
local SHAPES = 8 * (5 + R) + 1
local LIMITS = SHAPES + 48 * S
local POSTS = LIMITS + 64 * L

-- Field names, by tag.
local names = {}
local function name(tag)
  local n = names[tag]
  if not n then
    n = tostring(tag)
    names[tag] = n
  end
  return n
end

-- floor(a / b) for integers below 2^53, corrected for rounding.
local function fdiv(a, b)
  local q = mfloor(a / b)
  if q * b > a then
    q = q - 1
  elseif (q + 1) * b <= a then
    q = q + 1
  end
  return q
end

-- Shape `k` (see SHAPE above): a table.
local function shape(k)
  local bucket, reach, offset, window, zidx, zend = unpack_('<dddddd', P, SHAPES + 48 * (k - 1))
  if zidx < 0 then
    zidx, zend = nil, nil
  end
  return {
    bucket = bucket,
    reach = reach,
    offset = offset,
    window = window,
    zidx = zidx,
    zend = zend,
  }
end

-- The bucket or window of an instant: sliding buckets by stamp, fixed
-- windows by the instant rounded down (zoned ones as the caller says).
local function index(s, f, w)
  if w.window > 0 then
    return fdiv(s, w.bucket)
  end
  if w.zidx then
    return w.zidx
  end
  return fdiv(f + w.offset, w.bucket)
end

-- The shapes of the call, by number.
local shapes = {}
for k = 1, S do
  local w = shape(k)
  -- The bucket or window of this call's instant.
  w.now = index(stamp, floor, w)
  shapes[k] = w
end

-- The end of fixed window i (0 when only its record knows it).
local function fend(i, w)
  if w.zidx then
    if i == w.zidx then
      return w.zend
    end
    return 0
  end
  return (i + 1) * w.bucket - w.offset
end

-- The latest that the cost of bucket i can stop counting (its key's
-- expiry covers it).
local function latest(i, w)
  if w.window > 0 then
    return (i + 1) * w.bucket - 1 + w.window
  end
  return fend(i, w)
end

-- When the cost of bucket i, last stamped `last`, stops counting (a fixed
-- window's record holds its end).
local function forget(i, last, w)
  if w.window > 0 then
    return last + w.window
  end
  return last
end

-- A limit's buckets are one string: the total cost it holds, then one
-- record (index, cost, last stamp) per bucket, indices ascending; all
-- doubles (exact below 2^53). A decision reads the total and the records
-- at the edges (unpack_ at an offset), not every bucket.
local HEAD, REC = 8, 24

-- While a call runs, a limit's value is a table: the string `s`, plus
-- cost `d` charged to its newest record since, whose latest stamp is then
-- at least `t`. Charges to the newest bucket (nearly all of them) only
-- move `d` and `t`; the string is rebuilt when another change needs it,
-- and once before it is written: a call deciding many requests on one key
-- builds it once, not once a request. `k` is its key; `w` says it is to
-- be written back (made with the table, so that setting it never grows
-- the table).
local function size(o)
  if o.s == '' then
    return 0
  end
  return (#o.s - HEAD) / REC
end

-- Index, cost and last stamp of record k (from 1).
local function rec(o, k)
  local i, c, l = unpack_('<ddd', o.s, HEAD + 1 + REC * (k - 1))
  if o.d ~= 0 and HEAD + REC * k == #o.s then
    c = c + o.d
    if o.t > l then
      l = o.t
    end
  end
  return i, c, l
end

local function total(o)
  return unpack_('<d', o.s, 1) + o.d
end

-- The value as one string, what was charged since applied.
local function flat(o)
  if o.d ~= 0 then
    local s = o.s
    local n = #s
    local tot = unpack_('<d', s) + o.d
    local i, c, l = unpack_('<ddd', s, n - REC + 1)
    c = c + o.d
    if o.t > l then
      l = o.t
    end
    if n == HEAD + REC then
      o.s = pack('<dddd', tot, i, c, l)
    else
      o.s = pack('<d', tot) .. sub(s, HEAD + 1, n - REC) .. pack('<ddd', i, c, l)
    end
    o.d, o.t = 0, 0
  end
  return o.s
end

-- Buckets of a key, by tag, read once per key. A value that is not such a
-- string (written by something else) counts as empty.
local cache = {}
local function counters(key)
  local c = cache[key]
  if c then
    return c
  end
  c = {}
  local all = redis.call('HGETALL', key)
  for j = 1, #all, 2 do
    local v = all[j + 1]
    if #v > HEAD and (#v - HEAD) % REC == 0 then
      c[all[j]] = {s = v, d = 0, t = 0, k = key, w = false}
    end
  end
  cache[key] = c
  return c
end

-- The value of limit `tag` of `key` (an empty one when it has none).
local function get(key, tag)
  local c = counters(key)
  local o = c[tag]
  if not o then
    o = {s = '', d = 0, t = 0, k = key, w = false}
    c[tag] = o
  end
  return o
end

-- Keys with a limit to write back (each once, in order: a limit to write
-- is marked `w`), and the expiry (ms from now) each key must reach.
local dirty, marked, expire = {}, {}, {}
local function extend(key, ms)
  if ms <= 0 then
    return
  end
  if not expire[key] or expire[key] < ms then
    expire[key] = ms
  end
end

-- The live part of `o`: buckets from `lo` on whose window has not ended
-- (`window` > 0: sliding, where buckets leave oldest first). Returns the
-- total, the index of the first live record and the number of records.
local function live(o, lo, window)
  local n = size(o)
  local sum = 0
  if n > 0 then
    sum = total(o)
  end
  local first = 1
  while first <= n do
    local i, c, last = rec(o, first)
    if i >= lo and (window == 0 or last + window > floor) then
      break
    end
    sum = sum - c
    first = first + 1
  end
  return sum, first, n
end

-- The stamp a charge at `s` leaves in bucket `idx`: inside the bucket for
-- a sliding window (a clock that went back charges the newest bucket, from
-- its start), the window's end for a fixed one.
local function stamp_in(idx, s, w)
  if w.window > 0 then
    return min(max(s, idx * w.bucket), (idx + 1) * w.bucket - 1)
  end
  return fend(idx, w)
end

-- `amount` charged to the newest record of `o`, stamped `s`: pending until
-- the string is rebuilt.
local function pend(o, amount, s)
  o.d = o.d + amount
  if s > o.t then
    o.t = s
  end
end

-- Makes `o` its buckets without those that left (see `live`), with
-- `amount` added to bucket `idx` stamped `s` (a negative amount gives back,
-- never below zero, and keeps the stamp; a bucket left empty is dropped).
-- Returns whether `idx` opened a new newest bucket. A fixed window is
-- stamped with its end.
local function add(o, idx, amount, lo, s, w)
  local window = w.window
  s = stamp_in(idx, s, w)
  if o.s == '' then
    if amount > 0 and idx >= lo then
      o.s = pack('<dddd', amount, idx, amount, s)
      return true
    end
    return false
  end
  local total, first, n = live(o, lo, window)
  if first == 1 and amount > 0 then
    -- Nothing to drop (the usual case): charge the newest bucket, or open
    -- a newer one.
    local last = rec(o, n)
    if last == idx then
      pend(o, amount, s)
      return false
    elseif last < idx then
      o.s = pack('<d', total + amount) .. sub(flat(o), HEAD + 1)
        .. pack('<ddd', idx, amount, s)
      return true
    end
  end
  local v = flat(o)
  local body = ''
  if first <= n then
    body = sub(v, HEAD + 1 + REC * (first - 1))
  end
  local m = n - first + 1
  -- k: the last record whose index is at most idx (0: none).
  local k, at = m, nil
  while k >= 1 do
    at = unpack_('<d', body, 1 + REC * (k - 1))
    if at <= idx then
      break
    end
    k = k - 1
  end
  local opened = false
  if k >= 1 and at == idx then
    local _, c, ls = unpack_('<ddd', body, 1 + REC * (k - 1))
    local left = c + amount
    if left < 0 then
      left = 0
    end
    if amount > 0 then
      ls = max(ls, s)
    end
    total = total + left - c
    local rest = sub(body, REC * k + 1)
    if left > 0 then
      body = sub(body, 1, REC * (k - 1)) .. pack('<ddd', idx, left, ls) .. rest
    else
      body = sub(body, 1, REC * (k - 1)) .. rest
    end
  elseif amount > 0 and idx >= lo then
    total = total + amount
    body = sub(body, 1, REC * k) .. pack('<ddd', idx, amount, s) .. sub(body, REC * k + 1)
    opened = k == m
  end
  if body == '' then
    o.s = ''
  else
    o.s = pack('<d', total) .. body
  end
  return opened
end

-- Limit `tag` of `key` (its value `o`) is to be written back.
local function write(key, o)
  o.w = true
  if not marked[key] then
    marked[key] = true
    dirty[#dirty + 1] = key
  end
end

-- The values of limit `i` (see ARGV[3]).
local function limit(i)
  return unpack_('<dddddddd', P, LIMITS + 64 * (i - 1))
end

-- Post-charges first: costs measured after earlier responses.
for c = 1, C do
  local t, sh, cost, at, idx = unpack_('<ddddd', P, POSTS + 40 * (c - 1))
  local key, tag = KEYS[K + c], name(t)
  local w = shapes[sh]
  local s = stamp
  if idx < 0 then
    if at <= 0 then
      at = floor * 1000 + at
    end
    s = ceil(at / 1000)
    idx = index(s, mfloor(at / 1000), w)
  end
  local lo = index(stamp, floor, w) - w.reach
  local o = get(key, tag)
  local opened = add(o, idx, cost, lo, s, w)
  write(key, o)
  if opened then
    extend(key, latest(idx, w) - floor + 1000)
  end
end

local out, nout = {stamp}, 1
-- Per limit, from its check, five values in one table (one table grows,
-- not five): the first record still counting, the newest record's bucket,
-- the shape, the value and the tag.
local scratch = {}

-- Decides request r, whose limits are the n from number k0 + 1 on.
local function decide(k0, n)
  local at = nout + 1
  out[at] = 0
  nout = at
  local admitted = true
  local group, group_room = 0, false
  for i = k0 + 1, k0 + n do
    -- (`limit`, inline.)
    local t, sh, cap, check, charge, g, want, kn = unpack_('<dddddddd', P, LIMITS + 64 * (i - 1))
    local key, tag = KEYS[kn], names[t] or name(t)
    local w = shapes[sh]
    if g ~= group then
      if group ~= 0 and not group_room then
        admitted = false
      end
      group, group_room = g, false
    end
    -- `get`, its usual case inline.
    local c = cache[key]
    local v = c and c[tag] or get(key, tag)
    local cur = w.now
    local vs = v.s
    local m = 0
    if vs ~= '' then
      m = (#vs - HEAD) / REC
    end
    local used, first, ni, nl = 0, 1, 0, 0
    -- When the oldest record still counting leaves, if before the newest
    -- (sliding windows; 0: the reset says).
    local frees = 0
    if m > 0 then
      local _
      -- The total and the oldest record in one read; the newest in
      -- another when there are several.
      local tot, i1, c1, l1 = unpack_('<dddd', vs)
      if m > 1 then
        ni, _, nl = unpack_('<ddd', vs, HEAD + 1 + REC * (m - 1))
      else
        ni, nl = i1, l1
      end
      if v.d ~= 0 then
        if v.t > nl then
          nl = v.t
        end
        if m == 1 then
          l1 = nl
        end
      end
      -- A clock that went back counts in the newest bucket.
      if ni > cur then
        cur = ni
      end
      -- The oldest record still counting (the usual case): nothing leaves.
      if i1 >= cur - w.reach and (w.window == 0 or l1 + w.window > floor) then
        used = tot + v.d
        if w.window > 0 and m > 1 then
          frees = l1 + w.window
        end
      else
        used, first = live(v, cur - w.reach, w.window)
        if w.window > 0 and first < m then
          local _, _, lf = rec(v, first)
          frees = lf + w.window
        end
      end
    end
    local x = 5 * i
    scratch[x - 4], scratch[x - 3], scratch[x - 2], scratch[x - 1], scratch[x] = first, ni, w, v, tag
    local reset = stamp
    if first <= m then
      -- (`forget`, inline.)
      reset = nl
      if w.window > 0 then
        reset = nl + w.window
      end
    end
    local verdict, retry = 0, frees
    if g ~= 0 and group_room then
      verdict = 1
    elseif check > cap then
      verdict = 3
    elseif used + check <= cap then
      verdict = 0
    else
      verdict = 2
      local need, freed = used + check - cap, 0
      for k = first, m do
        local ri, c, rl = rec(v, k)
        freed = freed + c
        retry = forget(ri, rl, w)
        if freed >= need then
          break
        end
      end
    end
    if verdict == 0 then
      group_room = g ~= 0
    elseif g == 0 and verdict ~= 1 then
      admitted = false
    end
    local o = nout
    out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5] = verdict, used, reset, retry, cur
    -- The charge and the units wanted, until the charge replaces them with
    -- what was granted (see below).
    out[o + 6], out[o + 7] = charge, want
    nout = o + 7
  end
  if group ~= 0 and not group_room then
    admitted = false
  end
  if not admitted then
    for o = at + 6, nout, 7 do
      out[o], out[o + 1] = 0, 0
    end
    return
  end
  for i = k0 + 1, k0 + n do
    local o = at + 7 * (i - k0 - 1)
    local charge, want = out[o + 6], out[o + 7]
    out[o + 6], out[o + 7] = 0, 0
    if out[o + 1] == 0 and charge > 0 then
      local x = 5 * i
      local v = scratch[x - 1]
      local key, tag, cur = v.k, scratch[x], out[o + 5]
      local w = scratch[x - 2]
      local s = stamp
      if want > 0 and LIFE > 0 then
        -- A lease (see the top): half the room left at most, until the
        -- end of its life or of the bucket, whichever comes first.
        local _, _, cap = limit(i)
        local grant = min(want, mfloor((cap - out[o + 2] - charge) / 2))
        local last
        if w.window > 0 then
          last = (cur + 1) * w.bucket - 1
        else
          last = fend(cur, w) - 1
        end
        local until_ = min(stamp + LIFE, last)
        if grant > 0 and until_ >= stamp then
          charge = charge + grant
          out[o + 6], out[o + 7] = grant, until_
          s = until_
        end
      end
      local opened = false
      if scratch[x - 4] == 1 and scratch[x - 3] == cur and v.s ~= '' then
        -- What `add` does when the charge falls in the newest bucket and
        -- nothing leaves (the check found so): only the pending count and
        -- stamp move. The newest bucket stays the newest: its reset (from
        -- the check) moves to this stamp's if that is later.
        -- (`stamp_in`, `pend` and `forget`, inline.)
        local st, r
        if w.window > 0 then
          local b = w.bucket
          -- (`stamp_in`: the stamp kept inside the bucket.)
          st = s
          if st < cur * b then
            st = cur * b
          elseif st > (cur + 1) * b - 1 then
            st = (cur + 1) * b - 1
          end
          r = st + w.window
        else
          st = fend(cur, w)
          r = st
        end
        v.d = v.d + charge
        if st > v.t then
          v.t = st
        end
        if r > out[o + 3] then
          out[o + 3] = r
        end
      else
        opened = add(v, cur, charge, cur - w.reach, s, w)
        -- The newest counted bucket is now the current one.
        local ni, _, nl = rec(v, (#v.s - HEAD) / REC)
        out[o + 3] = forget(ni, nl, w)
      end
      -- (`write`, inline.)
      v.w = true
      if not marked[key] then
        marked[key] = true
        dirty[#dirty + 1] = key
      end
      out[o + 2] = out[o + 2] + charge
      if opened then
        -- The key lives a second past the latest its newest bucket can
        -- count (later charges to the bucket need no new expiry).
        extend(key, latest(cur, w) - floor + 1000)
      end
    end
  end
  out[at] = 1
end

local k0 = 0
for r = 1, R do
  local n = counts[r]
  decide(k0, n)
  k0 = k0 + n
end

-- Every rewritten limit of a key in one HSET (HDEL when nothing is left).
local set = {}
for _, key in ipairs(dirty) do
  local n, del = 0, nil
  for tag, o in pairs(cache[key]) do
    if o.w then
      local v = flat(o)
      if v ~= '' then
        set[n + 1], set[n + 2] = tag, v
        n = n + 2
      else
        del = del or {}
        del[#del + 1] = tag
      end
    end
  end
  if n > 0 then
    redis.call('HSET', key, unpack(set, 1, n))
  end
  if del then
    redis.call('HDEL', key, unpack(del))
  end
end
-- A key's expiry only ever moves later: it covers limits of the key that
-- this call did not see (a post-charged limit of a longer window, say).
for key, ms in pairs(expire) do
  local left = redis.call('PTTL', key)
  if left >= 0 and left < ms or left == -1 then
    redis.call('PEXPIRE', key, ms)
  end
end
-- One string of little-endian doubles (exact integers below 2^53): a
-- client reads it far faster than an array of integers, value by value.
local parts, FULL = {}, '<' .. string.rep('d', 64)
for k = 1, nout, 64 do
  local last = min(k + 63, nout)
  local f = FULL
  if last - k + 1 < 64 then
    f = '<' .. string.rep('d', last - k + 1)
  end
  parts[#parts + 1] = pack(f, unpack(out, k, last))
end
return table.concat(parts)
