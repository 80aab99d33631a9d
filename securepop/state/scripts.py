"""
The Lua scripts of L{securepop.state.redis}: each store operation is one
script, so it is atomic on the server and costs one round trip.

Times are passed in (wall-clock seconds of the calling node, as
L{securepop.interfaces.IStateStore} says), never read from the server, so
every node agrees with its own clock.  Values that are not whole numbers
are returned as strings: Redis truncates Lua numbers to integers.
"""

import hashlib

#: Connection slots.  KEYS: the counters (sorted sets: member = lease id,
#: score = expiry), then this attempt's fence key.  ARGV: now, expiry,
#: lease, key ttl (ms), then one limit per counter (0: unlimited).  An
#: attempt whose caller gave up (its fence is set, see L{FENCE}) does
#: nothing.  Expired members go first; then every counter is checked before
#: any is touched (all or none).  Returns 0 when the slots are taken, else
#: the 1-based index of the first full counter (-1: fenced).  A lease
#: already counted in a counter is not counted twice.
ACQUIRE = """
if redis.call('EXISTS', KEYS[#KEYS]) == 1 then
  return -1
end
local now = tonumber(ARGV[1])
for i = 1, #KEYS - 1 do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  local limit = tonumber(ARGV[4 + i])
  if limit > 0 and not redis.call('ZSCORE', KEYS[i], ARGV[3])
      and redis.call('ZCARD', KEYS[i]) >= limit then
    return i
  end
end
for i = 1, #KEYS - 1 do
  redis.call('ZADD', KEYS[i], ARGV[2], ARGV[3])
  redis.call('PEXPIRE', KEYS[i], ARGV[4])
end
return 0
"""

#: An acquire attempt whose caller timed out may still run later (it sat in
#: a socket while the server was stopped): fence it and take back what it
#: took, whichever of the two runs first.  KEYS: the counters, then the
#: attempt's fence key.  ARGV: lease, fence ttl (ms).
FENCE = """
redis.call('SET', KEYS[#KEYS], '1', 'PX', ARGV[2])
for i = 1, #KEYS - 1 do
  redis.call('ZREM', KEYS[i], ARGV[1])
end
return 0
"""

#: The heartbeat: re-score this process's slots and refresh its maildrop
#: leases.  KEYS: the first n are counters, the rest maildrop leases.
#: ARGV: expiry, key ttl (ms), n, then one member per counter key and one
#: holder per maildrop key.  Only slots Redis still holds are re-dated (XX):
#: a beat that crosses a release, or one after the data was lost, never
#: brings back a slot nobody holds (a phantom that would refuse a client
#: for a TTL); a slot purged while this node could not reach the server is
#: therefore not counted again (its connection is under-counted until it ends).
HEARTBEAT = """
local n = tonumber(ARGV[3])
for i, key in ipairs(KEYS) do
  if i <= n then
    redis.call('ZADD', key, 'XX', ARGV[1], ARGV[3 + i])
    redis.call('PEXPIRE', key, ARGV[2])
  elseif redis.call('GET', key) == ARGV[3 + i] then
    redis.call('PEXPIRE', key, ARGV[2])
  end
end
return 0
"""

#: Give back slots and leases.  KEYS and ARGV as L{HEARTBEAT} without the
#: expiry and ttl: ARGV: n, then members / holders.  A maildrop lease is
#: deleted only while its holder still holds it.
RELEASE = """
local n = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  if i <= n then
    redis.call('ZREM', key, ARGV[1 + i])
  elseif redis.call('GET', key) == ARGV[1 + i] then
    redis.call('DEL', key)
  end
end
return 0
"""

#: The address's failures and last failure (hash fields f and l) and, when
#: a user key is given, the user's live failures (sorted set: score =
#: expiry, member = "failure-time:nonce") and the oldest of them.
#: ARGV: now.  Returns {failures, last, user_failures, oldest member}.
LOGIN_STATE = """
local a = redis.call('HMGET', KEYS[1], 'f', 'l')
local count, oldest = 0, ''
if KEYS[2] then
  local live = '(' .. ARGV[1]
  count = redis.call('ZCOUNT', KEYS[2], live, '+inf')
  oldest = redis.call('ZRANGEBYSCORE', KEYS[2], live, '+inf', 'LIMIT', 0, 1)[1] or ''
end
return {a[1] or '0', a[2] or '0', count, oldest}
"""

#: Count one failure.  ARGV: now, forget_after (ms), the user entry's
#: expiry, its member, window (ms), the most user failures kept.  Returns
#: what L{LOGIN_STATE} returns, after the failure.
RECORD_FAILURE = """
local failures = redis.call('HINCRBY', KEYS[1], 'f', 1)
redis.call('HSET', KEYS[1], 'l', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local count, oldest = 0, ''
if KEYS[2] then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -1 - tonumber(ARGV[6]))
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
  count = redis.call('ZCARD', KEYS[2])
  oldest = redis.call('ZRANGE', KEYS[2], 0, 0)[1] or ''
end
return {tostring(failures), ARGV[1], count, oldest}
"""

#: Take a lease (a penalised address's turn, a maildrop) if it is free or
#: already ours, for ARGV[2] ms.  ARGV: holder, ttl (ms).  Returns 1 / 0.
CLAIM = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

#: Compare and delete: give a lease back only while ARGV[1] holds it.
UNCLAIM = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

SCRIPTS = {
    "acquire": ACQUIRE,
    "fence": FENCE,
    "heartbeat": HEARTBEAT,
    "release": RELEASE,
    "login_state": LOGIN_STATE,
    "record_failure": RECORD_FAILURE,
    "claim": CLAIM,
    "unclaim": UNCLAIM,
}

#: name -> (sha1 hex, text): EVALSHA with the digest, EVAL on NOSCRIPT.
LOADED = {name: (hashlib.sha1(text.encode()).hexdigest(), text)
          for name, text in SCRIPTS.items()}
