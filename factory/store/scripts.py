"""Every Lua script the factory runs on Redis, each with its KEYS and ARGV, as ``rq/scripts.py`` keeps RQ's.

The scripts are the factory's state machine: each is one atomic step on a job's record (its hash,
``keys.job_key``), its log, its channel, its files, the running set, and RQ's view of the same job
(its hash, queue and registries, and the worker's hash). The Python that builds their arguments
lives beside its owner: ``factory.store.eventlog`` (append, claim), ``factory.store.rqview`` (RQ's
side), ``worker.rqjobs`` (take), ``worker.files`` (the record of output files), ``factory.enqueue``
(a job's creation).

Fencing: every write of an execution (an attempt of a job) carries its token, and a script refuses
it once the record's ``execution`` field names another (the attempt was declared lost and retried,
or the job was ended from outside): APPEND and RECORD_FILES answer ``-4`` (superseded). A settle of a
lost execution writes with that execution's token; only the gateway's cancel writes without one,
and it ends the job: the terminal rule (nothing after the terminal event) fences every later write.

Record fields named here are those of ``factory.store.fields``; RQ's key and field names are those
of ``factory.store.keys`` / ``fields``, checked against the installed RQ by ``tests/test_rq_contract.py``.
TAKE builds per-job keys from the parts around the id, so it could not run on a Redis Cluster (nor
could RQ). The job statistics' Lua functions (``factory.jobstats.STATS_FUNCTIONS``) are generated
from the histogram's buckets there and spliced into APPEND.
"""

import hashlib

from factory.jobstats import STATS_FUNCTIONS
from factory.store.wire import LuaScript


def sha(script: str) -> str:
    """The SHA1 a script is run by (EVALSHA) once loaded."""
    return hashlib.sha1(script.encode()).hexdigest()


# APPEND: gives a batch of events their seq, appends them to the job's log and publishes them on its
# channel; with mode "terminal" it also closes the job (record fields, ``terminal``, TTLs, statistics),
# with mode "retry" it hands the job to its next attempt. See ``factory.store.eventlog``.
# KEYS[1] = the job's record, KEYS[2] = its log, KEYS[3] = its channel, KEYS[4] = its files hash,
#   KEYS[5..7] = the statistics' outcomes, durations and first-event hashes (optional)
# ARGV[1] = batch id ('' for none), ARGV[2] = event limit (0: none), ARGV[3] = retention (s),
#   ARGV[4] = mode (event | terminal | retry), ARGV[5] = execution token ('' for none),
#   ARGV[6] = how many record field/value items follow, then those items, then the events
# Returns {outcome, last seq}: 1 appended, 0 duplicate batch, -1 already ended, -2 limit reached,
#   -3 unknown job, -4 superseded (the token is not the job's).
APPEND_LUA = (
    STATS_FUNCTIONS
    + """
local job, log, channel, files = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local stats_outcomes, stats_durations, stats_first = KEYS[5], KEYS[6], KEYS[7]
local batch_id, max_events, retention_s = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local mode, token, n_fields = ARGV[4], ARGV[5], tonumber(ARGV[6])
if redis.call('EXISTS', job) == 0 then return {-3, 0} end
-- What the checks and the statistics read of the record, in one call (each call costs more than its work).
local head = redis.call(
  'HMGET', job, 'terminal', 'batch', 'execution', 'prefab_id', 'function_name', 'version', 'created_ms'
)
if head[1] then return {-1, redis.call('LLEN', log)} end
local seen = head[2]
if batch_id ~= '' and seen == batch_id then return {0, redis.call('LLEN', log)} end
if batch_id ~= '' and seen == batch_id .. ':limit' then return {-2, redis.call('LLEN', log)} end
if token ~= '' and head[3] ~= token then return {-4, redis.call('LLEN', log)} end
local first_event = 7 + n_fields
local n = #ARGV - first_event + 1
local length = redis.call('LLEN', log)
-- The limit counts the job's own events; a terminal or retry event closing the batch is past it.
local own = n
if mode ~= 'event' then own = n - 1 end
if max_events > 0 and length + own > max_events then
  -- Keep the events that fit, exactly up to the limit; the caller then ends the job.
  local fit = max_events - length
  if fit > 0 then
    local kept = {}
    for i = first_event, first_event + fit - 1 do kept[#kept + 1] = ARGV[i] end
    local last = redis.call('RPUSH', log, unpack(kept))
    redis.call('PUBLISH', channel, (last - fit + 1) .. '\\n' .. table.concat(kept, '\\n'))
    length = last
  end
  if batch_id ~= '' then redis.call('HSET', job, 'batch', batch_id .. ':limit') end
  return {-2, length}
end
local events = {}
for i = first_event, #ARGV do events[#events + 1] = ARGV[i] end
local last = redis.call('RPUSH', log, unpack(events))
if batch_id ~= '' then redis.call('HSET', job, 'batch', batch_id) end
if n_fields > 0 then redis.call('HSET', job, unpack(ARGV, 7, 6 + n_fields)) end
-- The statistics label a job's first batch and its last only, not each batch between.
local labels, created
if stats_outcomes and (length == 0 or mode ~= 'event') then
  labels = job_labels(head[4], head[5], head[6])
  created = head[7] and tonumber(head[7]) or nil
end
if stats_first and length == 0 and created then observe(stats_first, labels, (now_ms() - created) / 1000) end
if mode == 'terminal' then
  redis.call('HSET', job, 'terminal', '1')
  redis.call('EXPIRE', job, retention_s)
  redis.call('EXPIRE', log, retention_s)
  if redis.call('EXISTS', files) == 1 then redis.call('EXPIRE', files, retention_s) end
  if stats_outcomes then
    local status = cjson.decode(redis.call('HGET', job, 'status') or '"failed"')
    count_outcome(stats_outcomes, job, labels, status)
    local began, ended = ms_field(job, 'started_ms') or created, ms_field(job, 'ended_ms')
    if began and ended then observe(stats_durations, labels .. '\\t' .. status, (ended - began) / 1000) end
  end
elseif mode == 'retry' and stats_outcomes then
  count_outcome(stats_outcomes, job, labels, 'retried')
end
redis.call('PUBLISH', channel, (last - n + 1) .. '\\n' .. table.concat(events, '\\n'))
return {1, last}
"""
)

