/* barrier.h - the spinning barrier between the stages of one forward step (forward.c). */
#ifndef PYLUT_BARRIER_H
#define PYLUT_BARRIER_H

#include <pthread.h>
#include <stdatomic.h>

#include "spin.h"

/* ------------------------------------------------------------------ barrier */

/* Spin first (the others are microseconds away), then block: a core that goes idle lets
 * the scheduler move a thread we wait for over from a core another process keeps busy,
 * which merely yielding would not. */
#ifndef BARRIER_SPINS
#define BARRIER_SPINS 4096
#endif

typedef struct {
    atomic_int count, gen, sleepers;
    pthread_mutex_t mu;
    pthread_cond_t cv;
} barrier_t;

static void barrier_init(barrier_t *b) {
    atomic_init(&b->count, 0);
    atomic_init(&b->gen, 0);
    atomic_init(&b->sleepers, 0);
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->cv, NULL);
}

static void barrier_destroy(barrier_t *b) {
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->cv);
}

static void barrier_wait(barrier_t *b, int nth) {
    if (nth == 1) return;
    int g = atomic_load(&b->gen);
    if (atomic_fetch_add(&b->count, 1) == nth - 1) {
        atomic_store(&b->count, 0);
        atomic_fetch_add(&b->gen, 1); /* seq_cst: pairs with the sleepers count (Dekker) */
        if (atomic_load(&b->sleepers) > 0) {
            pthread_mutex_lock(&b->mu);
            pthread_cond_broadcast(&b->cv);
            pthread_mutex_unlock(&b->mu);
        }
        return;
    }
    for (int spins = 0; spins < BARRIER_SPINS; spins++) {
        if (atomic_load_explicit(&b->gen, memory_order_acquire) != g) return;
        cpu_relax();
    }
    pthread_mutex_lock(&b->mu);
    atomic_fetch_add(&b->sleepers, 1);
    while (atomic_load(&b->gen) == g) pthread_cond_wait(&b->cv, &b->mu);
    atomic_fetch_sub(&b->sleepers, 1);
    pthread_mutex_unlock(&b->mu);
}

#endif
