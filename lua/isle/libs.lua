-- The standard libraries an isle may be given (option `libs` of isle.spawn).
-- `base` (which in LuaJIT includes coroutine) and `package` are always there;
-- the others are opened in C as usual, then their globals are removed unless
-- asked for. They stay loadable with require(), as package.loaded keeps them.
local type, ipairs, next, require = type, ipairs, next, require

local libs = {}

libs.OPTIONAL = { string = true, table = true, math = true, io = true, os = true,
                  debug = true, bit = true, jit = true, ffi = true }
libs.ALWAYS = { base = true, package = true, coroutine = true }

-- libs: true (everything as in the luajit binary), false, or a list of names.
function libs.apply(spec, G)
    if spec == true then return end
    local keep = {}
    if type(spec) == "table" then
        for _, name in ipairs(spec) do keep[name] = true end
    end
    for name in next, libs.OPTIONAL do
        if keep[name] then
            G[name] = require(name)
        elseif name ~= "ffi" then
            G[name] = nil
        end
    end
end

return libs
