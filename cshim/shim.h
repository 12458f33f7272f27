/*
 * shim.h - the library-internal contract between nasmig's C hot paths (the
 * .c files of cshim/, one concern each) and its Go half (package
 * nasmig/cshim and plugin/).  Not part of the QEMU ABI (that is nasmig.h).
 *
 * Shared memory: every array below lives outside the Go heap (mmap).  C only
 * reads the page-to-block map; Go's single drainer goroutine is its only
 * writer.  Words are published with store-release and read with
 * load-acquire.
 */
#ifndef NASMIG_SHIM_H
#define NASMIG_SHIM_H

#include <pthread.h>
#include <stdint.h>
#include <stddef.h>
#include "nasmig.h"

/* ---- keyed page hash (NH universal hash, two passes, 128-bit out) ---- */
#define NASMIG_NH_WORDS (NASMIG_PAGE_SIZE / 4)
#define NASMIG_NH_SHIFT 4 /* Toeplitz offset of the second pass, in words */
struct nasmig_hash_key {
    uint32_t nh[NASMIG_NH_WORDS + NASMIG_NH_SHIFT];
    uint64_t fin[2];
};
void nasmig_hash_page(const struct nasmig_hash_key *key, const void *page,
                      uint64_t out[2]);
void nasmig_hash_page_fill(const struct nasmig_hash_key *mig,
                           const struct nasmig_hash_key *track,
                           const void *page, uint64_t mig_out[2],
                           uint64_t *track_out);

/* ---- page-to-block map words ----
 * forward[page] (per RAM block):
 *   63 valid | 62..56 disk | 55..40 hash16 | 39..0 block
 * reverse[disk][block] (chunked):
 *   63..40 hash24 | 39..34 ramblock | 33..0 page+1 (0 = empty)
 * hash16/hash24 are bits of the page hash's first word: a 40-bit filter.
 * The reference itself carries the full 128-bit hash, which the
 * destination verifies, so a filter collision costs a fallback, never a
 * wrong page.
 */
#define NASMIG_FWD_VALID (1ull << 63)
#define NASMIG_FWD_DISK_SHIFT 56
#define NASMIG_FWD_DISK_MASK 0x7full
#define NASMIG_FWD_H16_SHIFT 40
#define NASMIG_FWD_BLOCK_MASK ((1ull << 40) - 1)
#define NASMIG_REV_H24_SHIFT 40
#define NASMIG_REV_RB_SHIFT 34
#define NASMIG_REV_RB_MASK 0x3full
#define NASMIG_REV_PAGE_MASK ((1ull << 34) - 1)
#define NASMIG_REV_CHUNK_SHIFT 16 /* 64 Ki blocks (256 MiB of disk) a chunk */
#define NASMIG_REV_CHUNK (1u << NASMIG_REV_CHUNK_SHIFT)

static inline uint64_t nasmig_h16(uint64_t h) { return h >> 48; }
static inline uint64_t nasmig_h24(uint64_t h) { return (h >> 24) & 0xffffff; }

struct nasmig_rb_info {
    char idstr[NASMIG_MAX_IDSTR];
    uint64_t npages;
    uint64_t *forward;     /* npages words */
    uint32_t *dest_state;  /* destination fill state per page, lazily */
    /* source: pages the destination asked for in full (NASMIG_RP_SEND_FULL)
     * in this migration, one bit a page, lazily */
    uint64_t *send_full;
};

struct nasmig_disk_info {
    char node_name[NASMIG_MAX_NODE_NAME];
    char filename[NASMIG_MAX_FILENAME];
    uint64_t size;
    uint64_t ndir;
    uint64_t **dir;        /* ndir chunk pointers, each NASMIG_REV_CHUNK words */
    int excluded;          /* never referenced: configuration, or removed */
    int removed;           /* the node is gone; the slot is never reused */
};

