"""The Lua scripts behind ``ig3.scheduler.live`` (kept apart so the adapter reads as Python).

Every script takes ``ARGV[1]`` = the key prefix (which carries a ``{hash tag}``: every key of the
live state lives in one Redis Cluster slot, so multi-key scripts are legal on ElastiCache
Serverless/cluster mode) and ``KEYS[1]`` = the heartbeat index, which routes the call to that slot.

Key layout under prefix ``P``:
- ``P hb``             ZSET thing -> time of its last heartbeat (receive time; TTL sweep)
- ``P d:<thing>``      HASH live state: cap, inflight, nres, free, listed, region, lat, lon, tps,
                        status, ts, seen, sig, rel, rep, models ("\\n"-joined), o:<model> (offer JSON),
                        mt:<model> (its tokens/s), q:<model> (index quality)
- ``P res:<thing>``    ZSET task id -> reservation expiry
- ``P holds``          ZSET "<thing>\\t<task>" -> expiry (sweeps reservations nobody touches)
- ``P t:<task>``       STRING thing holding the task's reservation (idempotent place), PX hold
- ``P f:<model>``      ZSET thing -> static quality, devices with a free slot (``|<region>`` variant)
- ``P x<level>:<model>@<i>,<j>``  ZSET the same devices in one cell of the proximity grid at a level
                        (``<model>|<region>`` variant); the grid is ``GRID_DEGREES``
- ``P c:<model>``      HASH catalogue counters: devices, cap, free, r:<region>, tps_sum, tps_n,
                        x:<ctx>, k:<kind>
- ``P models``         SET of models with at least one live device
- ``P snap``           HASH thing -> JSON snapshot of its live fields (the fetch's one read, see snap())
- ``P om:<model>``     HASH thing -> the model's offer JSON on that device (ctx, quant, sha256, kinds, tps)
- ``P rel:<thing>``    HASH decayed outcome counts s, n, t, rate, and the external reputation rep
                        (outlives the device's live state)

Invariants every script keeps: a device is in the ``f:``/``x:`` indexes iff it is live (until
``expire()`` sweeps a lapsed heartbeat), not draining and has a free slot; ``d:<thing>.free`` is the
free count the catalogue counters hold; ``snap`` and ``om:`` mirror the device hash.
"""

from __future__ import annotations

import math
import re

# Proximity grid resolutions in degrees, finest first; each divides 360 and 180.
GRID_DEGREES = (0.25, 1.0, 4.0, 15.0)


def grid_cell(level: int, lat: float, lon: float) -> tuple[int, int]:
    """The cell (row, column) of a point at a grid level (1-based), as the scripts compute it."""
    size = GRID_DEGREES[level - 1]
    rows = int(180 / size)
    i = min(max(math.floor((lat + 90) / size), 0), rows - 1)
    return i, math.floor((lon + 180) / size) % int(360 / size)


