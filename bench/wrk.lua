-- wrk script for bench/api.py: `wrk ... URL -- MODE [ARG]` where MODE is
--   detail RUNS   GET /api/v1/runs/<random 1..RUNS>
--   get PATH      GET PATH
--   post PATH     POST PATH with the JSON body in the BODY environment variable
-- and prints one JSON line of figures when done (latencies in microseconds).

-- Each request carries the next token of TOKENS (space-separated), one per client.
--
-- With RATE set (requests a second for this thread; bench/api.py divides the total among
-- wrk's threads) requests are paced: each goes out at the next free slot of a fixed
-- schedule, so the server is offered a steady load instead of a new request the moment the
-- last answer came (which measures saturation, not latency at a given load).

local ffi = require("ffi")
ffi.cdef[[
  typedef struct { long tv_sec; long tv_nsec; } timespec;
  int clock_gettime(int clock, timespec *now);
]]
local now_ts = ffi.new("timespec")
local function now_ms()
  ffi.C.clock_gettime(1, now_ts)  -- CLOCK_MONOTONIC
  return tonumber(now_ts.tv_sec) * 1000 + tonumber(now_ts.tv_nsec) / 1e6
end
local interval = tonumber(os.getenv("RATE") or "")
interval = interval and 1000 / interval
local next_slot

local mode, arg
local tokens, turn = {}, 0

function init(args)
  mode, arg = args[1], args[2]
  for token in string.gmatch(os.getenv("TOKENS"), "%S+") do
    tokens[#tokens + 1] = token
  end
  if mode == "post" then
    wrk.method = "POST"
    wrk.body = os.getenv("BODY")
    wrk.headers["Content-Type"] = "application/json"
  end
end

if interval then
  function delay()
    local now = now_ms()
    next_slot = math.max(next_slot or now, now)
    local wait = next_slot - now
    next_slot = next_slot + interval
    return wait
  end
end

function request()
  turn = turn % #tokens + 1
  local headers = {Authorization = "Bearer " .. tokens[turn]}
  for name, value in pairs(wrk.headers) do  -- wrk.format uses these only when given none
    headers[name] = value
  end
  if mode == "detail" then
    return wrk.format(nil, "/api/v1/runs/" .. math.random(1, tonumber(arg)), headers)
  end
  return wrk.format(nil, arg, headers)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