/* ---- tracking ring: fixed-size records, many producers, one consumer ---- */
enum nasmig_rec_type {
    NASMIG_REC_VOID = 0,  /* reserved slot of a read that raced with a write */
    NASMIG_REC_MAP = 1,   /* page now holds block */
    NASMIG_REC_INVAL = 2, /* blocks [block, block+count) were written */
    NASMIG_REC_CONTENT = 3, /* content index: block holds content `hash` */
};
struct nasmig_rec {
    uint8_t type;
    uint8_t disk;
    uint16_t reserved;
    uint32_t ramblock;
    uint64_t page;  /* MAP: page index; INVAL: block count */
    uint64_t block;
    uint64_t hash;  /* first word of the page hash */
};

/* ---- destination ---- */
/* dest_state word: 31..2 generation | 1..0 state */
#define NASMIG_FILL_STATE_BITS 2
#define NASMIG_FILL_STATE_MASK ((1u << NASMIG_FILL_STATE_BITS) - 1)
static inline uint32_t nasmig_fill_word(uint32_t gen, uint32_t state)
{
    return (gen << NASMIG_FILL_STATE_BITS) | state;
}
static inline uint32_t nasmig_fill_gen(uint32_t w)
{
    return w >> NASMIG_FILL_STATE_BITS;
}
static inline uint32_t nasmig_fill_state(uint32_t w)
{
    return w & NASMIG_FILL_STATE_MASK;
}

/* finish_req bits (QEMU asks, the Go fetcher answers) */
#define NASMIG_FINISH_REQ_BARRIER 1u /* settle failed pages now, kick QEMU */
#define NASMIG_FINISH_REQ_FINISH 2u  /* the stream is complete: finish */
/* finish_state values (the Go fetcher's answer to FINISH) */
enum nasmig_finish_state {
    NASMIG_FINISH_WORKING = 0,
    NASMIG_FINISH_OK = 1,
    NASMIG_FINISH_FAILED = 2,
};

/* Ring size of the destination's requests. */
#define NASMIG_REQ_RING_SLOTS (1u << 16)
/* Width of the forward word's hash filter (nasmig_h16). */
#define NASMIG_FWD_H16_MASK 0xffffull
enum nasmig_fill_state {
    NASMIG_FILL_IDLE = 0,
    NASMIG_FILL_PENDING = 1, /* reference queued, fill not done */
    NASMIG_FILL_BUSY = 2,    /* a worker is copying the page in */
    NASMIG_FILL_FAILED = 3,  /* failed verification: re-read pending */
};
struct nasmig_fetch_req {
    uint32_t ramblock;
    uint32_t gen;
    uint64_t page;
    uint64_t block;
    uint32_t disk; /* destination disk handle */
    uint32_t src_disk;
    uint64_t hash[2];
    void *host;
};
/* A fault on a page waiting for its reference (touch.c), for Go. */
struct nasmig_touch_req {
    uint32_t ramblock;
    uint32_t reserved;
    uint64_t page;
};
#define NASMIG_TOUCH_RING_SLOTS (1u << 10)

/* Result of a fill, per page (nasmig_fill_one). */
enum nasmig_fill_result {
    NASMIG_FILLED = 0,
    NASMIG_SUPERSEDED = 1, /* a later record replaced the reference */
    NASMIG_MISMATCH = 2,
    NASMIG_PLACE_FAILED = 3, /* verified, but userfaultfd would not place it */
};
/*
 * How fills write pages (fill_mode): copied in before the switch to
 * postcopy, paused while it discards and sets up userfaultfd, placed whole
 * after it; closed once the incoming migration is over.
 */
enum nasmig_fill_mode {
    NASMIG_FILL_MODE_COPY = 0,
    NASMIG_FILL_MODE_PAUSED = 1,
    NASMIG_FILL_MODE_PLACE = 2,
    NASMIG_FILL_MODE_CLOSED = 3,
};

