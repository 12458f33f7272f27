/*
 * shim.c - nasmig's C hot paths: the keyed page hash, the lock-free rings,
 * the saver's per-page question and the destination's fill states.  None of
 * this enters the Go runtime: QEMU threads and coroutines call it directly.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "shim.h"

struct nasmig_shared nasmig_g;
static const struct nasmig_host *host_ops;
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t err_lock = PTHREAD_MUTEX_INITIALIZER;

#define LOAD_ACQ(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define STORE_REL(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define ADD(p, v) __atomic_add_fetch((p), (v), __ATOMIC_RELAXED)
#define SUB(p, v) __atomic_sub_fetch((p), (v), __ATOMIC_RELAXED)

/* ------------------------------------------------------------------ */
/* Keyed page hash.
 *
 * NH (the universal hash of UMAC/VMAC): sum over word pairs of
 * (m[2i]+k[2i]) * (m[2i+1]+k[2i+1]) in 64-bit arithmetic, 32-bit adds.
 * For a random key two different pages collide with probability <= 2^-32
 * per pass; two passes with keys shifted by 4 words are independent, so the
 * 128-bit result collides with probability <= 2^-64.  A guest that does not
 * know the key cannot aim for a collision.  The finaliser is a bijection that
 * spreads the bits the map keeps as its filter.
 */
static inline uint64_t fmix64(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

__attribute__((optimize("O3"), target_clones("avx2", "default")))
void nasmig_hash_page(const struct nasmig_hash_key *key, const void *page,
                      uint64_t out[2])
{
    const uint32_t *m = page;
    const uint32_t *k = key->nh;
    uint64_t a = 0, b = 0;
    unsigned i;

    for (i = 0; i < NASMIG_NH_WORDS; i += 2) {
        uint32_t m0 = m[i], m1 = m[i + 1];
        a += (uint64_t)(uint32_t)(m0 + k[i]) * (uint32_t)(m1 + k[i + 1]);
        b += (uint64_t)(uint32_t)(m0 + k[i + NASMIG_NH_SHIFT]) *
             (uint32_t)(m1 + k[i + 1 + NASMIG_NH_SHIFT]);
    }
    out[0] = fmix64(a ^ key->fin[0]);
    out[1] = fmix64(b ^ key->fin[1]);
}

/* ------------------------------------------------------------------ */
/* Bounded ring after Vyukov: a sequence word per slot, producers reserve
 * with a CAS on head and never wait (full means "drop" or "-EAGAIN"), one
 * consumer. */
struct ring {
    uint64_t mask;
    size_t esize; /* element size, multiple of 8 */
    uint8_t *slots;
    uint64_t head __attribute__((aligned(64)));
    uint64_t tail __attribute__((aligned(64)));
};

static struct ring track_ring, req_ring, done_ring;
static uint64_t lost_invalidations;
static uint64_t lost_head; /* ring head after the latest lost write */

static inline uint64_t *ring_seq(struct ring *r, uint64_t pos)
{
    return (uint64_t *)(r->slots + (pos & r->mask) * (r->esize + 8));
}

static inline void *ring_elem(struct ring *r, uint64_t pos)
{
    return (uint8_t *)ring_seq(r, pos) + 8;
}

static int ring_init(struct ring *r, unsigned slots, size_t esize)
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
        *ring_seq(r, i) = i;
    }
    r->head = r->tail = 0;
    return 0;
}

