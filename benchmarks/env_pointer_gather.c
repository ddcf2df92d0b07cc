/* Repro for the TreeLSTM hot spot (see RESULTS.md): gcc 12 -O3 -march=native -fopenmp vectorizes a dot
 * product that reads its matrix through a closure-environment pointer (env->p) with AVX-512 gathers, 6x slower
 * than the same loop with the pointer copied into a local first (112 vs 18 us on the benchmark machine).
 *   gcc -O3 -march=native -fopenmp benchmarks/env_pointer_gather.c -o /tmp/g && /tmp/g
 * The emitter now starts every continuation body by copying the environment pointers it uses into locals
 * (FunctionEmitter.env_prologue in codegen/emit_c.py), as dot_local does. */
#include <stdint.h>
struct env { float *p_U_1; };
void dot_env(struct env *env, const float *g, float *out) {
    for (int64_t i = 0; i < 1; i++) {
        for (int64_t j = 0; j < 300; j++) {
            float acc = 0.0f;
            #pragma omp simd reduction(+:acc)
            for (int64_t kk = 0; kk < 750; kk++) {
                acc += g[i * 750 + kk] * env->p_U_1[j * 750 + kk];
            }
            out[i * 300 + j] = acc;
        }
    }
}
void dot_local(struct env *env, const float *g, float *out) {
    const float *U = env->p_U_1;
    for (int64_t i = 0; i < 1; i++) {
        for (int64_t j = 0; j < 300; j++) {
            float acc = 0.0f;
            #pragma omp simd reduction(+:acc)
            for (int64_t kk = 0; kk < 750; kk++) {
                acc += g[i * 750 + kk] * U[j * 750 + kk];
            }
            out[i * 300 + j] = acc;
        }
    }
}
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
void dot_local(struct env *env, const float *g, float *out);
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(void){
  float *U=malloc(300*750*4),*g=malloc(750*4),*o=malloc(300*4); for(int i=0;i<300*750;i++)U[i]=i%7*0.1f; for(int i=0;i<750;i++)g[i]=i%5;
  struct env e={U}; double t0=now(); for(int r=0;r<2000;r++) dot_env(&e,g,o); double t1=now(); for(int r=0;r<2000;r++) dot_local(&e,g,o); double t2=now();
  printf("env->ptr: %.1f us/call   local ptr: %.1f us/call  (%f)\n",(t1-t0)/2000*1e6,(t2-t1)/2000*1e6,o[3]);}
