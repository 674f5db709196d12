-- A module an isle requires from package.path (test/test_stop.lua): its loop
-- must be stoppable though isle never saw its source.
local M = {}
function M.spin()
    local n = 0
    while true do n = n + 1 end
end
return M
