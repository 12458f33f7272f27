/*
 * query.c - source: the saver's question for each page it sends (can it go
 * as a disk reference?), answered from the map on QEMU's migration thread.
 */
#include <stdlib.h>

#include "shim.h"

static inline void put_be64(uint8_t *p, uint64_t v)
{
    int i;

    for (i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
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

/* Takes the page's send-in-full bit; 1 if it was set. */
static inline int take_send_full(uint32_t ramblock, uint64_t page)
{
    uint64_t *bits = LOAD_ACQ(&nasmig_g.rb[ramblock].send_full);
    uint64_t bit = 1ull << (page & 63);

    if (!bits || !(LOAD_ACQ(&bits[page >> 6]) & bit)) {
        return 0;
    }
    if (!(__atomic_fetch_and(&bits[page >> 6], ~bit, __ATOMIC_ACQ_REL) & bit)) {
        return 0;
    }
    SUB(&nasmig_g.send_full_outstanding, 1);
    return 1;
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
    /* The destination's fetch is behind: this one goes in full, once. */
    if (take_send_full(ramblock, page)) {
        STAT_ADD(sent_full, 1);
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

/*
 * Source, NASMIG_RP_SEND_FULL: the pages still mapped to blocks [first,
 * first + count) of disk go once in full: their bits are set and they are
 * marked dirty, so the next pass sends them (ref_query takes the bit).
 * The mapping stays.  Returns the number of pages marked.  Called from the
 * return-path thread; the map is read as ref_query reads it.
 */
uint64_t nasmig_send_full(unsigned disk, uint64_t first, uint64_t count)
{
    const struct nasmig_disk_info *d;
    uint64_t b, n = 0;

    if (disk >= NASMIG_MAX_DISKS) {
        return 0;
    }
    d = &nasmig_g.disk[disk];
    for (b = first; b < first + count; b++) {
        uint64_t *chunk, rev, page, fwd, *bits, bit;
        uint32_t rb;

        if ((b >> NASMIG_REV_CHUNK_SHIFT) >= d->ndir) {
            break;
        }
        chunk = LOAD_ACQ(&d->dir[b >> NASMIG_REV_CHUNK_SHIFT]);
        if (!chunk) {
            continue;
        }
        rev = LOAD_ACQ(&chunk[b & (NASMIG_REV_CHUNK - 1)]);
        if (!(rev & NASMIG_REV_PAGE_MASK)) {
            continue;
        }
        page = (rev & NASMIG_REV_PAGE_MASK) - 1;
        rb = (rev >> NASMIG_REV_RB_SHIFT) & NASMIG_REV_RB_MASK;
        /* Forward and reverse must agree, as for a reference. */
        fwd = map_lookup(rb, page, &rev);
        if (!fwd || ((fwd >> NASMIG_FWD_DISK_SHIFT) & NASMIG_FWD_DISK_MASK) != disk ||
            (fwd & NASMIG_FWD_BLOCK_MASK) != b) {
            continue;
        }
        bits = LOAD_ACQ(&nasmig_g.rb[rb].send_full);
        if (!bits) {
            uint64_t *fresh = calloc((nasmig_g.rb[rb].npages + 63) / 64, 8);
            uint64_t *none = NULL;

            if (!fresh) {
                break;
            }
            if (!__atomic_compare_exchange_n(&nasmig_g.rb[rb].send_full, &none,
                                             fresh, 0, __ATOMIC_ACQ_REL,
                                             __ATOMIC_ACQUIRE)) {
                free(fresh);
            }
            bits = LOAD_ACQ(&nasmig_g.rb[rb].send_full);
        }
        bit = 1ull << (page & 63);
        if (!(__atomic_fetch_or(&bits[page >> 6], bit, __ATOMIC_ACQ_REL) & bit)) {
            ADD(&nasmig_g.send_full_outstanding, 1);
            nasmig_call_mark_dirty(rb, page << NASMIG_PAGE_SHIFT, NASMIG_PAGE_SIZE);
            n++;
        }
    }
    return n;
}

/* Source, after a migration: forgets what the destination asked for. */
void nasmig_send_full_reset(void)
{
    int i;

    for (i = 0; i < NASMIG_MAX_RAMBLOCKS; i++) {
        free(__atomic_exchange_n(&nasmig_g.rb[i].send_full, NULL,
                                 __ATOMIC_ACQ_REL));
    }
    __atomic_store_n(&nasmig_g.send_full_outstanding, 0, __ATOMIC_SEQ_CST);
}

/* Source: pages marked to go in full that have not gone yet. */
int64_t nasmig_send_full_outstanding(void)
{
    return LOAD_ACQ(&nasmig_g.send_full_outstanding);
}

/* Go marks a disk whose pages must go out in full in this migration (the
 * destination cannot read it); seq_cst as Go's sync/atomic was. */
void nasmig_set_disk_off(int disk, int off)
{
    __atomic_store_n(&nasmig_g.disk_off[disk], off, __ATOMIC_SEQ_CST);
}
