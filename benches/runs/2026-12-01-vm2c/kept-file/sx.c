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
#include <sys/uio.h>
#define CH (1<<20)
static long long total = 4LL<<30;
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec/1e9;}
static pid_t spawn_writer(int outfd){
  pid_t p=fork(); if(p==0){ dup2(outfd,1); static char b[CH]; long long l=total; while(l>0){ssize_t k=write(1,b,CH); if(k<=0)_exit(1); l-=k;} _exit(0);} return p; }
static int pfd[2], ffd, qfd[2];
static void *splicer2(void*a){ long long off=0; for(;;){ ssize_t n=splice(qfd[0],NULL,ffd,(loff_t*)&off,CH,0); if(n<=0) break;} return 0;}
static void *splicer(void*a){ long long off=0; for(;;){ ssize_t n=splice(pfd[0],NULL,ffd,(loff_t*)&off,CH,SPLICE_F_MOVE); if(n<=0) break;} return 0;}
/* double buffered: main reads, thread writes */
static char *bufs[2]; static ssize_t lens[2]; static int full[2]; static pthread_mutex_t mu=PTHREAD_MUTEX_INITIALIZER; static pthread_cond_t cv=PTHREAD_COND_INITIALIZER; static int done;
static void *wr(void*a){ long long off=0; int i=0; for(;;){ pthread_mutex_lock(&mu); while(!full[i]&&!done) pthread_cond_wait(&cv,&mu); if(!full[i]){pthread_mutex_unlock(&mu);break;} pthread_mutex_unlock(&mu); ssize_t w=pwrite(ffd,bufs[i],lens[i],off); off+=w; pthread_mutex_lock(&mu); full[i]=0; pthread_cond_broadcast(&cv); pthread_mutex_unlock(&mu); i^=1;} return 0;}
int main(int argc,char**argv){
  const char*mode=argv[1]; if(argc>2) total=atoll(argv[2]);
  pipe2(pfd,O_CLOEXEC); fcntl(pfd[0],F_SETPIPE_SZ,CH);
  ffd=open("/dev/shm/sx.out",O_CREAT|O_TRUNC|O_WRONLY|O_CLOEXEC,0644);
  double t0=now(); pid_t p;
  if(!strcmp(mode,"direct")){ p=spawn_writer(ffd); }
  else { p=spawn_writer(pfd[1]); close(pfd[1]);
    if(!strcmp(mode,"mem")){ char*b=malloc(CH); while(read(pfd[0],b,CH)>0); }
    else if(!strcmp(mode,"splice")){ pthread_t t; pthread_create(&t,0,splicer,0); pthread_join(t,0);} 
    else if(!strcmp(mode,"pp")){ pipe2(qfd,O_CLOEXEC); fcntl(qfd[0],F_SETPIPE_SZ,atoi(getenv("QSZ")?getenv("QSZ"):"1048576")); pthread_t t; pthread_create(&t,0,splicer2,0); for(;;){ ssize_t n=splice(pfd[0],NULL,qfd[1],NULL,CH,0); if(n<=0)break;} close(qfd[1]); pthread_join(t,0);} 
    else if(!strcmp(mode,"splice1")){ splicer(0);} 
    else if(!strcmp(mode,"rw")){ bufs[0]=malloc(CH);bufs[1]=malloc(CH); pthread_t t; pthread_create(&t,0,wr,0); int i=0; for(;;){ pthread_mutex_lock(&mu); while(full[i]) pthread_cond_wait(&cv,&mu); pthread_mutex_unlock(&mu); ssize_t n=read(pfd[0],bufs[i],CH); if(n<=0)break; lens[i]=n; pthread_mutex_lock(&mu); full[i]=1; pthread_cond_broadcast(&cv); pthread_mutex_unlock(&mu); i^=1;} pthread_mutex_lock(&mu); done=1; pthread_cond_broadcast(&cv); pthread_mutex_unlock(&mu); pthread_join(t,0);} 
  }
  int st; waitpid(p,&st,0); double t=now()-t0; printf("%s %.3f s %.2f GB/s\n",mode,t,total/t/1e9); unlink("/dev/shm/sx.out"); return 0; }
