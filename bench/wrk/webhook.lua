-- wrk script: POST a realistic Runware webhook body with a fresh taskUUID per request.
--
--   wrk -t2 -c32 -d15s -s bench/wrk/webhook.lua 'http://127.0.0.1:PORT/webhooks/runware?token=T' -- SEED
--
-- Each body is {"data":[{"taskType":"imageCaption","taskUUID":…,"text":…,"cost":0.0019}]},
-- about 290 bytes, its caption taken in turn from captions.txt beside this script.
-- The taskUUID is uuid4-shaped: random bits from SEED and the thread, then the
-- thread number and a per-thread counter, so no two requests of a run share one.
-- When the run ends, one line starting with "WRK_JSON " gives the exact counts
-- and latency percentiles (microseconds) for the harness to read.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"

local function read_captions()
  local list = {}
  for line in io.lines(here .. "captions.txt") do
    if #line > 0 then
      list[#list + 1] = line
    end
  end
  return list
end

local captions = read_captions()
local created = 0
local counter = 0

function setup(thread)
  created = created + 1
  thread:set("thread_no", created)
end

function init(args)
  local seed = tonumber(args[1]) or os.time()
  math.randomseed(seed * 997 + (thread_no or 0))
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

local function hex16()
  return math.random(0, 0xffff)
end

local function task_uuid()
  counter = counter + 1
  return string.format("%04x%04x-%04x-4%03x-%04x-%04x%08x",
    hex16(), hex16(), hex16(), math.random(0, 0xfff), 0x8000 + math.random(0, 0x3fff),
    thread_no or 0, counter)
end

function request()
  local caption = captions[counter % #captions + 1]
  local body = '{"data":[{"taskType":"imageCaption","taskUUID":"' .. task_uuid()
    .. '","text":"' .. caption .. '","cost":0.0019}]}'
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"duration_us":%d,"requests":%d,"bytes":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
end
