-- Evaluates a Prosody config file (prosody.cfg.lua) in a read-only sandbox; driven by config.py.
--
-- Written for prosody-lastlog from the documented behaviour of Prosody's configmanager (0.12 and 13.x):
-- global assignments are options of the current host, VirtualHost/Component switch the current host,
-- Include runs other files, ENV_X reads the environment, and 13.x adds FileContents, FileLine, FileLines,
-- Credential, `Lua` and reading options back by name. Runs once, in a fresh private runtime per config.
--
-- The config sees only the `base` table built below: no require, no debug, no os.execute/exit, no writes.
-- Files and directories are reached through the Python callables in `hooks`, which only ever read.
-- The config can change the string table that method calls ("x"):find(...) use, so this code calls
-- library functions only through locals captured before the config runs.

local hooks, limits, environ, paths = ...

local type, pairs, ipairs, next, select, tostring, tonumber = type, pairs, ipairs, next, select, tostring, tonumber
local error, pcall, xpcall, load, setmetatable, rawequal = error, pcall, xpcall, load, setmetatable, rawequal
local collectgarbage = collectgarbage
local s_sub, s_byte, s_find, s_match, s_gmatch, s_gsub, s_rep, s_format =
	string.sub, string.byte, string.find, string.match, string.gmatch, string.gsub, string.rep, string.format
local t_sort, t_unpack = table.sort, table.unpack
local utf8_len = utf8.len
local getinfo, sethook = debug.getinfo, debug.sethook
local os_clock = os.clock
local getmetatable, huge = getmetatable, math.huge

local MEMORY_ERROR = "not enough memory" -- what Lua raises when the runtime's max_memory is reached
local NESTED_TOO_DEEPLY = "the config is nested too deeply" -- for Lua's "C stack overflow", which names no file

---------------------------------------------------------------------------------------------------------
-- Positions: errors name the config file and line, like Prosody's own "file:line: message".

-- Lua shortens long chunk names in its messages ("...s/conf.d/x.cfg.lua:3:"); we map them back.
local short_names = {}

local function register_chunk_name(path)
	local probe = load("return", "@" .. path, "t", {})
	local short = getinfo(probe, "S").short_src
	if short ~= path then short_names[short] = path end
end

-- "path:line: " of the innermost running config code, or "" if none is on the stack.
local function config_position()
	local level = 2
	while true do
		local info = getinfo(level, "Sl")
		if not info then return "" end
		if s_sub(info.source, 1, 1) == "@" and info.currentline > 0 then
			return s_sub(info.source, 2) .. ":" .. info.currentline .. ": "
		end
		level = level + 1
	end
end

local function fail(message)
	error(config_position() .. message, 0)
end

