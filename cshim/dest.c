/*
 * dest.c - destination: the fill state of every page that arrived as a
 * reference, from queued to verified and filled, and the handshakes
 * (flush, barrier, finish) between QEMU's loader and Go's fetcher.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "shim.h"

static inline uint64_t get_be64(const uint8_t *p)
{
    uint64_t v = 0;
    int i;

    for (i = 0; i < 8; i++) {
        v = (v << 8) | p[i];
    }
    return v;
}

void nasmig_wake_go(void)
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
    /* Flag first, then wake: Go, once awake, sees that QEMU waits. */
    __atomic_store_n(&qemu_waits, 1, __ATOMIC_SEQ_CST);
    nasmig_wake_go();
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
    pthread_mutex_lock(&nasmig_table_lock);
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
    pthread_mutex_unlock(&nasmig_table_lock);
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

/*
 * A page just filled from a verified block is exactly that block: it
 * enters this side's map, so the next migration of the guest sends it as a
 * reference again.  A full ring only loses the mapping.
 */
static int dest_maps(const struct nasmig_fetch_req *r)
{
    return LOAD_ACQ(&nasmig_g.dest_track_map[r->src_disk]) >= 0 &&
           nasmig_g.enabled;
}

/* track_hash: the first word of the page's hash with the tracking key. */
static void dest_map_filled(const struct nasmig_fetch_req *r,
                            uint64_t track_hash)
{
    int track = LOAD_ACQ(&nasmig_g.dest_track_map[r->src_disk]);
    struct nasmig_rec *rec;
    uint64_t pos;

    if (track < 0 || !nasmig_g.enabled ||
        nasmig_ring_reserve(&nasmig_track_ring, 1, &pos) < 0) {
        return;
    }
    rec = nasmig_ring_elem(&nasmig_track_ring, pos);
    rec->type = NASMIG_REC_MAP;
    rec->disk = (uint8_t)track;
    rec->reserved = 0;
    rec->ramblock = r->ramblock;
    rec->page = r->page;
    rec->block = r->block;
    rec->hash = track_hash;
    nasmig_ring_publish(&nasmig_track_ring, pos);
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
    if (nasmig_ring_reserve(&nasmig_req_ring, 1, &pos) < 0) {
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
    req = nasmig_ring_elem(&nasmig_req_ring, pos);
    req->ramblock = ramblock;
    req->gen = gen;
    req->page = page;
    req->block = off >> NASMIG_PAGE_SHIFT;
    req->disk = (uint32_t)handle;
    req->src_disk = src_disk;
    req->hash[0] = get_be64(wire + 10);
    req->hash[1] = get_be64(wire + 18);
    req->host = host;
    nasmig_ring_publish(&nasmig_req_ring, pos);
    /* After the publish: Go pops every reference this count includes. */
    __atomic_add_fetch(&nasmig_g.refs_received, 1, __ATOMIC_RELEASE);
    nasmig_wake_go();
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
                if (LOAD_ACQ(&nasmig_g.fill_mode) == NASMIG_FILL_MODE_PLACE) {
                    STAT_ADD(from_source_after_switchover, 1);
                    nasmig_touch_resolved(ramblock, page, 0);
                }
                return 0;
            }
        }
    }
}

/* Whether page holds exactly the block r refers to (its 128-bit hash). */
static int ref_holds(const struct nasmig_fetch_req *r, const void *page)
{
    uint64_t h[2];

    nasmig_hash_page(&nasmig_g.mig_key, page, h);
    return h[0] == r->hash[0] && h[1] == r->hash[1];
}

/*
 * A fill enters here before it writes: the mode it may write in (never
 * PAUSED: it waits that out, holding no page).  fills_writing, raised
 * before the mode is read, lets the switch to postcopy wait until no fill
 * still copies in after it paused them.
 */
