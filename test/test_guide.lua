-- docs/guide.md and the README's tour stay true: every block fenced as ```lua (no more words on
-- the fence) is run as it is, in a child luajit with isle on the path, and
-- must exit 0 and print what its section says. Blocks fenced ```lua nginx,
-- ```lua love and ```lua planned are not run here (OpenResty: make
-- test-nginx runs examples/openresty; LÖVE: test_love.lua; planned: the API
-- does not exist yet), but they are counted so none is lost by a typo.
local lu = require("luaunit")
local helpers = require("test.helpers")

local ROOT = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "../"
local GUIDE, README = ROOT .. "docs/guide.md", ROOT .. "README.md"

-- The blocks of a markdown file, in order: { info = fence words, code, line, section }.
local function blocks(file)
    local f = assert(io.open(file or GUIDE))
    local list, cur, section, n = {}, nil, "", 0
    for line in f:lines() do
        n = n + 1
        if cur then
            if line == "```" then list[#list + 1] = cur; cur = nil
            else cur.code[#cur.code + 1] = line end
        else
            local info = line:match("^```(.+)$")
            if info then cur = { info = info, code = {}, line = n, section = section }
            else section = line:match("^## (.+)$") or section end
        end
    end
    f:close()
    assert(cur == nil, "docs/guide.md: a code block is not closed")
    for _, b in ipairs(list) do b.code = table.concat(b.code, "\n") .. "\n" end
    return list
end

-- What each section's runnable block must print (Lua patterns, in order).
local EXPECT = {
    ["A job system for a game"] = { "^8 jobs done over %d+ frames" },
    ["Sandboxing untrusted scripts"] = { "^ok: 42", "os.exit is not allowed in a sandbox", "require%('ffi'%) is not allowed",
        "timeout: ", "memory: ", "runtime: eval:1: bad script" },
    ["Pipelines of isles with channels"] = { "^166833%s+167167%s+166500" },
    ["A shared cache as a shared state"] = { "^144%s+%d+" },
    -- README.md's tour, before its first section
    [""] = { "^832040", "cancelled error", "^runtime%s+stack traceback", "timeout error",
             "^on_done:%s+75025", "^1%s+4%s+9", "^1%s+2" },
}
local KNOWN = { ["lua"] = true, ["lua nginx"] = true, ["lua love"] = true, ["lua planned"] = true, ["nginx"] = true }

TestGuide = {}

function TestGuide:test_every_block_has_a_known_fence_and_each_section_one_runnable_block()
    local runnable = {}
    for _, b in ipairs(blocks()) do
        lu.assertTrue(KNOWN[b.info] ~= nil, ("docs/guide.md:%d: unknown fence '```%s'"):format(b.line, b.info))
        if b.info == "lua" then runnable[b.section] = (runnable[b.section] or 0) + 1 end
        if b.info == "lua planned" then
            lu.assertStrContains(b.code, "PLANNED API", false)
        end
    end
    for section in pairs(EXPECT) do
        if section ~= "" then
            lu.assertEquals(runnable[section], 1, "runnable blocks in section '" .. section .. "'")
        end
    end
    local tour = blocks(README)[1]
    lu.assertEquals({ tour.info, tour.section }, { "lua", "" }, "README.md opens with its tour")
end

local function run_block(b)
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write(b.code)
    f:close()
    -- LUA_PATH/LUA_CPATH come from the Makefile (or `eval $(make -s path)`).
    local out, rc = helpers.sh("timeout 100 " .. helpers.luajit() .. " " .. path)
    os.remove(path)
    return out, rc
end

-- One test per runnable block, named after its line in the guide; and
-- the README's tour (its first block).
local function add(file, name, b)
    TestGuide[name] = function()
        local out, rc = run_block(b)
        local where = ("%s:%d (%s)"):format(file, b.line, b.section)
        lu.assertEquals(rc, 0, where .. " failed:\n" .. out)
        local lines, at = {}, 1
        for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
        for _, pat in ipairs(EXPECT[b.section] or {}) do
            while at <= #lines and not lines[at]:find(pat) do at = at + 1 end
            lu.assertTrue(at <= #lines, where .. ": no output line matches '" .. pat .. "' in:\n" .. out)
            at = at + 1
        end
    end
end
for _, b in ipairs(blocks()) do
    if b.info == "lua" then add("docs/guide.md", ("test_guide_block_at_line_%d"):format(b.line), b) end
end
add("README.md", "test_readme_tour", blocks(README)[1])

os.exit(lu.LuaUnit.run())
