/*
 * fill.c - the destination's fill threads: the blocks of a finished storage
 * read are verified against their references and copied into guest RAM
 * here, on the library's own threads.  Filling from Go meant a millisecond
 * of C per read inside a cgo call, during which Go's system monitor woke
 * every 20 us to take the caller's P back (7-12% of the destination QEMU's
 * CPU in a fetch profile), and every call paid cgo's argument checks.  A
 * read's completion goes from QEMU straight to a fill thread (the batch is
 * the read's cookie); Go wakes once per batch, when it is filled, and takes
 * the finished ones back as a list.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "shim.h"

#define FILL_THREADS_MAX 4

static pthread_mutex_t fill_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t fill_cond = PTHREAD_COND_INITIALIZER;
/* Queued batches (FIFO), and finished ones for Go (any order). */
static struct nasmig_fill_batch *fill_head, *fill_tail, *fill_done;
static int fill_nthreads; /* started; 0: none yet, -1: could not start */
static int64_t fill_batches_live; /* allocated and not freed (tests) */

static void fill_batch(struct nasmig_fill_batch *b)
{
    uint32_t i;

    for (i = 0; i < b->n; i++) {
        const struct nasmig_fetch_req *r = &b->reqs[i];
        uint64_t off = r->block - b->first;

        /* A block outside the read is Go's bug: fail safe, never fill. */
        b->results[i] = r->block < b->first || off >= b->nblocks ?
                        NASMIG_MISMATCH :
                        nasmig_fill_one(r, b->buf + (off << NASMIG_PAGE_SHIFT));
    }
}

/* Hands a batch back to Go (filled, or its read failed). */
static void fill_finished(struct nasmig_fill_batch *b)
{
    pthread_mutex_lock(&fill_lock);
    b->next = fill_done;
    /* Before the wake's check of go_sleeping: see nasmig_fill_ready. */
    __atomic_store_n(&fill_done, b, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&fill_lock);
    nasmig_wake_go();
}

static void *fill_main(void *arg)
{
    struct nasmig_fill_batch *b;

    (void)arg;
    for (;;) {
        pthread_mutex_lock(&fill_lock);
        while (!fill_head) {
            pthread_cond_wait(&fill_cond, &fill_lock);
        }
        b = fill_head;
        fill_head = b->next;
        if (!fill_head) {
            fill_tail = NULL;
        }
        pthread_mutex_unlock(&fill_lock);

        fill_batch(b);
        fill_finished(b);
    }
    return NULL;
}

/*
 * Starts the threads once, with every signal blocked (QEMU's own threads
 * do the same: its signals belong to the threads that handle them).
 */
static int fill_start_threads(void)
{
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int want = ncpu < 1 ? 1 : ncpu > FILL_THREADS_MAX ? FILL_THREADS_MAX : (int)ncpu;
    sigset_t all, old;
    pthread_attr_t attr;
    pthread_t t;
    int i, started = 0;

    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    for (i = 0; i < want; i++) {
        if (pthread_create(&t, &attr, fill_main, NULL) != 0) {
            break;
        }
        pthread_setname_np(t, "nasmig-fill");
        started++;
    }
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return started ? started : -1;
}

/*
 * QEMU's completion of a fetch read (its main loop, or the disk's
 * iothread): the cookie is the read's batch (FillBatch.Read), which goes
 * to a fill thread, or, when none could be started, is filled here.
 */
void nasmig_lib_read_done(uint64_t cookie, int ret)
{
    struct nasmig_fill_batch *b = (struct nasmig_fill_batch *)(uintptr_t)cookie;
    int n;

    b->ret = ret;
    b->next = NULL;
    if (ret < 0) {
        fill_finished(b);
        return;
    }
    pthread_mutex_lock(&fill_lock);
    if (!fill_nthreads) {
        fill_nthreads = fill_start_threads();
    }
    n = fill_nthreads;
    if (n > 0) {
        if (fill_tail) {
            fill_tail->next = b;
        } else {
            fill_head = b;
        }
        fill_tail = b;
        pthread_cond_signal(&fill_cond);
    }
    pthread_mutex_unlock(&fill_lock);
    if (n < 0) {
        fill_batch(b);
        fill_finished(b);
    }
}

/*
 * Whether finished batches wait for Go: checked after Go announced its
 * sleep, as a batch finished just before found Go awake and did not wake it.
 */
int nasmig_fill_ready(void)
{
    return __atomic_load_n(&fill_done, __ATOMIC_SEQ_CST) != NULL;
}

/* Takes the finished batches (a list through next; NULL: none). */
struct nasmig_fill_batch *nasmig_fill_pop(void)
{
    struct nasmig_fill_batch *b;

    pthread_mutex_lock(&fill_lock);
    b = fill_done;
    fill_done = NULL;
    pthread_mutex_unlock(&fill_lock);
    return b;
}

/* A batch with room for a read of max_blocks (buffer zeroed). */
struct nasmig_fill_batch *nasmig_fill_batch_new(uint32_t max_blocks)
{
    struct nasmig_fill_batch *b = calloc(1, sizeof(*b));
    void *buf;

    if (!b) {
        return NULL;
    }
    /* Page-aligned, for a disk opened with O_DIRECT. */
    buf = mmap(NULL, (size_t)max_blocks << NASMIG_PAGE_SHIFT,
               PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) {
        free(b);
        return NULL;
    }
    b->buf = buf;
    b->max_blocks = max_blocks;
    __atomic_add_fetch(&fill_batches_live, 1, __ATOMIC_RELAXED);
    if (nasmig_fill_batch_reserve(b, max_blocks) < 0) {
        nasmig_fill_batch_free(b);
        return NULL;
    }
    return b;
}

/*
 * Room for n references (several pages may name one block, so a read's
 * references can outnumber its blocks); -1 when out of memory.
 */
int nasmig_fill_batch_reserve(struct nasmig_fill_batch *b, uint32_t n)
{
    struct nasmig_fetch_req *reqs;
    uint8_t *results;

    if (n <= b->max_reqs) {
        return 0;
    }
    reqs = realloc(b->reqs, (size_t)n * sizeof(*reqs));
    if (!reqs) {
        return -1;
    }
    b->reqs = reqs;
    results = realloc(b->results, n);
    if (!results) {
        return -1;
    }
    b->results = results;
    b->max_reqs = n;
    return 0;
}

void nasmig_fill_batch_free(struct nasmig_fill_batch *b)
{
    if (!b) {
        return;
    }
    if (b->buf) {
        munmap(b->buf, (size_t)b->max_blocks << NASMIG_PAGE_SHIFT);
    }
    free(b->reqs);
    free(b->results);
    free(b);
    __atomic_sub_fetch(&fill_batches_live, 1, __ATOMIC_RELAXED);
}

/* Batches allocated and not freed: a fetch that stopped holds none. */
int64_t nasmig_fill_batches_live(void)
{
    return __atomic_load_n(&fill_batches_live, __ATOMIC_RELAXED);
}
