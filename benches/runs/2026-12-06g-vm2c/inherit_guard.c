/* Whether perf counters held by a parent and inherited by each child count
 * every child (docs/bench.md, "Counters one at a time").
 *
 *   cc -O2 -o inherit_guard inherit_guard.c
 *   ./inherit_guard RUNS          held counters alone
 *   GUARD=1 ./inherit_guard RUNS  plus a disabled, non-inherited copy of the
 *                                 leader (chaperone's guard)
 *
 * The parent opens task-clock, page faults and context switches on itself
 * (inherit; the leader disabled + enable_on_exec), then runs /bin/true RUNS
 * times with vfork, reading the group after each exit. Prints how many runs
 * counted nothing (their task-clock delta was 0). */
#define _GNU_SOURCE
#include <linux/perf_event.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int open_event(uint64_t config, int group, int flags_inherit, int leader) {
  struct perf_event_attr a;
  memset(&a, 0, sizeof a);
  a.size = sizeof a;
  a.type = PERF_TYPE_SOFTWARE;
  a.config = config;
  a.read_format = PERF_FORMAT_GROUP | PERF_FORMAT_TOTAL_TIME_ENABLED |
                  PERF_FORMAT_TOTAL_TIME_RUNNING;
  a.inherit = flags_inherit;
  if (leader) {
    a.disabled = 1;
    a.enable_on_exec = flags_inherit;
  }
  a.exclude_kernel = getenv("USER_ONLY") != NULL;
  int fd = syscall(SYS_perf_event_open, &a, 0, -1, group, PERF_FLAG_FD_CLOEXEC);
  if (fd < 0) {
    perror("perf_event_open");
    exit(1);
  }
  return fd;
}

static char stack[1 << 16];
static int child(void *arg) {
  (void)arg;
  char *argv[] = {"/bin/true", NULL};
  execve(argv[0], argv, environ);
  _exit(127);
}

int main(int argc, char **argv) {
  int runs = argc > 1 ? atoi(argv[1]) : 300;
  int leader = open_event(PERF_COUNT_SW_TASK_CLOCK, -1, 1, 1);
  open_event(PERF_COUNT_SW_PAGE_FAULTS, leader, 1, 0);
  open_event(PERF_COUNT_SW_CONTEXT_SWITCHES, leader, 1, 0);
  if (getenv("GUARD"))
    open_event(PERF_COUNT_SW_TASK_CLOCK, -1, 0, 1);
  uint64_t prev[6] = {0}, now[6];
  int nothing = 0;
  for (int i = 0; i < runs; i++) {
    int pid = clone(child, stack + sizeof stack, CLONE_VM | CLONE_VFORK | SIGCHLD, NULL);
    if (pid < 0 || waitpid(pid, NULL, 0) != pid) {
      perror("clone/waitpid");
      return 1;
    }
    if (read(leader, now, sizeof now) != sizeof now) {
      perror("read");
      return 1;
    }
    /* nr, time_enabled, time_running, task-clock, page faults, switches */
    if (now[3] == prev[3])
      nothing++;
    memcpy(prev, now, sizeof now);
  }
  printf("%d runs, %d counted nothing%s\n", runs, nothing,
         getenv("GUARD") ? " (with the guard)" : "");
  return 0;
}