# Shared functions, prepended to each script.
COMMON = r"""
local P = ARGV[1]
local REF_TPS = __REFERENCE_TPS__

local function capability(tps)
  if tps == nil or tps <= 0 then return 0.5 end
  return tps / (tps + REF_TPS)
end

local function split(s)
  local out = {}
  if s then for m in string.gmatch(s, '[^\n]+') do out[#out + 1] = m end end
  return out
end

-- Proximity index: per model (and model|region), a quality-ordered ZSET per cell of a lat/lon grid
-- at each of these resolutions in degrees (each divides 360). A lookup reads the client's cell and
-- its 8 neighbours at the finest resolution that yields enough devices: a bounded number of
-- O(log N + k) reads however dense or sparse the fleet is around the client.
local GRID = {__GRID__}
-- The 8 neighbours of a cell: row and column offsets (south, north, west, east, then the corners).
local DI = {-1, 1, 0, 0, -1, -1, 1, 1}
local DJ = {0, 0, -1, 1, -1, 1, -1, 1}

local function grid_cell(level, lat, lon)
  local size = GRID[level]
  local rows = 180 / size
  local i = math.floor((lat + 90) / size)
  if i >= rows then i = rows - 1 end
  if i < 0 then i = 0 end
  return i, math.floor((lon + 180) / size) % (360 / size)
end

local function cell_key(level, suffix, i, j)
  return P .. 'x' .. level .. ':' .. suffix .. '@' .. i .. ',' .. j
end

-- Every free-capacity index key a device is listed under for one model.
local function index_keys(model, region, lat, lon)
  local suffixes = {model}
  if region and region ~= '' then suffixes[2] = model .. '|' .. region end
  local keys = {}
  for _, s in ipairs(suffixes) do
    keys[#keys + 1] = P .. 'f:' .. s
    if lat and lat ~= '' then
      local la, lo = tonumber(lat), tonumber(lon)
      for level = 1, #GRID do
        local i, j = grid_cell(level, la, lo)
        keys[#keys + 1] = cell_key(level, s, i, j)
      end
    end
  end
  return keys
end

-- `known`: the device's {models, region, lat, lon} when the caller has read them already.
local function list(thing, d, known)
  local f = known or redis.call('HMGET', d, 'models', 'region', 'lat', 'lon')
  for _, model in ipairs(split(f[1])) do
    local q = tonumber(redis.call('HGET', d, 'q:' .. model)) or 0
    for _, key in ipairs(index_keys(model, f[2], f[3], f[4])) do redis.call('ZADD', key, q, thing) end
  end
end

local function unlist(thing, d, known)
  local f = known or redis.call('HMGET', d, 'models', 'region', 'lat', 'lon')
  for _, model in ipairs(split(f[1])) do
    for _, key in ipairs(index_keys(model, f[2], f[3], f[4])) do redis.call('ZREM', key, thing) end
  end
end

-- Drop expired reservations, recompute free slots, keep catalogue counters and indexes in step.
-- The decision path's copy of a device's live fields, one JSON array per device in one hash, so a
-- fetch reads every candidate with a single HMGET (a redis.call costs ~10x its command here).
-- [cap, inflight, nres, region, lat, lon, tps, status, rel, rep, seen]; rewritten whenever they change
-- (every heartbeat, as `seen` moves).
local SNAP_FIELDS = {'cap', 'inflight', 'nres', 'region', 'lat', 'lon', 'tps', 'status', 'rel', 'rep', 'seen'}

-- `f`: the device hash's SNAP_FIELDS, in order (nres overridden when it is being rewritten).
local function write_snap(thing, f, nres)
  local N = cjson.null
  local region = f[4]
  if not region or region == '' then region = N end
  redis.call('HSET', P .. 'snap', thing, cjson.encode({tonumber(f[1]) or 0, tonumber(f[2]) or 0,
    nres or tonumber(f[3]) or 0, region, tonumber(f[5]) or N, tonumber(f[6]) or N, tonumber(f[7]) or N,
    f[8] or N, tonumber(f[9]) or N, tonumber(f[10]) or N, tonumber(f[11]) or N}))
end

local function snap(thing)
  local f = redis.call('HMGET', P .. 'd:' .. thing, unpack(SNAP_FIELDS))
  if not f[1] then
    redis.call('HDEL', P .. 'snap', thing)
    return
  end
  write_snap(thing, f)
end

-- Drop the device's expired reservations; returns how many it still holds.
local function purge(thing, now)
  local r = P .. 'res:' .. thing
  local expired = redis.call('ZRANGEBYSCORE', r, '-inf', now)
  for _, task in ipairs(expired) do
    redis.call('ZREM', r, task)
    redis.call('ZREM', P .. 'holds', thing .. '\t' .. task)
  end
  return redis.call('ZCARD', r)
end

-- The device hash fields settle() works from: SNAP_FIELDS first (1-11), so a change rewrites the
-- snapshot without reading the hash again; then free, listed, models (12-14).
local SETTLE_FIELDS = {'cap', 'inflight', 'nres', 'region', 'lat', 'lon', 'tps', 'status', 'rel', 'rep', 'seen',
                       'free', 'listed', 'models'}

-- Free slots from the last heartbeat and `nres` live reservations; catalogue counters, indexes and
-- the stored fields follow (written only when something changed). `f`: the device's SETTLE_FIELDS
-- as read (kept in step with what is written, so a caller can settle the same device again without
-- re-reading it). Returns the free slots.
local function settle_fields(thing, d, f, nres)
  local cap, inflight = tonumber(f[1]), tonumber(f[2]) or 0
  local old_free, old_listed = tonumber(f[12]) or 0, f[13]
  local busy = inflight
  if nres > busy then busy = nres end
  local free = cap - busy
  if free < 0 then free = 0 end
  if free ~= old_free then
    for _, model in ipairs(split(f[14])) do
      redis.call('HINCRBY', P .. 'c:' .. model, 'free', free - old_free)
    end
  end
  local listed = (free > 0 and f[8] == 'online') and '1' or '0'
  if listed ~= old_listed then
    local known = {f[14], f[4], f[5], f[6]}
    if listed == '1' then list(thing, d, known) else unlist(thing, d, known) end
  end
  if free ~= old_free or listed ~= old_listed or nres ~= tonumber(f[3]) then
    redis.call('HSET', d, 'nres', nres, 'free', free, 'listed', listed)
    write_snap(thing, f, nres)
    f[3], f[12], f[13] = tostring(nres), tostring(free), listed
  end
  return free
end

local function settle(thing, nres)
  local d = P .. 'd:' .. thing
  local f = redis.call('HMGET', d, unpack(SETTLE_FIELDS))
  if not f[1] then return 0 end
  return settle_fields(thing, d, f, nres)
end

local function refresh(thing, now)
  return settle(thing, purge(thing, now))
end

-- Remove a device's contribution to indexes and catalogue (before its models/region change or it
-- leaves). Reservations stay: they belong to tasks, not to the heartbeat.
local function bump(c, field, by)
  if redis.call('HINCRBY', c, field, by) <= 0 then redis.call('HDEL', c, field) end
end

-- Catalogue extras per model: generation speed (sum and count of devices reporting one), and how
-- many devices offer each context length (x:<ctx>) and task kind (k:<kind>).
local function count_offer(d, c, model, sign)
  local raw = redis.call('HGET', d, 'o:' .. model)
  local o = raw and cjson.decode(raw) or {}
  local tps = tonumber(redis.call('HGET', d, 'mt:' .. model)) or tonumber(redis.call('HGET', d, 'tps'))
  if tps and tps > 0 then
    redis.call('HINCRBYFLOAT', c, 'tps_sum', sign * tps)
    bump(c, 'tps_n', sign)
  end
  if type(o.ctx) == 'number' then bump(c, 'x:' .. o.ctx, sign) end
  if type(o.kinds) == 'table' then
    for _, kind in ipairs(o.kinds) do bump(c, 'k:' .. kind, sign) end
  end
end

local function detach(thing)
  local d = P .. 'd:' .. thing
  local f = redis.call('HMGET', d, 'models', 'region', 'free', 'cap', 'listed')
  if not f[1] and not f[4] then return end
  if f[5] == '1' then unlist(thing, d) end
  local region, free, cap = f[2], tonumber(f[3]) or 0, tonumber(f[4]) or 0
  for _, model in ipairs(split(f[1])) do
    local c = P .. 'c:' .. model
    count_offer(d, c, model, -1)
    redis.call('HDEL', P .. 'om:' .. model, thing)
    -- (0 - x, never -x: Lua formats -0 as "-0", which HINCRBY rejects)
    if free ~= 0 then redis.call('HINCRBY', c, 'free', 0 - free) end
    if cap ~= 0 then redis.call('HINCRBY', c, 'cap', 0 - cap) end
    if region and region ~= '' then
      if redis.call('HINCRBY', c, 'r:' .. region, -1) <= 0 then redis.call('HDEL', c, 'r:' .. region) end
    end
    if redis.call('HINCRBY', c, 'devices', -1) <= 0 then
      redis.call('DEL', c)
      redis.call('SREM', P .. 'models', model)
    end
    redis.call('HDEL', d, 'o:' .. model, 'q:' .. model, 'mt:' .. model)
  end
  redis.call('HSET', d, 'models', '', 'free', 0, 'listed', '0')
end

local function attach(thing, now)
  local d = P .. 'd:' .. thing
  local f = redis.call('HMGET', d, 'models', 'region', 'cap')
  local region, cap = f[2], tonumber(f[3]) or 0
  for _, model in ipairs(split(f[1])) do
    local c = P .. 'c:' .. model
    redis.call('HINCRBY', c, 'devices', 1)
    redis.call('HINCRBY', c, 'cap', cap)
    count_offer(d, c, model, 1)
    redis.call('HSET', P .. 'om:' .. model, thing, redis.call('HGET', d, 'o:' .. model))
    if region and region ~= '' then redis.call('HINCRBY', c, 'r:' .. region, 1) end
    redis.call('SADD', P .. 'models', model)
  end
  redis.call('HSET', d, 'free', 0, 'listed', '0')
  return refresh(thing, now)
end

local function requality(thing)
  local d = P .. 'd:' .. thing
  local f = redis.call('HMGET', d, 'models', 'tps', 'rel', 'listed', 'region', 'lat', 'lon')
  local rel = tonumber(f[3]) or 0.8
  for _, model in ipairs(split(f[1])) do
    local tps = tonumber(redis.call('HGET', d, 'mt:' .. model)) or tonumber(f[2])
    local q = capability(tps) * rel
    redis.call('HSET', d, 'q:' .. model, q)
    if f[4] == '1' then
      for _, key in ipairs(index_keys(model, f[5], f[6], f[7])) do redis.call('ZADD', key, 'XX', q, thing) end
    end
  end
end

local function drop(thing)
  detach(thing)
  local r = P .. 'res:' .. thing
  for _, task in ipairs(redis.call('ZRANGE', r, 0, -1)) do
    redis.call('ZREM', P .. 'holds', thing .. '\t' .. task)
    local tk = P .. 't:' .. task
    if redis.call('GET', tk) == thing then redis.call('DEL', tk) end
  end
  redis.call('DEL', r, P .. 'd:' .. thing)
  redis.call('HDEL', P .. 'snap', thing)
  redis.call('ZREM', P .. 'hb', thing)
end
"""

