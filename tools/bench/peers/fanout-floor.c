// fanout-floor: the least a single-threaded epoll server can spend to send one
// message to N connections, as the anchor for broadcast fan-out. It holds the
// subscriber connections (reading and discarding whatever they send) and, for
// each line that arrives on a control connection, writes that line (its '\n'
// included) to every subscriber with one write(2) each, straight from the one
// buffer, then answers the control connection with the number of subscribers
// that took the whole line, as a decimal line. No queues: a subscriber whose
// socket cannot take the whole line at once is closed (counted on stderr).
//
//   gcc -O2 -o fanout-floor tools/bench/peers/fanout-floor.c
//   ./fanout-floor 26500 26501      # subscribers on 26500, triggers on 26501
//   lifeline-load --mode fanout --proto fanout-floor --target 127.0.0.1:26500 --trigger 127.0.0.1:26501 ...
#define _GNU_SOURCE
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define CONTROL_MAX 16
#define LINE_MAX_BYTES (1 << 20)

static int *subs, *pos, nsubs, maxfd;   // subscriber fds, dense; pos[fd] = index or -1
static long dropped;

static int listen_on(int port) {
    int one = 1, s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(0x7f000001)};
    if (bind(s, (void *)&a, sizeof a) || listen(s, 4096)) { perror("listen"); exit(1); }
    return s;
}

static void drop_sub(int fd) {
    int i = pos[fd];
    if (i < 0) return;
    subs[i] = subs[--nsubs];
    pos[subs[i]] = i;
    pos[fd] = -1;
    close(fd);
}

// One write per subscriber from the shared bytes; returns how many took it all.
static int fan_out(const char *line, size_t len) {
    int sent = 0;
    for (int i = 0; i < nsubs;) {
        int fd = subs[i];
        ssize_t w = write(fd, line, len);
        if (w == (ssize_t)len) { sent++; i++; continue; }
        dropped++;
        fprintf(stderr, "fanout-floor: subscriber fd %d took %zd of %zu bytes: closed (%ld so far)\n", fd, w, len, dropped);
        drop_sub(fd);  // moves the last one into slot i
    }
    return sent;
}

struct control { int fd; size_t len; char *buf; };

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: fanout-floor PORT CONTROL_PORT\n"); return 2; }
    struct rlimit rl; getrlimit(RLIMIT_NOFILE, &rl); rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl);
    maxfd = (int)rl.rlim_cur;
    subs = malloc(sizeof(int) * maxfd); pos = malloc(sizeof(int) * maxfd);
    for (int i = 0; i < maxfd; i++) pos[i] = -1;
    struct control ctl[CONTROL_MAX] = {0};
    for (int i = 0; i < CONTROL_MAX; i++) ctl[i].fd = -1;

    int one = 1, ls = listen_on(atoi(argv[1])), cs = listen_on(atoi(argv[2]));
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)ls << 32}, evs[1024];
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    ev.data.u64 = (uint64_t)cs << 32;
    epoll_ctl(ep, EPOLL_CTL_ADD, cs, &ev);
    static char sink[65536];
    for (;;) {
        int n = epoll_wait(ep, evs, 1024, -1);
        for (int i = 0; i < n; i++) {
            int fd = (int)(evs[i].data.u64 >> 32), slot = (int)(evs[i].data.u64 & 0xffffffff) - 1;
            if (fd == ls) {
                int c;
                while ((c = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event e = {.events = EPOLLIN | EPOLLET | EPOLLRDHUP, .data.u64 = (uint64_t)c << 32};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &e);
                    pos[c] = nsubs; subs[nsubs++] = c;
                }
            } else if (fd == cs) {
                int c;
                while ((c = accept4(cs, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    int k = 0;
                    while (k < CONTROL_MAX && ctl[k].fd >= 0) k++;
                    if (k == CONTROL_MAX) { close(c); continue; }
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    ctl[k] = (struct control){.fd = c, .len = 0, .buf = malloc(LINE_MAX_BYTES)};
                    struct epoll_event e = {.events = EPOLLIN | EPOLLET | EPOLLRDHUP, .data.u64 = ((uint64_t)c << 32) | (uint64_t)(k + 1)};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &e);
                }
            } else if (slot >= 0) {
                struct control *t = &ctl[slot];
                for (;;) {
                    ssize_t r = read(t->fd, t->buf + t->len, LINE_MAX_BYTES - t->len);
                    if (r <= 0 || t->len + (size_t)r == LINE_MAX_BYTES) {
                        if (r < 0 && errno == EAGAIN) break;
                        close(t->fd); free(t->buf); t->fd = -1;  // EOF, error, or a line too long
                        break;
                    }
                    t->len += (size_t)r;
                    char *start = t->buf, *end = t->buf + t->len, *nl;
                    while ((nl = memchr(start, '\n', (size_t)(end - start)))) {
                        char answer[24];
                        int sent = fan_out(start, (size_t)(nl - start + 1));
                        int m = snprintf(answer, sizeof answer, "%d\n", sent);
                        if (write(t->fd, answer, (size_t)m) < 0) break;
                        start = nl + 1;
                    }
                    t->len = (size_t)(end - start);
                    memmove(t->buf, start, t->len);
                }
            } else {
                for (;;) {
                    ssize_t r = read(fd, sink, sizeof sink);
                    if (r == 0 || (r < 0 && errno != EAGAIN)) { drop_sub(fd); break; }
                    if (r < (ssize_t)sizeof sink) break;  // drained: the next edge will come
                }
            }
        }
    }
}
