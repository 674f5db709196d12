-- Eval and init chunks get their checkpoints from the sender, which already
-- has the instrumenter loaded: the isle itself then only compiles text, and
-- never needs to load isle.instrument. Once per distinct chunk string.
local instrument = require("isle.instrument")
local loadstring = loadstring

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

return chunks
