-- wrk script: the bodies of webhook.lua, sent at a steady rate instead of flat out.
--
--   wrk -t2 -c64 -d60s -s bench/wrk/paced.lua 'http://…/webhooks/runware?token=T' -- SEED RATE_PER_THREAD
--
-- Each thread keeps a schedule of evenly spaced send times (RATE_PER_THREAD a
-- second); a connection ready to send takes the next slot and waits for it
-- (wrk's delay() hook). Slots are counted from the schedule, not from when the
-- previous request ended, so a slow response does not lower the rate: while
-- the schedule is behind, ready connections send at once until it catches up.
-- The achieved rate is what wrk reports; the harness compares it with the target.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "webhook.lua")

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } paced_timespec;
  int clock_gettime(int clock_id, paced_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local now_ts = ffi.new("paced_timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, now_ts)
  return tonumber(now_ts.tv_sec) * 1000 + tonumber(now_ts.tv_nsec) / 1e6
end

local interval_ms
local next_slot

local webhook_init = init

function init(args)
  webhook_init(args)
  local rate = tonumber(args[2])
  if not rate or rate <= 0 then
    error("paced.lua needs a rate per thread: -- SEED RATE_PER_THREAD")
  end
  interval_ms = 1000 / rate
end

function delay()
  local now = now_ms()
  if not next_slot then
    next_slot = now
  end
  local slot = next_slot
  next_slot = next_slot + interval_ms
  if slot <= now then
    return 0
  end
  return math.floor(slot - now)
end
