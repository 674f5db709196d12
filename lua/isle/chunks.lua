-- Eval and init chunks get their checkpoints from the sender, which already
-- has the instrumenter loaded: the isle itself then only compiles text, and
-- never needs to load isle.instrument. Once per distinct chunk string.
local instrument = require("isle.instrument")
local fnsource = require("isle.fnsource")
local loadstring, setmetatable = loadstring, setmetatable

local chunks = {}
local cache, count = {}, 0

-- Returns the text to send and whether it is the instrumented wrapper. A
-- chunk that does not compile is sent as it is, so that the isle reports
-- Lua's own syntax error for it.
function chunks.prepare(code)
    local hit = cache[code]
    if hit == nil then
        hit = false
        if loadstring(code) then
            local out = instrument.source(code)
            if out and loadstring(out) then hit = out end
        end
        if count >= 256 then cache, count = {}, 0 end
        cache[code] = hit
        count = count + 1
    end
    if hit then return hit, true end
    return code, false
end

local fn_cache = setmetatable({}, { __mode = "k" })

-- For a function sent with exec (or as init): { text, chunkname } of an
-- instrumented chunk that returns the function, or nil when its source
-- cannot be recovered exactly (it then travels as bytecode).
function chunks.prepare_function(fn)
    local hit = fn_cache[fn]
    if hit == nil then
        hit = false
        local src, chunkname = fnsource.get(fn)
        if src then
            local out = instrument.source(src)
            if out and loadstring(out, chunkname) then hit = { out, chunkname } end
        end
        fn_cache[fn] = hit
    end
    return hit or nil
end

return chunks
