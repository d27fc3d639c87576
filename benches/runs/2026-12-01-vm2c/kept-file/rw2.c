/* Measurement program for README.md (not built by CI). CAP must be at least 1 MiB. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#define CH (1<<20)
static long long total = 1LL<<30; static size_t CAP=4<<20; static int docopy;
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec/1e9;}
static pid_t spawn_writer(int outfd){ pid_t p=fork(); if(p==0){ dup2(outfd,1); static char b[CH]; long long l=total; while(l>0){ssize_t k=write(1,b,CH); if(k<=0)_exit(1); l-=k;} _exit(0);} return p; }
static int ffd; static char*wbuf; static size_t wlen; static int busy, done; static pthread_mutex_t mu=PTHREAD_MUTEX_INITIALIZER; static pthread_cond_t cv=PTHREAD_COND_INITIALIZER;
static void*wr(void*a){ if(getenv("WCPU")){cpu_set_t c;CPU_ZERO(&c);CPU_SET(atoi(getenv("WCPU")),&c);pthread_setaffinity_np(pthread_self(),sizeof c,&c);} long long off=0; for(;;){ pthread_mutex_lock(&mu); while(!busy&&!done) pthread_cond_wait(&cv,&mu); if(!busy){pthread_mutex_unlock(&mu);break;} pthread_mutex_unlock(&mu); size_t w=0; while(w<wlen){ssize_t k=pwrite(ffd,wbuf+w,wlen-w,off); off+=k; w+=k;} pthread_mutex_lock(&mu); busy=0; pthread_cond_broadcast(&cv); pthread_mutex_unlock(&mu);} return 0;}
int main(int argc,char**argv){ docopy=atoi(argv[1]); if(argc>2) CAP=atoll(argv[2]); if(argc>3) total=atoll(argv[3]);
 int p[2]; pipe2(p,O_CLOEXEC); fcntl(p[0],F_SETPIPE_SZ,CH); ffd=open("/dev/shm/rw2.out",O_CREAT|O_TRUNC|O_WRONLY,0644);
 char *b[2]={malloc(CAP),malloc(CAP)}; char*rb=malloc(CH); int fi=0; size_t flen=0;
 if(getenv("RCPU")){cpu_set_t c;CPU_ZERO(&c);CPU_SET(atoi(getenv("RCPU")),&c);sched_setaffinity(0,sizeof c,&c);}
 double t0=now(); pid_t pid=spawn_writer(p[1]); close(p[1]);
 for(;;){ ssize_t n;
   if(docopy){ n=read(p[0],rb,CH); if(n>0) memcpy(b[fi]+flen,rb,n);} else n=read(p[0],b[fi]+flen,CH);
   if(n<=0) break; flen+=n;
   pthread_mutex_lock(&mu);
   if(!busy || flen+CH>CAP){ while(busy) pthread_cond_wait(&cv,&mu); wbuf=b[fi]; wlen=flen; busy=1; pthread_cond_broadcast(&cv); fi^=1; flen=0; }
   pthread_mutex_unlock(&mu);
   static int started; if(!started){ pthread_t t; pthread_create(&t,0,wr,0); started=1; }
 }
 pthread_mutex_lock(&mu); while(busy) pthread_cond_wait(&cv,&mu); if(flen){wbuf=b[fi]; wlen=flen; busy=1; pthread_cond_broadcast(&cv); while(busy) pthread_cond_wait(&cv,&mu);} done=1; pthread_cond_broadcast(&cv); pthread_mutex_unlock(&mu);
 int st; waitpid(pid,&st,0); double t=now()-t0; printf("copy=%d cap=%zu %.3f\n",docopy,CAP,t); unlink("/dev/shm/rw2.out"); }