static int fill_enter(void)
{
    int mode;

    for (;;) {
        __atomic_add_fetch(&nasmig_g.fills_writing, 1, __ATOMIC_SEQ_CST);
        mode = __atomic_load_n(&nasmig_g.fill_mode, __ATOMIC_SEQ_CST);
        if (mode != NASMIG_FILL_MODE_PAUSED) {
            return mode;
        }
        __atomic_sub_fetch(&nasmig_g.fills_writing, 1, __ATOMIC_SEQ_CST);
        while (__atomic_load_n(&nasmig_g.fill_mode, __ATOMIC_SEQ_CST) ==
               NASMIG_FILL_MODE_PAUSED) {
            usleep(100);
        }
    }
}

static void fill_leave(void)
{
    __atomic_sub_fetch(&nasmig_g.fills_writing, 1, __ATOMIC_SEQ_CST);
}

/* The word's page still waits for its reference: pending, or failed. */
static inline int fill_waits(uint32_t w)
{
    return nasmig_fill_state(w) == NASMIG_FILL_PENDING ||
           nasmig_fill_state(w) == NASMIG_FILL_FAILED;
}

/* Fills one verified page if its reference is still current. */
static uint8_t fill_page(const struct nasmig_fetch_req *r, const void *buf,
                         uint64_t track_hash)
{
    uint32_t *st = LOAD_ACQ(&nasmig_g.rb[r->ramblock].dest_state);
    uint32_t old;
    int mode = fill_enter(), ret;
    uint8_t res = NASMIG_SUPERSEDED;

    while (mode != NASMIG_FILL_MODE_CLOSED) {
        old = LOAD_ACQ(&st[r->page]);
        if (nasmig_fill_gen(old) != r->gen || !fill_waits(old)) {
            break;
        }
        if (!__atomic_compare_exchange_n(&st[r->page], &old,
                                         nasmig_fill_word(r->gen,
                                                          NASMIG_FILL_BUSY),
                                         0, __ATOMIC_ACQ_REL,
                                         __ATOMIC_ACQUIRE)) {
            continue;
        }
        if (mode == NASMIG_FILL_MODE_COPY) {
            memcpy(r->host, buf, NASMIG_PAGE_SIZE);
            ret = 0;
        } else {
            /* Postcopy: whole, waking a vCPU that waits for it. */
            ret = nasmig_call_place_page(r->ramblock,
                                         r->page << NASMIG_PAGE_SHIFT, buf);
        }
        if (ret < 0) {
            STORE_REL(&st[r->page], old);
            res = NASMIG_PLACE_FAILED;
            break;
        }
        dest_map_filled(r, track_hash);
        STORE_REL(&st[r->page], nasmig_fill_word(r->gen, NASMIG_FILL_IDLE));
        SUB(&nasmig_g.stats.pending_pages, 1);
        STAT_ADD(fetched_pages, 1);
        if (mode == NASMIG_FILL_MODE_PLACE) {
            STAT_ADD(filled_after_switchover, 1);
            nasmig_touch_resolved(r->ramblock, r->page, 1);
        }
        res = NASMIG_FILLED;
        break;
    }
    fill_leave();
    return res;
}

/*
 * Verifies a block against its reference and fills the page (a fill
 * thread's step, fill.c).  A page whose generation moved on (a later
 * record) is left alone.
 */
uint8_t nasmig_fill_one(const struct nasmig_fetch_req *r, const uint8_t *block)
{
    uint64_t h[2], track_hash = 0;

    if (!dest_maps(r)) {
        return ref_holds(r, block) ? fill_page(r, block, 0) : NASMIG_MISMATCH;
    }
    nasmig_hash_page_fill(&nasmig_g.mig_key, &nasmig_g.key, block, h,
                          &track_hash);
    return h[0] == r->hash[0] && h[1] == r->hash[1] ?
           fill_page(r, block, track_hash) : NASMIG_MISMATCH;
}

static int page_waits(const uint32_t *st, uint64_t page)
{
    return fill_waits(LOAD_ACQ(&st[page]));
}

