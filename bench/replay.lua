-- Replays pre-signed `POST /v1/cases` requests with wrk, each one at most once.
--
-- Arguments (after `--` on the wrk command line):
--   1. the requests file: one request a line, tab-separated:
--      key id, timestamp, nonce, signature, JSON body
--   2. the number of wrk threads (thread i takes lines i, i + n, i + 2n, ...)
--   3. "once" (default): when a thread has sent its share it stops, so no signed request
--      (and no nonce) is ever sent twice; "cycle": wrap around (for a server that does not
--      check nonces, such as the bare baseline)
--
-- `done` prints one line `BENCH_JSON {...}` with the counts per status and the latency
-- percentiles, for bench/run.py to read.

local threads = {}
local next_id = 0

function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

function init(args)
   local path = args[1]
   local nthreads = tonumber(args[2]) or 1
   cycle = args[3] == "cycle"
   reqs = {}
   local line_no = 0
   for line in io.lines(path) do
      if line_no % nthreads == id then
         local key, ts, nonce, sig, body =
            line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
         local headers = {
            ["Content-Type"] = "application/json",
            ["X-Tongban-Key"] = key,
            ["X-Tongban-Timestamp"] = ts,
            ["X-Tongban-Nonce"] = nonce,
            ["X-Tongban-Signature"] = sig,
         }
         reqs[#reqs + 1] = wrk.format("POST", "/v1/cases", headers, body)
      end
      line_no = line_no + 1
   end
   loaded = #reqs
   pos = 0
   exhausted = 0
   statuses = {}
end

function request()
   pos = pos + 1
   if pos > loaded then
      if cycle then
         pos = 1
      else
         -- Every request of this thread's share is out: stop rather than replay a nonce.
         exhausted = exhausted + 1
         pos = loaded
         wrk.thread:stop()
      end
   end
   return reqs[pos]
end

function response(status, headers, body)
   local key = tostring(status)
   statuses[key] = (statuses[key] or 0) + 1
end

function done(summary, latency, requests)
   local merged = {}
   local loaded_total, exhausted_total = 0, 0
   for _, t in ipairs(threads) do
      for k, v in pairs(t:get("statuses") or {}) do
         merged[k] = (merged[k] or 0) + v
      end
      loaded_total = loaded_total + (t:get("loaded") or 0)
      exhausted_total = exhausted_total + (t:get("exhausted") or 0)
   end
   local parts = {}
   for k, v in pairs(merged) do
      parts[#parts + 1] = string.format('"%s":%d', k, v)
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"duration_us":%d,"requests":%d,"bytes":%d,"connect_errors":%d,'
         .. '"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,'
         .. '"latency_mean_us":%.1f,"latency_max_us":%d,"p50_us":%d,"p90_us":%d,'
         .. '"p99_us":%d,"loaded":%d,"exhausted":%d,"statuses":{%s}}\n',
      summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write,
      e.status, e.timeout, latency.mean, latency.max, latency:percentile(50.0),
      latency:percentile(90.0), latency:percentile(99.0), loaded_total, exhausted_total,
      table.concat(parts, ",")
   ))
end