# ARGV: P, now, thing, ts, cap, inflight, region, lat, lon, tps, status, sig, rel_default,
#       n_models, then per model: name, offer JSON, model tps ('' = unknown)
# -> 1 came online, 0 was online, -1 stale (older than the heartbeat already applied; ignored)
HEARTBEAT = (
    COMMON
    + r"""
local now, thing, ts = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local d = P .. 'd:' .. thing
local was = redis.call('ZSCORE', P .. 'hb', thing)
local old = redis.call('HMGET', d, 'ts', 'sig')
if was and old[1] and ts < tonumber(old[1]) then return -1 end
redis.call('ZADD', P .. 'hb', now, thing)
if old[2] == ARGV[12] then
  -- Nothing structural changed: only the load and the clock.
  redis.call('HSET', d, 'ts', ts, 'inflight', ARGV[6], 'seen', now)
  refresh(thing, now)
else
  detach(thing)
  local n = tonumber(ARGV[14])
  local names = {}
  for i = 0, n - 1 do
    local base = 15 + i * 3
    local model = ARGV[base]
    names[#names + 1] = model
    redis.call('HSET', d, 'o:' .. model, ARGV[base + 1])
    if ARGV[base + 2] ~= '' then redis.call('HSET', d, 'mt:' .. model, ARGV[base + 2])
    else redis.call('HDEL', d, 'mt:' .. model) end
  end
  local kept = redis.call('HMGET', P .. 'rel:' .. thing, 'rate', 'rep')
  local rel = kept[1] or ARGV[13]
  if kept[2] then redis.call('HSET', d, 'rep', kept[2]) else redis.call('HDEL', d, 'rep') end
  redis.call('HSET', d, 'ts', ts, 'cap', ARGV[5], 'inflight', ARGV[6], 'region', ARGV[7], 'lat', ARGV[8],
             'lon', ARGV[9], 'tps', ARGV[10], 'status', ARGV[11], 'sig', ARGV[12], 'rel', rel,
             'models', table.concat(names, '\n'), 'seen', now)
  requality(thing)
  attach(thing, now)
end
snap(thing)
if was then return 0 end
return 1
"""
)

