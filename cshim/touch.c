/*
 * touch.c - destination, filling after the switch to postcopy: the pages
 * the guest touches before their reference is filled (userfaultfd faults
 * that QEMU's fault thread hands over).  Each one goes to Go's fetcher,
 * which reads its block ahead of the queue (or asks the source for the
 * page when the storage is slow), and is timed from the fault until its
 * page is placed, by the fill or by the source's page.
 */
#include <errno.h>
#include <string.h>

#include "shim.h"

#define MIN(a, b) ((a) < (b) ? (a) : (b))

struct touch_slot {
    uint32_t ramblock;
    uint32_t used;
    uint64_t page;
    uint64_t t_ns;
};

/*
 * Faults not resolved yet.  A few at a time: one per waiting vCPU or
 * thread; a fault that finds the table full goes to the source as without
 * the library.
 */
#define TOUCH_SLOTS 256
static struct touch_slot touches[TOUCH_SLOTS];
static int touches_used; /* read without the lock: 0 skips the search */
static pthread_mutex_t touch_lock = PTHREAD_MUTEX_INITIALIZER;

/*
 * Fault latency in microseconds, log-linear: values below 8 exactly, then
 * 8 buckets per power of two (a bucket spans 1/8 of its lower bound).
 */
#define LAT_SUB_BITS 3
#define LAT_SUB (1u << LAT_SUB_BITS)
#define LAT_BUCKETS (LAT_SUB + (64 - LAT_SUB_BITS) * LAT_SUB)
static uint64_t lat_hist[LAT_BUCKETS];

static unsigned lat_bucket(uint64_t us)
{
    unsigned e;

    if (us < LAT_SUB) {
        return (unsigned)us;
    }
    e = 63 - __builtin_clzll(us);
    return LAT_SUB + (e - LAT_SUB_BITS) * LAT_SUB +
           (unsigned)((us >> (e - LAT_SUB_BITS)) & (LAT_SUB - 1));
}

/* The largest value a bucket holds. */
static uint64_t lat_bucket_top(unsigned b)
{
    unsigned e, sub;

    if (b < LAT_SUB) {
        return b;
    }
    e = (b - LAT_SUB) / LAT_SUB + LAT_SUB_BITS;
    sub = (b - LAT_SUB) % LAT_SUB;
    return (((uint64_t)(LAT_SUB + sub + 1)) << (e - LAT_SUB_BITS)) - 1;
}

/* Caller holds touch_lock. */
static struct touch_slot *touch_find(uint32_t ramblock, uint64_t page)
{
    int i;

    for (i = 0; i < TOUCH_SLOTS; i++) {
        if (touches[i].used && touches[i].ramblock == ramblock &&
            touches[i].page == page) {
            return &touches[i];
        }
    }
    return NULL;
}

static void touch_drop(struct touch_slot *t)
{
    t->used = 0;
    __atomic_sub_fetch(&touches_used, 1, __ATOMIC_SEQ_CST);
}