/* Global state shared by C and Go. */
struct nasmig_shared {
    /* Tracking key: hashes the map's filters; never leaves the process. */
    struct nasmig_hash_key key;
    /*
     * Migration key: hashes the references of one migration (source: fresh
     * per migration; destination: the source's, from the setup section).
     */
    struct nasmig_hash_key mig_key;
    int auto_enable;
    int fill_after_default;
    int enabled;
    int nrb;
    int ndisk;
    struct nasmig_rb_info rb[NASMIG_MAX_RAMBLOCKS];
    struct nasmig_disk_info disk[NASMIG_MAX_DISKS];
    char exclude[2048]; /* NUL-separated names, double NUL at the end */
    int wake_fd;        /* eventfd the Go side sleeps on (destination) */
    int go_sleeping;
    /* destination */
    int dest_on;
    int dest_disk_map[NASMIG_MAX_DISKS]; /* source index -> handle, -1 none */
    /* source index -> this side's tracking handle, -1 none */
    int dest_track_map[NASMIG_MAX_DISKS];
    /* source: the destination cannot read these disks (this migration) */
    int disk_off[NASMIG_MAX_DISKS];
    /* source: pages marked to go in full (send_full bits) not sent yet */
    int64_t send_full_outstanding;
    int finish_req;     /* NASMIG_FINISH_REQ_* bits */
    int finish_state;   /* enum nasmig_finish_state */
    int barrier_done;
    /*
     * Flush handshake (multifd sync points): QEMU bumps flush_req and waits
     * until the fetcher, with no fill queued or in flight, copies it into
     * flush_ack.  Failed pages do not hold a flush: a later page from the
     * stream may still replace them.
     */
    uint32_t flush_req;
    uint32_t flush_ack;
    uint32_t flush_waiting_for; /* QEMU's side: the request it waits on */
    int flush_waiting;
    uint64_t first_ref_ns;
    /* references received (published for Go) in this migration */
    uint64_t refs_received;
    /* the source fills references after the switch (FILL_AFTER) */
    int dest_fill_after;
    /* completed reads feed the content index (REC_CONTENT), not the map */
    int content_mode;
    int fill_mode;     /* enum nasmig_fill_mode */
    int fills_writing; /* fills between choosing a mode and writing */
    struct nasmig_stats stats;
    char err[1024];
};
extern struct nasmig_shared nasmig_g;

/* ---- between the library's own C files ---- */
#define LOAD_ACQ(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define STORE_REL(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define ADD(p, v) __atomic_add_fetch((p), (v), __ATOMIC_RELAXED)
#define SUB(p, v) __atomic_sub_fetch((p), (v), __ATOMIC_RELAXED)
#define STAT_ADD(field, v) ADD(&nasmig_g.stats.field, (v))

/* Guards the registration tables and the destination's lazy allocations. */
extern pthread_mutex_t nasmig_table_lock;

/* Bounded ring after Vyukov (ring.c): a sequence word per slot, producers
 * reserve with a CAS on head and never wait (full means "drop" or
 * "-EAGAIN"), one consumer. */
struct nasmig_ring {
    uint64_t mask;
    size_t esize; /* element size, multiple of 8 */
    uint8_t *slots;
    uint64_t head __attribute__((aligned(64)));
    uint64_t tail __attribute__((aligned(64)));
};

/* Tracking records (struct nasmig_rec); fetch requests. */
extern struct nasmig_ring nasmig_track_ring, nasmig_req_ring;
/* Faults on pages waiting for their references (struct nasmig_touch_req). */
extern struct nasmig_ring nasmig_touch_ring;

static inline uint64_t *nasmig_ring_seq(struct nasmig_ring *r, uint64_t pos)
{
    return (uint64_t *)(r->slots + (pos & r->mask) * (r->esize + 8));
}

static inline void *nasmig_ring_elem(struct nasmig_ring *r, uint64_t pos)
{
    return (uint8_t *)nasmig_ring_seq(r, pos) + 8;
}

static inline void nasmig_ring_publish(struct nasmig_ring *r, uint64_t pos)
{
    STORE_REL(nasmig_ring_seq(r, pos), pos + 1);
}

int nasmig_ring_init(struct nasmig_ring *r, unsigned slots, size_t esize);
int nasmig_ring_reserve(struct nasmig_ring *r, unsigned n, uint64_t *pos_out);
void nasmig_inflight_check(const struct nasmig_page_read *pages, unsigned n,
                           int *ok);