# ARGV: P, now, ttl, model, region ('' none), lat ('' none), lon, n_top, n_rand, n_near, offset
# -> {devices in the free index} or {that, how many of the names are the index head, how many the head
#    and the random sample, JSON array of names, JSON array of snapshots (see snap(); null when
#    missing), then per candidate its offer JSON or nil}
FETCH = (
    COMMON
    + r"""
local now, ttl, model, region = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5]
local n_top, n_rand = tonumber(ARGV[8]), tonumber(ARGV[9])
local n_near, offset = tonumber(ARGV[10]), tonumber(ARGV[11])
local suffix = model
if region ~= '' then suffix = model .. '|' .. region end
local fkey = P .. 'f:' .. suffix
local seen, things = {}, {}
local function add(items)
  for _, t in ipairs(items) do
    if not seen[t] then seen[t] = true; things[#things + 1] = t end
  end
end
if n_top > 0 then add(redis.call('ZREVRANGE', fkey, offset, offset + n_top - 1)) end
local got_top = #things
if n_rand > 0 then add(redis.call('ZRANDMEMBER', fkey, n_rand)) end
local got_index = #things
if n_near > 0 and ARGV[6] ~= '' then
  -- The client's cell and its 8 neighbours, nearest cell first (by the gap from the client to the
  -- cell), finest resolution first, until `n_near` devices are found. A coarser level only runs
  -- when the finer block held fewer: then that block was read whole, so a device in it is never
  -- missed for one further away.
  -- Lua is the cost here (measured: ~35 us of interpreter per level when each cell was a table
  -- sorted by a Lua comparator), so a level is a handful of numbers: the gaps to the client
  -- cell's four edges give every neighbour's gap, and the 8 neighbours are sorted as plain
  -- numbers (gap scaled to an integer, neighbour index in the low 4 bits: C comparisons).
  local lat, lon = tonumber(ARGV[6]), tonumber(ARGV[7])
  local cos2 = math.cos(math.rad(lat)) ^ 2
  local found = 0
  for level = 1, #GRID do
    local size = GRID[level]
    local rows, cols = 180 / size, 360 / size
    local i0, j0 = grid_cell(level, lat, lon)
    local south, west = i0 * size - 90, j0 * size - 180
    local gs, gn, gw, ge = lat - south, south + size - lat, lon - west, west + size - lon
    if gs < 0 then gs = 0 end
    if gn < 0 then gn = 0 end
    if gw < 0 then gw = 0 end
    if ge < 0 then ge = 0 end
    gs, gn, gw, ge = gs * gs, gn * gn, gw * gw * cos2, ge * ge * cos2
    -- Neighbour k (1-8) is at row offset DI[k], column offset DJ[k], its gap G[k].
    local G = {gs, gn, gw, ge, gs + gw, gs + ge, gn + gw, gn + ge}
    local pre = P .. 'x' .. level .. ':' .. suffix .. '@'
    local keys = {pre .. i0 .. ',' .. j0}
    local order = {}
    for k = 1, 8 do
      local i = i0 + DI[k]
      if i >= 0 and i < rows then
        order[#order + 1] = math.floor(G[k] * 1e9) * 16 + k
      end
    end
    table.sort(order)
    for n = 1, #order do
      local k = order[n] % 16
      keys[n + 1] = pre .. (i0 + DI[k]) .. ',' .. ((j0 + DJ[k]) % cols)
    end
    -- One EXISTS over the whole block first: most levels below the first populated one are empty.
    if redis.call('EXISTS', unpack(keys)) > 0 then
      for n = 1, #keys do
        -- Only as many as are still missing: the nearer cells' devices are kept, not outnumbered.
        local got = redis.call('ZREVRANGE', keys[n], 0, n_near - found - 1)
        add(got)
        found = found + #got
        if found >= n_near then break end
      end
    end
    if found >= n_near then break end
    found = 0
  end
end
local total = redis.call('ZCARD', fkey)
if #things == 0 then return {total} end
-- Two reads for all candidates. Names and snapshots go out as two JSON arrays (the client parses
-- each once; names are THING_NAME_RE, nothing to escape), offers one by one (a client caches each
-- distinct text): {total, n_top, n_index, names, snapshots, offer...}, the first n_top names from
-- the index head, up to n_index from the random sample, the rest from the grid; a missing
-- snapshot is null, an offer nil.
local snaps = redis.call('HMGET', P .. 'snap', unpack(things))
local offers = redis.call('HMGET', P .. 'om:' .. model, unpack(things))
for k = 1, #things do
  if not snaps[k] then snaps[k] = 'null' end
end
local out = {total, got_top, got_index, '["' .. table.concat(things, '","') .. '"]',
             '[' .. table.concat(snaps, ',') .. ']'}
for k = 1, #things do out[k + 5] = offers[k] end
return out
"""
)

