-- Runs Prosody's own util.datamanager (from the Debian package) in plain Lua 5.4, two ways:
--   lua5.4 prosody_seed.lua write <data_path> <users> <now> <seed> <host>...   writes lastlog2 files
--   lua5.4 prosody_seed.lua count <data_path> <now> <host>...                  counts like mod_measure_active_users
-- `count` prints one line per host "<host> <1d> <7d> <30d> <files>" and last "elapsed <seconds>".
local prosody_root = os.getenv("PROSODY_LIB") or "/usr/lib/prosody"
package.path = prosody_root .. "/?.lua;" .. package.path
package.cpath = prosody_root .. "/?.so;" .. package.cpath

local datamanager = require "util.datamanager"
local clock = require "util.time"

local mode, data_path = arg[1], arg[2]
datamanager.set_data_path(data_path)

local DAY = 86400
local NAME_SHAPES = { "user%d", "first.last%d", "dash-%d", "plus+%d", "under_%d", "j\195\188rgen%d" }

-- Users spread over the hosts, most names needing percent-encoding. 90% logged in within the last ACTIVITY_DAYS,
-- 70% of those logged out again (up to 8 h later, not after now); the rest only registered. Registered up to a
-- year before the login.
local ACTIVITY_DAYS = 120

local function write(users, now, seed, hosts)
  math.randomseed(seed)
  for i = 1, users do
    local host = hosts[(i % #hosts) + 1]
    local username = NAME_SHAPES[(i // #hosts) % #NAME_SHAPES + 1]:format(i)  -- every shape on every host
    local record = {}
    if math.random() < 0.9 then
      local login = now - math.random(0, ACTIVITY_DAYS * DAY)
      record.login = { timestamp = login }
      if math.random() < 0.7 then record.logout = { timestamp = math.min(now, login + math.random(0, 8 * 3600)) } end
    end
    record.registered = { timestamp = (record.login and record.login.timestamp or now) - math.random(0, 365 * DAY) }
    assert(datamanager.store(username, host, "lastlog2", record))
  end
end

-- The arithmetic of mod_measure_active_users (prosody-modules), reading through datamanager as the
-- server's internal storage does; no user has a live session here.
local function count(now, host)
  local d1, d7, d30, files = 0, 0, 0, 0
  for username in datamanager.users(host, "lastlog2") do
    files = files + 1
    local data = datamanager.load(username, host, "lastlog2")
    if data then
      local last_active = math.max(data.login and data.login.timestamp or 0, data.logout and data.logout.timestamp or 0)
      if now - last_active < DAY then d1 = d1 + 1 end
      if now - last_active < DAY * 7 then d7 = d7 + 1 end
      if now - last_active < DAY * 30 then d30 = d30 + 1 end
    end
  end
  return d1, d7, d30, files
end

if mode == "write" then
  write(tonumber(arg[3]), tonumber(arg[4]), tonumber(arg[5]), { table.unpack(arg, 6) })
elseif mode == "count" then
  local now = tonumber(arg[3])
  local started = clock.now()
  local lines = {}
  for i = 4, #arg do
    lines[#lines + 1] = table.concat({ arg[i], count(now, arg[i]) }, " ")
  end
  local elapsed = clock.now() - started
  print(table.concat(lines, "\n"))
  print(("elapsed %.6f"):format(elapsed))
else
  error("usage: prosody_seed.lua write|count <data_path> ...")
end
