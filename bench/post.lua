-- wrk script for bench/run.sh: POSTs a small streaming completion request and, when done,
-- prints one JSON line (prefixed "BENCH ") with throughput and latency percentiles in µs.
-- BENCH_DELAY_MS (optional): each connection waits this long between requests, so that
-- C connections offer about C / (delay + latency) requests/s (a fixed-rate mode for the
-- plain wrk that Debian ships, which has no -R).
-- BENCH_GAP_US (optional): asks bench_sse to send each event this many µs after the one
-- before (header x-bench-event-gap-us), as a model server streams tokens.
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.body = '{"model":"sim-7b","prompt":"benchmark","max_tokens":16,"stream":true}'

local gap_us = tonumber(os.getenv("BENCH_GAP_US") or "")
if gap_us and gap_us > 0 then
  wrk.headers["x-bench-event-gap-us"] = tostring(math.floor(gap_us))
end

local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "")
if delay_ms and delay_ms > 0 then
  function delay()
    return delay_ms
  end
end

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    'BENCH {"requests":%d,"seconds":%.3f,"rps":%.1f,"errors":%d,"lat_p50_us":%d,"lat_p90_us":%d,"lat_p99_us":%d,"lat_max_us":%d,"bytes":%d}\n',
    summary.requests, secs, summary.requests / secs, errors,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    summary.bytes))
end