/*
 * Discards every page still waiting for its reference (pending or failed),
 * in runs, so that with userfaultfd the guest's first touch of one faults
 * instead of reading what the page held before.
 */
static int discard_waiting_pages(void)
{
    int rbi, nrb = LOAD_ACQ(&nasmig_g.nrb), ret;
    uint64_t p, start;

    for (rbi = 0; rbi < nrb; rbi++) {
        const uint32_t *st = LOAD_ACQ(&nasmig_g.rb[rbi].dest_state);
        uint64_t npages = nasmig_g.rb[rbi].npages;

        for (p = 0; st && p < npages;) {
            while (p < npages && !page_waits(st, p)) {
                p++;
            }
            for (start = p; p < npages && page_waits(st, p); p++) {
                /* the run goes on */
            }
            if (p == start) {
                continue;
            }
            ret = nasmig_call_discard(rbi, start << NASMIG_PAGE_SHIFT,
                                      (p - start) << NASMIG_PAGE_SHIFT);
            if (ret < 0) {
                nasmig_set_err("could not discard the pages that wait for "
                               "their references");
                return ret;
            }
        }
    }
    return 0;
}

int nasmig_lib_dest_postcopy(int stage)
{
    if (!LOAD_ACQ(&nasmig_g.dest_fill_after)) {
        /* Every fill lands before the switch. */
        return stage == NASMIG_POSTCOPY_SWITCH ? 1 : 0;
    }
    switch (stage) {
    case NASMIG_POSTCOPY_SWITCH:
        /* No fill writes from now until userfaultfd can place pages. */
        __atomic_store_n(&nasmig_g.fill_mode, NASMIG_FILL_MODE_PAUSED,
                         __ATOMIC_SEQ_CST);
        while (__atomic_load_n(&nasmig_g.fills_writing, __ATOMIC_SEQ_CST)) {
            sched_yield();
        }
        return 0;
    case NASMIG_POSTCOPY_LISTEN:
        return discard_waiting_pages();
    case NASMIG_POSTCOPY_PLACE:
        __atomic_store_n(&nasmig_g.fill_mode, NASMIG_FILL_MODE_PLACE,
                         __ATOMIC_SEQ_CST);
        nasmig_wake_go();
        return 0;
    }
    return -EINVAL;
}

/* The source fills references after the switch (setup flag FILL_AFTER). */
void nasmig_set_dest_fill_after(int on)
{
    __atomic_store_n(&nasmig_g.dest_fill_after, on, __ATOMIC_SEQ_CST);
}

/* Whether fills place pages whole now (postcopy has started). */
int nasmig_fill_placing(void)
{
    return __atomic_load_n(&nasmig_g.fill_mode, __ATOMIC_SEQ_CST) ==
           NASMIG_FILL_MODE_PLACE;
}

/* Whether fills copy pages in (before the switch to postcopy). */
int nasmig_fill_copying(void)
{
    return __atomic_load_n(&nasmig_g.fill_mode, __ATOMIC_SEQ_CST) ==
           NASMIG_FILL_MODE_COPY;
}

