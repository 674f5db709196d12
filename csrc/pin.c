/* pin.c - once loaded, libisle stays loaded for the life of the process.
 *
 * A host loads the library with ffi.load, and LuaJIT unloads it (dlclose)
 * when that state closes. But the library runs threads and keeps state that
 * outlive any one Lua state: an abandoned isle still finishing its work, the
 * watchdog waiting for a deadline, the preloaded modules and the interrupt
 * table. Unmapped under them, the threads would crash (seen at exit when a
 * host never closed its isles) and the memory those tables hold would be
 * lost. So the library takes a reference to itself that is never dropped.
 */
#include "internal.h"

#include <dlfcn.h>

__attribute__((constructor)) static void isle_pin(void)
{
    Dl_info info;
    /* The object is already loaded: RTLD_NOLOAD only adds the NODELETE mark. */
    if (dladdr((void *)(uintptr_t)isle_pin, &info) && info.dli_fname)
        (void)dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}
