-- The source text of an upvalue-free Lua function, so that functions sent
-- with exec/spawn_exec can be instrumented like eval chunks instead of
-- travelling as bytecode that only the hook can stop.
--
-- debug.getinfo gives the chunk's source (a file, or the string it was
-- loaded from) and the lines the function spans. The candidate text runs
-- from a `function` keyword on the first line to an `end` on the last one;
-- a candidate is accepted only if it compiles to exactly the same bytecode
-- as the function itself (string.dump, stripped), so a wrong guess is
-- never used. Line numbers are kept by padding with newlines.
local string = require("string")
local io = require("io")
local debug = require("debug")
local type, loadstring, pcall, setmetatable = type, loadstring, pcall, setmetatable
local find, sub, rep, dump = string.find, string.sub, string.rep, string.dump

local fnsource = {}

local file_cache = setmetatable({}, { __mode = "v" })

local function chunk_text(source)
    if sub(source, 1, 1) == "@" then
        local path = sub(source, 2)
        local text = file_cache[path]
        if text then return text end
        local f = io.open(path, "rb")
        if not f then return nil end
        text = f:read("*a")
        f:close()
        file_cache[path] = text
        return text
    elseif sub(source, 1, 1) == "=" then
        return nil -- named chunk: its text is not kept
    end
    return source -- loaded from a string without a name: the string itself
end

-- Byte offsets: start and end of line `first`, start and end of line `last`.
local function line_span(text, first, last)
    local pos, line = 1, 1
    local starts = {}
    while true do
        if line == first then starts.first = pos end
        if line == last then starts.last = pos break end
        local nl = find(text, "\n", pos, true)
        if not nl then return nil end
        pos, line = nl + 1, line + 1
    end
    local function line_end(p)
        local nl = find(text, "\n", p, true)
        return nl and nl - 1 or #text
    end
    return starts.first, line_end(starts.first), starts.last, line_end(starts.last)
end

-- `function a.b:c(x)` / `local function f(x)` / `function(x)` -> an expression.
local function as_expression(head)
    local s, e, name = find(head, "^function%s*([%w_%.:]*)%s*%(")
    if not s then return nil end
    if name == "" then return head end
    local rest = sub(head, e + 1)
    if find(name, ":", 1, true) then
        if find(rest, "^%s*%)") then return "function(self" .. rest end
        return "function(self, " .. rest
    end
    return "function(" .. rest
end

-- Returns the function's text (padded so lines match) and its chunkname,
-- or nil when it cannot be recovered and verified.
function fnsource.get(fn)
    local info = debug.getinfo(fn, "S")
    if not info or info.what ~= "Lua" or info.linedefined <= 0 then return nil end
    local text = chunk_text(info.source)
    if not text then return nil end
    local first_start, first_end, last_start, last_end =
        line_span(text, info.linedefined, info.lastlinedefined)
    if not first_start then return nil end
    local want = dump(fn, true)
    local pad = rep("\n", info.linedefined - 1)
    -- Try every `function` on the first line with every `end` on the last.
    local fpos = first_start
    while true do
        local fs = find(text, "function", fpos, true)
        if not fs or fs > first_end then break end
        local epos = last_start
        while true do
            local es, ee = find(text, "end", epos, true)
            if not es or ee > last_end then break end
            if ee > fs then
                local expr = as_expression(sub(text, fs, ee))
                local chunk = expr and loadstring(pad .. "return " .. expr, info.source)
                if chunk then
                    local ok, got = pcall(chunk)
                    if ok and type(got) == "function" and dump(got, true) == want then
                        return pad .. "return " .. expr, info.source
                    end
                end
            end
            epos = ee + 1
        end
        fpos = fs + 1
    end
    return nil
end

return fnsource
