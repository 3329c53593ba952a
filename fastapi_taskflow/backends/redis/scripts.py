"""The Lua scripts of the Redis backend: every read-modify-write runs as one script.

Redis runs a script atomically, so a script is the unit of exclusivity: two instances
claiming at once are served one after the other. Leases are kept in milliseconds of the
*server's* clock (``TIME`` inside the script), so hosts with skewed clocks agree on when
a lease has expired.

The pending-store scripts take their keys in the order of ``Keys.pending_store()``::

    KEYS[1] tasks  hash  task_id -> record JSON
    KEYS[2] order  zset  task_id by created_at (µs)
    KEYS[3] free   zset  task_id by created_at (µs), tasks nobody holds
    KEYS[4] lease  zset  task_id by lease expiry (server ms), tasks someone holds
    KEYS[5] owner  hash  task_id -> owner, tasks someone holds
    KEYS[6] cancel set   task ids whose cancellation was requested and not yet seen

Every pending task is in ``tasks`` and ``order``, and either in ``free`` or in both
``lease`` and ``owner``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

# Server time in milliseconds, as a number.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Removes the task ids in ARGV from every sorted set in KEYS (unpack is capped by Lua's
# stack, hence the slices). One call replaces a ZREM per set with a copy of every id. Sent
# with EVAL, which Redis caches by digest: no SCRIPT LOAD round trip, no NOSCRIPT case.
UNINDEX = """
for _, key in ipairs(KEYS) do
  for i = 1, #ARGV, 4000 do
    redis.call('ZREM', key, unpack(ARGV, i, math.min(i + 3999, #ARGV)))
  end
end
return 0
"""

# Completes (or forgets) the task ids in ARGV: out of every pending-store key, and out of
# KEYS[7], the keyed-success set (``save`` adds the ones that succeeded back right after,
# in the same transaction). Keys that do not exist are skipped, so a backend used without
# a coordinator pays next to nothing. Sent with EVAL inside MULTI, like UNINDEX.
UNPEND = """
local removals = {'HDEL', 'ZREM', 'ZREM', 'ZREM', 'HDEL', 'SREM', 'ZREM'}
for k, command in ipairs(removals) do
  if redis.call('EXISTS', KEYS[k]) == 1 then
    for i = 1, #ARGV, 4000 do
      redis.call(command, KEYS[k], unpack(ARGV, i, math.min(i + 3999, #ARGV)))
    end
  end
end
return 0
"""

# KEYS: the pending store, then the keyed-success set (task_id -> end_time µs).
# ARGV: owned ('1'/'0'), owner, lease ms, fresh-after µs, then per task: id, created_at
# µs, keyed ('1'/'0'), record JSON. Returns the ids added.
_ACCEPT = (
    _NOW
    + """
local owned = ARGV[1] == '1'
local owner = ARGV[2]
local until_ms = string.format('%d', now + tonumber(ARGV[3]))
local fresh_after = tonumber(ARGV[4])
local added = {}
for i = 5, #ARGV, 4 do
  local id, created, keyed = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local skip = redis.call('HEXISTS', KEYS[1], id) == 1
  if not skip and keyed == '1' then
    local done = redis.call('ZSCORE', KEYS[7], id)
    skip = done ~= false and tonumber(done) > fresh_after
  end
  if not skip then
    redis.call('HSET', KEYS[1], id, ARGV[i + 3])
    redis.call('ZADD', KEYS[2], created, id)
    redis.call('SREM', KEYS[6], id)
    if owned then
      redis.call('ZADD', KEYS[4], until_ms, id)
      redis.call('HSET', KEYS[5], id, owner)
    else
      redis.call('ZADD', KEYS[3], created, id)
    end
    added[#added + 1] = id
  end
end
return added
"""
)

# KEYS: tasks. ARGV: id, record JSON pairs. Overwrites only tasks still pending.
_UPDATE = """
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    n = n + 1
  end
end
return n
"""

# KEYS: lease, owner. ARGV: owner, lease ms, task ids. Returns the ids no longer held.
_RENEW = (
    _NOW
    + """
local until_ms = string.format('%d', now + tonumber(ARGV[2]))
local lost = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  if redis.call('HGET', KEYS[2], id) == ARGV[1] then
    redis.call('ZADD', KEYS[1], until_ms, id)
  else
    lost[#lost + 1] = id
  end
end
return lost
"""
)

# KEYS: tasks, order, free, lease, owner. ARGV: owner, lease ms, limit, reclaim own
# ('1'/'0'), only the listed ids ('1'/'0'), then the ids. Candidates are the oldest free
# tasks, every expired lease (and with reclaim, every task of this owner), or the listed
# ids that qualify; the oldest ``limit`` of them are taken. Returns their record JSON.
_CLAIM = (
    _NOW
    + """
local me = ARGV[1]
local until_ms = string.format('%d', now + tonumber(ARGV[2]))
local limit = tonumber(ARGV[3])
local reclaim = ARGV[4] == '1'
local found, seen = {}, {}
local function consider(id)
  if seen[id] then return end
  seen[id] = true
  local created = redis.call('ZSCORE', KEYS[2], id)
  if created then found[#found + 1] = {tonumber(created), id} end
end
if ARGV[5] == '1' then
  for i = 6, #ARGV do
    local id = ARGV[i]
    if redis.call('HEXISTS', KEYS[1], id) == 1 then
      local owner = redis.call('HGET', KEYS[5], id)
      local lease = redis.call('ZSCORE', KEYS[4], id)
      if not owner or (reclaim and owner == me) or not lease or tonumber(lease) < now then
        consider(id)
      end
    end
  end
else
  local free = redis.call('ZRANGE', KEYS[3], 0, limit - 1, 'WITHSCORES')
  for i = 1, #free, 2 do
    seen[free[i]] = true
    found[#found + 1] = {tonumber(free[i + 1]), free[i]}
  end
  local expired = redis.call('ZRANGE', KEYS[4], '-inf', string.format('(%d', now), 'BYSCORE')
  for _, id in ipairs(expired) do consider(id) end
  if reclaim then
    local owners = redis.call('HGETALL', KEYS[5])
    for i = 1, #owners, 2 do
      if owners[i + 1] == me then consider(owners[i]) end
    end
  end
end
table.sort(found, function(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end)
local taken = {}
for i = 1, math.min(limit, #found) do
  local id = found[i][2]
  local record = redis.call('HGET', KEYS[1], id)
  if record then
    redis.call('ZREM', KEYS[3], id)
    redis.call('ZADD', KEYS[4], until_ms, id)
    redis.call('HSET', KEYS[5], id, me)
    taken[#taken + 1] = record
  end
end
return taken
"""
)

# KEYS: tasks, order, free, lease, owner. ARGV: owner, then per task: id, created_at µs,
# record JSON (status pending). Only the owner's tasks are given back.
_RELEASE = """
local n = 0
for i = 2, #ARGV, 3 do
  local id = ARGV[i]
  if redis.call('HGET', KEYS[5], id) == ARGV[1] then
    redis.call('HDEL', KEYS[5], id)
    redis.call('ZREM', KEYS[4], id)
    redis.call('ZADD', KEYS[3], ARGV[i + 1], id)
    redis.call('HSET', KEYS[1], id, ARGV[i + 2])
    n = n + 1
  end
end
return n
"""

# KEYS: tasks, cancel. ARGV: task id. 1 if the task is pending (flag set), else 0.
_REQUEST_CANCEL = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""

# KEYS: cancel, owner, order. ARGV: owner. Returns (and clears) the flagged ids of the
# owner's tasks, oldest first.
_CANCEL_REQUESTS = """
local found = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('HGET', KEYS[2], id) == ARGV[1] then
    redis.call('SREM', KEYS[1], id)
    found[#found + 1] = {tonumber(redis.call('ZSCORE', KEYS[3], id)) or 0, id}
  end
end
table.sort(found, function(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end)
local ids = {}
for i, pair in ipairs(found) do ids[i] = pair[2] end
return ids
"""


@dataclass(frozen=True)
class Scripts:
    """The coordinator's scripts, registered on one client (EVALSHA, loaded on NOSCRIPT)."""

    accept: AsyncScript
    update: AsyncScript
    renew: AsyncScript
    claim: AsyncScript
    release: AsyncScript
    request_cancel: AsyncScript
    cancel_requests: AsyncScript

    @classmethod
    def register(cls, client: Redis) -> Scripts:
        return cls(
            accept=client.register_script(_ACCEPT),
            update=client.register_script(_UPDATE),
            renew=client.register_script(_RENEW),
            claim=client.register_script(_CLAIM),
            release=client.register_script(_RELEASE),
            request_cancel=client.register_script(_REQUEST_CANCEL),
            cancel_requests=client.register_script(_CANCEL_REQUESTS),
        )