/* The incoming migration is over: a fill still waiting writes nothing. */
void nasmig_close_fills(void)
{
    __atomic_store_n(&nasmig_g.fill_mode, NASMIG_FILL_MODE_CLOSED,
                     __ATOMIC_SEQ_CST);
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

/*
 * Which references are still current (this generation: a page that came
 * in full since has moved on) with their page in fill state state.
 */
void nasmig_refs_in_state(const struct nasmig_fetch_req *reqs, unsigned n,
                          uint32_t state, uint8_t *out)
{
    unsigned i;

    for (i = 0; i < n; i++) {
        const uint32_t *st = LOAD_ACQ(&nasmig_g.rb[reqs[i].ramblock].dest_state);
        uint32_t w = st ? LOAD_ACQ(&st[reqs[i].page]) : 0;

        out[i] = st && nasmig_fill_gen(w) == reqs[i].gen &&
                 nasmig_fill_state(w) == state;
    }
}

/*
 * Pages handed back to the source came in full: those that hold exactly
 * their block (verified against the reference's hash, as a fill is) enter
 * this side's map, so the next migration sends them as references again.
 * A page the loader has not written yet, or the guest changed, does not
 * match: out[i] = 1 for the mapped ones.
 */
void nasmig_map_if_block(const struct nasmig_fetch_req *reqs, unsigned n,
                         uint8_t *out)
{
    unsigned i;

    for (i = 0; i < n; i++) {
        out[i] = ref_holds(&reqs[i], reqs[i].host);
        if (out[i] && dest_maps(&reqs[i])) {
            uint64_t h[2];

            nasmig_hash_page(&nasmig_g.key, reqs[i].host, h);
            dest_map_filled(&reqs[i], h[0]);
        }
    }
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
        nasmig_wake_go();
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
    nasmig_wake_go();
    state = LOAD_ACQ(&nasmig_g.finish_state);
    if (state == NASMIG_FINISH_WORKING) {
        return qemu_wait();
    }
    return state == NASMIG_FINISH_OK ? 0 : -EIO;
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
    nasmig_g.refs_received = 0;
    nasmig_g.dest_fill_after = 0;
    __atomic_store_n(&nasmig_g.fill_mode, NASMIG_FILL_MODE_COPY,
                     __ATOMIC_SEQ_CST);
}

/* ------------------------------------------------------------------ */
/* Go's side of the handshakes, sequentially consistent as Go's sync/atomic
 * was. */

/* Opens (1) or closes (0) the destination for references. */
void nasmig_set_dest_on(int on)
{
    __atomic_store_n(&nasmig_g.dest_on, on, __ATOMIC_SEQ_CST);
}

/* The eventfd wake_go writes to (-1: none). */
void nasmig_set_wake_fd(int fd)
{
    nasmig_g.wake_fd = fd;
}

/* Go is about to sleep on the eventfd. */
void nasmig_set_go_sleeping(void)
{
    __atomic_store_n(&nasmig_g.go_sleeping, 1, __ATOMIC_SEQ_CST);
}

/* QEMU's latest flush request and the last one answered. */
void nasmig_flush_state(uint32_t *req, uint32_t *ack)
{
    *req = __atomic_load_n(&nasmig_g.flush_req, __ATOMIC_SEQ_CST);
    *ack = __atomic_load_n(&nasmig_g.flush_ack, __ATOMIC_SEQ_CST);
}

/* Answers flush request req: no fill is queued or in flight. */
void nasmig_ack_flush(uint32_t req)
{
    __atomic_store_n(&nasmig_g.flush_ack, req, __ATOMIC_SEQ_CST);
}

/* The NASMIG_FINISH_REQ_* bits QEMU set. */
int nasmig_finish_req(void)
{
    return __atomic_load_n(&nasmig_g.finish_req, __ATOMIC_SEQ_CST);
}

/* Clears NASMIG_FINISH_REQ_BARRIER once the barrier is handled. */
void nasmig_clear_barrier_req(void)
{
    __atomic_and_fetch(&nasmig_g.finish_req, ~NASMIG_FINISH_REQ_BARRIER,
                       __ATOMIC_SEQ_CST);
}

/* Publishes the outcome of dest_finish (enum nasmig_finish_state). */
void nasmig_set_finish_state(int state)
{
    __atomic_store_n(&nasmig_g.finish_state, state, __ATOMIC_SEQ_CST);
}

/* References received in this migration (NASMIG_RP_CAUGHT_UP's count). */
uint64_t nasmig_refs_received(void)
{
    return __atomic_load_n(&nasmig_g.refs_received, __ATOMIC_ACQUIRE);
}

/* When the first reference arrived (0: none yet). */
uint64_t nasmig_first_ref_ns(void)
{
    return __atomic_load_n(&nasmig_g.first_ref_ns, __ATOMIC_SEQ_CST);
}
