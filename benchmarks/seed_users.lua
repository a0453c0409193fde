-- The users both benchmark seeds write (prosody_seed.lua with Prosody 0.12's datamanager, prosody13_seed.lua with
-- Prosody 13's), and how both print their counts. Loaded with dofile; plain Lua 5.4, nothing of Prosody's.
local seed = {}

seed.DAY = 86400
seed.ACTIVITY_DAYS = 120
local NAME_SHAPES = { "user%d", "first.last%d", "dash-%d", "plus+%d", "under_%d", "j\195\188rgen%d" }

-- Users spread over the hosts, most names needing percent-encoding. 90% logged in within the last ACTIVITY_DAYS,
-- 70% of those logged out again (up to 8 h later, not after now); the rest only registered. Registered up to a
-- year before the login. `visit(username, host, record)` gets each one's mod_lastlog2 record, and may draw more
-- random numbers: the sequence of users stays the same.
function seed.each_user(users, now, random_seed, hosts, visit)
  math.randomseed(random_seed)
  for i = 1, users do
    local host = hosts[(i % #hosts) + 1]
    local username = NAME_SHAPES[(i // #hosts) % #NAME_SHAPES + 1]:format(i)  -- every shape on every host
    local record = {}
    if math.random() < 0.9 then
      local login = now - math.random(0, seed.ACTIVITY_DAYS * seed.DAY)
      record.login = { timestamp = login }
      if math.random() < 0.7 then record.logout = { timestamp = math.min(now, login + math.random(0, 8 * 3600)) } end
    end
    record.registered = { timestamp = (record.login and record.login.timestamp or now) - math.random(0, 365 * seed.DAY) }
    visit(username, host, record)
  end
end

-- Adds one user's last activity to the counts of mod_measure_active_users' three windows.
function seed.tally(counts, now, last_active)
  if now - last_active < seed.DAY then counts[1] = counts[1] + 1 end
  if now - last_active < seed.DAY * 7 then counts[2] = counts[2] + 1 end
  if now - last_active < seed.DAY * 30 then counts[3] = counts[3] + 1 end
end

-- Counts each host with `count(host)` (d1, d7, d30, files), timed by `now_seconds()`; prints one line per host
-- "<host> <1d> <7d> <30d> <files>" and last "elapsed <seconds>".
function seed.report(hosts, count, now_seconds)
  local started = now_seconds()
  local lines = {}
  for _, host in ipairs(hosts) do
    lines[#lines + 1] = table.concat({ host, count(host) }, " ")
  end
  local elapsed = now_seconds() - started
  print(table.concat(lines, "\n"))
  print(("elapsed %.6f"):format(elapsed))
end

return seed
