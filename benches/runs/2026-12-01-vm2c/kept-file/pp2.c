/* Measurement program for README.md (not built by CI). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#define CH (1<<20)
#define NB 2
static long long total = 1LL<<30;
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec/1e9;}
static pid_t spawn_writer(int outfd){ pid_t p=fork(); if(p==0){ dup2(outfd,1); static char b[CH]; long long l=total; while(l>0){ssize_t k=write(1,b,CH); if(k<=0)_exit(1); l-=k;} _exit(0);} return p; }
static int ffd, q[NB][2]; static size_t qlen[NB]; static int full[NB], done; static pthread_mutex_t mu=PTHREAD_MUTEX_INITIALIZER; static pthread_cond_t cv=PTHREAD_COND_INITIALIZER;
static void*wr(void*a){ loff_t off=0; int i=0; for(;;){ pthread_mutex_lock(&mu); while(!full[i]&&!done) pthread_cond_wait(&cv,&mu); if(!full[i]){pthread_mutex_unlock(&mu);break;} size_t n=qlen[i]; pthread_mutex_unlock(&mu);
  while(n>0){ ssize_t k=splice(q[i][0],NULL,ffd,&off,n,0); if(k<=0){perror("splice out");exit(1);} n-=k; }
  pthread_mutex_lock(&mu); full[i]=0; pthread_cond_broadcast(&cv); pthread_mutex_unlock(&mu); i=(i+1)%NB; } return 0; }
int main(int argc,char**argv){ if(argc>1) total=atoll(argv[1]);
 int p[2]; pipe2(p,O_CLOEXEC); fcntl(p[0],F_SETPIPE_SZ,CH); for(int i=0;i<NB;i++){pipe2(q[i],O_CLOEXEC); fcntl(q[i][0],F_SETPIPE_SZ,CH);} ffd=open("/dev/shm/pp2.out",O_CREAT|O_TRUNC|O_WRONLY,0644);
 double t0=now(); pid_t pid=spawn_writer(p[1]); close(p[1]); pthread_t t; pthread_create(&t,0,wr,0); int i=0;
 for(;;){ pthread_mutex_lock(&mu); while(full[i]) pthread_cond_wait(&cv,&mu); pthread_mutex_unlock(&mu);
   ssize_t n=splice(p[0],NULL,q[i][1],NULL,CH,0); if(n<=0) break;
   pthread_mutex_lock(&mu); qlen[i]=n; full[i]=1; pthread_cond_broadcast(&cv); pthread_mutex_unlock(&mu); i=(i+1)%NB; }
 pthread_mutex_lock(&mu); done=1; pthread_cond_broadcast(&cv); pthread_mutex_unlock(&mu); pthread_join(t,0);
 int st; waitpid(pid,&st,0); double e=now()-t0; printf("pp2 %.3f\n",e); unlink("/dev/shm/pp2.out"); }