# The claim as a Lua function, shared by CLAIM and TAKE: a new execution token, the attempt number,
# the heartbeat in the running set, and ``fields`` (a flat field/value list) written with it.
# Returns the attempt number, or -3 (unknown job) / -1 (already ended).
CLAIM_FUNCTION = """
local function claim(job, running, token, member, deadline, fields)
  if redis.call('EXISTS', job) == 0 then return -3 end
  if redis.call('HEXISTS', job, 'terminal') == 1 then return -1 end
  local attempt = tonumber(redis.call('HGET', job, 'attempt')) or 0
  if attempt < 1 then
    attempt = 1
    redis.call('HSET', job, 'attempt', '1')
  end
  redis.call('HSET', job, 'execution', token)
  for i = 1, #fields, 2 do redis.call('HSET', job, fields[i], fields[i + 1]) end
  redis.call('ZADD', running, deadline, member)
  return attempt
end
"""

# CLAIM: a new execution of one job (``factory.store.executions.claim``).
# KEYS[1] = the job's record, KEYS[2] = the running set
# ARGV[1] = execution token, ARGV[2] = its running-set member (<id>:<token>), ARGV[3] = heartbeat
#   deadline (ms), then record field/value pairs
# Returns the attempt number, or below 1 when the job cannot be claimed.
CLAIM_LUA = (
    CLAIM_FUNCTION
    + """
return claim(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], {unpack(ARGV, 4)})
"""
)

# Redis' clock in the forms the records keep, for a script whose writes must carry the moment it runs
# (not the moment it was sent: a take pipelined behind a doorbell wait runs when the bell rings):
# ``clock()`` gives seconds (with fractions) and milliseconds; ``rq_time(s)`` RQ's timestamp format
# (``rq.utils.utcformat``: ``%Y-%m-%dT%H:%M:%S.%fZ``, UTC), by the civil-from-days calendar algorithm.
CLOCK_FUNCTIONS = """
local function clock()
  local t = redis.call('TIME')
  local s, us = tonumber(t[1]), tonumber(t[2])
  return s + us / 1000000, s * 1000 + math.floor(us / 1000), s, us
end
local function rq_time(s, us)
  local days = math.floor(s / 86400)
  local rest = s - days * 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local day = doy - math.floor((153 * mp + 2) / 5) + 1
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400 + (month <= 2 and 1 or 0)
  local hour, minute = math.floor(rest / 3600), math.floor(rest % 3600 / 60)
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%06dZ', year, month, day, hour, minute, rest % 60, us)
end
"""

