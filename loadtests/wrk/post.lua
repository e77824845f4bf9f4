-- wrk script of the benchmark: POSTs JSON bodies read from WRK_BODIES (one body per line),
-- cycling through them, optionally pacing each connection (WRK_DELAY_MS between requests),
-- and prints one machine-readable line, "WRK_JSON {...}", with the totals and percentiles.
--   WRK_BODIES=bodies.jsonl WRK_PATH=/predict wrk -t1 -c16 -d10s -s loadtests/wrk/post.lua URL

local bodies = {}
for line in io.lines(os.getenv("WRK_BODIES")) do
  bodies[#bodies + 1] = line
end
local path = os.getenv("WRK_PATH") or "/"
local delay_ms = tonumber(os.getenv("WRK_DELAY_MS") or "0")
local index = 0

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function request()
  index = index % #bodies + 1
  return wrk.format(nil, path, nil, bodies[index])
end

if delay_ms > 0 then
  function delay()
    return delay_ms
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
