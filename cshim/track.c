/*
 * track.c - source: QEMU's completed disk reads and writes become tracking
 * records for Go's map writer; a write is never lost silently.
 */
#include "shim.h"

static uint64_t lost_invalidations;
static uint64_t lost_head; /* ring head after the latest lost write */

/*
 * publish_reads hashes the completed pages and puts them on the tracking
 * ring as records of kind: NASMIG_REC_MAP (a guest page holds the block) or
 * NASMIG_REC_CONTENT (the block's content, for the content index, wherever
 * the data went: Xen's qdisk reads through QEMU's own buffers; the data of
 * a completed write comes here too, as content only).  Hashing happens
 * now, before the guest is told the read (or write) finished.
 */
static void publish_reads(int disk, const struct nasmig_page_read *pages,
                          unsigned n, uint8_t kind, const unsigned *write_gen,
                          unsigned gen_before)
{
    uint64_t hashes[NASMIG_MAX_PAGES_PER_CALL][2];
    int ok[NASMIG_MAX_PAGES_PER_CALL];
    uint64_t pos;
    int raced;
    unsigned i;

    for (i = 0; i < n; i++) {
        nasmig_hash_page(&nasmig_g.key, pages[i].host, hashes[i]);
    }
    if (kind == NASMIG_REC_MAP) {
        nasmig_inflight_check(pages, n, ok);
    } else {
        for (i = 0; i < n; i++) {
            ok[i] = 1;
        }
    }
    if (nasmig_lib_fault(NASMIG_FAULT_RING_FULL) ||
        nasmig_ring_reserve(&nasmig_track_ring, n, &pos) < 0) {
        STAT_ADD(ring_drops, n); /* a missing entry costs a hit, nothing more */
        return;
    }
    /*
     * The slots are ours before we look at write_gen: a write whose
     * invalidation could precede our records has bumped it by now.
     */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    raced = __atomic_load_n(write_gen, __ATOMIC_SEQ_CST) != gen_before;
    for (i = 0; i < n; i++) {
        struct nasmig_rec *rec = nasmig_ring_elem(&nasmig_track_ring, pos + i);

        rec->type = raced || !ok[i] ? NASMIG_REC_VOID : kind;
        rec->disk = (uint8_t)disk;
        rec->reserved = 0;
        rec->ramblock = kind == NASMIG_REC_MAP ? pages[i].ramblock : 0;
        rec->page = kind == NASMIG_REC_MAP ?
                    pages[i].ram_offset >> NASMIG_PAGE_SHIFT : 0;
        rec->block = pages[i].disk_offset >> NASMIG_PAGE_SHIFT;
        rec->hash = hashes[i][0];
        nasmig_ring_publish(&nasmig_track_ring, pos + i);
    }
}

void nasmig_lib_block_read_done(int disk, const struct nasmig_page_read *all,
                                unsigned nall, const unsigned *write_gen,
                                unsigned gen_before)
{
    struct nasmig_page_read pages[NASMIG_MAX_PAGES_PER_CALL];
    unsigned i, n = 0;

    if (nall == 0 || nall > NASMIG_MAX_PAGES_PER_CALL || disk < 0 ||
        disk >= NASMIG_MAX_DISKS) {
        return;
    }
    if (LOAD_ACQ(&nasmig_g.content_mode)) {
        publish_reads(disk, all, nall, NASMIG_REC_CONTENT, write_gen,
                      gen_before);
        return;
    }
    /* The map holds guest RAM only. */
    for (i = 0; i < nall; i++) {
        if (all[i].ramblock != NASMIG_RAMBLOCK_NONE) {
            pages[n++] = all[i];
        }
    }
    if (n > 0) {
        publish_reads(disk, pages, n, NASMIG_REC_MAP, write_gen, gen_before);
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
        nasmig_ring_reserve(&nasmig_track_ring, 1, &pos) < 0) {
        /*
         * Never lose a write silently: Go then drops the whole map, once it
         * has applied every record reserved before now (a mapping among
         * them may be to a block this write changed).
         */
        uint64_t head = __atomic_load_n(&nasmig_track_ring.head,
                                        __ATOMIC_SEQ_CST);
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
    rec = nasmig_ring_elem(&nasmig_track_ring, pos);
    rec->type = NASMIG_REC_INVAL;
    rec->disk = (uint8_t)disk;
    rec->reserved = 0;
    rec->ramblock = 0;
    rec->page = last - first + 1;
    rec->block = first;
    rec->hash = 0;
    nasmig_ring_publish(&nasmig_track_ring, pos);
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
