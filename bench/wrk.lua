-- wrk script for bench/api.py: `wrk ... URL -- MODE [ARG]` where MODE is
--   detail RUNS   GET /api/v1/runs/<random 1..RUNS>
--   get PATH      GET PATH
--   post PATH     POST PATH with the JSON body in the BODY environment variable
-- and prints one JSON line of figures when done (latencies in microseconds).

local mode, arg

function init(args)
  mode, arg = args[1], args[2]
  if mode == "post" then
    wrk.method = "POST"
    wrk.body = os.getenv("BODY")
    wrk.headers["Content-Type"] = "application/json"
  end
end

function request()
  if mode == "detail" then
    return wrk.format(nil, "/api/v1/runs/" .. math.random(1, tonumber(arg)))
  end
  return wrk.format(nil, arg)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
