-- wrk script: InfluxDB 1.x HTTP /write with the line protocol `sensorlink bench` sends.
--   wrk -t C -c C -d 5s -s bench/influx_write.lua http://127.0.0.1:PORT -- BATCH DB H0
-- One connection per wrk thread (-t = -c), so thread i writes series `sensor=bench-<i>`,
-- like connection i of `sensorlink bench`, one request in flight per connection:
--   bench,sensor=bench-<i> f0=<v> <timestamp ns>
-- Every point is unique: request j of thread i carries the timestamps H * 10^4 + k
-- (k = 0 … BATCH-1) with H = H0 + j * threads + i, distinct for every request of every
-- thread. The body's pieces are built once; a request only puts its H between them.
-- `done` prints one JSON object (wrk's own latency per request, in µs).

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  table.insert(threads, thread)
  next_id = next_id + 1
end

-- Globals of each thread's Lua state: `id` comes from setup, `batch` is read back by done.
local path, h0, nthreads, j, parts, hslots

function init(args)
  batch = tonumber(args[1])
  path = "/write?db=" .. args[2]
  h0 = tonumber(args[3]) -- < 2^53: exact as a double
  nthreads = tonumber(args[4])
  j = 0
  parts, hslots = {}, {}
  for k = 0, batch - 1 do
    local v = (k * 31) % 10000
    table.insert(parts, string.format("bench,sensor=bench-%d f0=%d.%d ", id, math.floor(v / 10), v % 10))
    table.insert(parts, "") -- H goes here
    table.insert(hslots, #parts)
    table.insert(parts, string.format("%04d\n", k))
  end
end

local headers = { ["Content-Type"] = "text/plain; charset=utf-8" }

function request()
  local h = string.format("%015.0f", h0 + j * nthreads + id)
  j = j + 1
  for _, s in ipairs(hslots) do
    parts[s] = h
  end
  return wrk.format("POST", path, headers, table.concat(parts))
end

function done(summary, latency, requests)
  local batch = tonumber(threads[1]:get("batch"))
  local e = summary.errors
  local ok = summary.requests - e.status
  local secs = summary.duration / 1e6
  io.write(string.format(
    '{"requests":%d,"readings":%d,"seconds":%.6f,"readings_per_sec":%.1f,"errors":%d,' ..
    '"errors_by_kind":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"batch":%d,"latency_us":{"p50":%.1f,"p90":%.1f,"p99":%.1f,"max":%.1f}}\n',
    summary.requests, ok * batch, secs, ok * batch / secs,
    e.connect + e.read + e.write + e.status + e.timeout,
    e.connect, e.read, e.write, e.status, e.timeout, batch,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
