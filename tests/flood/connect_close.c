/* The accept-starvation attack (SECURITY.md): connect to a unix socket and
 * close at once, sending nothing, as fast as possible, for SECONDS seconds.
 * Prints how many connections it made. Used by tests/accept_flood.rs and
 * benches/accept_flood.py.
 *
 * usage: connect_close SOCKET SECONDS */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static double elapsed(const struct timespec *start) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - start->tv_sec) + (now.tv_nsec - start->tv_nsec) / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s SOCKET SECONDS\n", argv[0]);
        return 2;
    }
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strncpy(addr.sun_path, argv[1], sizeof addr.sun_path - 1);
    double seconds = atof(argv[2]);
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    long made = 0, tried = 0;
    while ((++tried & 63) != 0 || elapsed(&start) < seconds) {
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (fd < 0) {
            perror("socket");
            return 1;
        }
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0) {
            made++;
        }
        close(fd);
    }
    printf("%ld\n", made);
    return 0;
}
