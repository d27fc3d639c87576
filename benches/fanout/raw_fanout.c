// The machine's ceiling for the fan-out bench (ci/fanout-bench): run N
// children of ARGV with stdout and stderr on pipes, at most IN_FLIGHT at once,
// read both pipes to end of file, and reap each through a pidfd. vfork, no
// allocation per child, one poll loop: what a careful C agent would do.
//
//   raw_fanout N IN_FLIGHT PROGRAM [ARGS...]
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

struct child { int pidfd, out, err; long bytes; };

static void die(const char *what) { perror(what); exit(1); }

static int spawn(struct child *c, char **argv, char **envp) {
  int o[2], e[2];
  if (pipe2(o, O_CLOEXEC) || pipe2(e, O_CLOEXEC)) die("pipe2");
  pid_t pid = vfork();
  if (pid == 0) {
    dup2(o[1], 1);
    dup2(e[1], 2);
    execve(argv[0], argv, envp);
    _exit(127);
  }
  if (pid < 0) die("vfork");
  close(o[1]);
  close(e[1]);
  c->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
  if (c->pidfd < 0) die("pidfd_open");
  c->out = o[0];
  c->err = e[0];
  c->bytes = 0;
  return 0;
}

int main(int argc, char **argv) {
  extern char **environ;
  if (argc < 4) { fprintf(stderr, "usage: raw_fanout N IN_FLIGHT PROGRAM [ARGS...]\n"); return 2; }
  long n = atol(argv[1]);
  int in_flight = atoi(argv[2]);
  struct child *kids = calloc((size_t)in_flight, sizeof *kids);
  struct pollfd *pfd = calloc((size_t)in_flight * 3, sizeof *pfd);
  char buf[65536];
  long started = 0, done = 0, total = 0;
  int live = 0;
  for (int i = 0; i < in_flight; i++) kids[i].pidfd = -1;
  while (done < n) {
    for (int i = 0; i < in_flight && started < n; i++) {
      if (kids[i].pidfd < 0) { spawn(&kids[i], argv + 3, environ); started++; live++; }
    }
    int k = 0;
    for (int i = 0; i < in_flight; i++) {
      struct child *c = &kids[i];
      if (c->pidfd < 0) continue;
      pfd[k++] = (struct pollfd){ .fd = c->out >= 0 ? c->out : -1, .events = POLLIN };
      pfd[k++] = (struct pollfd){ .fd = c->err >= 0 ? c->err : -1, .events = POLLIN };
      pfd[k++] = (struct pollfd){ .fd = (c->out < 0 && c->err < 0) ? c->pidfd : -1, .events = POLLIN };
    }
    if (poll(pfd, (nfds_t)k, -1) < 0 && errno != EINTR) die("poll");
    k = 0;
    for (int i = 0; i < in_flight; i++) {
      struct child *c = &kids[i];
      if (c->pidfd < 0) continue;
      int *fds[2] = { &c->out, &c->err };
      for (int j = 0; j < 2; j++) {
        if (pfd[k + j].revents) {
          ssize_t r = read(*fds[j], buf, sizeof buf);
          if (r > 0) c->bytes += r;
          else if (r == 0 || errno != EINTR) { close(*fds[j]); *fds[j] = -1; }
        }
      }
      if (pfd[k + 2].revents) {
        siginfo_t info;
        if (waitid(P_PIDFD, (id_t)c->pidfd, &info, WEXITED) < 0) die("waitid");
        close(c->pidfd);
        c->pidfd = -1;
        total += c->bytes;
        done++;
        live--;
      }
      k += 3;
    }
  }
  printf("%ld children, %ld bytes\n", done, total);
  return 0;
}