# One task's reservation, shared by RESERVE and RESERVE_MANY: `args` is the task's slice of ARGV,
# {task, model, region ('' none), hold_s, n_excluded, excluded..., candidates...}; returns
# {thing, index in candidates (0 = idempotent repeat), skipped...} or {false, skipped...}.
_RESERVE_ONE = r"""
local function reserve_one(now, ttl, a)
  local task, model, region, hold = a[1], a[2], a[3], tonumber(a[4])
  local n_excl = tonumber(a[5])
  local excluded = {}
  for i = 6, 5 + n_excl do excluded[a[i]] = true end
  local tk = P .. 't:' .. task

  -- One read per device tried: SETTLE_FIELDS plus the model's offer (15), reused to settle it.
  local function usable(thing)
    local f = redis.call('HMGET', P .. 'd:' .. thing, 'cap', 'inflight', 'nres', 'region', 'lat', 'lon', 'tps',
                         'status', 'rel', 'rep', 'seen', 'free', 'listed', 'models', 'o:' .. model)
    if not f[1] or not f[11] or tonumber(f[11]) < now - ttl then return nil end
    if f[8] ~= 'online' or not f[15] then return nil end
    if region ~= '' and f[4] ~= region then return nil end
    return f
  end

  -- A task holds at most one reservation: a repeated place() (at-least-once delivery) gets the
  -- same device back; a place() that excludes the holder moves the reservation.
  local prev = redis.call('GET', tk)
  if prev then
    local still = redis.call('ZSCORE', P .. 'res:' .. prev, task)
    if still and tonumber(still) > now and not excluded[prev] and usable(prev) then
      redis.call('ZADD', P .. 'res:' .. prev, now + hold, task)
      redis.call('ZADD', P .. 'holds', now + hold, prev .. '\t' .. task)
      redis.call('SET', tk, prev, 'PX', math.ceil(hold * 1000))
      return {prev, 0}
    end
    if still then
      redis.call('ZREM', P .. 'res:' .. prev, task)
      redis.call('ZREM', P .. 'holds', prev .. '\t' .. task)
      refresh(prev, now)
    end
    redis.call('DEL', tk)
  end

  local skipped = {}
  for i = 6 + n_excl, #a do
    local thing = a[i]
    local f = not excluded[thing] and usable(thing)
    if f then
      local d = P .. 'd:' .. thing
      local nres = purge(thing, now)
      if settle_fields(thing, d, f, nres) > 0 then
        local added = redis.call('ZADD', P .. 'res:' .. thing, now + hold, task)
        redis.call('ZADD', P .. 'holds', now + hold, thing .. '\t' .. task)
        redis.call('SET', tk, thing, 'PX', math.ceil(hold * 1000))
        settle_fields(thing, d, f, nres + added)
        local out = {thing, i - 5 - n_excl}
        for _, s in ipairs(skipped) do out[#out + 1] = s end
        return out
      end
    end
    skipped[#skipped + 1] = thing
  end
  local out = {false}
  for _, s in ipairs(skipped) do out[#out + 1] = s end
  return out
end
"""

