/* Measurement program for README.md (not built by CI). */
#include <sys/mman.h>
#include <stdlib.h>
int main(int c,char**v){ size_t n=atoll(v[1]); void*p=mmap(0,n,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS|MAP_POPULATE,-1,0); munmap(p,n); return 0;}