/* Go-facing helpers (plain C; Go calls them once per batch). */
int nasmig_shim_init(unsigned ring_slots);
void nasmig_shim_fill(struct nasmig_lib *lib);
unsigned nasmig_ring_pop(struct nasmig_rec *out, unsigned max);
unsigned nasmig_ring_push_test(const struct nasmig_rec *rec, unsigned n);
uint64_t nasmig_lost_invalidations(void);
uint64_t nasmig_lost_head(void);
uint64_t nasmig_ring_tail(void);
unsigned nasmig_req_pop(struct nasmig_fetch_req *out, unsigned max);
unsigned nasmig_touch_pop(struct nasmig_touch_req *out, unsigned max);
/* touch.c */
int nasmig_lib_dest_page_fault(uint32_t ramblock, uint64_t ram_offset);
void nasmig_touch_resolved(uint32_t ramblock, uint64_t page, int from_storage);
void nasmig_touch_stats(struct nasmig_stats *out);
void nasmig_touch_reset(void);
uint64_t nasmig_touch_bucket_top_of(uint64_t us);
/* Wakes Go's fetcher if it sleeps (dest.c). */
void nasmig_wake_go(void);
int nasmig_fill_copying(void);
uint8_t nasmig_fill_one(const struct nasmig_fetch_req *r, const uint8_t *block);
/* fill.c: a finished read's blocks, verified and filled on fill threads. */
struct nasmig_fill_batch {
    struct nasmig_fill_batch *next; /* fill.c's lists */
    uint8_t *buf;                   /* max_blocks pages, page-aligned */
    uint64_t first;                 /* first block of the read */
    uint64_t cookie;                /* the owner's name for the batch */
    int64_t ret;                    /* the read's result (< 0: -errno) */
    uint32_t nblocks, max_blocks;
    uint32_t n, max_reqs;           /* references, and room for them */
    struct nasmig_fetch_req *reqs;
    uint8_t *results;               /* enum nasmig_fill_result per reference */
};
struct nasmig_fill_batch *nasmig_fill_batch_new(uint32_t max_blocks);
int nasmig_fill_batch_reserve(struct nasmig_fill_batch *b, uint32_t n);
void nasmig_fill_batch_free(struct nasmig_fill_batch *b);
struct nasmig_fill_batch *nasmig_fill_pop(void);
int nasmig_fill_ready(void);
int64_t nasmig_fill_batches_live(void);
int nasmig_fail_page(const struct nasmig_fetch_req *req);
int nasmig_map_offers(uint32_t ramblock, uint64_t ram_offset);
void nasmig_dest_set_disk(int src_index, int handle, uint64_t size,
                          int track);
void nasmig_stats_reset(void);
void nasmig_abandon_page(const struct nasmig_fetch_req *req);
void nasmig_dest_reset(void);
void nasmig_set_err(const char *msg);
uint64_t nasmig_now_ns(void);
void nasmig_stat_add(size_t field_offset, uint64_t v);

/*
 * Go's accessors to nasmig_g: Go writes none of C's globals itself, and
 * reads through these what C may write meanwhile.  Where Go used
 * sync/atomic they are __ATOMIC_SEQ_CST, as Go's atomics are; C's own
 * accesses keep their orders.
 */
void nasmig_set_key(const void *expanded);
void nasmig_set_mig_key(const void *expanded);
void nasmig_set_flags(int enabled, int auto_enable, int fill_after_default);
void nasmig_set_content_mode(int on);
int nasmig_set_exclude(const char *list, size_t len);
int nasmig_ramblock_count(void);
uint64_t *nasmig_forward(int rb);
int nasmig_disk_count(void);
int nasmig_disk_removed(int disk);
uint64_t *nasmig_rev_chunk(int disk, uint64_t idx);
void nasmig_set_rev_chunk(int disk, uint64_t idx, uint64_t *chunk);
void nasmig_set_fetch_time(uint64_t ns);
void nasmig_set_disk_off(int disk, int off);
void nasmig_set_dest_on(int on);
void nasmig_set_wake_fd(int fd);
void nasmig_set_go_sleeping(void);
void nasmig_flush_state(uint32_t *req, uint32_t *ack);
void nasmig_ack_flush(uint32_t req);
int nasmig_finish_req(void);
void nasmig_clear_barrier_req(void);
void nasmig_set_finish_state(int state);
uint64_t nasmig_first_ref_ns(void);
uint64_t nasmig_refs_received(void);

