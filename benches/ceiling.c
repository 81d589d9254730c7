/*
 * The least an HTTP server can do per keep-alive request, to show what wrk
 * on this machine can drive at all: one epoll loop that reads, counts the
 * request heads (each ends in a blank line) and writes as many copies of a
 * fixed GET /1.0 answer. No parsing, no routing, no identity. If guestsock
 * and nginx both reach about this rate, the load generator is the limit.
 *
 *   gcc -O2 -o ceiling ceiling.c && ./ceiling /tmp/ceiling.sock
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static const char ANSWER[] =
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 103\r\n\r\n"
    "{\"api_version\":\"1.0\",\"auth\":\"untrusted\",\"instance_type\":\"container\","
    "\"location\":\"vm\",\"state\":\"Started\"}\n";

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s SOCKET\n", argv[0]);
        return 2;
    }
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strncpy(addr.sun_path, argv[1], sizeof addr.sun_path - 1);
    unlink(argv[1]);
    int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (listener < 0 || bind(listener, (struct sockaddr *)&addr, sizeof addr) < 0 ||
        listen(listener, 4096) < 0) {
        perror("listen");
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = listener};
    epoll_ctl(ep, EPOLL_CTL_ADD, listener, &ev);
    struct epoll_event events[256];
    char buf[4096];
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == listener) {
                int conn;
                while ((conn = accept4(listener, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLET, .data.fd = conn};
                    epoll_ctl(ep, EPOLL_CTL_ADD, conn, &cev);
                }
                continue;
            }
            /* Edge-triggered: read until a short read, EOF or EAGAIN. Heads
             * split across reads are not handled: wrk's fit in one. */
            for (;;) {
                ssize_t got = read(fd, buf, sizeof buf);
                if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR)) {
                    close(fd);
                    break;
                }
                if (got < 0) {
                    break;
                }
                for (ssize_t at = 3; at < got; at++) {
                    if (memcmp(buf + at - 3, "\r\n\r\n", 4) == 0 &&
                        write(fd, ANSWER, sizeof ANSWER - 1) < 0) {
                        break;
                    }
                }
                if (got < (ssize_t)sizeof buf) {
                    break;
                }
            }
        }
    }
}
