/* embed.c - a C program that embeds LuaJIT the way game engines and servers
 * do, and closes its Lua state while isles it spawned are still busy.
 *
 * It checks the teardown promise of isle (docs/lifecycle.md): lua_close
 * returns within a short bound even with an isle stuck where it cannot be
 * stopped, no isle thread touches the closed state or an unmapped
 * libisle.so afterwards, and a new state can use isle again. Run by
 * `make test` under valgrind, which reports any invalid access.
 *
 * Usage: embed LUA_PATH LUA_CPATH   (exit 0 when every check held)
 */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static lua_State *new_state(const char *path, const char *cpath)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    lua_getglobal(L, "package");
    lua_pushstring(L, path);
    lua_setfield(L, -2, "path");
    lua_pushstring(L, cpath);
    lua_setfield(L, -2, "cpath");
    lua_pop(L, 1);
    return L;
}

static int run(lua_State *L, const char *what, const char *code)
{
    if (luaL_dostring(L, code) != 0) {
        fprintf(stderr, "embed: %s failed: %s\n", what, lua_tostring(L, -1));
        return 1;
    }
    return 0;
}

/* Spawns three isles and leaves them busy: one in a stoppable compiled loop,
 * one in a blocking C call (stoppable only when it returns), one in a
 * compiled loop with no checkpoints that ends by itself later; work is
 * queued behind the running jobs. The last isle to end closes its own state
 * after the host's is gone: that is when an unpinned libisle.so would be
 * unmapped under it. */
static const char busy[] =
    "local isle = require('isle')\n"
    "isle.teardown_timeout(0.2)\n"
    "local a = isle.spawn{ init = 'function add(x, y) return x + y end' }\n"
    "assert(a:call('add', 2, 3) == 5)\n"
    "a:spawn_eval('local n = 0 while true do n = n + 1 end')\n"
    "for i = 1, 50 do a:spawn_call('add', i, i) end\n"
    "local b = isle.spawn{}\n"
    "b:spawn_eval(\"local ffi = require('ffi') ffi.cdef'int usleep(unsigned)' ffi.C.usleep(600000) return 1\")\n"
    "local c = isle.spawn{ instrument = false }\n"
    "c:spawn_eval('local t = os.clock() + 0.4 while os.clock() < t do end')\n"
    "isle.sleep(0.05)\n"
    "ISLES = { a, b, c }\n";

static const char again[] =
    "local isle = require('isle')\n"
    "local h = isle.spawn{ init = 'function mul(x, y) return x * y end' }\n"
    "assert(h:call('mul', 6, 7) == 42)\n"
    "local t = h:spawn_eval('while true do end')\n"
    "t:cancel()\n"
    "local ok, e = t:wait(10)\n"
    "assert(not ok and e.code == 'cancelled', tostring(e))\n"
    "h:close()\n";

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: embed LUA_PATH LUA_CPATH\n");
        return 2;
    }
    lua_State *L = new_state(argv[1], argv[2]);
    if (run(L, "spawning busy isles", busy)) return 1;
    double t0 = now();
    lua_close(L);
    double took = now() - t0;
    /* The bound is 0.2 s; allow a loaded machine a lot more. */
    if (took > 5.0) {
        fprintf(stderr, "embed: lua_close took %.3f s with isles busy\n", took);
        return 1;
    }
    /* Keep running while the stuck isles finish on their own. */
    usleep(800000);
    for (int round = 0; round < 2; round++) {
        L = new_state(argv[1], argv[2]);
        if (run(L, "using isle from a new state", again)) return 1;
        lua_close(L);
    }
    printf("embed: lua_close with busy isles took %.3f s; new states work\n", took);
    return 0;
}
