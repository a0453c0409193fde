-- Rewrites user files through Prosody's own util.datamanager (Debian package) for the soak's generator.
-- Usage: lua5.4 datamanager_writer.lua <data_path>; then one request per stdin line:
--   <host> TAB <user> TAB <store> TAB <Lua table constructor>   ("{}" deletes the file, as Prosody does)
-- Each request is answered on stdout with "ok" or "error <reason>".
package.path = "/usr/lib/prosody/?.lua;" .. package.path
package.cpath = "/usr/lib/prosody/?.so;" .. package.cpath
local datamanager = require "util.datamanager"
datamanager.set_data_path(assert(arg[1], "usage: datamanager_writer.lua <data_path>"))
io.stdout:setvbuf("line")
for line in io.stdin:lines() do
	local host, user, store, record = line:match("^([^\t]+)\t([^\t]+)\t([^\t]+)\t(.+)$")
	local ok, err
	if not host then
		ok, err = false, "malformed request"
	else
		local chunk, problem = load("return " .. record, "=record", "t", {})
		if chunk then
			ok, err = datamanager.store(user, host, store, chunk())
		else
			ok, err = false, problem
		end
	end
	io.stdout:write(ok and "ok\n" or ("error " .. tostring(err) .. "\n"))
end
