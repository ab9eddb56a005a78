-- wrk script for bench/proxy_soak.sh: POSTs a tiny streaming completion and stops each
-- thread after its share of SOAK_REQUESTS responses, so the run has a fixed request count.
-- Prints one line "SOAK {...}" with responses, non-200 count and socket errors.
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.body = '{"model":"sim-7b","prompt":"soak","max_tokens":4,"stream":true}'

local threads = {}
local total = tonumber(os.getenv("SOAK_REQUESTS") or "1000000")

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  count = 0
  non200 = 0
  -- wrk calls setup for every thread before init; the share is set in init from the
  -- thread count wrk passes nowhere, so SOAK_THREADS carries it.
  limit = math.ceil(total / tonumber(os.getenv("SOAK_THREADS") or "1"))
end

function response(status, headers, body)
  count = count + 1
  if status ~= 200 then
    non200 = non200 + 1
  end
  if count >= limit then
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local answered, bad = 0, 0
  for _, thread in ipairs(threads) do
    answered = answered + thread:get("count")
    bad = bad + thread:get("non200")
  end
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout
  io.write(string.format(
    'SOAK {"responses":%d,"non_200":%d,"socket_errors":%d,"seconds":%.1f,"lat_p50_us":%d,"lat_p99_us":%d,"lat_max_us":%d}\n',
    answered, bad, errors, summary.duration / 1e6,
    latency:percentile(50), latency:percentile(99), latency.max))
end
