/*
 * ring.c - the rings that carry records from QEMU's threads to Go without
 * entering the Go runtime: producers reserve here and publish (shim.h);
 * the consumer's side is Go's, once per batch.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "shim.h"

struct nasmig_ring nasmig_track_ring, nasmig_req_ring;
struct nasmig_ring nasmig_touch_ring;

int nasmig_ring_init(struct nasmig_ring *r, unsigned slots, size_t esize)
{
    uint64_t i;

    if (r->slots) {
        return 0;
    }
    if (slots & (slots - 1) || esize % 8) {
        return -EINVAL;
    }
    r->mask = slots - 1;
    r->esize = esize;
    r->slots = mmap(NULL, (size_t)slots * (esize + 8), PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r->slots == MAP_FAILED) {
        r->slots = NULL;
        return -ENOMEM;
    }
    for (i = 0; i < slots; i++) {
        *nasmig_ring_seq(r, i) = i;
    }
    r->head = r->tail = 0;
    return 0;
}

/* Reserves n consecutive slots; returns 0 and the first position, or -1. */
int nasmig_ring_reserve(struct nasmig_ring *r, unsigned n, uint64_t *pos_out)
{
    uint64_t pos = __atomic_load_n(&r->head, __ATOMIC_RELAXED);

    if (!r->slots || n == 0 || n > r->mask + 1) {
        return -1;
    }
    for (;;) {
        uint64_t last = pos + n - 1;
        uint64_t seq = LOAD_ACQ(nasmig_ring_seq(r, last));
        int64_t diff = (int64_t)(seq - last);

        if (diff == 0) {
            if (__atomic_compare_exchange_n(&r->head, &pos, pos + n, 1,
                                            __ATOMIC_SEQ_CST,
                                            __ATOMIC_RELAXED)) {
                *pos_out = pos;
                return 0;
            }
        } else if (diff < 0) {
            return -1; /* full */
        } else {
            pos = __atomic_load_n(&r->head, __ATOMIC_RELAXED);
        }
    }
}

static unsigned ring_pop(struct nasmig_ring *r, void *out, unsigned max)
{
    unsigned n = 0;

    if (!r->slots) {
        return 0;
    }
    while (n < max) {
        uint64_t pos = r->tail;

        if (LOAD_ACQ(nasmig_ring_seq(r, pos)) != pos + 1) {
            break;
        }
        memcpy((uint8_t *)out + (size_t)n * r->esize, nasmig_ring_elem(r, pos),
               r->esize);
        STORE_REL(nasmig_ring_seq(r, pos), pos + r->mask + 1);
        __atomic_store_n(&r->tail, pos + 1, __ATOMIC_RELAXED);
        n++;
    }
    return n;
}

/* Whether the consumer would pop something now (only the consumer calls). */
static int ring_ready(struct nasmig_ring *r)
{
    return r->slots && LOAD_ACQ(nasmig_ring_seq(r, r->tail)) == r->tail + 1;
}

/* ------------------------------------------------------------------ */
/* Tracking ring (source). */

unsigned nasmig_ring_pop(struct nasmig_rec *out, unsigned max)
{
    return ring_pop(&nasmig_track_ring, out, max);
}

/* Test hook: pushes records as a producer would. Returns how many fit. */
unsigned nasmig_ring_push_test(const struct nasmig_rec *rec, unsigned n)
{
    uint64_t pos;
    unsigned i;

    for (i = 0; i < n; i++) {
        if (nasmig_ring_reserve(&nasmig_track_ring, 1, &pos) < 0) {
            return i;
        }
        memcpy(nasmig_ring_elem(&nasmig_track_ring, pos), &rec[i],
               sizeof(*rec));
        nasmig_ring_publish(&nasmig_track_ring, pos);
    }
    return n;
}

/* The consumer's position: records before it have been popped. */
uint64_t nasmig_ring_tail(void)
{
    return __atomic_load_n(&nasmig_track_ring.tail, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------------ */
/* The request and fault rings (destination). */

unsigned nasmig_req_pop(struct nasmig_fetch_req *out, unsigned max)
{
    return ring_pop(&nasmig_req_ring, out, max);
}

unsigned nasmig_touch_pop(struct nasmig_touch_req *out, unsigned max)
{
    return ring_pop(&nasmig_touch_ring, out, max);
}

/*
 * The Go fetcher, after announcing that it sleeps: is there work it would
 * miss?  A request, fault or finished fill published between its last pop
 * and the announcement found it awake and did not write the eventfd.
 */
int nasmig_fetch_work_ready(void)
{
    return ring_ready(&nasmig_req_ring) || ring_ready(&nasmig_touch_ring) ||
           nasmig_fill_ready();
}