# TAKE: a worker's take of its next job (``worker.rqjobs``), one round trip: pops the next id off the
# first of its queues that has one, reads the RQ job's call, claims the factory's record (CLAIM_FUNCTION)
# and, once claimed, records the start in RQ's view: the job hash ``started``, an entry
# ``<id>:<token>`` in the queue's started registry (scored by when RQ may call it abandoned) and the
# worker ``busy`` on it. Every time it writes is Redis' clock (CLOCK_FUNCTIONS): the record's
# ``started_ms``, RQ's ``started_at``, the heartbeat's deadline, the started entry's score. Nothing is
# taken while the worker's stop mark exists (a stopping worker's take queued behind its doorbell wait).
# KEYS[1] = the running set, KEYS[2] = the worker's stop mark, KEYS[3..] = RQ queues in the order to try
# ARGV[1], ARGV[2] = RQ's job key before/after the id, ARGV[3], ARGV[4] = the record's key before/after
#   the id, ARGV[5] = execution token, ARGV[6] = how long a heartbeat lasts (ms), ARGV[7] = RQ's queue
#   key prefix, ARGV[8] = RQ's started registry key prefix, ARGV[9] = how long past RQ's timeout of
#   the job its started entry lasts (s), ARGV[10] = RQ's timeout when the job has none (s),
#   ARGV[11] = RQ's key of this worker, ARGV[12] = n, the number of RQ field/value items that follow
#   (the start, but its time), then those, then the record's field/value pairs (but ``started_ms``)
# Returns false when every queue is empty (or the worker stops), else {id, RQ data, RQ timeout,
#   attempt}: attempt below 1 when the job cannot be claimed, RQ data false when RQ has no such job.
TAKE_LUA = (
    CLAIM_FUNCTION
    + CLOCK_FUNCTIONS
    + """
if redis.call('EXISTS', KEYS[2]) == 1 then return false end
local id, queue = false, false
for i = 3, #KEYS do
  id = redis.call('LPOP', KEYS[i])
  if id then
    queue = string.sub(KEYS[i], #ARGV[7] + 1)
    break
  end
end
if not id then return false end
local rq_job = ARGV[1] .. id .. ARGV[2]
local data, timeout = unpack(redis.call('HMGET', rq_job, 'data', 'timeout'))
if not data then return {id, false, false, -3} end
local now, now_ms, s, us = clock()
local n = tonumber(ARGV[12])
local token = ARGV[5]
local record = {unpack(ARGV, 13 + n)}
record[#record + 1] = 'started_ms'
record[#record + 1] = string.format('%.0f', now_ms)
local deadline = string.format('%.0f', now_ms + tonumber(ARGV[6]))
local attempt = claim(ARGV[3] .. id .. ARGV[4], KEYS[1], token, id .. ':' .. token, deadline, record)
if attempt >= 1 then
  redis.call('HSET', rq_job, 'started_at', rq_time(s, us), unpack(ARGV, 13, 12 + n))
  local lasts = (tonumber(timeout) or tonumber(ARGV[10])) + tonumber(ARGV[9])
  redis.call('ZADD', ARGV[8] .. queue, now + lasts, id .. ':' .. token)
  if redis.call('EXISTS', ARGV[11]) == 1 then
    redis.call('HSET', ARGV[11], 'state', 'busy', 'current_job', id)
  end
end
return {id, data, timeout, attempt}
"""
)

# END_RQ_JOB: RQ's view of a job the factory is done with (``factory.store.rqview``): the execution's
# entry leaves the started registry; when the job ended, RQ's hash gets the record's status (or the
# given one when the record has none) and its end time and expires after the retention, the job enters
# the finished, failed or canceled registry (entries scored by their expiry, as RQ's; the registry is
# trimmed of expired entries and expires after the retention) and, when a queued job is ended from
# outside, leaves its queue. The worker named, if any, is idle again and, when it ran the execution
# (a token), counts the job.
# KEYS[1] = RQ's job hash, KEYS[2] = the job's record, KEYS[3] = RQ's hash of the worker (optional)
# ARGV[1] = job id, ARGV[2] = execution token ('' for none), ARGV[3] = RQ status when the record has
#   no terminal one ('' : the job did not end, it only leaves the execution), ARGV[4] = end time (RQ's
#   format), ARGV[5] = now (s), ARGV[6] = retention (s), ARGV[7] = RQ's queue key prefix,
#   ARGV[8..11] = RQ's started, finished, failed and canceled registry key prefixes,
#   ARGV[12] = '1' to take the job off its queue
# Returns 1 when RQ's hash was ended, else 0 (no such RQ job, or the job did not end).
END_RQ_JOB_LUA = """
local origin = redis.call('HGET', KEYS[1], 'origin')
if KEYS[3] and redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('HSET', KEYS[3], 'state', 'idle')
  redis.call('HDEL', KEYS[3], 'current_job')
end
if not origin then return 0 end
if ARGV[2] ~= '' then redis.call('ZREM', ARGV[8] .. origin, ARGV[1] .. ':' .. ARGV[2]) end
local status = ARGV[3]
if redis.call('HEXISTS', KEYS[2], 'terminal') == 1 then
  status = cjson.decode(redis.call('HGET', KEYS[2], 'status') or '"failed"')
end
local registries = {finished = ARGV[9], failed = ARGV[10], canceled = ARGV[11]}
if not registries[status] then return 0 end
if ARGV[12] == '1' then redis.call('LREM', ARGV[7] .. origin, 0, ARGV[1]) end
local now, retention = tonumber(ARGV[5]), tonumber(ARGV[6])
redis.call('HSET', KEYS[1], 'status', status, 'ended_at', ARGV[4])
redis.call('EXPIRE', KEYS[1], retention)
local registry = registries[status] .. origin
redis.call('ZREMRANGEBYSCORE', registry, 0, now)
redis.call('ZADD', registry, now + retention, ARGV[1])
redis.call('EXPIRE', registry, retention)
if KEYS[3] and ARGV[2] ~= '' and redis.call('EXISTS', KEYS[3]) == 1 then
  local count = 'failed_job_count'
  if status == 'finished' then count = 'successful_job_count' end
  redis.call('HINCRBY', KEYS[3], count, 1)
end
return 1
"""

