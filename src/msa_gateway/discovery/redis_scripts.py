"""The Lua scripts the Redis provider reads with; each reads a few services, none the whole registry.

Kept apart from ``redis.py`` (the watch loop) so the reading protocol can be read in one place:
the digest a script computes per service is what lets a resync skip unchanged services.
"""

from __future__ import annotations

# The fingerprint of the original layout: DBSIZE (a new service:* key changes it) and a SHA-1 over
# the known service:* hashes (KEYS[2..]) in field order, each string length-prefixed.
_FINGERPRINT = """
local function fingerprint()
  local parts = {}
  for i = 2, #KEYS do
    local kind = redis.call('TYPE', KEYS[i]).ok
    local items = {}
    if kind == 'hash' then
      local flat = redis.call('HGETALL', KEYS[i])
      for j = 1, #flat, 2 do
        items[#items + 1] = #flat[j] .. ':' .. flat[j] .. #flat[j + 1] .. ':' .. flat[j + 1]
      end
      table.sort(items)
    end
    parts[#parts + 1] = #KEYS[i] .. ':' .. KEYS[i] .. kind .. '{' .. table.concat(items) .. '}'
  end
  return {redis.call('DBSIZE'), redis.sha1hex(table.concat(parts))}
end
"""

# KEYS: the services set, then legacy hashes. Answers [DBSIZE, digest] (see _FINGERPRINT).
POLL_LUA = _FINGERPRINT + "return fingerprint()\n"

# One service, read atomically: [name, digest, lowest live score, highest finite live score] and,
# when ``known`` is given and differs from the digest, its hash and zset as flat lists. The digest
# covers the hash (sorted) and which ids are live, not the scores: heartbeats do not change it.
# A hash or zset of another type answers digest false.
_SERVICE = """
local t = redis.call('TIME')
local now = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local function service(prefix, name, known)
  local ikey, ekey = prefix .. name .. ':instances', prefix .. name .. ':expiry'
  local itype, etype = redis.call('TYPE', ikey).ok, redis.call('TYPE', ekey).ok
  if (itype ~= 'hash' and itype ~= 'none') or (etype ~= 'zset' and etype ~= 'none') then
    return {name, false, false, false}
  end
  local flat = redis.call('HGETALL', ikey)
  local live = redis.call('ZRANGEBYSCORE', ekey, '(' .. now, '+inf', 'WITHSCORES')
  local items, ids = {}, {}
  for j = 1, #flat, 2 do
    items[#items + 1] = #flat[j] .. ':' .. flat[j] .. #flat[j + 1] .. ':' .. flat[j + 1]
  end
  for j = 1, #live, 2 do ids[#ids + 1] = #live[j] .. ':' .. live[j] end
  table.sort(items)
  table.sort(ids)
  local digest = redis.sha1hex(table.concat(items) .. '|' .. table.concat(ids))
  local hi = false
  for j = #live, 2, -2 do
    if live[j] ~= 'inf' then hi = live[j] break end
  end
  local row = {name, digest, live[2] or false, hi}
  if known and known ~= digest then
    row[5] = flat
    row[6] = redis.call('ZRANGE', ekey, 0, -1, 'WITHSCORES')
  end
  return row
end
"""

# ARGV: the per-service key prefix "P:service:", then name, known digest ('' for none), ...
# Answers JSON [now_ms, [row, ...]] with the content of every service whose digest differs.
READ_LUA = (
    _SERVICE
    + """
local rows = {}
for i = 2, #ARGV, 2 do rows[#rows + 1] = service(ARGV[1], ARGV[i], ARGV[i + 1]) end
return cjson.encode({now, rows})
"""
)

# KEYS: the services set. ARGV: the per-service key prefix, an SSCAN cursor, a COUNT.
# Answers JSON [now_ms, [row without content, ...], next cursor]: one step of a full resync.
SCAN_LUA = (
    _SERVICE
    + """
local step = redis.call('SSCAN', KEYS[1], ARGV[2], 'COUNT', ARGV[3])
local rows = {}
for _, name in ipairs(step[2]) do rows[#rows + 1] = service(ARGV[1], name, nil) end
return cjson.encode({now, rows, step[1]})
"""
)

# KEYS: the services set, then legacy hashes. Answers JSON [[[key, hash], ...], [dbsize, digest]].
LEGACY_LUA = (
    _FINGERPRINT
    + """
local legacy = {}
for i = 2, #KEYS do
  local found = redis.call('TYPE', KEYS[i]).ok
  legacy[#legacy + 1] = {KEYS[i], found == 'hash' and redis.call('HGETALL', KEYS[i]) or {}}
end
return cjson.encode({legacy, fingerprint()})
"""
)
