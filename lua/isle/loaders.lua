-- Code an isle loads itself gets checkpoints like eval code: load,
-- loadstring, loadfile, dofile and require of Lua files from package.path
-- compile through isle.instrument inside isles, so a rules file or a game's
-- AI module stays stoppable once the JIT compiles it. Binary chunks load as
-- they are (they cannot be instrumented), and source the instrumenter cannot
-- handle falls back to the plain loader. Opt out per isle with the spawn
-- option `instrument_loads = false` (docs/jit-safety.md).
-- The state's own require, which an isle's guarded loader hands to isle's
-- modules (interrupt.guard_modules): this module loads on first need, when
-- user code may have replaced the global.
local _, own_require = ...
local require = own_require or require
local string = require("string")
local io = require("io")
local table = require("table")
local interrupt = require("isle.interrupt")

local type, tostring, error, pcall =
    type, tostring, error, pcall
local sub, byte = string.sub, string.byte

local loaders = {}

local plain_load -- the state's own load, kept by install

-- Instruments and compiles `src`; nil when it cannot be instrumented (the
-- caller then uses the plain loader, which also reports syntax errors).
local function instrumented(src, chunkname, env)
    if byte(src, 1) == 27 then return nil end -- bytecode
    local out = require("isle.instrument").source(src)
    if not out then return nil end
    local factory
    if env ~= nil then factory = plain_load(out, chunkname, "t", env)
    else factory = plain_load(out, chunkname, "t") end
    if not factory then return nil end
    return factory()(interrupt.pointers())
end

-- A load() reader function is drained into a string first (the sandbox's
-- load does the same: loaders.drain).
local function drain(reader)
    local parts = {}
    while true do
        local piece = reader()
        if piece == nil or piece == "" then break end
        if type(piece) ~= "string" then error("reader function must return a string", 0) end
        parts[#parts + 1] = piece
    end
    return table.concat(parts)
end
loaders.drain = drain

-- The instrumented load, loadstring, loadfile, dofile and Lua-file searcher
-- of a state whose plain loaders are given (an isle takes them at boot and
-- makes these on first use: worker.lua's install_loaders).
function loaders.make(G, plain_load_, plain_loadstring, plain_loadfile)
    plain_load = plain_load_

    local plain_load = plain_load
    local function load(chunk, chunkname, mode, env)
        if type(chunk) == "function" then
            local ok, src = pcall(drain, chunk)
            if not ok then return nil, src end
            chunk = src
        end
        if type(chunk) ~= "string" or mode == "b" then
            return plain_load(chunk, chunkname, mode, env)
        end
        local f = instrumented(chunk, chunkname or chunk, env)
        if f then return f end
        return plain_load(chunk, chunkname, mode, env)
    end

    local function loadstring(src, chunkname)
        if type(src) ~= "string" then return plain_loadstring(src, chunkname) end
        local f = instrumented(src, chunkname or src)
        if f then return f end
        return plain_loadstring(src, chunkname)
    end

    local function read_file(path)
        local fh, err = io.open(path, "rb")
        if not fh then return nil, "cannot open " .. tostring(path) .. ": " .. tostring(err) end
        local src = fh:read("*a")
        fh:close()
        return src
    end

    local function loadfile(path, mode, env)
        if path == nil or mode == "b" then return plain_loadfile(path, mode, env) end
        local src = read_file(path)
        if not src then return plain_loadfile(path, mode, env) end
        local f = instrumented(src, "@" .. path, env)
        if f then return f end
        return plain_loadfile(path, mode, env)
    end

    local function dofile(path)
        local f, err = loadfile(path)
        if not f then error(err, 2) end
        return f()
    end

    -- The Lua-file searcher of package.loaders, instrumented.
    local package = G.package or require("package")
    local function search_lua(name)
        local path, err = package.searchpath(name, package.path)
        if not path then return err end
        local src = read_file(path)
        -- LuaJIT's own tools (jit.dump, jit.v...) run from VM event
        -- handlers, where a stop would be swallowed: they stay as they are.
        local f = src and sub(name, 1, 4) ~= "jit." and instrumented(src, "@" .. path)
        if f then return f end
        local g, lerr = plain_loadfile(path)
        if not g then
            error("error loading module '" .. name .. "' from file '" .. path .. "':\n\t" .. tostring(lerr), 0)
        end
        return g
    end

    return load, loadstring, loadfile, dofile, search_lua
end

-- Replaces G's loaders with these at once (a shared state: isle.state).
function loaders.install(G)
    local load, loadstring, loadfile, dofile, search_lua = loaders.make(G, G.load, G.loadstring, G.loadfile)
    G.load, G.loadstring, G.loadfile, G.dofile = load, loadstring, loadfile, dofile
    -- package.loaders: preload, isle's own bytecode, then Lua files (3).
    local package = G.package or require("package")
    package.loaders[3] = search_lua
end

return loaders