# ARGV: P, now, ttl, hold_s, task, model, region ('' none), n_excluded, excluded..., candidates...
# -> {thing, index in candidates (0 = idempotent repeat), skipped...} or {false, skipped...}
RESERVE = (
    COMMON
    + _RESERVE_ONE
    + r"""
local a = {ARGV[5], ARGV[6], ARGV[7], ARGV[4]}
for i = 8, #ARGV do a[#a + 1] = ARGV[i] end
return reserve_one(tonumber(ARGV[2]), tonumber(ARGV[3]), a)
"""
)

# A batch of reservations in one call (Scheduler.place_many: one SQS batch of dispatch work), each
# exactly as RESERVE would make it, in order — so a device that an earlier task of the batch filled
# is skipped by a later one, as between two separate calls.
# ARGV: P, now, ttl, n_tasks, then per task: n_args, {task, model, region, hold_s, n_excluded,
#       excluded..., candidates...}
# -> per task, concatenated: n_out, then RESERVE's reply for it (false for "none")
RESERVE_MANY = (
    COMMON
    + _RESERVE_ONE
    + r"""
local now, ttl, n = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local out, at = {}, 5
for _ = 1, n do
  local len = tonumber(ARGV[at])
  local a = {}
  for i = 1, len do a[i] = ARGV[at + i] end
  at = at + len + 1
  local r = reserve_one(now, ttl, a)
  out[#out + 1] = #r
  for _, v in ipairs(r) do out[#out + 1] = v end
end
return out
"""
)

