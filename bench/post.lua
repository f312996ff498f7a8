-- wrk script: POST one notification per request and print a JSON summary line at the end.
--   wrk -t1 -c64 -d10s -s bench/post.lua http://127.0.0.1:8000/v1/notifications
-- BENCH_BODY (optional) replaces the body; BENCH_LIMIT (optional) stops after that many
-- responses (used to send an exact number of notifications).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = os.getenv("BENCH_BODY") or
  '{"subject":"Disk almost full","text":"db-1: / at 93%","severity":"warning",' ..
  '"source":"bench","metadata":{"host":"db-1","check":"disk"}}'

local limit = tonumber(os.getenv("BENCH_LIMIT") or "0")
local seen = 0

if limit > 0 then
  -- defined only when needed: a response() callback makes wrk hand every response to Lua
  function response(status, headers, body)
    seen = seen + 1
    if seen >= limit then
      wrk.thread:stop()
    end
  end
end

function done(summary, latency, requests)
  local s = summary
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
    s.requests, s.duration, s.bytes,
    s.errors.connect, s.errors.read, s.errors.write, s.errors.status, s.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
