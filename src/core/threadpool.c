/* threadpool.c - one persistent pthread pool: workers spin briefly on a generation counter
 * (a decode step dispatches dozens of kernels back to back, a few microseconds apart), then
 * sleep on a condition variable so an idle process burns no CPU. No OpenMP: a wheel would
 * have to carry libgomp. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "pylut/pylut.h"

#include "spin.h"

/* ~50-100 us of spinning before sleeping: longer than the gap between two kernels of one
 * token, far shorter than the gap between tokens of an interactive session. */
#define SPIN_ITERS 20000
/* The caller, done with its share, spins only briefly for the workers: if one of them sits
 * on a core another process holds, this core going idle is what lets the scheduler pull
 * the worker over here (spinning would keep it queued behind the other process). */
#ifndef JOIN_SPIN_ITERS
#define JOIN_SPIN_ITERS 100
#endif

typedef struct {
    pylut_pool *pool;
    int ith;
    pthread_t thread;
} worker;

struct pylut_pool {
    int n;                      /* threads including the caller */
    worker *workers;            /* [n-1] */
    pthread_mutex_t mu;
    pthread_cond_t wake;        /* generation changed or stopping */
    pthread_cond_t done_cv;     /* all workers finished the current task */
    atomic_uint generation;     /* bumped once per pylut_pool_run */
    atomic_int pending;         /* workers still running the current task */
    atomic_int sleeping;        /* workers waiting on `wake` (signal only when > 0) */
    atomic_int stop;
    pylut_task_fn fn;
    void *ctx;
};

static void *worker_main(void *arg) {
    worker *w = arg;
    pylut_pool *p = w->pool;
    unsigned seen = 0;
    for (;;) {
        unsigned gen;
        int spins = 0;
        while ((gen = atomic_load_explicit(&p->generation, memory_order_acquire)) == seen &&
               !atomic_load(&p->stop)) {
            if (++spins < SPIN_ITERS) {
                cpu_relax();
                continue;
            }
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->sleeping, 1);
            while (atomic_load(&p->generation) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->wake, &p->mu);
            atomic_fetch_sub(&p->sleeping, 1);
            pthread_mutex_unlock(&p->mu);
            spins = 0;
        }
        if (atomic_load(&p->stop)) return NULL;
        seen = gen;
        p->fn(p->ctx, w->ith, p->n);
        if (atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done_cv);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

pylut_pool *pylut_pool_create(int n_threads) {
    if (n_threads < 1) n_threads = 1;
    if (n_threads > 512) return NULL;
    pylut_pool *p = calloc(1, sizeof(*p));
    if (!p) return NULL;
    p->n = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done_cv, NULL);
    if (n_threads > 1) {
        p->workers = calloc((size_t)n_threads - 1, sizeof(worker));
        if (!p->workers) { free(p); return NULL; }
        for (int i = 0; i < n_threads - 1; i++) {
            p->workers[i].pool = p;
            p->workers[i].ith = i + 1;
            if (pthread_create(&p->workers[i].thread, NULL, worker_main, &p->workers[i]) != 0) {
                p->n = i + 1; /* run with the threads we got */
                break;
            }
        }
    }
    return p;
}

void pylut_pool_free(pylut_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n - 1; i++) pthread_join(p->workers[i].thread, NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done_cv);
    free(p->workers);
    free(p);
}

int pylut_pool_size(const pylut_pool *p) { return p ? p->n : 1; }

/* Not reentrant: one run at a time per pool (the Python side holds a lock per pool). */
void pylut_pool_run(pylut_pool *p, pylut_task_fn fn, void *ctx) {
    if (!p || p->n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    atomic_store(&p->pending, p->n - 1);
    atomic_fetch_add(&p->generation, 1); /* seq_cst: pairs with `sleeping` (Dekker) */
    if (atomic_load(&p->sleeping) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->mu);
    }
    fn(ctx, 0, p->n);
    int spins = 0;
    while (atomic_load_explicit(&p->pending, memory_order_acquire) > 0) {
        if (++spins < JOIN_SPIN_ITERS) {
            cpu_relax();
            continue;
        }
        pthread_mutex_lock(&p->mu);
        while (atomic_load(&p->pending) > 0) pthread_cond_wait(&p->done_cv, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
}
