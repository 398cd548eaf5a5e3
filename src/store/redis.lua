-- tierlimit: apply pending post-charges, then check and charge every limit
-- of one request, all or nothing, in one atomic call.
--
-- Times are whole microseconds since the epoch (below 2^53, exact in Lua
-- numbers). A counter is a hash per (tier, scope key); field "TAG:INDEX"
-- holds the cost charged in bucket INDEX of the limit TAG.
--
-- ARGV[1]  now in microseconds, or "" to read the server's clock (TIME)
-- ARGV[2]  L, the number of limits;  ARGV[3]  C, the number of post-charges
-- KEYS[1..L]      the counter hash of each limit
-- KEYS[L+1..L+C]  the counter hash of each post-charge
-- per limit, 8 values:  tag, bucket, reach, offset, capacity, check, charge,
--                       cascade group (0: none)
-- per post-charge, 6:   tag, bucket, offset, cost, ttl in ms, and when it
--                       was measured: microseconds since the epoch on the
--                       caller's clock, or -N for N microseconds before now
--
-- Returns {now, admitted, then per limit: verdict, used, reset, retry, index}
-- verdict: 0 room, 1 passed (cascade member after the one charged),
--          2 full (retry = when it has room), 3 never fits.

local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
local L = tonumber(ARGV[2])
local C = tonumber(ARGV[3])

-- floor(a / b) for integers below 2^53, corrected for rounding.
local function fdiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then
    q = q - 1
  elseif (q + 1) * b <= a then
    q = q + 1
  end
  return q
end

local function field(tag, idx)
  if idx < 1e14 then
    return tag .. ':' .. idx
  end
  return string.format('%s:%d', tag, idx)
end

local EMPTY = {}

-- Post-charges first: costs measured after earlier responses.
local base = 4 + 8 * L
for c = 1, C do
  local a = base + 6 * (c - 1)
  local key = KEYS[L + c]
  local at = tonumber(ARGV[a + 5])
  if at <= 0 then
    at = now + at
  end
  local idx = fdiv(at + tonumber(ARGV[a + 2]), tonumber(ARGV[a + 1]))
  redis.call('HINCRBY', key, field(ARGV[a], idx), ARGV[a + 3])
  redis.call('PEXPIRE', key, ARGV[a + 4])
end

-- Counters of a key, by tag: {idx = count}, read once per key.
local cache = {}
local function counters(key)
  local c = cache[key]
  if c then
    return c
  end
  c = {}
  local flat = redis.call('HGETALL', key)
  for j = 1, #flat, 2 do
    local f = flat[j]
    local s = string.find(f, ':', 1, true)
    if s then
      local tag = string.sub(f, 1, s - 1)
      local byTag = c[tag]
      if not byTag then
        byTag = {}
        c[tag] = byTag
      end
      byTag[tonumber(string.sub(f, s + 1))] = tonumber(flat[j + 1])
    end
  end
  cache[key] = c
  return c
end

local out = {now, 0}
local admitted = true
local group, group_room = 0, false
for i = 1, L do
  local a = 4 + 8 * (i - 1)
  local key, tag = KEYS[i], ARGV[a]
  local bucket, reach, offset = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local cap, check = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  local g = tonumber(ARGV[a + 7])
  if g ~= group then
    if group ~= 0 and not group_room then
      admitted = false
    end
    group, group_room = g, false
  end
  local byTag = counters(key)[tag] or EMPTY
  local cur = fdiv(now + offset, bucket)
  for idx, _ in pairs(byTag) do
    -- A clock that went back counts in the newest bucket.
    if idx > cur then
      cur = idx
    end
  end
  local used, newest, dead = 0, nil, nil
  for idx, n in pairs(byTag) do
    if idx >= cur - reach then
      used = used + n
      if not newest or idx > newest then
        newest = idx
      end
    else
      dead = dead or {}
      dead[#dead + 1] = field(tag, idx)
      byTag[idx] = nil
    end
  end
  if dead then
    redis.call('HDEL', key, unpack(dead))
  end
  local reset = now
  if newest then
    reset = (newest + reach + 1) * bucket - offset
  end
  local verdict, retry = 0, 0
  if g ~= 0 and group_room then
    verdict = 1
  elseif check > cap then
    verdict = 3
  elseif used + check <= cap then
    verdict = 0
  else
    verdict = 2
    local live = {}
    for idx, _ in pairs(byTag) do
      live[#live + 1] = idx
    end
    table.sort(live)
    local need, freed = used + check - cap, 0
    for _, idx in ipairs(live) do
      freed = freed + byTag[idx]
      if freed >= need then
        retry = (idx + reach + 1) * bucket - offset
        break
      end
    end
  end
  if verdict == 0 then
    group_room = g ~= 0
  elseif g == 0 and verdict ~= 1 then
    admitted = false
  end
  local o = #out
  out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5] = verdict, used, reset, retry, cur
end
if group ~= 0 and not group_room then
  admitted = false
end

if admitted then
  -- Every charge of a key in one HSET: the script knows the counts. The key
  -- expires a second after its newest counter leaves its window; that
  -- moment moves only when a charge opens a new bucket, so only then is the
  -- expiry set again.
  local writes, expire = {}, {}
  for i = 1, L do
    local a = 4 + 8 * (i - 1)
    local o = 2 + 5 * (i - 1)
    local charge = tonumber(ARGV[a + 6])
    if out[o + 1] == 0 and charge > 0 then
      local key, tag, cur = KEYS[i], ARGV[a], out[o + 5]
      local byTag = counters(key)[tag]
      if not byTag then
        byTag = {}
        counters(key)[tag] = byTag
      end
      local n = (byTag[cur] or 0) + charge
      byTag[cur] = n
      local w = writes[key]
      if not w then
        w = {}
        writes[key] = w
      end
      w[#w + 1] = field(tag, cur)
      w[#w + 1] = n
      local reach, bucket, offset = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 3])
      out[o + 2] = out[o + 2] + charge
      -- The newest counted bucket is now the current one.
      out[o + 3] = (cur + reach + 1) * bucket - offset
      if n == charge then
        expire[key] = true
      end
    end
  end
  for key, w in pairs(writes) do
    redis.call('HSET', key, unpack(w))
  end
  for key, _ in pairs(expire) do
    -- Every limit of a key is in the request (one tier, one scope): the
    -- latest moment any of its counters still counts is among their resets.
    local last = now
    for i = 1, L do
      local r = out[2 + 5 * (i - 1) + 3]
      if KEYS[i] == key and r > last then
        last = r
      end
    end
    redis.call('PEXPIRE', key, math.floor((last - now) / 1000) + 1000)
  end
  out[2] = 1
end
return out
