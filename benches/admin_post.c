/* Registers instances through the admin socket from C clients concurrently,
 * so that the client's own cost does not hide the server's:
 *
 *     cc -O2 -pthread -o admin_post benches/admin_post.c
 *     admin_post ADMIN_SOCKET CLIENTS < bodies   (one JSON instance per line)
 *
 * Each client keeps one connection and sends its share of the lines, one
 * POST /1.0/instances at a time, each answered only once durable. Prints
 * the wall time in seconds; exits 1 on any answer but 200. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static char **lines;
static size_t count, clients;
static const char *path;

static int dial(void) {
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strncpy(addr.sun_path, path, sizeof addr.sun_path - 1);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        perror("connect");
        exit(1);
    }
    return fd;
}

/* Reads one answer (head and Content-Length body); returns its status. */
static int answer(int fd) {
    static __thread char buf[65536];
    size_t have = 0;
    for (;;) {
        ssize_t n = read(fd, buf + have, sizeof buf - 1 - have);
        if (n <= 0) {
            fprintf(stderr, "connection closed\n");
            exit(1);
        }
        have += (size_t)n;
        buf[have] = 0;
        char *end = strstr(buf, "\r\n\r\n");
        if (!end)
            continue;
        char *cl = strcasestr(buf, "content-length:");
        size_t length = cl && cl < end ? strtoul(cl + 15, NULL, 10) : 0;
        if (have >= (size_t)(end + 4 - buf) + length) {
            int status = atoi(buf + 9);
            if (status != 200)
                fprintf(stderr, "%.300s\n", buf);
            return status;
        }
    }
}

static void *client(void *arg) {
    size_t me = (size_t)arg;
    int fd = dial();
    char head[256];
    for (size_t i = me; i < count; i += clients) {
        size_t len = strlen(lines[i]);
        int n = snprintf(head, sizeof head,
                         "POST /1.0/instances HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n", len);
        if (write(fd, head, (size_t)n) != n || write(fd, lines[i], len) != (ssize_t)len) {
            perror("write");
            exit(1);
        }
        if (answer(fd) != 200)
            exit(1);
    }
    close(fd);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: admin_post ADMIN_SOCKET CLIENTS < bodies\n");
        return 2;
    }
    path = argv[1];
    clients = strtoul(argv[2], NULL, 10);
    size_t cap = 1024;
    lines = malloc(cap * sizeof *lines);
    char *line = NULL;
    size_t size = 0;
    ssize_t n;
    while ((n = getline(&line, &size, stdin)) > 0) {
        if (line[n - 1] == '\n')
            line[n - 1] = 0;
        if (count == cap)
            lines = realloc(lines, (cap *= 2) * sizeof *lines);
        lines[count++] = strdup(line);
    }
    pthread_t threads[clients];
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (size_t i = 0; i < clients; i++)
        pthread_create(&threads[i], NULL, client, (void *)i);
    for (size_t i = 0; i < clients; i++)
        pthread_join(threads[i], NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.3f\n", (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9);
    return 0;
}
