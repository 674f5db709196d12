-- What a request message means: its kind (isle_msg.kind) and flags
-- (isle_msg.flags), shared by the sender (isle.handle) and the worker.
return {
    EVAL = 1, CALL = 2, EXEC = 3, POST = 4,
    F_OPTIONS = 1,  -- the target is { target, options } (h:with{...})
    F_WRAPPED = 2,  -- an eval chunk already instrumented by the sender
    F_INSTRUMENT = 4, -- an eval chunk whose sender cannot instrument (a C host,
                      -- csrc/host.c): the isle inserts the checkpoints itself
    F_SANDBOXED = 8,  -- an eval or exec from a sandboxed state (isle.sandbox): an
                      -- isle without a sandbox refuses to run it
}
