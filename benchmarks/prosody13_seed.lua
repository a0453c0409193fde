-- Runs Prosody 13's own util.datamanager (Debian 13's package, in the tree fixtures/prosody_runtime.py runs) in its
-- Lua 5.4, two ways:
--   lua5.4 prosody13_seed.lua write <data_path> <users> <now> <seed> <host>...
--       writes a Debian 13 server's per-user files: lastlog2, account_activity and accounts
--   lua5.4 prosody13_seed.lua count <data_path> <now> <store> <enabled|everyone> <host>...
--       counts like Prosody 13's mod_measure_active_users from <store> (lastlog2: Debian 13's packaged revision;
--       account_activity: upstream's newer one), asking mod_auth_internal_hashed's is_enabled unless `everyone`
-- `count` prints one line per host "<host> <1d> <7d> <30d> <files>" and last "elapsed <seconds>".
local prosody_root = os.getenv("PROSODY_LIB") or "/usr/lib"
package.path = prosody_root .. "/?.lua;" .. package.path
package.cpath = prosody_root .. "/?.so;" .. package.cpath

local datamanager = require "prosody.util.datamanager"
local clock = require "prosody.util.time"

local mode, data_path = arg[1], arg[2]
datamanager.set_data_path(data_path)

local seed = dofile((arg[0]:match("^(.*)/") or ".") .. "/seed_users.lua")
local DAY = seed.DAY

-- The users of prosody_seed.lua (seed_users.lua), and on top of that what Prosody 13 keeps:
-- - account_activity: {timestamp} of the last login or logout (mod_account_activity sets it on both, as
--   mod_lastlog2 does its events), for every user who ever logged in;
-- - accounts: mod_auth_internal_hashed's record (create_user's fields; created = the registration), except for
--   DELETED of the users, whose account is gone but whose activity files remain; DISABLED of the users are disabled
--   (half by an admin, half soft-deleted by mod_user_account_management, with its disabled_meta), as
--   provider.disable does: the record loaded, changed and stored again;
-- - EXTRA accounts (a fraction of users) with no activity at all (made by prosodyctl, never logged in).
local DELETED, DISABLED, EXTRA = 0.03, 0.02, 0.05
local ITERATION_COUNT = 10000 -- mod_auth_internal_hashed's default_iteration_count

local function hex(bytes)
  local parts = {}
  for i = 1, bytes do parts[i] = ("%02x"):format(math.random(0, 255)) end
  return table.concat(parts)
end

local function uuid() -- util.uuid's shape (version 4), from the seeded generator so the data set is reproducible
  return ("%s-%s-4%s-%x%s-%s"):format(hex(4), hex(2), hex(2):sub(2), math.random(8, 11), hex(2):sub(2), hex(6))
end

local function create_account(username, host, created)
  -- provider.create_user's record, field for field
  return assert(datamanager.store(username, host, "accounts", {
    stored_key = hex(20), server_key = hex(20),
    salt = uuid(), iteration_count = ITERATION_COUNT,
    created = created, updated = created;
  }))
end

local function disable_account(username, host, when, soft_deleted)
  -- provider.disable: the stored record, disabled (with mod_user_account_management's meta when soft-deleted)
  local account = assert(datamanager.load(username, host, "accounts"))
  account.disabled = true
  if soft_deleted then
    account.disabled_meta = { reason = "ibr", comment = "Deletion requested by user", when = when }
  end
  account.updated = when
  assert(datamanager.store(username, host, "accounts", account))
end

local function write(users, now, random_seed, hosts)
  seed.each_user(users, now, random_seed, hosts, function(username, host, record)
    assert(datamanager.store(username, host, "lastlog2", record))
    if record.login then
      local last = math.max(record.login.timestamp, record.logout and record.logout.timestamp or 0)
      assert(datamanager.store(username, host, "account_activity", { timestamp = last }))
    end
    local fate = math.random()
    if fate >= DELETED then
      create_account(username, host, record.registered.timestamp)
      if fate < DELETED + DISABLED then
        disable_account(username, host, now - math.random(0, seed.ACTIVITY_DAYS * DAY), fate < DELETED + DISABLED / 2)
      end
    end
  end)
  for i = 1, math.floor(users * EXTRA) do
    create_account(("quiet%d"):format(i), hosts[(i % #hosts) + 1], now - math.random(0, 2 * 365 * DAY))
  end
end

-- get_last_active of mod_lastlog2 and of mod_account_activity (for a user with no session: none here)
local last_active_in = {
  lastlog2 = function(username, host)
    local data = datamanager.load(username, host, "lastlog2")
    if not data then return nil end
    local latest = math.max(data.login and data.login.timestamp or 0, data.logout and data.logout.timestamp or 0)
    if latest == 0 then return nil end -- never logged in
    return latest
  end,
  account_activity = function(username, host)
    local data = datamanager.load(username, host, "account_activity")
    return data and data.timestamp
  end,
}

-- mod_auth_internal_hashed's is_enabled (through get_account_info): the record exists and is not disabled
local function is_enabled(username, host)
  local account = datamanager.load(username, host, "accounts")
  if not account then return nil end
  return not account.disabled
end

-- update_calculations of mod_measure_active_users (Debian 13's prosody-modules), reading through datamanager as
-- the server's internal storage does
local function count(now, host, store, count_disabled)
  local get_last_active = assert(last_active_in[store], "store is lastlog2 or account_activity")
  local counts, files = { 0, 0, 0 }, 0
  for username in datamanager.users(host, store) do
    files = files + 1
    if count_disabled or is_enabled(username, host) then
      local last_active = get_last_active(username, host)
      if last_active then seed.tally(counts, now, last_active) end
    end
  end
  return counts[1], counts[2], counts[3], files
end

if mode == "write" then
  write(tonumber(arg[3]), tonumber(arg[4]), tonumber(arg[5]), { table.unpack(arg, 6) })
elseif mode == "count" then
  local now, store, rule = tonumber(arg[3]), arg[4], arg[5]
  assert(rule == "enabled" or rule == "everyone", "enabled|everyone")
  seed.report({ table.unpack(arg, 6) }, function(host) return count(now, host, store, rule == "everyone") end, clock.now)
else
  error("usage: prosody13_seed.lua write|count <data_path> ...")
end
