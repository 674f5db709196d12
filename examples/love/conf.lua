-- LÖVE configuration of the isle game-loop example: a small window, no audio
-- (the example never plays any, and a headless CI machine has no device).
function love.conf(t)
    t.identity = "isle-example"
    t.window.title = "isle: work off the frame loop"
    t.window.width = 480
    t.window.height = 320
    t.window.vsync = 1
    t.modules.audio = false
    t.modules.sound = false
    t.modules.joystick = false
    t.modules.physics = false
    t.modules.video = false
end