/* Reserves n consecutive slots; returns 0 and the first position, or -1. */
static int ring_reserve(struct ring *r, unsigned n, uint64_t *pos_out)
{
    uint64_t pos = __atomic_load_n(&r->head, __ATOMIC_RELAXED);

    if (!r->slots || n == 0 || n > r->mask + 1) {
        return -1;
    }
    for (;;) {
        uint64_t last = pos + n - 1;
        uint64_t seq = LOAD_ACQ(ring_seq(r, last));
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

static inline void ring_publish(struct ring *r, uint64_t pos)
{
    STORE_REL(ring_seq(r, pos), pos + 1);
}

static unsigned ring_pop(struct ring *r, void *out, unsigned max)
{
    unsigned n = 0;

    if (!r->slots) {
        return 0;
    }
    while (n < max) {
        uint64_t pos = r->tail;

        if (LOAD_ACQ(ring_seq(r, pos)) != pos + 1) {
            break;
        }
        memcpy((uint8_t *)out + (size_t)n * r->esize, ring_elem(r, pos),
               r->esize);
        STORE_REL(ring_seq(r, pos), pos + r->mask + 1);
        __atomic_store_n(&r->tail, pos + 1, __ATOMIC_RELAXED);
        n++;
    }
    return n;
}

/* ------------------------------------------------------------------ */
/* Errors and small helpers. */

void nasmig_set_err(const char *msg)
{
    pthread_mutex_lock(&err_lock);
    snprintf(nasmig_g.err, sizeof(nasmig_g.err), "%s", msg);
    pthread_mutex_unlock(&err_lock);
}

int nasmig_lib_errmsg(char *buf, size_t len)
{
    int ret = 0;

    if (!buf || !len) {
        return -ERANGE;
    }
    pthread_mutex_lock(&err_lock);
    if (strlen(nasmig_g.err) >= len) {
        ret = -ERANGE;
    }
    snprintf(buf, len, "%s", nasmig_g.err);
    pthread_mutex_unlock(&err_lock);
    return ret;
}

uint64_t nasmig_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

void nasmig_stat_add(size_t field_offset, uint64_t v)
{
    ADD((uint64_t *)((uint8_t *)&nasmig_g.stats + field_offset), v);
}

#define STAT_ADD(field, v) ADD(&nasmig_g.stats.field, (v))

static void wake_go(void)
{
    uint64_t one = 1;

    if (__atomic_exchange_n(&nasmig_g.go_sleeping, 0, __ATOMIC_SEQ_CST) &&
        nasmig_g.wake_fd >= 0) {
        if (write(nasmig_g.wake_fd, &one, sizeof(one)) < 0) {
            /* The eventfd counter cannot overflow at our rates. */
        }
    }
}

/*
 * QEMU's incoming migration got -EAGAIN and waits (bounded) for a kick:
 * Go kicks once what it waited for may have changed (nasmig_kick_waiter),
 * instead of QEMU polling.
 */
static int qemu_waits;

static int qemu_wait(void)
{
    __atomic_store_n(&qemu_waits, 1, __ATOMIC_SEQ_CST);
    wake_go();
    return -EAGAIN;
}

void nasmig_kick_waiter(void)
{
    if (__atomic_exchange_n(&qemu_waits, 0, __ATOMIC_SEQ_CST)) {
        nasmig_call_kick();
    }
}

static inline void cpu_relax(void)
{
    __builtin_ia32_pause();
}

/* ------------------------------------------------------------------ */
/* Registration tables. */

int nasmig_lib_ramblock_add(const char *idstr, uint64_t max_length)
{
    int i, ret;
    void *mem;
    uint64_t npages = max_length >> NASMIG_PAGE_SHIFT;

    if (strlen(idstr) >= NASMIG_MAX_IDSTR) {
        return -ENAMETOOLONG;
    }
    pthread_mutex_lock(&table_lock);
    for (i = 0; i < nasmig_g.nrb; i++) {
        if (!strncmp(nasmig_g.rb[i].idstr, idstr,
                     sizeof(nasmig_g.rb[i].idstr))) {
            ret = i;
            goto out;
        }
    }
    if (nasmig_g.nrb == NASMIG_MAX_RAMBLOCKS) {
        ret = -ENOSPC;
        goto out;
    }
    /* Lazily backed: untouched parts of a large guest cost nothing. */
    mem = mmap(NULL, npages ? npages * 8 : 8, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) {
        ret = -ENOMEM;
        goto out;
    }
    i = nasmig_g.nrb;
    snprintf(nasmig_g.rb[i].idstr, sizeof(nasmig_g.rb[i].idstr), "%s", idstr);
    nasmig_g.rb[i].npages = npages;
    STORE_REL(&nasmig_g.rb[i].forward, (uint64_t *)mem);
    STORE_REL(&nasmig_g.nrb, i + 1);
    ret = i;
out:
    pthread_mutex_unlock(&table_lock);
    return ret;
}

static int excluded(const char *node_name, const char *filename)
{
    const char *p = nasmig_g.exclude;

    while (*p) {
        if (!strcmp(p, node_name) || !strcmp(p, filename)) {
            return 1;
        }
        p += strlen(p) + 1;
    }
    return 0;
}

int nasmig_lib_disk_add(const char *node_name, const char *filename,
                        uint64_t size)
{
    struct nasmig_disk_info *d;
    int i, ret;

    if (strlen(node_name) >= NASMIG_MAX_NODE_NAME ||
        strlen(filename) >= NASMIG_MAX_FILENAME) {
        return -ENAMETOOLONG;
    }
    pthread_mutex_lock(&table_lock);
    for (i = 0; i < nasmig_g.ndisk; i++) {
        if (!strcmp(nasmig_g.disk[i].node_name, node_name)) {
            ret = nasmig_g.disk[i].excluded ? -EPERM : i;
            goto out;
        }
    }
    if (nasmig_g.ndisk == NASMIG_MAX_DISKS) {
        ret = -ENOSPC;
        goto out;
    }
    i = nasmig_g.ndisk;
    d = &nasmig_g.disk[i];
    snprintf(d->node_name, sizeof(d->node_name), "%s", node_name);
    snprintf(d->filename, sizeof(d->filename), "%s", filename);
    d->size = size;
    d->excluded = !nasmig_g.enabled || excluded(node_name, filename);
    d->ndir = ((size >> NASMIG_PAGE_SHIFT) + NASMIG_REV_CHUNK - 1) >>
              NASMIG_REV_CHUNK_SHIFT;
    d->dir = calloc(d->ndir ? d->ndir : 1, sizeof(uint64_t *));
    if (!d->dir) {
        ret = -ENOMEM;
        goto out;
    }
    STORE_REL(&nasmig_g.ndisk, i + 1);
    ret = d->excluded ? -EPERM : i;
out:
    pthread_mutex_unlock(&table_lock);
    return ret;
}

void nasmig_lib_disk_remove(int disk)
{
    struct nasmig_disk_info *d;
    uint64_t size;

    if (disk < 0 || disk >= NASMIG_MAX_DISKS) {
        return;
    }
    pthread_mutex_lock(&table_lock);
    if (disk >= nasmig_g.ndisk || nasmig_g.disk[disk].removed) {
        pthread_mutex_unlock(&table_lock);
        return;
    }
    d = &nasmig_g.disk[disk];
    /* A node created later under the same name is another disk. */
    d->node_name[0] = '\0';
    d->excluded = 1;
    STORE_REL(&d->removed, 1);
    STORE_REL(&nasmig_g.disk_off[disk], 1);
    size = d->size;
    pthread_mutex_unlock(&table_lock);
    /* Its mappings go as if the whole disk had been written. */
    nasmig_lib_block_write_done(disk, 0, size ? size : NASMIG_PAGE_SIZE);
}

/* Called by Go's disk_names once a name matched exclude=. */
void nasmig_disk_exclude(int disk)
{
    if (disk < 0 || disk >= NASMIG_MAX_DISKS) {
        return;
    }
    pthread_mutex_lock(&table_lock);
    if (disk < nasmig_g.ndisk) {
        nasmig_g.disk[disk].excluded = 1;
        STORE_REL(&nasmig_g.disk_off[disk], 1);
    }
    pthread_mutex_unlock(&table_lock);
}

/* ------------------------------------------------------------------ */
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
static void inflight_check(const struct nasmig_page_read *pages, unsigned n,
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

/* ------------------------------------------------------------------ */
/* Source: tracking. */

void nasmig_lib_block_read_done(int disk, const struct nasmig_page_read *pages,
                                unsigned n, const unsigned *write_gen,
                                unsigned gen_before)
{
    uint64_t hashes[NASMIG_MAX_PAGES_PER_CALL][2];
    int ok[NASMIG_MAX_PAGES_PER_CALL];
    uint64_t pos;
    int raced;
    unsigned i;

    if (n == 0 || n > NASMIG_MAX_PAGES_PER_CALL || disk < 0 ||
        disk >= NASMIG_MAX_DISKS) {
        return;
    }
    /* Hash now, before the guest is told the read finished. */
    for (i = 0; i < n; i++) {
        nasmig_hash_page(&nasmig_g.key, pages[i].host, hashes[i]);
    }
    inflight_check(pages, n, ok);
    if (nasmig_lib_fault(NASMIG_FAULT_RING_FULL) ||
        ring_reserve(&track_ring, n, &pos) < 0) {
        STAT_ADD(ring_drops, n);
        return;
    }
    /*
     * The slots are ours before we look at write_gen: a write whose
     * invalidation could precede our mappings has bumped it by now.
     */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    raced = __atomic_load_n(write_gen, __ATOMIC_SEQ_CST) != gen_before;
    for (i = 0; i < n; i++) {
        struct nasmig_rec *rec = ring_elem(&track_ring, pos + i);

        rec->type = raced || !ok[i] ? NASMIG_REC_VOID : NASMIG_REC_MAP;
        rec->disk = (uint8_t)disk;
        rec->reserved = 0;
        rec->ramblock = pages[i].ramblock;
        rec->page = pages[i].ram_offset >> NASMIG_PAGE_SHIFT;
        rec->block = pages[i].disk_offset >> NASMIG_PAGE_SHIFT;
        rec->hash = hashes[i][0];
        ring_publish(&track_ring, pos + i);
    }
}

void nasmig_lib_block_write_done(int disk, uint64_t offset, uint64_t len)
{
    struct nasmig_rec *rec;
    uint64_t pos, first, last;

    if (disk < 0 || disk >= NASMIG_MAX_DISKS) {
        return;
    }
    if (nasmig_lib_fault(NASMIG_FAULT_WRITE_RECORD_LOST)) {
        return;
    }
    first = offset >> NASMIG_PAGE_SHIFT;
    last = len ? (offset + len - 1) >> NASMIG_PAGE_SHIFT : first;
    if (nasmig_lib_fault(NASMIG_FAULT_RING_FULL) ||
        ring_reserve(&track_ring, 1, &pos) < 0) {
        /*
         * Never lose a write silently: Go then drops the whole map, once it
         * has applied every record reserved before now (a mapping among
         * them may be to a block this write changed).
         */
        uint64_t head = __atomic_load_n(&track_ring.head, __ATOMIC_SEQ_CST);
        uint64_t old = __atomic_load_n(&lost_head, __ATOMIC_RELAXED);

        while (old < head &&
               !__atomic_compare_exchange_n(&lost_head, &old, head, 1,
                                            __ATOMIC_SEQ_CST,
                                            __ATOMIC_RELAXED)) {
        }
        __atomic_add_fetch(&lost_invalidations, 1, __ATOMIC_SEQ_CST);
        STAT_ADD(ring_drops, 1);
        return;
    }
    rec = ring_elem(&track_ring, pos);
    rec->type = NASMIG_REC_INVAL;
    rec->disk = (uint8_t)disk;
    rec->reserved = 0;
    rec->ramblock = 0;
    rec->page = last - first + 1;
    rec->block = first;
    rec->hash = 0;
    ring_publish(&track_ring, pos);
}

unsigned nasmig_ring_pop(struct nasmig_rec *out, unsigned max)
{
    return ring_pop(&track_ring, out, max);
}

/* Test hook: pushes records as a producer would. Returns how many fit. */
unsigned nasmig_ring_push_test(const struct nasmig_rec *rec, unsigned n)
{
    uint64_t pos;
    unsigned i;

    for (i = 0; i < n; i++) {
        if (ring_reserve(&track_ring, 1, &pos) < 0) {
            return i;
        }
        memcpy(ring_elem(&track_ring, pos), &rec[i], sizeof(*rec));
        ring_publish(&track_ring, pos);
    }
    return n;
}

uint64_t nasmig_lost_invalidations(void)
{
    return __atomic_load_n(&lost_invalidations, __ATOMIC_SEQ_CST);
}

/* Ring position up to which records must be applied before the map is
 * dropped for the lost writes counted so far (read after the count). */
uint64_t nasmig_lost_head(void)
{
    return __atomic_load_n(&lost_head, __ATOMIC_SEQ_CST);
}

/* The consumer's position: records before it have been popped. */
uint64_t nasmig_ring_tail(void)
{
    return __atomic_load_n(&track_ring.tail, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------------ */
/* Source: the saver's question. */

static inline void put_be64(uint8_t *p, uint64_t v)
{
    int i;

    for (i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

static inline uint64_t get_be64(const uint8_t *p)
{
    uint64_t v = 0;
    int i;

    for (i = 0; i < 8; i++) {
        v = (v << 8) | p[i];
    }
    return v;
}

/*
 * Looks the page up without hashing: returns the forward word when the map
 * offers the page (forward and reverse agree), else 0.
 */
static inline uint64_t map_lookup(uint32_t ramblock, uint64_t page,
                                  uint64_t *rev_out)
{
    const struct nasmig_rb_info *rb;
    const struct nasmig_disk_info *d;
    uint64_t fwd, block, rev, *chunk, *forward;
    unsigned disk;

    if (ramblock >= (uint32_t)LOAD_ACQ(&nasmig_g.nrb)) {
        return 0;
    }
    rb = &nasmig_g.rb[ramblock];
    forward = LOAD_ACQ(&rb->forward);
    if (page >= rb->npages || !forward) {
        return 0;
    }
    fwd = LOAD_ACQ(&forward[page]);
    if (!(fwd & NASMIG_FWD_VALID)) {
        return 0;
    }
    disk = (fwd >> NASMIG_FWD_DISK_SHIFT) & NASMIG_FWD_DISK_MASK;
    block = fwd & NASMIG_FWD_BLOCK_MASK;
    d = &nasmig_g.disk[disk];
    if ((block >> NASMIG_REV_CHUNK_SHIFT) >= d->ndir) {
        return 0;
    }
    chunk = LOAD_ACQ(&d->dir[block >> NASMIG_REV_CHUNK_SHIFT]);
    if (!chunk) {
        return 0;
    }
    rev = LOAD_ACQ(&chunk[block & (NASMIG_REV_CHUNK - 1)]);
    if ((rev & NASMIG_REV_PAGE_MASK) != page + 1 ||
        ((rev >> NASMIG_REV_RB_SHIFT) & NASMIG_REV_RB_MASK) != ramblock) {
        return 0;
    }
    *rev_out = rev;
    return fwd;
}

/* For the micro-benchmark: the lookup alone (no hash). */
int nasmig_map_offers(uint32_t ramblock, uint64_t ram_offset)
{
    uint64_t rev;

    return map_lookup(ramblock, ram_offset >> NASMIG_PAGE_SHIFT, &rev) != 0;
}

int nasmig_lib_ref_query(uint32_t ramblock, uint64_t ram_offset,
                         const void *host, uint8_t *wire)
{
    uint64_t page = ram_offset >> NASMIG_PAGE_SHIFT;
    uint64_t fwd, fwd2, rev, h[2];

    fwd = map_lookup(ramblock, page, &rev);
    if (!fwd) {
        return 0;
    }
    /* The destination cannot read this disk: send its pages in full. */
    if (LOAD_ACQ(&nasmig_g.disk_off[(fwd >> NASMIG_FWD_DISK_SHIFT) &
                                    NASMIG_FWD_DISK_MASK])) {
        return 0;
    }
    /* The dirty bit is clear now: a later guest write shows up next round. */
    nasmig_hash_page(&nasmig_g.key, host, h);
    if (nasmig_h16(h[0]) != ((fwd >> NASMIG_FWD_H16_SHIFT) & NASMIG_FWD_H16_MASK) ||
        nasmig_h24(h[0]) != (rev >> NASMIG_REV_H24_SHIFT)) {
        STAT_ADD(ref_misses, 1);
        return 0;
    }
    fwd2 = LOAD_ACQ(&nasmig_g.rb[ramblock].forward[page]);
    if (fwd2 != fwd) {
        return 0;
    }
    /*
     * The reference carries this migration's hash, never the tracking
     * key's: the destination learns only a key that dies with the
     * migration.
     */
    nasmig_hash_page(&nasmig_g.mig_key, host, h);
    wire[0] = NASMIG_REF_WIRE_VERSION;
    wire[1] = (uint8_t)((fwd >> NASMIG_FWD_DISK_SHIFT) & NASMIG_FWD_DISK_MASK);
    put_be64(wire + 2, (fwd & NASMIG_FWD_BLOCK_MASK) << NASMIG_PAGE_SHIFT);
    put_be64(wire + 10, h[0]);
    put_be64(wire + 18, h[1]);
    STAT_ADD(ref_pages, 1);
    return 1;
}

/* ------------------------------------------------------------------ */
/* Destination. */

static uint32_t *dest_states(uint32_t ramblock)
{
    struct nasmig_rb_info *rb;
    uint32_t *st;
    void *mem;

    if (ramblock >= (uint32_t)LOAD_ACQ(&nasmig_g.nrb)) {
        return NULL;
    }
    rb = &nasmig_g.rb[ramblock];
    st = LOAD_ACQ(&rb->dest_state);
    if (st) {
        return st;
    }
    pthread_mutex_lock(&table_lock);
    st = rb->dest_state;
    if (!st) {
        mem = mmap(NULL, rb->npages ? rb->npages * 4 : 4,
                   PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (mem != MAP_FAILED) {
            st = mem;
            STORE_REL(&rb->dest_state, st);
        }
    }
    pthread_mutex_unlock(&table_lock);
    return st;
}

static uint64_t dest_disk_size[NASMIG_MAX_DISKS];

/*
 * Go records the size of each source disk from the setup section, the
 * destination's handle to read it, and this side's tracking handle for it.
 */
void nasmig_dest_set_disk(int src_index, int handle, uint64_t size, int track)
{
    if (src_index >= 0 && src_index < NASMIG_MAX_DISKS) {
        dest_disk_size[src_index] = size;
        STORE_REL(&nasmig_g.dest_track_map[src_index], track);
        STORE_REL(&nasmig_g.dest_disk_map[src_index], handle);
    }
}

/* Zeroes the per-migration counters; mapped_pages is a gauge of the map. */
void nasmig_stats_reset(void)
{
    uint64_t *w = (uint64_t *)&nasmig_g.stats;
    size_t i, keep = offsetof(struct nasmig_stats, mapped_pages) / 8;

    for (i = 0; i < sizeof(nasmig_g.stats) / 8; i++) {
        if (i != keep) {
            __atomic_store_n(&w[i], 0, __ATOMIC_RELAXED);
        }
    }
}

/*
 * A page just filled from a verified block is exactly that block: it
 * enters this side's map, so the next migration of the guest sends it as a
 * reference again.  A full ring only loses the mapping.
 */
static void dest_map_filled(const struct nasmig_fetch_req *r, const void *page)
{
    int track = LOAD_ACQ(&nasmig_g.dest_track_map[r->src_disk]);
    struct nasmig_rec *rec;
    uint64_t h[2], pos;

    if (track < 0 || !nasmig_g.enabled ||
        ring_reserve(&track_ring, 1, &pos) < 0) {
        return;
    }
    nasmig_hash_page(&nasmig_g.key, page, h);
    rec = ring_elem(&track_ring, pos);
    rec->type = NASMIG_REC_MAP;
    rec->disk = (uint8_t)track;
    rec->reserved = 0;
    rec->ramblock = r->ramblock;
    rec->page = r->page;
    rec->block = r->block;
    rec->hash = h[0];
    ring_publish(&track_ring, pos);
}

int nasmig_lib_ref_received(uint32_t ramblock, uint64_t ram_offset, void *host,
                            const uint8_t *wire)
{
    struct nasmig_fetch_req *req;
    uint64_t page = ram_offset >> NASMIG_PAGE_SHIFT, off, pos;
    uint32_t *st, old, gen;
    unsigned src_disk;
    int handle;
    char msg[160];

    if (!LOAD_ACQ(&nasmig_g.dest_on)) {
        nasmig_set_err("reference received without a nasmig setup section");
        return -EINVAL;
    }
    if (wire[0] != NASMIG_REF_WIRE_VERSION) {
        snprintf(msg, sizeof(msg), "unsupported disk reference version %u "
                 "(this library reads %u)", wire[0], NASMIG_REF_WIRE_VERSION);
        nasmig_set_err(msg);
        return -EINVAL;
    }
    src_disk = wire[1];
    handle = src_disk < NASMIG_MAX_DISKS ?
             LOAD_ACQ(&nasmig_g.dest_disk_map[src_disk]) : -1;
    /*
     * A refused disk's references fail at once (Go asks the source for
     * the page); only a disk the setup never announced is an error.
     */
    if (handle < 0 && handle != NASMIG_DEST_DISK_REFUSED) {
        snprintf(msg, sizeof(msg), "reference to unknown disk %u", src_disk);
        nasmig_set_err(msg);
        return -EINVAL;
    }
    off = get_be64(wire + 2);
    if (off & (NASMIG_PAGE_SIZE - 1) ||
        off + NASMIG_PAGE_SIZE > dest_disk_size[src_disk]) {
        snprintf(msg, sizeof(msg), "reference to offset 0x%llx outside disk "
                 "%u", (unsigned long long)off, src_disk);
        nasmig_set_err(msg);
        return -EINVAL;
    }
    st = dest_states(ramblock);
    if (!st || page >= nasmig_g.rb[ramblock].npages) {
        nasmig_set_err("reference to a page outside its RAM block");
        return -EINVAL;
    }
    if (ring_reserve(&req_ring, 1, &pos) < 0) {
        wake_go();
        return qemu_wait();
    }
    for (;;) {
        old = LOAD_ACQ(&st[page]);
        if (nasmig_fill_state(old) == NASMIG_FILL_BUSY) {
            cpu_relax();
            continue;
        }
        gen = nasmig_fill_gen(old) + 1;
        if (__atomic_compare_exchange_n(&st[page], &old,
                                        nasmig_fill_word(gen, NASMIG_FILL_PENDING), 0,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            break;
        }
    }
    if (nasmig_fill_state(old) == NASMIG_FILL_IDLE) {
        STAT_ADD(pending_pages, 1);
    }
    if (!nasmig_g.first_ref_ns) {
        nasmig_g.first_ref_ns = nasmig_now_ns();
    }
    req = ring_elem(&req_ring, pos);
    req->ramblock = ramblock;
    req->gen = gen;
    req->page = page;
    req->block = off >> NASMIG_PAGE_SHIFT;
    req->disk = (uint32_t)handle;
    req->src_disk = src_disk;
    req->hash[0] = get_be64(wire + 10);
    req->hash[1] = get_be64(wire + 18);
    req->host = host;
    ring_publish(&req_ring, pos);
    wake_go();
    return 0;
}

int nasmig_lib_before_page_write(uint32_t ramblock, uint64_t ram_offset,
                                 int wait_fill)
{
    uint64_t page = ram_offset >> NASMIG_PAGE_SHIFT;
    uint32_t *st, old;

    if (ramblock >= (uint32_t)LOAD_ACQ(&nasmig_g.nrb)) {
        return 0;
    }
    st = LOAD_ACQ(&nasmig_g.rb[ramblock].dest_state);
    if (!st || page >= nasmig_g.rb[ramblock].npages) {
        return 0;
    }
    for (;;) {
        old = LOAD_ACQ(&st[page]);
        switch (nasmig_fill_state(old)) {
        case NASMIG_FILL_IDLE:
            return 0;
        case NASMIG_FILL_BUSY:
            cpu_relax();
            continue;
        default:
            if (wait_fill) {
                /* Ask the worker to settle failed pages now, not at the end. */
                __atomic_or_fetch(&nasmig_g.finish_req,
                                  NASMIG_FINISH_REQ_BARRIER, __ATOMIC_SEQ_CST);
                wake_go();
                return qemu_wait();
            }
            if (__atomic_compare_exchange_n(&st[page], &old,
                                            nasmig_fill_word(
                                                nasmig_fill_gen(old) + 1,
                                                NASMIG_FILL_IDLE), 0,
                                            __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE)) {
                SUB(&nasmig_g.stats.pending_pages, 1);
                if (nasmig_fill_state(old) == NASMIG_FILL_FAILED) {
                    /* A failed reference recovered: the page came in full. */
                    STAT_ADD(fallbacks, 1);
                }
                return 0;
            }
        }
    }
}

unsigned nasmig_req_pop(struct nasmig_fetch_req *out, unsigned max)
{
    return ring_pop(&req_ring, out, max);
}

void nasmig_lib_read_done(uint64_t cookie, int ret)
{
    struct nasmig_fetch_done *d;
    uint64_t pos;

    /* Bounded by the reads Go keeps in flight, far below the ring size. */
    while (ring_reserve(&done_ring, 1, &pos) < 0) {
        wake_go();
        sched_yield();
    }
    d = ring_elem(&done_ring, pos);
    d->cookie = cookie;
    d->ret = ret;
    ring_publish(&done_ring, pos);
    wake_go();
}

/* Whether the consumer would pop something now (only the consumer calls). */
static int ring_ready(struct ring *r)
{
    return r->slots && LOAD_ACQ(ring_seq(r, r->tail)) == r->tail + 1;
}

/*
 * The Go fetcher, after announcing that it sleeps: is there work it would
 * miss?  A request or completion published between its last pop and the
 * announcement found it awake and did not write the eventfd.
 */
int nasmig_fetch_work_ready(void)
{
    return ring_ready(&req_ring) || ring_ready(&done_ring);
}

unsigned nasmig_done_pop(struct nasmig_fetch_done *out, unsigned max)
{
    return ring_pop(&done_ring, out, max);
}

/*
 * Verifies each block against its reference and fills the page.  A page
 * whose generation moved on (a later record) is left alone.
 */
void nasmig_fill_verify(const struct nasmig_fetch_req *reqs, unsigned n,
                        const uint8_t *const *bufs, uint8_t *results)
{
    unsigned i;

    for (i = 0; i < n; i++) {
        const struct nasmig_fetch_req *r = &reqs[i];
        uint32_t *st = LOAD_ACQ(&nasmig_g.rb[r->ramblock].dest_state);
        uint64_t h[2];
        uint32_t old;

        nasmig_hash_page(&nasmig_g.mig_key, bufs[i], h);
        if (h[0] != r->hash[0] || h[1] != r->hash[1]) {
            results[i] = NASMIG_MISMATCH;
            continue;
        }
        results[i] = NASMIG_SUPERSEDED;
        for (;;) {
            old = LOAD_ACQ(&st[r->page]);
            if (nasmig_fill_gen(old) != r->gen ||
                (nasmig_fill_state(old) != NASMIG_FILL_PENDING &&
                 nasmig_fill_state(old) != NASMIG_FILL_FAILED)) {
                break;
            }
            if (__atomic_compare_exchange_n(&st[r->page], &old,
                                            nasmig_fill_word(r->gen,
                                                             NASMIG_FILL_BUSY),
                                            0, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE)) {
                memcpy(r->host, bufs[i], NASMIG_PAGE_SIZE);
                dest_map_filled(r, bufs[i]);
                STORE_REL(&st[r->page],
                          nasmig_fill_word(r->gen, NASMIG_FILL_IDLE));
                SUB(&nasmig_g.stats.pending_pages, 1);
                STAT_ADD(fetched_pages, 1);
                results[i] = NASMIG_FILLED;
                break;
            }
        }
    }
}

/* Marks a still-current reference as failed; returns 1 if it was current. */
int nasmig_fail_page(const struct nasmig_fetch_req *r)
{
    uint32_t *st = LOAD_ACQ(&nasmig_g.rb[r->ramblock].dest_state);
    uint32_t old = nasmig_fill_word(r->gen, NASMIG_FILL_PENDING);

    return __atomic_compare_exchange_n(&st[r->page], &old,
                                       nasmig_fill_word(r->gen,
                                                        NASMIG_FILL_FAILED), 0,
                                       __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE) ||
           old == nasmig_fill_word(r->gen, NASMIG_FILL_FAILED);
}

/* Gives up on a failed page (the migration fails): stops waiting for it. */
void nasmig_abandon_page(const struct nasmig_fetch_req *r)
{
    uint32_t *st = LOAD_ACQ(&nasmig_g.rb[r->ramblock].dest_state);
    uint32_t old = nasmig_fill_word(r->gen, NASMIG_FILL_FAILED);

    if (__atomic_compare_exchange_n(&st[r->page], &old,
                                    nasmig_fill_word(r->gen, NASMIG_FILL_IDLE),
                                    0,
                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        SUB(&nasmig_g.stats.pending_pages, 1);
    }
}

uint64_t nasmig_lib_dest_pending(void)
{
    return LOAD_ACQ(&nasmig_g.stats.pending_pages);
}

int nasmig_lib_dest_barrier(void)
{
    /* One caller: QEMU's incoming coroutine, polling until 0. */
    if (!nasmig_g.flush_waiting) {
        if (!LOAD_ACQ(&nasmig_g.stats.pending_pages)) {
            return 0;
        }
        nasmig_g.flush_waiting_for =
            __atomic_add_fetch(&nasmig_g.flush_req, 1, __ATOMIC_SEQ_CST);
        nasmig_g.flush_waiting = 1;
        wake_go();
    }
    if ((int32_t)(LOAD_ACQ(&nasmig_g.flush_ack) -
                  nasmig_g.flush_waiting_for) >= 0) {
        nasmig_g.flush_waiting = 0;
        return 0;
    }
    return qemu_wait();
}

int nasmig_lib_dest_finish(void)
{
    int state;

    __atomic_or_fetch(&nasmig_g.finish_req, NASMIG_FINISH_REQ_FINISH,
                      __ATOMIC_SEQ_CST);
    wake_go();
    state = LOAD_ACQ(&nasmig_g.finish_state);
    if (state == NASMIG_FINISH_WORKING) {
        return qemu_wait();
    }
    return state == NASMIG_FINISH_OK ? 0 : -EIO;
}

void nasmig_lib_stats(struct nasmig_stats *out)
{
    uint64_t *dst = (uint64_t *)out;
    const uint64_t *src = (const uint64_t *)&nasmig_g.stats;
    size_t i;

    for (i = 0; i < sizeof(*out) / 8; i++) {
        dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
    }
}

int nasmig_lib_auto_enable(void)
{
    return nasmig_g.auto_enable && nasmig_g.enabled;
}

/* ------------------------------------------------------------------ */
/* Host calls, for Go (cgo cannot call C function pointers directly). */

void nasmig_set_host(const struct nasmig_host *host)
{
    host_ops = host;
}

void nasmig_call_mark_dirty(uint32_t rb, uint64_t off, uint64_t len)
{
    if (host_ops && host_ops->mark_dirty) {
        host_ops->mark_dirty(rb, off, len);
    }
}

/* Marks one 4 KiB page dirty per entry: one cgo crossing for a batch. */
void nasmig_call_mark_dirty_pages(const uint32_t *rbs, const uint64_t *pages,
                                  unsigned n)
{
    unsigned i;

    for (i = 0; host_ops && host_ops->mark_dirty && i < n; i++) {
        host_ops->mark_dirty(rbs[i], pages[i] << NASMIG_PAGE_SHIFT,
                             NASMIG_PAGE_SIZE);
    }
}

int nasmig_call_read_disk(uint32_t disk, uint64_t off, void *buf, uint64_t len,
                          uint64_t cookie)
{
    if (!host_ops || !host_ops->read_disk) {
        return -ENOSYS;
    }
    return host_ops->read_disk(disk, off, buf, len, cookie);
}

int nasmig_call_disk_attach(const char *filename, uint64_t size, int *track,
                            char *err, size_t errlen)
{
    *track = -1;
    if (!host_ops || !host_ops->disk_attach) {
        snprintf(err, errlen, "the host offers no disk_attach");
        return -ENOSYS;
    }
    return host_ops->disk_attach(filename, size, track, err, errlen);
}

int nasmig_call_send_to_source(const uint8_t *buf, size_t len)
{
    if (!host_ops || !host_ops->send_to_source) {
        return -ENOSYS;
    }
    return host_ops->send_to_source(buf, len);
}

void nasmig_call_kick(void)
{
    if (host_ops && host_ops->kick) {
        host_ops->kick();
    }
}

void nasmig_call_approve_switchover(int force)
{
    if (host_ops && host_ops->approve_switchover) {
        host_ops->approve_switchover(force);
    }
}

/* ------------------------------------------------------------------ */

int nasmig_shim_init(unsigned ring_slots)
{
    int ret, i;

    for (i = 0; i < NASMIG_MAX_DISKS; i++) {
        nasmig_g.dest_disk_map[i] = -1;
        nasmig_g.dest_track_map[i] = -1;
    }
    nasmig_g.wake_fd = -1;
    ret = ring_init(&track_ring, ring_slots, sizeof(struct nasmig_rec));
    if (!ret) {
        ret = ring_init(&req_ring, NASMIG_REQ_RING_SLOTS,
                        sizeof(struct nasmig_fetch_req));
    }
    if (!ret) {
        ret = ring_init(&done_ring, NASMIG_DONE_RING_SLOTS,
                        sizeof(struct nasmig_fetch_done));
    }
    return ret;
}

/* Resets the destination's per-migration state (Go holds no fills now). */
void nasmig_dest_reset(void)
{
    int i;

    for (i = 0; i < NASMIG_MAX_DISKS; i++) {
        nasmig_g.dest_disk_map[i] = -1;
        nasmig_g.dest_track_map[i] = -1;
    }
    nasmig_g.finish_req = 0;
    nasmig_g.finish_state = NASMIG_FINISH_WORKING;
    nasmig_g.flush_ack = nasmig_g.flush_req;
    nasmig_g.flush_waiting = 0;
    nasmig_g.first_ref_ns = 0;
}

void nasmig_shim_fill(struct nasmig_lib *lib)
{
    lib->abi_version = NASMIG_ABI_VERSION;
    lib->struct_size = sizeof(*lib);
    lib->ramblock_add = nasmig_lib_ramblock_add;
    lib->disk_add = nasmig_lib_disk_add;
    lib->disk_remove = nasmig_lib_disk_remove;
    lib->block_read_done = nasmig_lib_block_read_done;
    lib->block_write_done = nasmig_lib_block_write_done;
    lib->block_read_begin = nasmig_lib_block_read_begin;
    lib->block_read_end = nasmig_lib_block_read_end;
    lib->ref_query = nasmig_lib_ref_query;
    lib->ref_received = nasmig_lib_ref_received;
    lib->before_page_write = nasmig_lib_before_page_write;
    lib->read_done = nasmig_lib_read_done;
    lib->dest_finish = nasmig_lib_dest_finish;
    lib->dest_pending = nasmig_lib_dest_pending;
    lib->dest_barrier = nasmig_lib_dest_barrier;
    lib->stats = nasmig_lib_stats;
    lib->errmsg = nasmig_lib_errmsg;
    lib->auto_enable = nasmig_lib_auto_enable;
    lib->fault = nasmig_lib_fault;
}