# ARGV: P, now, thing, task -> 1 released, 0 nothing held
RELEASE = (
    COMMON
    + r"""
local now, thing, task = tonumber(ARGV[2]), ARGV[3], ARGV[4]
local removed = redis.call('ZREM', P .. 'res:' .. thing, task)
if removed == 0 then return 0 end
redis.call('ZREM', P .. 'holds', thing .. '\t' .. task)
local tk = P .. 't:' .. task
if redis.call('GET', tk) == thing then redis.call('DEL', tk) end
local d = P .. 'd:' .. thing
local inflight = tonumber(redis.call('HGET', d, 'inflight'))
if inflight then
  -- The released task was part of the reported in-flight work (or never reached it): until the
  -- next heartbeat, count no more than the reservations still held.
  local nres = redis.call('ZCARD', P .. 'res:' .. thing)
  if inflight > nres then redis.call('HSET', d, 'inflight', nres) end
  refresh(thing, now)
  snap(thing)
end
return 1
"""
)

# ARGV: P, now, ttl, limit -> {n_holds_swept, offline things...}
EXPIRE = (
    COMMON
    + r"""
local now, ttl, limit = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local gone = redis.call('ZRANGEBYSCORE', P .. 'hb', '-inf', '(' .. (now - ttl), 'LIMIT', 0, limit)
for _, thing in ipairs(gone) do drop(thing) end
local holds = redis.call('ZRANGEBYSCORE', P .. 'holds', '-inf', now, 'LIMIT', 0, limit)
for _, member in ipairs(holds) do
  local tab = string.find(member, '\t', 1, true)
  local thing = string.sub(member, 1, tab - 1)
  redis.call('ZREM', P .. 'holds', member)
  if redis.call('EXISTS', P .. 'd:' .. thing) == 1 then refresh(thing, now)
  else redis.call('ZREMRANGEBYSCORE', P .. 'res:' .. thing, '-inf', now) end
end
local out = {#holds}
for _, t in ipairs(gone) do out[#out + 1] = t end
return out
"""
)

