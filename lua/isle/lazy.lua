-- Stubs that load the rest of a module the first time one of its functions
-- is called: an isle that never needs that part never keeps it (bench/README.md,
-- Issue 12, idle memory, fifth round). The module loaded puts the real
-- functions in place of the stubs.
local require = require -- the state's own, whatever user code does to the global

-- lazy(t, module, names): t[name] for each of names is a stub that requires
-- `module`, then calls what it left in t[name].
return function(t, module, names)
    for i = 1, #names do
        local name = names[i]
        t[name] = function(...)
            require(module)
            return t[name](...)
        end
    end
end
