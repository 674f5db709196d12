/* test_notify.c - the wake-up socket for hosts that wait on sockets only:
 * the path and its directory disappear once connected, only this process
 * may connect, and a mailbox switched to the socket sends exactly one byte
 * per unread wake-up, for arrivals before and after the switch. */
#include "check.h"
#include "isle.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

/* What a host does: connect a non-blocking stream socket to `path`. */
static int connect_to(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    CHECK(fd >= 0);
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    strcpy(sa.sun_path, path);
    CHECK_EQ(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    return fd;
}

static int readable(int fd, int ms)
{
    struct pollfd p = { .fd = fd, .events = POLLIN, .revents = 0 };
    return poll(&p, 1, ms) == 1 && (p.revents & POLLIN);
}

/* Bytes waiting on `fd`, drained. */
static int drain(int fd)
{
    char buf[64];
    int total = 0;
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n <= 0) break;
        total += (int)n;
    }
    return total;
}

static void test_listen_accept_cleans_up(void)
{
    char path[256];
    int lfd = isle_notify_listen(path, sizeof path);
    CHECK(lfd >= 0);
    struct stat st;
    CHECK_EQ(stat(path, &st), 0);
    char dir[256];
    strcpy(dir, path);
    *strrchr(dir, '/') = '\0';
    CHECK_EQ(stat(dir, &st), 0);
    CHECK_EQ(st.st_mode & 0777, 0700); /* nobody else may even reach the socket */
    int host = connect_to(path);
    int fd = isle_notify_accept(lfd, path, 5);
    CHECK(fd >= 0);
    CHECK(stat(path, &st) != 0 && errno == ENOENT);
    CHECK(stat(dir, &st) != 0 && errno == ENOENT);
    CHECK_EQ(send(fd, "x", 1, 0), 1);
    CHECK(readable(host, 1000));
    CHECK_EQ(drain(host), 1);
    close(fd);
    close(host);
}

static void test_accept_times_out_and_cleans_up(void)
{
    char path[256];
    int lfd = isle_notify_listen(path, sizeof path);
    CHECK(lfd >= 0);
    double t0 = isle_now();
    CHECK_EQ(isle_notify_accept(lfd, path, 0.05), -1);
    CHECK(isle_now() - t0 >= 0.04);
    struct stat st;
    CHECK(stat(path, &st) != 0);
    /* timeout < 0: only the clean-up, even with a connection waiting. */
    lfd = isle_notify_listen(path, sizeof path);
    CHECK(lfd >= 0);
    int host = connect_to(path);
    CHECK_EQ(isle_notify_accept(lfd, path, -1), -1);
    CHECK(stat(path, &st) != 0);
    close(host);
}

/* A connection from another process is refused; ours is still taken. */
static void test_refuses_other_processes(void)
{
    char path[256];
    int lfd = isle_notify_listen(path, sizeof path);
    CHECK(lfd >= 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        int fd = connect_to(path);
        (void)fd;
        _exit(0);
    }
    check_child_ok(pid);
    int host = connect_to(path);
    int fd = isle_notify_accept(lfd, path, 5);
    CHECK(fd >= 0);
    /* It is our connection: a byte sent on it reaches `host`. */
    CHECK_EQ(send(fd, "y", 1, 0), 1);
    CHECK(readable(host, 1000));
    CHECK_EQ(drain(host), 1);
    close(fd);
    close(host);
}

static isle_msg *mk(void)
{
    isle_msg *m = isle_msg_new(1, NULL, "m", 1);
    CHECK(m != NULL);
    return m;
}

static void take_all(isle_mbox *mb)
{
    isle_msg *msgs;
    isle_done *done;
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_OK);
    isle_msg_free_list(msgs);
    isle_done_free_list(done);
}

static void test_mailbox_on_socket(void)
{
    isle_mbox *plain = isle_mbox_new(4, 0);
    CHECK_EQ(isle_mbox_notify_socket(plain, 0), ISLE_EINVAL); /* made without an fd */
    isle_mbox_release(plain);

    isle_mbox *mb = isle_mbox_new(16, 1);
    CHECK(mb != NULL);
    CHECK_EQ(isle_mbox_notify_socket(mb, -1), ISLE_EINVAL);
    /* Something arrives before the switch: the socket is readable at once. */
    CHECK_EQ(isle_mbox_push(mb, mk(), 0), ISLE_OK);
    char path[256];
    int lfd = isle_notify_listen(path, sizeof path);
    int host = connect_to(path);
    int fd = isle_notify_accept(lfd, path, 5);
    CHECK(fd >= 0);
    CHECK_EQ(isle_mbox_notify_socket(mb, fd), ISLE_OK);
    CHECK_EQ(isle_mbox_fd(mb), fd);
    CHECK(readable(host, 1000));
    CHECK_EQ(drain(host), 1);
    take_all(mb);
    /* Many arrivals before a wait: one byte. */
    for (int i = 0; i < 5; i++) CHECK_EQ(isle_mbox_push(mb, mk(), 0), ISLE_OK);
    isle_mbox_wake(mb);
    CHECK(readable(host, 1000));
    CHECK_EQ(drain(host), 1);
    CHECK(!readable(host, 0));
    take_all(mb);
    /* Nothing new: nothing to read, whatever waits happen. */
    isle_msg *msgs;
    isle_done *done;
    CHECK_EQ(isle_mbox_wait(mb, 0.01, &msgs, &done), ISLE_ETIMEOUT);
    CHECK(!readable(host, 20));
    /* After a wait the next arrival sends a byte again. */
    CHECK_EQ(isle_mbox_push(mb, mk(), 0), ISLE_OK);
    CHECK(readable(host, 1000));
    CHECK_EQ(drain(host), 1);
    take_all(mb);
    /* The host went away: a wake-up must not raise SIGPIPE. */
    close(host);
    CHECK_EQ(isle_mbox_push(mb, mk(), 0), ISLE_OK);
    isle_mbox_close(mb);
    isle_mbox_release(mb); /* closes the socket */
}

int main(void)
{
    RUN(test_listen_accept_cleans_up);
    RUN(test_accept_times_out_and_cleans_up);
    RUN(test_refuses_other_processes);
    RUN(test_mailbox_on_socket);
    return check_done();
}