# ARGV: P, now, thing, ok (1/0), half_life_s, prior_s, prior_f, keep_s -> new rate (string)
OUTCOME = (
    COMMON
    + r"""
local now, thing, ok = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local half, a, b, keep = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local k = P .. 'rel:' .. thing
local f = redis.call('HMGET', k, 's', 'n', 't')
local s, n, t = tonumber(f[1]) or 0, tonumber(f[2]) or 0, tonumber(f[3]) or now
local dt = now - t
if dt < 0 then dt = 0 end
local decay = math.pow(0.5, dt / half)
s = s * decay + ok
n = n * decay + 1
local rate = (s + a) / (n + a + b)
redis.call('HSET', k, 's', s, 'n', n, 't', now, 'rate', rate)
redis.call('EXPIRE', k, keep)
local d = P .. 'd:' .. thing
if redis.call('EXISTS', d) == 1 then
  redis.call('HSET', d, 'rel', rate)
  requality(thing)
  snap(thing)
end
return tostring(rate)
"""
)

# ARGV: P, thing -> 1
REMOVE = (
    COMMON
    + r"""
drop(ARGV[2])
return 1
"""
)


_SCRIPT_NAMES = ("HEARTBEAT", "FETCH", "RESERVE", "RESERVE_MANY", "RELEASE", "EXPIRE", "OUTCOME", "REMOVE",
                 "REPUTATION")
_DEFINITION = re.compile(r"^local (?:function )?(\w+)", re.M)


def _common_definitions() -> list[tuple[str, str]]:
    """COMMON cut into its top-level definitions, in order: (name, text)."""
    starts = [(m.start(), m.group(1)) for m in _DEFINITION.finditer(COMMON)]
    return [(name, COMMON[at : starts[k + 1][0] if k + 1 < len(starts) else len(COMMON)])
            for k, (at, name) in enumerate(starts)]


def _words(lua: str) -> set[str]:
    """The identifiers of some Lua (comments and string literals left out)."""
    return set(re.findall(r"\w+", re.sub(r"--[^\n]*|'[^'\n]*'", "", lua)))


def _trimmed(script: str) -> str:
    """A script with only the COMMON definitions it uses (directly or through another), in order.

    Redis runs a script's whole text on every call: each ``local function`` is a closure built
    per call, each table literal a fresh table. COMMON whole costs ~9 us per call here against ~7
    for ``return 1`` (FETCH and RESERVE are called on every decision), so each script carries
    only what it reaches."""
    assert script.startswith(COMMON)
    body = script[len(COMMON) :]
    defs = _common_definitions()
    words = _words(body)
    needed = {"P"}
    grew = True
    while grew:
        grew = False
        for name, text in defs:
            if name not in needed and name in words:
                needed.add(name)
                words |= _words(text)
                grew = True
    head = COMMON[: _DEFINITION.search(COMMON).start()]  # the preamble's opening comment/blank line
    return head + "".join(text for name, text in defs if name in needed) + body


def scripts(reference_tps: float) -> dict[str, str]:
    """The scripts with the tokens/s reference of the capability part (and the grid) filled in."""
    value = repr(float(reference_tps))
    grid = ", ".join(repr(float(g)) for g in GRID_DEGREES)
    return {
        name: _trimmed(globals()[name]).replace("__REFERENCE_TPS__", value).replace("__GRID__", grid)
        for name in _SCRIPT_NAMES
    }


# ARGV: P, thing, reputation ('' clears), keep_s -> 1
REPUTATION = (
    COMMON
    + r"""
local k, d = P .. 'rel:' .. ARGV[2], P .. 'd:' .. ARGV[2]
if ARGV[3] == '' then
  redis.call('HDEL', k, 'rep')
  redis.call('HDEL', d, 'rep')
else
  redis.call('HSET', k, 'rep', ARGV[3])
  redis.call('EXPIRE', k, tonumber(ARGV[4]))
  if redis.call('EXISTS', d) == 1 then redis.call('HSET', d, 'rep', ARGV[3]) end
end
if redis.call('EXISTS', d) == 1 then snap(ARGV[2]) end
return 1
"""
)
