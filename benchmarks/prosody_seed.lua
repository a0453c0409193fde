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

local seed = dofile((arg[0]:match("^(.*)/") or ".") .. "/seed_users.lua")

local function write(users, now, random_seed, hosts)
  seed.each_user(users, now, random_seed, hosts, function(username, host, record)
    assert(datamanager.store(username, host, "lastlog2", record))
  end)
end

-- The arithmetic of mod_measure_active_users (prosody-modules), reading through datamanager as the
-- server's internal storage does; no user has a live session here.
local function count(now, host)
  local counts, files = { 0, 0, 0 }, 0
  for username in datamanager.users(host, "lastlog2") do
    files = files + 1
    local data = datamanager.load(username, host, "lastlog2")
    if data then
      seed.tally(counts, now, math.max(data.login and data.login.timestamp or 0, data.logout and data.logout.timestamp or 0))
    end
  end
  return counts[1], counts[2], counts[3], files
end

if mode == "write" then
  write(tonumber(arg[3]), tonumber(arg[4]), tonumber(arg[5]), { table.unpack(arg, 6) })
elseif mode == "count" then
  local now = tonumber(arg[3])
  seed.report({ table.unpack(arg, 4) }, function(host) return count(now, host) end, clock.now)
else
  error("usage: prosody_seed.lua write|count <data_path> ...")
end
