/*
 * LD_PRELOAD shim that lets wrk (TCP only) benchmark a unix socket: a
 * connect() to 127.0.0.1:$SHIM_PORT is turned into a connect() to the unix
 * socket $SHIM_PATH, on the same file descriptor (its flags kept), and
 * TCP-level socket options are accepted and ignored.
 *
 *   gcc -O2 -shared -fPIC -o unixshim.so unixshim.c -ldl
 *   SHIM_PORT=18080 SHIM_PATH=/run/guestsock/guest/sock \
 *       LD_PRELOAD=./unixshim.so wrk http://127.0.0.1:18080/1.0
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int (*real_connect)(int, const struct sockaddr *, socklen_t);
static int (*real_setsockopt)(int, int, int, const void *, socklen_t);

static int redirected(const struct sockaddr *addr) {
    const char *port = getenv("SHIM_PORT");
    if (!port || addr->sa_family != AF_INET)
        return 0;
    const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
    return in->sin_addr.s_addr == htonl(INADDR_LOOPBACK) && ntohs(in->sin_port) == atoi(port);
}

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    if (!real_connect)
        real_connect = dlsym(RTLD_NEXT, "connect");
    if (!redirected(addr))
        return real_connect(fd, addr, len);
    const char *path = getenv("SHIM_PATH");
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    if (!path || strlen(path) >= sizeof(un.sun_path)) {
        errno = EINVAL;
        return -1;
    }
    strcpy(un.sun_path, path);
    int flags = fcntl(fd, F_GETFL);
    int unix_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (unix_fd < 0)
        return -1;
    if (flags >= 0)
        fcntl(unix_fd, F_SETFL, flags);
    if (dup2(unix_fd, fd) < 0) {
        close(unix_fd);
        return -1;
    }
    close(unix_fd);
    int rc = real_connect(fd, (struct sockaddr *)&un, sizeof(un));
    if (rc < 0 && errno == EAGAIN)
        errno = EINPROGRESS;
    return rc;
}

int setsockopt(int fd, int level, int name, const void *value, socklen_t len) {
    if (!real_setsockopt)
        real_setsockopt = dlsym(RTLD_NEXT, "setsockopt");
    if (level == IPPROTO_TCP)
        return 0;
    return real_setsockopt(fd, level, name, value, len);
}
