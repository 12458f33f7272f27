/*
 * inflight.c - source: the pages targeted by reads in flight, so that a page
 * two reads target at once gets a mapping from neither.
 */
#include <pthread.h>

#include "shim.h"

/* Source: pages targeted by reads in flight.
 *
 * A small open-addressing table keyed by host page number, under a mutex
 * taken once per request (not per page).  When it is full, every read that
 * completes while the overflow lasts is treated as overlapping: fail closed.
 */
#define INFLIGHT_SLOTS (1u << 15)
struct inflight_slot {
    uint64_t key;   /* host address >> 12, 0 = empty */
    uint32_t count; /* reads in flight targeting the page */
    uint32_t overlapped;
};
static struct inflight_slot inflight[INFLIGHT_SLOTS];
static pthread_mutex_t inflight_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t inflight_overflow; /* pages that could not be registered */
static uint32_t inflight_used;     /* slots holding a key */

static inline uint32_t inflight_hash(uint64_t key)
{
    return (uint32_t)((key * 0x9e3779b97f4a7c15ull) >> 49) & (INFLIGHT_SLOTS - 1);
}

static struct inflight_slot *inflight_find(uint64_t key, int insert)
{
    uint32_t i = inflight_hash(key), n;

    for (n = 0; n < INFLIGHT_SLOTS; n++, i = (i + 1) & (INFLIGHT_SLOTS - 1)) {
        if (inflight[i].key == key) {
            return &inflight[i];
        }
        if (inflight[i].key == 0) {
            /*
             * Keep half the slots empty: probes stay short under the lock,
             * and inflight_remove's shift always finds an empty slot (in
             * a full table it would never stop).
             */
            if (!insert || inflight_used >= INFLIGHT_SLOTS / 2) {
                return NULL;
            }
            inflight_used++;
            inflight[i].key = key;
            inflight[i].count = 0;
            inflight[i].overlapped = 0;
            return &inflight[i];
        }
    }
    return NULL;
}

/* Removes a slot keeping every probe chain intact (backward shift). */
static void inflight_remove(struct inflight_slot *s)
{
    uint32_t i = (uint32_t)(s - inflight), j = i, k;

    for (;;) {
        j = (j + 1) & (INFLIGHT_SLOTS - 1);
        if (inflight[j].key == 0) {
            break;
        }
        k = inflight_hash(inflight[j].key);
        /* Move j back to i unless its home k lies cyclically in (i, j]. */
        if ((i <= j) ? (i < k && k <= j) : (i < k || k <= j)) {
            continue;
        }
        inflight[i] = inflight[j];
        i = j;
    }
    inflight[i].key = 0;
    inflight_used--;
}

void nasmig_lib_block_read_begin(const void *const *hosts, unsigned n)
{
    unsigned i;

    pthread_mutex_lock(&inflight_lock);
    for (i = 0; i < n; i++) {
        struct inflight_slot *s =
            inflight_find((uint64_t)(uintptr_t)hosts[i] >> NASMIG_PAGE_SHIFT, 1);

        if (!s) {
            inflight_overflow++;
            continue;
        }
        if (s->count++) {
            s->overlapped = 1;
        }
    }
    pthread_mutex_unlock(&inflight_lock);
}

void nasmig_lib_block_read_end(const void *const *hosts, unsigned n)
{
    unsigned i;

    pthread_mutex_lock(&inflight_lock);
    for (i = 0; i < n; i++) {
        struct inflight_slot *s =
            inflight_find((uint64_t)(uintptr_t)hosts[i] >> NASMIG_PAGE_SHIFT, 0);

        if (!s) {
            if (inflight_overflow) {
                inflight_overflow--;
            }
            continue;
        }
        if (--s->count == 0) {
            inflight_remove(s);
        }
    }
    pthread_mutex_unlock(&inflight_lock);
}

/* Marks in ok[] the pages no other read in flight targeted. */
void nasmig_inflight_check(const struct nasmig_page_read *pages, unsigned n,
                           int *ok)
{
    unsigned i;

    pthread_mutex_lock(&inflight_lock);
    for (i = 0; i < n; i++) {
        struct inflight_slot *s = inflight_find(
            (uint64_t)(uintptr_t)pages[i].host >> NASMIG_PAGE_SHIFT, 0);

        ok[i] = !inflight_overflow && (!s || !s->overlapped);
    }
    pthread_mutex_unlock(&inflight_lock);
}
