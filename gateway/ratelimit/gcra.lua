-- GCRA over several windows of one API key, atomically, in one round trip.
-- KEYS[1]  the key's hash, e.g. "{rl:key_abc}" (hash-tagged: one slot on Redis Cluster)
-- ARGV[1]  "1" to spend a request when every window admits it, "0" to only look
-- ARGV[2]  the windows, space-separated triples: name, period (us), emission interval (us), e.g.
--          "hour 3600000000 360000 minute 60000000 6000" (one argument, not six: the client encodes and
--          frames every argument of every call, and that was most of its cost)
-- Returns: {admitted 0/1, now (us), tat of each window after the call...}
-- The clock is Redis's own (TIME), so gateway hosts with skewed clocks still share one timeline.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local consume = ARGV[1] == '1'
local fields, periods, emissions = {}, {}, {}
local n = 0
for name, period, emission in string.gmatch(ARGV[2], '(%S+) (%d+) (%d+)') do
  n = n + 1
  fields[n] = name
  periods[n] = tonumber(period)
  emissions[n] = tonumber(emission)
end
local stored = redis.call('HMGET', KEYS[1], unpack(fields))
local admitted = 1
local tats, nexts = {}, {}
local longest = 0
for i = 1, n do
  local period = periods[i]
  local emission = emissions[i]
  local tat = tonumber(stored[i]) or now
  if tat < now then tat = now end
  local after = tat + emission
  if after - now > period then admitted = 0 end
  tats[i] = tat
  nexts[i] = after
  if period > longest then longest = period end
end
local out = {admitted, now}
if admitted == 1 and consume then
  local args = {}
  for i = 1, n do
    args[2 * i - 1] = fields[i]
    args[2 * i] = nexts[i]
    out[i + 2] = nexts[i]
  end
  redis.call('HSET', KEYS[1], unpack(args))
  redis.call('PEXPIRE', KEYS[1], math.ceil(longest / 1000) + 1000)
else
  for i = 1, n do out[i + 2] = tats[i] end
end
return out