int nasmig_lib_dest_page_fault(uint32_t ramblock, uint64_t ram_offset)
{
    uint64_t page = ram_offset >> NASMIG_PAGE_SHIFT, pos;
    struct nasmig_touch_req *req;
    struct touch_slot *t = NULL;
    const uint32_t *st;
    uint32_t state;
    int i;

    if (!__atomic_load_n(&nasmig_g.dest_fill_after, __ATOMIC_SEQ_CST) ||
        ramblock >= (uint32_t)LOAD_ACQ(&nasmig_g.nrb)) {
        return 0;
    }
    st = LOAD_ACQ(&nasmig_g.rb[ramblock].dest_state);
    if (!st || page >= nasmig_g.rb[ramblock].npages) {
        return 0;
    }
    pthread_mutex_lock(&touch_lock);
    if (touch_find(ramblock, page)) {
        /* Another thread's fault on it is in hand already. */
        pthread_mutex_unlock(&touch_lock);
        return 1;
    }
    for (i = 0; i < TOUCH_SLOTS && !t; i++) {
        if (!touches[i].used) {
            t = &touches[i];
        }
    }
    if (!t) {
        pthread_mutex_unlock(&touch_lock);
        return 0;
    }
    *t = (struct touch_slot){ .ramblock = ramblock, .used = 1,
                                   .page = page, .t_ns = nasmig_now_ns() };
    __atomic_add_fetch(&touches_used, 1, __ATOMIC_SEQ_CST);
    /*
     * The state is read after the slot is in: a fill that placed the page
     * before looked for the slot before it was there, and left the state
     * idle, which this read sees (both under touch_lock's order).
     */
    state = nasmig_fill_state(__atomic_load_n(&st[page], __ATOMIC_SEQ_CST));
    if ((state != NASMIG_FILL_PENDING && state != NASMIG_FILL_BUSY) ||
        nasmig_ring_reserve(&nasmig_touch_ring, 1, &pos) < 0) {
        /* Not waiting for a fill (or no room to say so): QEMU asks. */
        touch_drop(t);
        pthread_mutex_unlock(&touch_lock);
        return 0;
    }
    pthread_mutex_unlock(&touch_lock);
    req = nasmig_ring_elem(&nasmig_touch_ring, pos);
    req->ramblock = ramblock;
    req->reserved = 0;
    req->page = page;
    nasmig_ring_publish(&nasmig_touch_ring, pos);
    nasmig_wake_go();
    return 1;
}

/*
 * The page of a reference was placed: by its fill (from_storage), or by
 * the source's page.  A fault waiting for it is timed and counted.
 */
void nasmig_touch_resolved(uint32_t ramblock, uint64_t page, int from_storage)
{
    struct touch_slot *t;
    uint64_t us;

    if (!__atomic_load_n(&touches_used, __ATOMIC_SEQ_CST)) {
        return;
    }
    pthread_mutex_lock(&touch_lock);
    t = touch_find(ramblock, page);
    if (t) {
        us = (nasmig_now_ns() - t->t_ns) / 1000;
        lat_hist[lat_bucket(us)]++;
        if (us > nasmig_g.stats.fault_latency_max_us) {
            STORE_REL(&nasmig_g.stats.fault_latency_max_us, us);
        }
        if (from_storage) {
            STAT_ADD(faults_from_storage, 1);
        } else {
            STAT_ADD(faults_from_source, 1);
        }
        touch_drop(t);
    }
    pthread_mutex_unlock(&touch_lock);
}

/* The fault latency at quantile num/den (0 without faults). */
static uint64_t lat_quantile(uint64_t num, uint64_t den)
{
    uint64_t total = 0, rank, seen = 0;
    unsigned b;

    for (b = 0; b < LAT_BUCKETS; b++) {
        total += lat_hist[b];
    }
    if (!total) {
        return 0;
    }
    rank = (total * num + den - 1) / den;
    for (b = 0; b < LAT_BUCKETS; b++) {
        seen += lat_hist[b];
        if (seen >= rank && lat_hist[b]) {
            return lat_bucket_top(b);
        }
    }
    return lat_bucket_top(LAT_BUCKETS - 1);
}

/* Fills the statistics' quantiles from the histogram. */
void nasmig_touch_stats(struct nasmig_stats *out)
{
    uint64_t max = out->fault_latency_max_us;

    /* A bucket's top may lie above the largest sample in it. */
    pthread_mutex_lock(&touch_lock);
    out->fault_latency_median_us = MIN(lat_quantile(1, 2), max);
    out->fault_latency_p99_us = MIN(lat_quantile(99, 100), max);
    pthread_mutex_unlock(&touch_lock);
}

/* A new migration: no fault in hand, an empty histogram. */
void nasmig_touch_reset(void)
{
    pthread_mutex_lock(&touch_lock);
    memset(touches, 0, sizeof(touches));
    memset(lat_hist, 0, sizeof(lat_hist));
    __atomic_store_n(&touches_used, 0, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&touch_lock);
}

/* Tests: the histogram's bucket and its top for a latency. */
uint64_t nasmig_touch_bucket_top_of(uint64_t us)
{
    return lat_bucket_top(lat_bucket(us));
}
