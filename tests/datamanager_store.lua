-- Writes one record with Prosody's own util.datamanager (Debian package), for tests that need a file shape
-- the fixture scenarios don't cover.
-- Usage: lua5.4 datamanager_store.lua <data_path> <user> <host> <store> '<Lua table constructor>'
package.path = "/usr/lib/prosody/?.lua;" .. package.path
package.cpath = "/usr/lib/prosody/?.so;" .. package.cpath
local datamanager = require "util.datamanager"
local data_path, user, host, store, record = table.unpack(arg)
datamanager.set_data_path(data_path)
assert(datamanager.store(user, host, store, assert(load("return " .. record, "=record", "t", {}))()))
