-- wrk script for bench/run.sh: POSTs a small streaming completion request and, when done,
-- prints one JSON line (prefixed "BENCH ") with throughput and latency percentiles in µs.
-- BENCH_DELAY_MS (optional): each connection waits this long between requests, so that
-- C connections offer about C / (delay + latency) requests/s (a fixed-rate mode for the
-- plain wrk that Debian ships, which has no -R).
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.body = '{"model":"sim-7b","prompt":"benchmark","max_tokens":16,"stream":true}'

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
