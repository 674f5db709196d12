/* notify.c - a private unix stream connection between this process and
 * itself, for hosts that can only wait on sockets they connect themselves
 * (nginx cosockets connect to `unix:/path`, never to an eventfd).
 *
 * The listening socket lives in a fresh mode-0700 directory, accepts one
 * connection, checks that its peer is this very process (SO_PEERCRED), and
 * removes the path and the directory at once: no file is left behind and no
 * other local user can take the place of the peer.
 */
#include "internal.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define NOTIFY_NAME "/wake"

int isle_notify_listen(char *path, size_t cap)
{
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !*tmp) tmp = "/tmp";
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    /* The directory name, then the socket's own name: both must fit. */
    int n = snprintf(path, cap, "%s/isle-XXXXXX", tmp);
    if (n < 0 || (size_t)n + sizeof NOTIFY_NAME > cap
        || (size_t)n + sizeof NOTIFY_NAME > sizeof sa.sun_path)
        return -1;
    if (!mkdtemp(path)) return -1;                     /* mode 0700 */
    memcpy(path + n, NOTIFY_NAME, sizeof NOTIFY_NAME); /* fits: checked above */
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) goto fail_socket;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0) goto fail_bind;
    if (listen(fd, 4) != 0) goto fail_listen;
    return fd;
fail_listen:
    unlink(path);
fail_bind:
    close(fd);
fail_socket:
    path[strlen(path) - (sizeof NOTIFY_NAME - 1)] = '\0';
    rmdir(path);
    return -1;
}

/* Removes the socket file and its directory. */
static void remove_path(char *path)
{
    unlink(path);
    char *slash = strrchr(path, '/');
    if (slash) {
        *slash = '\0';
        rmdir(path);
        *slash = '/';
    }
}

int isle_notify_accept(int lfd, char *path, double timeout)
{
    int conn = -1;
    double deadline = isle_now() + timeout;
    while (timeout >= 0) {
        int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (c >= 0) {
            struct ucred cred;
            socklen_t len = sizeof cred;
            if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 && cred.pid == getpid()) {
                conn = c;
                break;
            }
            close(c); /* somebody else's connection: refused */
            continue;
        }
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) break;
        double left = deadline - isle_now();
        if (left <= 0) break;
        struct pollfd p = {.fd = lfd, .events = POLLIN, .revents = 0};
        poll(&p, 1, (int)(left * 1000) + 1);
    }
    remove_path(path);
    close(lfd);
    return conn;
}
