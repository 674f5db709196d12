-- Shared buffers: reference-counted C memory (csrc/buf.c) that every state
-- it is passed to sees at the same address, as a cdata pointer of the
-- buffer's element type. Passing one copies nothing: it travels as a
-- reference held by the message (result, boot, channel slot) that carries
-- it, as channels and tokens do (isle.codec attachments), and each state's
-- object holds a reference of its own, released by ffi.gc or buf:close().
-- The memory goes when the last reference does.
--
-- The element type travels by name; each state resolves it with its own
-- ffi the first time the pointer is asked for, so a state that has not
-- declared it (ffi.cdef) gets a `value` error naming the type there, and can
-- declare it and ask again. Nothing orders access to the bytes: users
-- synchronise (isle.atomic_* below, channels, calls).
local ffi = require("ffi")
require("isle.cdef").full() -- the declarations an isle makes on demand (ffi/isle/cdef.lua)
local runtime = require("isle.runtime")
local PTRS = runtime.ptrs -- object -> its isle_buf* (never a field user code can reach)
local codec = require("isle.codec")
local errors = require("isle.errors")

local C = runtime.C
local setmetatable, rawget, type, tostring, tonumber, error, pcall =
    setmetatable, rawget, type, tostring, tonumber, error, pcall
local getmetatable = require("debug").getmetatable -- the real one: a sandbox protects Buffer
local ffi_cast, ffi_gc, ffi_typeof, ffi_sizeof, ffi_alignof = ffi.cast, ffi.gc, ffi.typeof, ffi.sizeof, ffi.alignof
local isle_buf_data = C.isle_buf_data

local buffer = {}
local Buffer = {}

local generation, check_process = runtime.generation, runtime.check_own

-- The typed pointer of each open object, once asked for: it holds the
-- object's reference from then on (its finalizer is isle_buf_release_data),
-- so a pointer kept after its buffer object is collected stays valid.
local DATA = setmetatable({}, { __mode = "k" })

-- Element types by name, resolved in this state: name -> { ptr ctype, size }.
local resolved = {}

local function closed_error(self)
    return errors.new("closed", "the buffer (" .. self.count .. " x " .. self.tname .. ") is closed")
end

-- The pointer ctype of element type `name` here, checked against the size
-- it had where the buffer was made; nil and a `value` error if unknown.
local function resolve(name, elem_size)
    local r = resolved[name]
    if not r then
        local ok, ct = pcall(ffi_typeof, name)
        local size
        if ok then ok, size = pcall(ffi_sizeof, ct) end
        if not ok or type(size) ~= "number" then
            return nil, errors.new("value", "the buffer's element type '" .. name .. "' is not known in "
                .. runtime.label .. " (declare it with ffi.cdef before using the buffer)")
        end
        -- r[4]: the elements are numbers (a default value converts), not
        -- structs, arrays or pointers: all a sandbox may read or write.
        r = { ffi_typeof("$ *", ct), size, tostring(ct), tonumber(ffi.new(ct)) ~= nil }
        resolved[name] = r
    end
    if r[2] ~= elem_size then
        return nil, errors.new("value", "the buffer's element type '" .. name .. "' is " .. r[2]
            .. " bytes in " .. runtime.label .. " but was " .. elem_size
            .. " bytes where the buffer was made (declare it the same way in both)")
    end
    return r
end

local function wrap(p)
    runtime.gc(p, C.isle_buf_release)
    local b = setmetatable({
        gen = generation(),
        count = tonumber(C.isle_buf_count(p)),
        bytes = tonumber(C.isle_buf_size(p)),
        esize = tonumber(C.isle_buf_elem_size(p)),
        tname = ffi.string(C.isle_buf_type(p)),
    }, Buffer)
    PTRS[b] = p
    return b
end

