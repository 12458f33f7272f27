package cabitest

/*
#cgo CFLAGS: -O2 -Wall -Werror -I${SRCDIR}/..
#include <stdint.h>
#include <string.h>
#include <time.h>
#include "shim.h"

void nasmig_shim_fill(struct nasmig_lib *lib);

static struct nasmig_lib bench_lib;

static inline uint64_t bench_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

// Reports ncalls reads of per_call pages each: pages first_page.. of rb
// from the blocks with the same numbers, content cycling over the 64 pages
// at hostbuf.  out[c]: ns per page of block_read_done alone; out_full[c]:
// ns per page of begin + done + end (what QEMU's read path pays).
static void cabi_bench_read_done(int disk, uint32_t rb, uint64_t first_page,
                                 unsigned ncalls, unsigned per_call,
                                 const uint8_t *hostbuf, double *out,
                                 double *out_full)
{
    struct nasmig_page_read pages[NASMIG_MAX_PAGES_PER_CALL];
    const void *hosts[NASMIG_MAX_PAGES_PER_CALL];
    unsigned gen = 0, c, j;

    memset(&bench_lib, 0, sizeof(bench_lib));
    nasmig_shim_fill(&bench_lib);
    for (c = 0; c < ncalls; c++) {
        uint64_t t0, t1, t2, t3;

        for (j = 0; j < per_call; j++) {
            uint64_t p = first_page + (uint64_t)c * per_call + j;

            hosts[j] = hostbuf + (p % 64) * NASMIG_PAGE_SIZE;
            pages[j].ramblock = rb;
            pages[j].reserved = 0;
            pages[j].ram_offset = p << NASMIG_PAGE_SHIFT;
            pages[j].disk_offset = p << NASMIG_PAGE_SHIFT;
            pages[j].host = hosts[j];
        }
        t0 = bench_now();
        bench_lib.block_read_begin(hosts, per_call);
        t1 = bench_now();
        bench_lib.block_read_done(disk, pages, per_call, &gen, 0);
        t2 = bench_now();
        bench_lib.block_read_end(hosts, per_call);
        t3 = bench_now();
        out[c] = (double)(t2 - t1) / per_call;
        out_full[c] = (double)((t1 - t0) + (t2 - t1) + (t3 - t2)) / per_call;
    }
}

// Times per_sample map lookups (nasmig_map_offers, the saver's question
// without the hash) per sample over pages [0, npages) with the given stride.
static uint64_t cabi_bench_lookup(uint32_t rb, uint64_t npages, uint64_t stride,
                                  unsigned nsamples, unsigned per_sample,
                                  double *out)
{
    uint64_t p = 0, hits = 0;
    unsigned s, i;

    for (s = 0; s < nsamples; s++) {
        uint64_t t0 = bench_now();

        for (i = 0; i < per_sample; i++) {
            hits += nasmig_map_offers(rb, p << NASMIG_PAGE_SHIFT);
            p += stride;
            if (p >= npages) {
                p -= npages;
            }
        }
        out[s] = (double)(bench_now() - t0) / per_sample;
    }
    return hits;
}

// Times the full saver question (lookup, hash of the page, record) on
// mapped pages whose content is unchanged: every call is a hit.
static uint64_t cabi_bench_ref_query(uint32_t rb, uint64_t npages,
                                     const uint8_t *hostbuf, unsigned nsamples,
                                     unsigned per_sample, double *out)
{
    uint8_t wire[NASMIG_REF_WIRE_SIZE];
    uint64_t p = 0, hits = 0;
    unsigned s, i;

    memset(&bench_lib, 0, sizeof(bench_lib));
    nasmig_shim_fill(&bench_lib);
    for (s = 0; s < nsamples; s++) {
        uint64_t t0 = bench_now();

        for (i = 0; i < per_sample; i++) {
            hits += bench_lib.ref_query(rb, p << NASMIG_PAGE_SHIFT,
                                        hostbuf + (p % 64) * NASMIG_PAGE_SIZE,
                                        wire);
            if (++p == npages) {
                p = 0;
            }
        }
        out[s] = (double)(bench_now() - t0) / per_sample;
    }
    return hits;
}
*/
import "C"

import "unsafe"

// BenchReadDone reports ncalls reads of perCall pages (pages and blocks
// numbered from firstPage, content from the 64 pages at hostbuf, C memory)
// through the table and returns, per call, ns per page of block_read_done
// alone and of begin+done+end.  The caller drains the ring between rounds.
func BenchReadDone(disk int, rb uint32, firstPage uint64, ncalls, perCall int, hostbuf unsafe.Pointer) (done, full []float64) {
	done = make([]float64, ncalls)
	full = make([]float64, ncalls)
	C.cabi_bench_read_done(C.int(disk), C.uint32_t(rb), C.uint64_t(firstPage), C.uint(ncalls), C.uint(perCall),
		(*C.uint8_t)(hostbuf), (*C.double)(&done[0]), (*C.double)(&full[0]))
	return done, full
}

// BenchLookup returns ns per lookup for each of nsamples samples of
// perSample lookups, and how many lookups found a mapping.
func BenchLookup(rb uint32, npages, stride uint64, nsamples, perSample int) ([]float64, uint64) {
	out := make([]float64, nsamples)
	hits := C.cabi_bench_lookup(C.uint32_t(rb), C.uint64_t(npages), C.uint64_t(stride), C.uint(nsamples), C.uint(perSample),
		(*C.double)(&out[0]))
	return out, uint64(hits)
}

// BenchRefQuery returns ns per ref_query (a hit: lookup + hash + record).
func BenchRefQuery(rb uint32, npages uint64, hostbuf unsafe.Pointer, nsamples, perSample int) ([]float64, uint64) {
	out := make([]float64, nsamples)
	hits := C.cabi_bench_ref_query(C.uint32_t(rb), C.uint64_t(npages), (*C.uint8_t)(hostbuf), C.uint(nsamples),
		C.uint(perSample), (*C.double)(&out[0]))
	return out, uint64(hits)
}