local function full_names(message)
	for short, full in pairs(short_names) do
		if s_sub(message, 1, #short + 1) == short .. ":" then
			return full .. s_sub(message, #short + 1)
		end
	end
	return message
end

---------------------------------------------------------------------------------------------------------
-- Run-time and memory limits.

local running = false -- the hook only acts while config code runs
local HOOK_EVERY = 100 -- instructions between checks: one concatenation of a long string can take milliseconds
local calls = 0
local deadline = 0
local exhausted = nil -- once a limit is hit, its message; the config's own pcall cannot swallow it
local last_position = nil -- where the config was at the last hook call, for memory errors (which carry no position)

local function limit_hit(message)
	exhausted = exhausted or ((last_position or "") .. message)
	error(exhausted, 0)
end

local function count_hook()
	if not running then return end
	calls = calls + 1
	if calls % 10000 == 0 then last_position = config_position() end -- every million instructions
	if exhausted then error(exhausted, 0) end
	if calls * HOOK_EVERY > limits.million_instructions * 1000000 then
		last_position = config_position()
		limit_hit("the config ran too long (over " .. limits.million_instructions
			.. " million Lua instructions); is it waiting for something?")
	end
	if os_clock() > deadline then
		last_position = config_position()
		limit_hit("the config ran too long (over " .. limits.max_seconds .. " s of CPU time)")
	end
end

local function reraise_limits(ok, ...)
	if not ok then
		if exhausted then error(exhausted, 0) end
		if (...) == MEMORY_ERROR then error(MEMORY_ERROR, 0) end
	end
	return ok, ...
end

-- The config's pcall: limit errors pass through it, everything else behaves as usual.
local function safe_pcall(f, ...)
	return reraise_limits(pcall(f, ...))
end

---------------------------------------------------------------------------------------------------------
-- String functions. Lua's pattern matcher is C code the instruction hook never interrupts, and some
-- patterns backtrack exponentially ("a*a*a*b" on a long subject), so each call is priced first: every
-- quantified item may try as many lengths as the longest run of subject characters it matches.

-- The pattern's items, each with the quantifier that follows it (or nil).
local function pattern_items(pattern)
	local items, i, m = {}, 1, #pattern
	if s_byte(pattern, 1) == 94 then i = 2 end -- ^ anchors, it is no item
	while i <= m do
		local c, last = s_byte(pattern, i), i
		if c == 40 or c == 41 then -- ( and ) only capture
			last = nil
		elseif c == 37 then -- %x; %b and %f take arguments but no quantifier
			local class = s_byte(pattern, i + 1)
			if class == 98 then -- %bxy
				i, last = i + 3, nil
			elseif class == 102 then -- %f, then its [set] is read as an item
				i, last = i + 1, nil
			else
				last = i + 1
			end
		elseif c == 91 then -- a [set]: the first character after [ or [^ never closes it
			last = i + 1
			if s_byte(pattern, last) == 94 then last = last + 1 end
			repeat
				if s_byte(pattern, last) == 37 then last = last + 1 end
				last = last + 1
			until last > m or s_byte(pattern, last) == 93
		end
		if last then
			local quantifier = s_sub(pattern, last + 1, last + 1)
			if quantifier == "" or not s_find("*+-?", quantifier, 1, true) then quantifier = nil end
			items[#items + 1] = { s_sub(pattern, i, last), quantifier }
			i = last + (quantifier and 2 or 1)
		else
			i = i + 1
		end
	end
	return items
end

local function longest_run(subject, item)
	if item == "." then return #subject end
	local ok, longest = pcall(function()
		local longest = 0
		for run in s_gmatch(subject, item .. "+") do
			if #run > longest then longest = #run end
		end
		return longest
	end)
	return ok and longest or #subject -- a malformed item fails in the real call anyway
end

local function pattern_cost(subject, pattern, plain)
	local n, m = #subject, #pattern
	if plain then return (n + 1.0) * (m + 1) end
	local items, cost = pattern_items(pattern), (s_byte(pattern, 1) == 94 and 1 or n + 1.0) * (m + 1)
	if #items * (n + 1.0) > limits.pattern_cost then return huge end -- even pricing it would take too long
	for _, item in ipairs(items) do
		if item[2] == "?" then
			cost = cost * 2
		elseif item[2] then
			cost = cost * (longest_run(subject, item[1]) + 1)
		end
	end
	return cost
end

local function check_pattern(name, subject, pattern, plain)
	local subject_type, pattern_type = type(subject), type(pattern)
	if (subject_type == "string" or subject_type == "number") and (pattern_type == "string" or pattern_type == "number") then
		subject, pattern = tostring(subject), tostring(pattern)
		if pattern_cost(subject, pattern, plain) > limits.pattern_cost then
			fail(s_format("string.%s: pattern %q on a %d-byte string could take too long for the config sandbox",
				name, s_sub(pattern, 1, 40), #subject))
		end
	end
end

local guarded_string = {}
for name, f in pairs(string) do guarded_string[name] = f end

function guarded_string.find(s, pattern, init, plain)
	check_pattern("find", s, pattern, plain)
	return s_find(s, pattern, init, plain)
end

function guarded_string.match(s, pattern, init)
	check_pattern("match", s, pattern, false)
	return s_match(s, pattern, init)
end

function guarded_string.gmatch(s, pattern, init)
	check_pattern("gmatch", s, pattern, false)
	return s_gmatch(s, pattern, init)
end

function guarded_string.gsub(s, pattern, replacement, n)
	check_pattern("gsub", s, pattern, false)
	return s_gsub(s, pattern, replacement, n)
end

-- A huge string.rep would only fail on the memory cap, whose error carries no file or line.
function guarded_string.rep(s, n, sep)
	local count, s_type = tonumber(n), type(s)
	if count and count > 0 and (s_type == "string" or s_type == "number") then
		local size = count * (#tostring(s) + (type(sep) == "string" and #sep or 0))
		if size > limits.max_memory then
			fail(s_format("string.rep: a %.0f-byte string is more than the config sandbox allows", size))
		end
	end
	return s_rep(s, n, sep)
end

getmetatable("").__index = guarded_string -- method calls ("x"):rep(...) go through the same guards

---------------------------------------------------------------------------------------------------------
-- Read-only files, through the Python hooks.

local file_operations = 0
local bytes_read = 0

local function checked_path(path, what)
	if type(path) ~= "string" then fail(what .. ": file name expected, got " .. type(path)) end
	if not utf8_len(path) then fail(what .. ": file name is not valid UTF-8") end
	file_operations = file_operations + 1
	if file_operations > limits.max_file_operations then
		fail(what .. ": the config opened more than " .. limits.max_file_operations .. " files")
	end
	return path
end

-- The whole content of a regular file, or nil and Lua's io.open-style message and errno.
local function read_file(path, what)
	local content, reason, code = hooks.read_file(checked_path(path, what))
	if content == nil then return nil, path .. ": " .. reason, code end
	bytes_read = bytes_read + #content
	if bytes_read > limits.max_read_bytes then
		fail(what .. ": the config read more than " .. limits.max_read_bytes .. " bytes of files")
	end
	return content
end

local function list_dir(path, what)
	local function collect(ok, ...)
		if not ok then fail(s_format("%s: cannot list %s: %s", what, path, (...))) end
		local names = { ... }
		t_sort(names)
		return names
	end
	return collect(hooks.list_dir(checked_path(path, what)))
end

local function dirname(path)
	return s_match(path, "^(.*)/[^/]*$") or "."
end

-- As Prosody's resolve_relative_path: absolute paths stay, others hang off `parent` (minus a leading ./).
local function resolve(parent, path)
	path = s_gsub(path, "^%./+", "")
	if s_sub(path, 1, 1) == "/" then return path end
	return (s_gsub(parent, "/+$", "")) .. "/" .. path
end

-- io.open handles: tables whose state lives here, out of the config's reach.
local handle_state = setmetatable({}, { __mode = "k" })
local file_methods = {}
local file_mt = { __index = file_methods, __name = "FILE*" }
function file_mt.__close(handle) -- `local f <close> = io.open(...)` works as with real files
	local state = handle_state[handle]
	if state then state.closed = true end
end

local function state_of(handle)
	local state = handle_state[handle]
	if not state then fail("file method called on something that is not a file") end
	if state.closed then fail("attempt to use a closed file") end
	return state
end

local function read_item(state, format)
	local data, pos = state.data, state.pos
	if type(format) == "number" then
		if pos > #data then return nil end
		local chunk = s_sub(data, pos, pos + format - 1)
		state.pos = pos + #chunk
		return chunk
	end
	format = s_sub(s_gsub(tostring(format), "^%*", ""), 1, 1)
	if format == "a" then
		state.pos = #data + 1
		return s_sub(data, pos)
	elseif format == "l" or format == "L" then
		if pos > #data then return nil end
		local newline = s_find(data, "\n", pos, true)
		local line_end = newline or #data
		state.pos = line_end + 1
		return s_sub(data, pos, (format == "l" and newline) and newline - 1 or line_end)
	elseif format == "n" then
		local from, to, text = s_find(data, "^%s*([%+%-]?[%w%.]*[eEpP]?[%+%-]?%d*)", pos)
		state.pos = to and to + 1 or pos
		return tonumber(text)
	end
	fail("bad argument to 'read' (invalid format)")
end

-- Lines as io.lines gives them: without their "\n", no empty line after a final newline.
local function split_lines(content)
	local state, lines = { data = content, pos = 1 }, {}
	while true do
		local line = read_item(state, "l")
		if line == nil then return lines end
		lines[#lines + 1] = line
	end
end

local function read_items(state, ...)
	local count = select("#", ...)
	if count == 0 then return read_item(state, "l") end
	local results = {}
	for i = 1, count do
		results[i] = read_item(state, (select(i, ...)))
		if results[i] == nil then return t_unpack(results, 1, i) end
	end
	return t_unpack(results, 1, count)
end

function file_methods.read(handle, ...)
	return read_items(state_of(handle), ...)
end

function file_methods.lines(handle, ...)
	local state, formats = state_of(handle), { n = select("#", ...), ... }
	return function() return read_items(state, t_unpack(formats, 1, formats.n)) end
end

function file_methods.seek(handle, whence, offset)
	local state = state_of(handle)
	local base = ({ set = 0, cur = state.pos - 1, ["end"] = #state.data })[whence or "cur"]
	if not base then fail("bad argument #1 to 'seek' (invalid option)") end
	state.pos = base + (offset or 0) + 1
	return state.pos - 1
end

function file_methods.close(handle)
	state_of(handle).closed = true
	return true
end

function file_methods.write()
	fail("file:write refused: prosody-lastlog reads the config read-only")
end

function file_methods.flush(handle) return handle end
function file_methods.setvbuf() return true end

local function new_handle(data)
	local handle = setmetatable({}, file_mt)
	handle_state[handle] = { data = data, pos = 1, closed = false }
	return handle
end

-- io.stdout/io.stderr: writes go nowhere (a config may print progress; we stay quiet).
local sink_methods = {}
function sink_methods.write(sink) return sink end
function sink_methods.flush(sink) return sink end
function sink_methods.setvbuf() return true end
function sink_methods.close() return true end
local sink_mt = { __index = sink_methods, __name = "FILE*" }

local function refused(name)
	return function()
		fail(name .. " is not available: prosody-lastlog evaluates the config in a read-only sandbox")
	end
end

local io_lib = {
	stdout = setmetatable({}, sink_mt),
	stderr = setmetatable({}, sink_mt),
	read = refused("io.read"), write = refused("io.write"), popen = refused("io.popen"),
	tmpfile = refused("io.tmpfile"), input = refused("io.input"), output = refused("io.output"),
}

function io_lib.open(path, mode)
	mode = mode == nil and "r" or mode
	if mode ~= "r" and mode ~= "rb" then
		fail(s_format("io.open(%q, %q) refused: prosody-lastlog reads the config read-only", tostring(path), tostring(mode)))
	end
	local content, message, code = read_file(path, "io.open")
	if not content then return nil, message, code end
	return new_handle(content)
end

function io_lib.lines(path, ...)
	if path == nil then fail("io.lines() without a file name reads standard input, which the sandbox refuses") end
	local content, message = read_file(path, "io.lines")
	if not content then fail(message) end
	local state, formats = { data = content, pos = 1 }, { n = select("#", ...), ... }
	return function() return read_items(state, t_unpack(formats, 1, formats.n)) end
end

function io_lib.close(handle)
	if handle == nil then return true end
	return handle:close()
end

function io_lib.type(value)
	local state = handle_state[value]
	if state then return state.closed and "closed file" or "file" end
	if getmetatable(value) == sink_mt then return "file" end
	return nil
end

---------------------------------------------------------------------------------------------------------
-- The globals a config sees (and `Lua` in Prosody 13).

local function copy(t)
	local out = {}
	for k, v in pairs(t) do out[k] = v end
	return out
end

local base = {
	string = guarded_string, table = copy(table), math = copy(math), utf8 = copy(utf8), io = io_lib,
	os = {
		getenv = function(name) return environ[name] end,
		time = os.time, date = os.date, clock = os.clock, difftime = os.difftime,
		execute = refused("os.execute"), exit = refused("os.exit"), remove = refused("os.remove"),
		rename = refused("os.rename"), tmpname = refused("os.tmpname"), setlocale = refused("os.setlocale"),
	},
	select = select, type = type, pairs = pairs, ipairs = ipairs, next = next, tostring = tostring,
	tonumber = tonumber, error = error, assert = assert, pcall = safe_pcall, rawequal = rawequal,
	unpack = t_unpack, print = function() end,
	require = refused("require"), dofile = refused("dofile"), loadfile = refused("loadfile"),
	collectgarbage = refused("collectgarbage"),
	-- A config may add to package.path or package.loaded for Prosody's modules: a private table, used by nothing.
	package = { loaded = {}, preload = {}, path = "", cpath = "", config = package.config },
	-- Anything but "prosody": Snikket's config waits for certificates and exits when it sees "prosody".
	prosody = { process_type = "prosody-lastlog", platform = "posix", paths = { config = paths.config, data = paths.data } },
	_VERSION = _VERSION,
}
base._G = base

-- load() of text only (never bytecode), in the sandbox's globals unless given an environment.
function base.load(chunk, name, _, env)
	return load(chunk, name, "t", env == nil and base or env)
end

---------------------------------------------------------------------------------------------------------
-- Options: config["*"] and config[host], as Prosody's configmanager keeps them.

local config = { ["*"] = {} }
local warnings, warned = {}, {}

local function warn(message) -- once per message: an assignment repeated in a loop warns once
	if warned[message] then return end
	warned[message] = true
	warnings[#warnings + 1] = message
end

local function options_of(host)
	local options = config[host]
	if not options then
		options = {}
		config[host] = options
	end
	return options
end

-- A host's option, else the global one (Prosody's host fallback to "*").
local function get_option(host, key)
	local options = config[host]
	local value = options and options[key]
	if value == nil then value = config["*"][key] end
	return value
end

-- Prosody 13 returns table options read by name as a proxy with :append{}, :value() and :values().
local proxy_state = setmetatable({}, { __mode = "k" })

local function unwrap(value)
	local state = proxy_state[value]
	if state then return state.value end
	return value
end

local function set_option(host, key, value)
	options_of(host)[key] = unwrap(value)
end

local proxy_methods = {}

-- Appends to the option as the current host sees it; the result becomes that host's own value, so a
-- global list appended to inside a VirtualHost section is copied, never changed for every host.
function proxy_methods.append(proxy, items)
	local state = proxy_state[proxy]
	items = unwrap(items)
	if type(items) ~= "table" then fail("append: a table of values expected, got " .. type(items)) end
	local current, merged = unwrap(get_option(state.host, state.key)), {}
	if type(current) == "table" then
		for k, v in pairs(current) do merged[k] = v end
	end
	local n = #merged
	for _, item in ipairs(items) do
		n = n + 1
		merged[n] = item
	end
	set_option(state.host, state.key, merged)
	state.value = merged
end

function proxy_methods.value(proxy)
	return proxy_state[proxy].value
end

function proxy_methods.values(proxy)
	local out = {}
	for i, v in ipairs(proxy_state[proxy].value) do out[i] = v end
	return out
end

local proxy_mt = {
	__index = function(proxy, k) return proxy_methods[k] or proxy_state[proxy].value[k] end,
	__newindex = function(proxy, k, v) proxy_state[proxy].value[k] = v end,
	__len = function(proxy) return #proxy_state[proxy].value end,
	__pairs = function(proxy) return next, proxy_state[proxy].value, nil end,
}

local function option_proxy(host, key, value)
	local proxy = setmetatable({}, proxy_mt)
	proxy_state[proxy] = { host = host, key = key, value = value }
	return proxy
end

---------------------------------------------------------------------------------------------------------
-- Config files: each runs with its own environment whose current host starts as "*".

local run_file -- forward: Include runs files recursively

-- A config file's chunk. Past its C stack limit (deeply nested tables or expressions) Lua's parser fails with
-- a bare "C stack overflow", naming neither file nor line. (load runs in a pcall: else the parser would hand
-- that error to the evaluation's message handler, which knows no file being parsed.)
local function load_file(content, path, env)
	register_chunk_name(path)
	local _, chunk, syntax_error = pcall(load, content, "@" .. path, "t", env)
	if chunk then return chunk end
	if syntax_error == "C stack overflow" then syntax_error = path .. ": " .. NESTED_TOO_DEEPLY end
	error(syntax_error, 0)
end

local function prepped_host_name(name, kind)
	if name == nil then fail(kind .. " must have a name") end
	if type(name) ~= "string" then fail(kind .. " name must be a string, got " .. type(name)) end
	local prepped = utf8_len(name) and hooks.nameprep(name)
	if not prepped then fail(s_format("Name of %s %q contains forbidden characters", kind, name)) end
	return prepped
end

local function apply_options(host, options, kind)
	options = unwrap(options)
	if type(options) ~= "table" then
		fail("Invalid syntax following " .. kind .. ", expected options but received a " .. type(options))
	end
	for k, v in pairs(options) do set_option(host, k, v) end
end

local function glob_pattern(glob)
	return "^" .. s_gsub(glob, "[%p]", function(c)
		if c == "*" then return ".*" elseif c == "?" then return "." end
		return "%" .. c
	end) .. "$"
end

local function directives_for(file)
	local d = {}

	function d.VirtualHost(name)
		local host = prepped_host_name(name, "Host")
		if config[host] and config[host].component_module then
			fail(s_format("Host %q clashes with previously defined Component %q", host, host))
		end
		file.host = host
		options_of(host).defined = true
		return function(options)
			file.host = "*"
			if type(options) == "string" then
				fail(s_format("VirtualHost entries do not accept a module name (module '%s' provided for host '%s')", options, host))
			end
			apply_options(host, options, "VirtualHost")
		end
	end
	d.Host, d.host = d.VirtualHost, d.VirtualHost

	function d.Component(name)
		local host = prepped_host_name(name, "Component")
		if config[host] and config[host].defined and not config[host].component_module then
			fail(s_format("Component %q clashes with previously defined VirtualHost %q", host, host))
		end
		set_option(host, "component_module", "component")
		set_option(host, "load_global_modules", false)
		file.host = host
		local function handle_options(options)
			file.host = "*"
			apply_options(host, options, "Component")
		end
		return function(module)
			if type(module) == "string" then
				set_option(host, "component_module", module)
				return handle_options
			end
			return handle_options(module)
		end
	end
	d.component = d.Component

	local function include_one(path)
		if file.depth >= limits.max_include_depth then
			fail("Include nested more than " .. limits.max_include_depth .. " files deep (does a file include itself?)")
		end
		local content, message = read_file(path, "Include")
		if not content then fail("Error loading included " .. message) end
		run_file(content, path, file.depth + 1)
	end

	function d.Include(pattern)
		if type(pattern) ~= "string" then fail("Include expects a file name, got " .. type(pattern)) end
		if not s_find(pattern, "[*?]") then
			return include_one(resolve(file.dir, pattern))
		end
		-- A glob: wildcards only in the last component; hidden files skipped; sorted for a stable order.
		local position, glob = s_match(pattern, "()([^/]+)$")
		if not glob then fail(s_format("Include %q: the pattern must end in a file name", pattern)) end
		local dir = s_sub(pattern, 1, position - 2)
		dir = #dir > 0 and resolve(file.dir, dir) or file.dir
		local matcher = glob_pattern(glob)
		for _, name in ipairs(list_dir(dir, "Include")) do
			if s_sub(name, 1, 1) ~= "." and s_find(name, matcher) then include_one(dir .. "/" .. name) end
		end
	end
	d.include = d.Include

	-- Prosody runs the script with dofile in its real globals; here it runs in the sandbox's globals.
	function d.RunScript(path)
		if type(path) ~= "string" then fail("RunScript expects a file name, got " .. type(path)) end
		path = resolve(file.dir, path)
		local content, message = read_file(path, "RunScript")
		if not content then fail("RunScript: " .. message) end
		return load_file(content, path, base)()
	end

	local function file_text(path, what)
		if type(path) ~= "string" then fail(what .. " expects a file name, got " .. type(path)) end
		local content, message = read_file(resolve(file.dir, path), what)
		if not content then fail(what .. ": " .. message) end
		return content
	end

	function d.FileContents(path) return file_text(path, "FileContents") end

	function d.FileLine(path)
		local line = read_item({ data = file_text(path, "FileLine"), pos = 1 }, "l")
		if line == nil then fail("FileLine: " .. path .. " is empty") end
		return line
	end

	function d.FileLines(path) return split_lines(file_text(path, "FileLines")) end

	-- systemd's LoadCredential= files. Without $CREDENTIALS_DIRECTORY Prosody's daemon stops and
	-- prosodyctl warns; we warn, as this tool usually runs outside Prosody's service unit.
	function d.Credential(name)
		if type(name) ~= "string" or name == "" or s_find(name, "/", 1, true) or name == "." or name == ".." then
			fail("Credential expects a credential name, got " .. (type(name) == "string" and s_format("%q", name) or type(name)))
		end
		local directory = environ.CREDENTIALS_DIRECTORY
		if directory == nil then
			warn(config_position() .. s_format("Credential(%q) needs $CREDENTIALS_DIRECTORY, which is not set; using nil", name))
			return nil
		end
		local content, message = read_file(resolve(directory, name), "Credential")
		if not content then fail("Credential: " .. message) end
		return content
	end

	return d
end

local function environment_for(file)
	local env = directives_for(file)
	local assigned = {} -- host/option pairs set in this file, for Prosody's duplicate-option warning
	return setmetatable(env, {
		__index = function(_, key)
			if type(key) == "string" then
				if s_sub(key, 1, 4) == "ENV_" then return environ[s_sub(key, 5)] end
				if key == "Lua" then return base end
				local value = get_option(file.host, key)
				if value ~= nil then
					if type(value) == "table" then return option_proxy(file.host, key, value) end
					return value
				end
			end
			return base[key]
		end,
		__newindex = function(_, key, value)
			local where = file.host .. "/" .. tostring(key)
			if assigned[where] then warn(config_position() .. s_format("Duplicate option '%s'", tostring(key))) end
			assigned[where] = true
			set_option(file.host, key, value)
		end,
	})
end

function run_file(content, path, depth)
	local file = { host = "*", dir = dirname(path), depth = depth }
	load_file(content, path, environment_for(file))()
end

---------------------------------------------------------------------------------------------------------
-- Results: plain copies (strings, numbers, booleans, tables) for Python.

-- Depths 0 to 2 are the exported view (root, options, host); an option's value keeps 16 levels of tables.
local EXPORT_DEPTH = 2 + 16

local function clean_string(s)
	if utf8_len(s) then return s end
	return (s_gsub(s, "[\128-\255]", "?"))
end

-- Python receives its own copy of a value each time a table holds it, so a string or table stored many times
-- is paid for at each use: in table entries, and in string bytes (counted before a string is scanned).
local function exporter()
	local entries, bytes, in_progress = limits.max_export_values, limits.max_export_bytes, {}
	local function too_large(limit, what)
		error(s_format("the config's option values are too large to export (over %d %s, counting every use)", limit, what), 0)
	end
	local function export(value, depth)
		local kind = type(value)
		if kind == "string" then
			bytes = bytes - #value
			if bytes < 0 then too_large(limits.max_export_bytes, "bytes of strings") end
			return clean_string(value)
		end
		if kind == "number" or kind == "boolean" then return value end
		if kind ~= "table" then return nil end -- functions and the like are nothing a reader can use
		value = unwrap(value)
		if depth > EXPORT_DEPTH or in_progress[value] then return nil end -- cycles and absurd nesting are dropped
		in_progress[value] = true
		local out = {}
		for k, v in next, value do
			entries = entries - 1
			if entries < 0 then too_large(limits.max_export_values, "table entries") end
			local key_kind = type(k)
			if key_kind == "string" or key_kind == "number" or key_kind == "boolean" then
				out[export(k, depth)] = export(v, depth + 1)
			end
		end
		in_progress[value] = nil
		return out
	end
	return export
end

-- { options = { host = { option = value } }, warnings = { ... } }, all of it within the export's budget.
local function export_config()
	local global, view = config["*"], {}
	for host, options in pairs(config) do
		local host_view = {}
		for key, value in pairs(options) do
			-- A host value that is the global table itself counts as unset (Prosody's modulemanager).
			local shared = host ~= "*" and type(value) == "table" and rawequal(value, global[key])
			if type(key) == "string" and not shared then host_view[key] = value end
		end
		view[host] = host_view
	end
	local full_warnings = {}
	for i, message in ipairs(warnings) do full_warnings[i] = full_names(message) end
	return exporter()({ options = view, warnings = full_warnings }, 0)
end

---------------------------------------------------------------------------------------------------------

local function describe_error(err)
	if type(err) ~= "string" then
		return config_position() .. "the config raised an error value of type " .. type(err)
	end
	if s_find(err, "C stack overflow$") then -- recursion through C functions (pcall, gsub): the config's line
		return config_position() .. NESTED_TOO_DEEPLY
	end
	return full_names(err)
end

-- The one-line message of a failed evaluation or export; memory errors carry no position of their own.
local function failure_message(err, main_path)
	collectgarbage()
	if err == MEMORY_ERROR then
		err = (last_position or main_path .. ": ") .. "the config needs more memory than the sandbox allows ("
			.. limits.max_memory .. " bytes)"
	end
	return clean_string(full_names(tostring(err)))
end

return function(main_path)
	local function run_main()
		local content, message = read_file(main_path, "config")
		if not content then error(message, 0) end
		run_file(content, main_path, 0)
	end
	running = true
	last_position = nil
	deadline = os_clock() + limits.max_seconds
	sethook(count_hook, "", HOOK_EVERY)
	local ok, err = xpcall(run_main, describe_error)
	running = false
	sethook()
	if not ok then return false, failure_message(err, main_path) end
	last_position = nil -- the export runs no config code
	local exported, result = pcall(export_config)
	if exported then return true, result.options, result.warnings end
	if result ~= MEMORY_ERROR then result = main_path .. ": " .. result end
	return false, failure_message(result, main_path)
end
