/* preload.c - isle's own Lua modules as bytecode, shared by every new state.
 *
 * The first state that spawns an isle compiles isle's modules once and hands
 * the (stripped) bytecode here; each new isle state then loads a module from
 * it on require instead of reading and parsing its source. Blobs are set once
 * and never change, so readers take the lock only to find one.
 */
#include "internal.h"

#include <lauxlib.h>
#include <lua.h>
#include <stdlib.h>
#include <string.h>

typedef struct blob {
    struct blob *next;
    char *name;
    char *data;
    size_t len;
} blob;

static pthread_mutex_t blob_lock = PTHREAD_MUTEX_INITIALIZER;
static blob *blobs;
static int blob_count;

static blob *find_locked(const char *name)
{
    for (blob *b = blobs; b; b = b->next)
        if (strcmp(b->name, name) == 0) return b;
    return NULL;
}

int isle_preload_set(const char *name, const char *data, size_t len)
{
    blob *b = calloc(1, sizeof(*b));
    if (!b) return ISLE_ENOMEM;
    b->name = strdup(name);
    b->data = malloc(len ? len : 1);
    if (!b->name || !b->data) {
        free(b->name);
        free(b->data);
        free(b);
        return ISLE_ENOMEM;
    }
    memcpy(b->data, data, len);
    b->len = len;
    int rc = ISLE_OK;
    pthread_mutex_lock(&blob_lock);
    if (find_locked(name)) {
        rc = ISLE_EINVAL; /* first one wins: every state must see the same code */
    } else {
        b->next = blobs;
        blobs = b;
        blob_count++;
    }
    pthread_mutex_unlock(&blob_lock);
    if (rc != ISLE_OK) {
        free(b->name);
        free(b->data);
        free(b);
    }
    return rc;
}

int isle_preload_count(void)
{
    pthread_mutex_lock(&blob_lock);
    int n = blob_count;
    pthread_mutex_unlock(&blob_lock);
    return n;
}

void isle_preload_fork(int phase)
{
    /* Blobs never change, so the child can keep them as they are. */
    if (phase == ISLE_FORK_PREPARE) pthread_mutex_lock(&blob_lock);
    else pthread_mutex_unlock(&blob_lock);
}

/* A package.loaders searcher: the loader of a module from its blob. */
static int blob_searcher(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    pthread_mutex_lock(&blob_lock);
    blob *b = find_locked(name);
    pthread_mutex_unlock(&blob_lock);
    if (!b) {
        lua_pushfstring(L, "\n\tno isle preload '%s'", name);
        return 1;
    }
    if (luaL_loadbuffer(L, b->data, b->len, name) != 0) return lua_error(L);
    return 1;
}

/* Puts the searcher right after package.preload's in a new state. */
int isle_preload_install(lua_State *L)
{
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "loaders");
    int n = (int)lua_objlen(L, -1);
    for (int k = n; k >= 2; k--) {
        lua_rawgeti(L, -1, k);
        lua_rawseti(L, -2, k + 1);
    }
    lua_pushcfunction(L, blob_searcher);
    lua_rawseti(L, -2, 2);
    lua_pop(L, 2);
    return 0;
}
