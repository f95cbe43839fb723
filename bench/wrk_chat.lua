-- wrk script: POST one fixed chat completion over keep-alive connections.
-- BENCH_STREAM=1 asks for a stream; BENCH_KEY is the bearer token.
-- Prints one line "WRKJSON {...}" with counts and latency percentiles in microseconds.
local stream = os.getenv("BENCH_STREAM") == "1"
local key = os.getenv("BENCH_KEY") or "sk-bench"
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key
if stream then
  wrk.body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}],'
    .. '"user":"cust-bench","stream":true}'
else
  wrk.body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}],'
    .. '"user":"cust-bench"}'
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"status_errors":%d,' ..
    '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read,
    e.write, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max))
end
