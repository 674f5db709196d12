-- Cancellation tokens. A token is a completion slot used only for its
-- cancellation: cancelling it ends the slot, which raises the flag of every
-- state running a job that carries it (isle_task_watch) and wakes the jobs
-- waiting on it. Tokens cross states as values: the receiver gets a token on
-- the same slot.
local runtime = require("isle.runtime")
local PTRS = runtime.ptrs -- object -> its C pointer (never a field user code can reach)
local codec = require("isle.codec")
local errors = require("isle.errors")

local C = runtime.C
local isle_task_retain = C.isle_task_retain
local setmetatable, error = setmetatable, error

local token = {}
local Token = {}
Token.__index = Token

local generation, check_process = runtime.generation, runtime.check_own

function token.wrap(p)
    runtime.gc(p, C.isle_task_release)
    local tok = setmetatable({ gen = generation() }, Token)
    PTRS[tok] = p
    return tok
end

function token.new()
    local p = C.isle_task_new()
    if p == nil then error(errors.new("memory", "cannot allocate a token"), 2) end
    return token.wrap(p)
end

function Token:cancel()
    check_process(self, "token")
    C.isle_task_cancel(PTRS[self])
    return self
end

function Token:cancelled()
    check_process(self, "token")
    return C.isle_task_state(PTRS[self]) >= C.ISLE_TASK_DONE
end

function Token:__tostring()
    if self.gen ~= generation() then return "isle.token (from before a fork)" end
    return "isle.token (" .. (self:cancelled() and "cancelled" or "live") .. ")"
end

-- On the wire: an index into the references of the message (or result, or
-- boot) that carries the bytes (isle_msg.refs). The core retains the slot
-- when that carrier is made and releases it when the carrier is freed,
-- decoded or not; a receiver that decodes the token takes a reference of
-- its own.
codec.register_special(1, Token, function(tok, path)
    check_process(tok, "token", 4)
    return codec.attach(PTRS[tok], path)
end, function(index, from)
    local p = codec.carried(from, index, "a token")
    isle_task_retain(p)
    return token.wrap(p)
end)

token.Token = Token
return token
