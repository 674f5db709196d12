-- Runs a hostile mod script (hostile.lua) the way untrusted scripts should
-- be run: in a sandboxed isle with a memory cap, each call with a timeout
-- (docs/sandbox.md, "Running untrusted scripts"). Prints each attempt and
-- how it was refused; exits 1 if any attempt escaped.
--
--   eval $(make -s path) && luajit examples/sandbox/run.lua
local isle = require("isle")

local dir = arg and arg[0] and arg[0]:match("^(.*)/[^/]*$") or "."
local f = assert(io.open(dir .. "/hostile.lua", "rb"))
local script = f:read("*a")
f:close()

-- The script's sections: "-- @ what it tries" then its code.
local attempts = {}
for line in script:gmatch("[^\n]*") do
    local what = line:match("^%-%- @ (.*)")
    if what then
        attempts[#attempts + 1] = { what = what, code = "" }
    elseif #attempts > 0 then
        local a = attempts[#attempts]
        a.code = a.code .. line .. "\n"
    end
end

local mod = isle.spawn{ name = "mod", sandbox = true, memory_limit = 16 * 1024 * 1024 }
local guarded = mod:with{ timeout = 2 } -- every call: at most two seconds

local escaped = 0
for i, a in ipairs(attempts) do
    local ok, err = pcall(guarded.eval, guarded, a.code)
    if ok then
        escaped = escaped + 1
        print(("%2d ESCAPED  %s"):format(i, a.what))
    else
        local msg = isle.is_error(err) and (err.code .. ": " .. tostring(err.message)) or tostring(err)
        print(("%2d refused  %-62s %s"):format(i, a.what, (msg:gsub("\n.*", ""))))
    end
end

-- The mod still serves after all that.
assert(mod:eval("return 1 + 1") == 2)
mod:close()
if escaped > 0 then
    print(escaped .. " of " .. #attempts .. " attempts ESCAPED")
    os.exit(1)
end
print("all attempts refused (" .. #attempts .. ")")