# RQ_WORKER_BEAT: a worker's heartbeat in RQ's view (``factory.store.rqview``): its hash (RQ's worker
# fields; ``state`` idle unless the take made it busy) with a TTL, and its key in RQ's set of workers
# and in each served queue's, from which the keys of workers gone without a word are dropped.
# KEYS[1] = RQ's hash of the worker, KEYS[2] = RQ's set of workers, KEYS[3..] = RQ's sets of the
#   workers of each queue it serves
# ARGV[1] = TTL (s), then the worker hash's field/value pairs
RQ_WORKER_BEAT_LUA = """
local ttl = tonumber(ARGV[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('HSETNX', KEYS[1], 'state', 'idle')
redis.call('EXPIRE', KEYS[1], ttl)
for i = 2, #KEYS do
  redis.call('SADD', KEYS[i], KEYS[1])
  for _, member in ipairs(redis.call('SMEMBERS', KEYS[i])) do
    if redis.call('EXISTS', member) == 0 then redis.call('SREM', KEYS[i], member) end
  end
  redis.call('EXPIRE', KEYS[i], ttl)
end
return 1
"""

# RECORD_FILES: the job's stored output files (``worker.files``), recorded only by the execution that
# owns the job and only while it is open: a job that already ended (canceled while its outputs were
# stored) keeps no files hash without an expiry, and a superseded attempt records nothing.
# KEYS[1] = the job's record, KEYS[2] = its files hash
# ARGV[1] = execution token, ARGV[2] = the record's ``files`` value (JSON), then name/description pairs
# Returns 1 recorded, -1 already ended, -3 unknown job, -4 superseded.
RECORD_FILES_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -3 end
if redis.call('HEXISTS', KEYS[1], 'terminal') == 1 then return -1 end
if ARGV[1] == '' or redis.call('HGET', KEYS[1], 'execution') ~= ARGV[1] then return -4 end
redis.call('HSET', KEYS[1], 'files', ARGV[2])
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
return 1
"""

# ENQUEUE: creates a job (``factory.enqueue``) unless its queue is full: the length check and the writes
# are one atomic step and one round trip, so no job is written past the limit, by any gateway.
# KEYS[1] = the RQ queue's list
# ARGV[1] = the most jobs that may wait on it, then the writes that create the job, each as its
#   number of arguments followed by them, command name first (the job's record and the recent
#   jobs, RQ's own hash and queue entry as the installed RQ records them, the queue's doorbell)
# Returns how many jobs were waiting: the writes ran if that is below ARGV[1].
ENQUEUE_LUA = """
local waiting = redis.call('LLEN', KEYS[1])
if waiting >= tonumber(ARGV[1]) then return waiting end
local i = 2
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return waiting
"""

# Run by SHA in the worker's pipelines (redis-py's Script would cost a SCRIPT EXISTS round trip each time).
TAKE_SHA = sha(TAKE_LUA)
END_RQ_JOB_SHA = sha(END_RQ_JOB_LUA)

# Run on the lean connections (``factory.store.wire``): a call's enqueue, and its events' appends.
ENQUEUE = LuaScript(ENQUEUE_LUA, sha(ENQUEUE_LUA))
APPEND = LuaScript(APPEND_LUA, sha(APPEND_LUA))
