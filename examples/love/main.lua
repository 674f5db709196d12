-- isle in a game loop (LÖVE 11): a Mandelbrot image is computed in an isle,
-- band by band, while the frame loop keeps drawing. The frame loop calls
-- hub:poll() once per frame; that runs the on_done callbacks and resumes the
-- coroutine awaiting the bands. Nothing ever blocks a frame.
--
--   make && xvfb-run -a love examples/love      (or plain `love examples/love`)
--
-- isle is found relative to this directory (lua/, ffi/, build/libisle.so of
-- the checkout) or under $ISLE_ROOT. For the CI test (test/test_love.lua):
--   ISLE_LOVE_REPORT=<file>   write figures there and quit when done
--   ISLE_LOVE_MODE=quit       quit while bands are still being computed
--   ISLE_LOVE_MODE=restart    restart (love.event.quit("restart")) with work
--                             in flight, then run to the end in the new state
local root = os.getenv("ISLE_ROOT") or (love.filesystem.getSource() .. "/../..")
package.path = root .. "/lua/?.lua;" .. root .. "/ffi/?.lua;" .. package.path
package.cpath = root .. "/build/?.so;" .. package.cpath

local ffi = require("ffi")
local isle = require("isle")

local W, H, BAND = 480, 320, 16
local MAXITER = tonumber(os.getenv("ISLE_LOVE_ITER")) or 2000
local REPORT = os.getenv("ISLE_LOVE_REPORT")
local MODE = os.getenv("ISLE_LOVE_MODE") or "run"
ffi.cdef("int setenv(const char *name, const char *value, int overwrite);")
local restarted = os.getenv("ISLE_LOVE_RESTARTED") == "1"

-- The isle's code: iteration counts of rows y0..y1-1, one byte per pixel.
local WORKER = [[
function rows(w, h, y0, y1, maxiter)
    local out = {}
    for y = y0, y1 - 1 do
        local ci = (y / h - 0.5) * 2.4
        for x = 0, w - 1 do
            local cr = (x / w - 0.7) * 3.2
            local zr, zi, n = 0, 0, 0
            while n < maxiter and zr * zr + zi * zi < 4 do
                zr, zi = zr * zr - zi * zi + cr, 2 * zr * zi + ci
                n = n + 1
            end
            out[#out + 1] = string.char(n >= maxiter and 0 or 1 + n % 255)
        end
    end
    return table.concat(out)
end
]]

local worker, hub, image, imagedata
local bands_done, bands = 0, H / BAND
local t_start, t_end
local frames, frames_during, max_gap, last_frame = 0, 0, 0, nil
local angle = 0

local function write_report(extra)
    if not REPORT then return end
    local f = assert(io.open(REPORT, "w"))
    f:write(("mode=%s\nrestarted=%s\nframes=%d\nframes_during=%d\nmax_gap=%.4f\nbands=%d\njob_seconds=%.4f\n")
        :format(MODE, tostring(restarted), frames, frames_during, max_gap, bands_done,
            t_end and (t_end - t_start) or -1))
    if extra then f:write(extra, "\n") end
    f:close()
end

function love.load()
    worker = isle.spawn{ init = WORKER }
    hub = isle.hub()
    imagedata = love.image.newImageData(W, H)
    t_start = love.timer.getTime()
    -- One coroutine awaits the bands in turn: t:await() yields it, and
    -- hub:poll() (in love.update) resumes it when the band is ready.
    hub:go(function()
        for b = 0, bands - 1 do
            local t = worker:spawn_call("rows", W, H, b * BAND, (b + 1) * BAND, MAXITER)
            t:on_done(function(ok) if not ok then print("band failed") end end)
            local ok, px = t:await()
            if not ok then print("isle error: " .. tostring(px)); return end
            for i = 0, #px - 1 do
                local v = px:byte(i + 1) / 255
                imagedata:setPixel(i % W, b * BAND + math.floor(i / W), v, v * v, math.sqrt(v), 1)
            end
            bands_done = bands_done + 1
        end
        t_end = love.timer.getTime()
        image = love.graphics and love.graphics.newImage(imagedata)
    end)
end

function love.update(dt)
    hub:poll() -- once per frame: never blocks
    angle = angle + dt * 3
    frames = frames + 1
    local now = love.timer.getTime()
    if not t_end then
        frames_during = frames_during + 1
        if last_frame then max_gap = math.max(max_gap, now - last_frame) end
    end
    last_frame = now
    if MODE == "quit" and frames == 20 and not t_end then
        write_report("quit_in_flight=" .. (bands - bands_done))
        love.event.quit()
    elseif MODE == "restart" and not restarted and frames == 20 and not t_end then
        ffi.C.setenv("ISLE_LOVE_RESTARTED", "1", 1)
        love.event.quit("restart")
    elseif REPORT and t_end and frames_during > 0 and now - t_end > 0.1 then
        write_report("done=1")
        love.event.quit()
    end
end

function love.draw()
    if image then love.graphics.draw(image, 0, 0) end
    love.graphics.print(("bands %d/%d   frame %d"):format(bands_done, bands, frames), 8, 8)
    love.graphics.push()
    love.graphics.translate(W - 40, H - 40)
    love.graphics.rotate(angle)
    love.graphics.rectangle("fill", -15, -15, 30, 30)
    love.graphics.pop()
end

function love.quit()
    -- Bands still in flight are cancelled. Closing is optional: when the
    -- state closes (quit, restart) its isles are cancelled and waited for
    -- briefly anyway (docs/lifecycle.md); the restart test leaves it to that.
    if MODE ~= "restart" then worker:close{ cancel = true } end
    return false
end

-- In the CI test an error must end the process, not wait on LÖVE's error screen.
if REPORT then
    function love.errorhandler(msg)
        io.stderr:write("isle love example error: ", tostring(msg), "\n", debug.traceback(), "\n")
        os.exit(3)
    end
end