-- isle.buffer(n) or isle.buffer(type, n). Level 3: the user's call of isle.buffer.
function buffer.new(a, b)
    local name, n = "uint8_t", a
    if type(a) == "string" then
        name, n = a, b
        if #name == 0 or #name >= C.ISLE_BUF_TYPE_MAX then
            error("bad argument #1 to 'buffer' (a C type name of 1.." .. (C.ISLE_BUF_TYPE_MAX - 1)
                .. " characters expected, got " .. #name .. ")", 3)
        end
    elseif b ~= nil then
        error("bad argument #1 to 'buffer' (a C type name expected before the count, got " .. type(a) .. ")", 3)
    end
    local argn = name == a and 2 or 1
    if type(n) ~= "number" or n ~= n or n % 1 ~= 0 or n < 1 or n > 2 ^ 52 then
        error("bad argument #" .. argn .. " to 'buffer' (a positive integer count expected, got "
            .. (type(n) == "number" and tostring(n) or type(n)) .. ")", 3)
    end
    local ok, ct = pcall(ffi_typeof, name)
    if not ok then
        error("bad argument #1 to 'buffer' (unknown C type '" .. name .. "': " .. tostring(ct) .. ")", 3)
    end
    local _, size = pcall(ffi_sizeof, ct) -- a variable-length type raises
    if type(size) ~= "number" or size < 1 then
        error("bad argument #1 to 'buffer' (C type '" .. name .. "' has no fixed size > 0)", 3)
    end
    if n * size > 2 ^ 52 then
        error("bad argument #" .. argn .. " to 'buffer' (" .. n .. " x " .. size .. " bytes is too large)", 3)
    end
    local p = C.isle_buf_new(name, size, n, ffi_alignof(ct))
    if p == nil then
        error(errors.new("memory", "cannot allocate a buffer of " .. n * size .. " bytes"), 3)
    end
    -- In a capped isle (or state) the bytes count against its limit while
    -- the buffer lives, wherever it goes (as a channel's ring does).
    local mem = runtime.mem
    if mem ~= nil and C.isle_buf_charge(p, mem) == 0 then
        C.isle_buf_release(p)
        error(errors.new("memory", "cannot make a buffer of " .. n * size .. " bytes: it does not fit in the "
            .. "memory_limit of " .. runtime.label), 3)
    end
    return wrap(p)
end

-- The typed pointer (e.g. `double *`), the same cdata on every call.
-- Raises `closed`, or `value` when this state does not know the type.
local function ptr_of(self, level)
    local d = DATA[self]
    if d then return d end
    if self.gen ~= generation() then check_process(self, "buffer", level + 1) end
    local p = PTRS[self]
    if p == nil then
        if rawget(self, "count") == nil then check_process(self, "buffer", level + 1) end
        error(closed_error(self), level + 1)
    end
    local r, err = resolve(self.tname, self.esize)
    if not r then error(err, level + 1) end
    -- The reference moves from the isle_buf* to the typed pointer.
    d = runtime.gc(ffi_cast(r[1], isle_buf_data(p)), C.isle_buf_release_data)
    ffi_gc(p, nil)
    DATA[self] = d
    return d
end

-- In a sandbox (isle.sandbox) user code gets no pointer and reaches only
-- elements that are numbers, bounds-checked: a pointer, or a struct with
-- pointer fields, would reach any memory of the process.
local function sandbox_refuses(self, level)
    if not runtime.sandbox then return end
    local r = resolved[self.tname]
    if r and r[4] then return end
    error("isle.buffer: elements of type " .. self.tname .. " are not available in a sandbox "
        .. "(only numbers are: use a buffer of a number type)", level + 1)
end

function Buffer:ptr()
    if runtime.sandbox then
        error("isle.buffer: buf:ptr() is not available in a sandbox (use buf[i])", 2)
    end
    return ptr_of(self, 2)
end
function Buffer:len() return self.count end
function Buffer:size() return self.bytes end
function Buffer:type() return self.tname end

-- Lets go of this state's reference (idempotent). Pointers taken from it
-- must not be used afterwards: the memory goes once no state, message or
-- result holds the buffer.
function Buffer:close()
    local p = PTRS[self]
    if p == nil then
        if rawget(self, "count") == nil then check_process(self, "buffer") end
        return
    end
    check_process(self, "buffer")
    PTRS[self] = nil
    local d = DATA[self]
    if d then
        DATA[self] = nil
        ffi_gc(d, nil)
        C.isle_buf_release_data(d)
    else
        ffi_gc(p, nil)
        C.isle_buf_release(p)
    end
end

function Buffer:closed() return PTRS[self] == nil end

local function bad_index(self, i, level)
    error("isle.buffer: index " .. tostring(i) .. " out of range (0.." .. (self.count - 1) .. ")", level + 1)
end

-- buf[i], buf[i] = v: element i (from 0, as the pointer), bounds-checked.
function Buffer.__index(self, k)
    if type(k) == "number" then
        if k < 0 or k >= self.count or k % 1 ~= 0 then bad_index(self, k, 2) end
        local d = ptr_of(self, 2)
        sandbox_refuses(self, 2)
        return d[k]
    end
    return Buffer[k]
end

function Buffer.__newindex(self, k, v)
    if type(k) ~= "number" then error("isle.buffer: cannot set field '" .. tostring(k) .. "' of a buffer", 2) end
    if k < 0 or k >= self.count or k % 1 ~= 0 then bad_index(self, k, 2) end
    local d = ptr_of(self, 2)
    sandbox_refuses(self, 2)
    d[k] = v
end

function Buffer:__tostring()
    if self.gen ~= generation() then return "isle.buffer (from before a fork)" end
    return "isle.buffer (" .. self.count .. " x " .. self.tname .. ", " .. self.bytes .. " bytes"
        .. (PTRS[self] == nil and ", closed" or "") .. ")"
end

-- Atomics ------------------------------------------------------------------------
--
-- On elements of a 32- or 64-bit integer type, through the core's
-- sequentially consistent builtins (csrc/buf.c). Level 3: the user's call
-- of isle.atomic_*.
local INTS = {
    ["ctype<int>"] = 32, ["ctype<unsigned int>"] = 32,
    ["ctype<int64_t>"] = 64, ["ctype<uint64_t>"] = 64,
}
local i32p, i64p = ffi_typeof("int32_t *"), ffi_typeof("int64_t *")
local u32 = ffi_typeof("uint32_t")

local function element(fname, buf, i)
    if getmetatable(buf) ~= Buffer then
        error("bad argument #1 to '" .. fname .. "' (isle.buffer expected, got " .. type(buf) .. ")", 3)
    end
    local d = ptr_of(buf, 3)
    local r = resolved[buf.tname]
    local bits = INTS[r[3]]
    if not bits then
        error("bad argument #1 to '" .. fname .. "' (a buffer of int32_t, uint32_t, int64_t or uint64_t "
            .. "expected, got one of " .. buf.tname .. ")", 3)
    end
    if type(i) ~= "number" or i < 0 or i >= buf.count or i % 1 ~= 0 then
        error("bad argument #2 to '" .. fname .. "' (index in 0.." .. (buf.count - 1) .. " expected, got "
            .. tostring(i) .. ")", 3)
    end
    local unsigned = r[3] == "ctype<unsigned int>" or r[3] == "ctype<uint64_t>"
    if bits == 32 then return ffi_cast(i32p, d + i), 32, unsigned end
    return ffi_cast(i64p, d + i), 64, unsigned
end

local function number_arg(fname, n, v)
    local tv = type(v)
    if tv ~= "number" and not (tv == "cdata" and (ffi.istype("int64_t", v) or ffi.istype("uint64_t", v))) then
        error("bad argument #" .. n .. " to '" .. fname .. "' (integer expected, got " .. tv .. ")", 3)
    end
    return v
end

-- The value as the element type reads it: a number for 32 bits, an
-- int64_t/uint64_t cdata for 64 (as the typed pointer gives them).
local function as_elem(v, bits, unsigned)
    if bits == 32 then
        if unsigned then return tonumber(ffi_cast(u32, v)) end
        return tonumber(v)
    end
    if unsigned then return ffi_cast("uint64_t", v) end
    return v
end

function buffer.atomic_add(buf, i, delta)
    local p, bits, unsigned = element("atomic_add", buf, i)
    number_arg("atomic_add", 3, delta)
    if bits == 32 then return as_elem(C.isle_atomic_add32(p, delta), 32, unsigned) end
    return as_elem(C.isle_atomic_add64(p, delta), 64, unsigned)
end

function buffer.atomic_load(buf, i)
    local p, bits, unsigned = element("atomic_load", buf, i)
    if bits == 32 then return as_elem(C.isle_atomic_load32(p), 32, unsigned) end
    return as_elem(C.isle_atomic_load64(p), 64, unsigned)
end

function buffer.atomic_store(buf, i, v)
    local p, bits = element("atomic_store", buf, i)
    number_arg("atomic_store", 3, v)
    if bits == 32 then C.isle_atomic_store32(p, v) else C.isle_atomic_store64(p, v) end
end

function buffer.atomic_cas(buf, i, expected, desired)
    local p, bits = element("atomic_cas", buf, i)
    number_arg("atomic_cas", 3, expected)
    number_arg("atomic_cas", 4, desired)
    if bits == 32 then return C.isle_atomic_cas32(p, expected, desired) ~= 0 end
    return C.isle_atomic_cas64(p, expected, desired) ~= 0
end

-- On the wire: an index into the references of the carrier, as a channel
-- (lua/isle/channel.lua); the reference is the buffer's own slot
-- (isle_buf_ref), so the carrier keeps the memory alive until it is decoded
-- or freed, and the receiver takes a reference of its own.
codec.register_special(3, Buffer, function(buf, path)
    local p = PTRS[buf]
    if p == nil and rawget(buf, "count") ~= nil then
        error({ isle_value_error = true, message = "cannot send a closed buffer at " .. path }, 0)
    end
    check_process(buf, "buffer", 4)
    return codec.attach(C.isle_buf_ref(p), path)
end, function(index, from)
    local p = codec.carried(from, index, "a buffer", C.isle_buf_of_ref)
    return wrap(p)
end)

buffer.Buffer = Buffer
return buffer