/* The entry points QEMU gets (also called directly by tests). */
int nasmig_lib_ramblock_add(const char *idstr, uint64_t max_length);
void nasmig_lib_disk_remove(int disk);
void nasmig_disk_exclude(int disk);
int nasmig_lib_disk_add(const char *node_name, const char *filename,
                        uint64_t size);
void nasmig_lib_block_read_done(int disk, const struct nasmig_page_read *pages,
                                unsigned n, const unsigned *write_gen,
                                unsigned gen_before);
void nasmig_lib_block_write_done(int disk, uint64_t offset, uint64_t len);
void nasmig_lib_block_read_begin(const void *const *hosts, unsigned n);
void nasmig_lib_block_read_end(const void *const *hosts, unsigned n);
int nasmig_lib_ref_query(uint32_t ramblock, uint64_t ram_offset,
                         const void *host, uint8_t *wire);
int nasmig_lib_ref_received(uint32_t ramblock, uint64_t ram_offset, void *host,
                            const uint8_t *wire);
int nasmig_lib_before_page_write(uint32_t ramblock, uint64_t ram_offset,
                                 int wait_fill);
void nasmig_lib_read_done(uint64_t cookie, int ret);
int nasmig_lib_dest_finish(void);
uint64_t nasmig_lib_dest_pending(void);
int nasmig_lib_dest_barrier(void);
void nasmig_lib_stats(struct nasmig_stats *out);
int nasmig_lib_errmsg(char *buf, size_t len);
int nasmig_lib_auto_enable(void);
int nasmig_lib_fill_after_default(void);
int nasmig_lib_dest_postcopy(int stage);
void nasmig_set_dest_fill_after(int on);
int nasmig_fill_placing(void);
void nasmig_close_fills(void);
int nasmig_call_request_page(uint32_t rb, uint64_t off);

/* Fault injection for tests (fault.c; the list is NASMIG_FAULTS in nasmig.h). */
int nasmig_lib_fault(enum nasmig_fault fault);
int nasmig_fault_arm(const char *spec, char *err, size_t errlen);
const char *nasmig_fault_name(int fault);
uint64_t nasmig_fault_fired(int fault);
int nasmig_faults_armed(void);

/* Kicks QEMU if it waits on an -EAGAIN of ours (Go, after progress). */
void nasmig_kick_waiter(void);

/* Calls through the host table (so Go can call function pointers). */
void nasmig_call_mark_dirty(uint32_t rb, uint64_t off, uint64_t len);
uint64_t nasmig_send_full(unsigned disk, uint64_t first, uint64_t count);
/* out[i]: reference i is still current and its page in fill state state. */
void nasmig_refs_in_state(const struct nasmig_fetch_req *reqs, unsigned n,
                          uint32_t state, uint8_t *out);
void nasmig_map_if_block(const struct nasmig_fetch_req *reqs, unsigned n,
                         uint8_t *out);
void nasmig_send_full_reset(void);
int64_t nasmig_send_full_outstanding(void);
void nasmig_call_mark_dirty_pages(const uint32_t *rbs, const uint64_t *pages,
                                  unsigned n);
int nasmig_call_read_disk(uint32_t disk, uint64_t off, void *buf, uint64_t len,
                          uint64_t cookie);
int nasmig_call_disk_attach(const char *filename, uint64_t size, int *track,
                            char *err, size_t errlen);
void nasmig_call_kick(void);
int nasmig_call_send_to_source(const uint8_t *buf, size_t len);
int nasmig_call_place_page(uint32_t rb, uint64_t off, const void *buf);
int nasmig_call_discard(uint32_t rb, uint64_t off, uint64_t len);
int nasmig_fetch_work_ready(void);
void nasmig_set_host(const struct nasmig_host *host);

#endif
