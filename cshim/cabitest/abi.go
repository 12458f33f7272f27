// Package cabitest exercises libnasmig's C ABI, the C of package cshim,
// from C, the way QEMU calls it: through the struct nasmig_lib table that
// nasmig_shim_fill fills, from several pthreads at once, with guest pages
// and disk blocks in mmap'd memory.  It lives beside what it tests; the C
// code is in a package of its own because _test.go files cannot use cgo,
// and cabitest_test.go drives it.  It also provides a host table for tests
// (host.go) and the C micro-benchmarks (bench.go).
//
// Not part of the product: only tests import it.
package cabitest

/*
#cgo CFLAGS: -O2 -Wall -Werror -I${SRCDIR}/..
#cgo LDFLAGS: -lpthread
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include "shim.h"

// The library's table filler (cshim/host.c), as QEMU's loader reaches it
// through nasmig_register.
void nasmig_shim_fill(struct nasmig_lib *lib);

static struct nasmig_lib cabi_lib;

static void cabi_fill(void)
{
    memset(&cabi_lib, 0, sizeof(cabi_lib));
    nasmig_shim_fill(&cabi_lib);
}

// ---- failure reporting: the first message wins ----
static pthread_mutex_t cabi_err_lock = PTHREAD_MUTEX_INITIALIZER;
static char cabi_err[512];

static void cabi_fail(const char *fmt, ...)
{
    va_list ap;

    pthread_mutex_lock(&cabi_err_lock);
    if (!cabi_err[0]) {
        va_start(ap, fmt);
        vsnprintf(cabi_err, sizeof(cabi_err), fmt, ap);
        va_end(ap);
    }
    pthread_mutex_unlock(&cabi_err_lock);
}

static int cabi_failed(void)
{
    int f;

    pthread_mutex_lock(&cabi_err_lock);
    f = cabi_err[0] != 0;
    pthread_mutex_unlock(&cabi_err_lock);
    return f;
}

static void cabi_take_err(char *out, size_t len)
{
    pthread_mutex_lock(&cabi_err_lock);
    snprintf(out, len, "%s", cabi_err);
    cabi_err[0] = 0;
    pthread_mutex_unlock(&cabi_err_lock);
}

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;

    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static void *cabi_mmap(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

    return p == MAP_FAILED ? NULL : p;
}

static uint64_t get_be64(const uint8_t *p)
{
    uint64_t v = 0;
    int i;

    for (i = 0; i < 8; i++) {
        v = (v << 8) | p[i];
    }
    return v;
}

static void sleep_us(long us)
{
    struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };

    nanosleep(&ts, NULL);
}

// Checks what nasmig_shim_fill must set (the C half of the table; the Go
// half is filled by the plugin's nasmig_register).
static int cabi_check_fill(char *err, size_t errlen)
{
    cabi_fill();
    if (cabi_lib.abi_version != NASMIG_ABI_VERSION) {
        snprintf(err, errlen, "abi_version %u", cabi_lib.abi_version);
        return -1;
    }
    if (cabi_lib.struct_size != sizeof(struct nasmig_lib)) {
        snprintf(err, errlen, "struct_size %u, want %zu", cabi_lib.struct_size,
                 sizeof(struct nasmig_lib));
        return -1;
    }
#define NEED(f) if (!cabi_lib.f) { snprintf(err, errlen, "%s not filled", #f); return -1; }
    NEED(ramblock_add) NEED(disk_add) NEED(disk_remove) NEED(block_read_done)
    NEED(block_read_begin) NEED(block_read_end) NEED(block_write_done)
    NEED(ref_query) NEED(ref_received) NEED(before_page_write)
    NEED(read_done) NEED(dest_finish) NEED(dest_pending) NEED(dest_barrier)
    NEED(stats) NEED(errmsg) NEED(auto_enable)
#undef NEED
    return 0;
}

// ---- several QEMU threads at once ----
struct cabi_thread {
    pthread_t tid;
    int id;
    unsigned npages;
    int rb, disk, rb_shared, disk_shared;
    uint8_t *ram, *dsk;
    unsigned gen; // the disk's write_gen
    uint64_t refs;
};

static volatile int cabi_stop;

static unsigned perm(unsigned i, unsigned n) { return (i * 5 + 3) % n; }

static void *cabi_io_thread(void *arg)
{
    struct cabi_thread *t = arg;
    struct nasmig_page_read pages[NASMIG_MAX_PAGES_PER_CALL];
    const void *hosts[NASMIG_MAX_PAGES_PER_CALL];
    char name[64], file[64];
    uint64_t seed = 0x9e3779b97f4a7c15ull * (t->id + 1), size;
    unsigned i, n, k;
    uint8_t wire[NASMIG_REF_WIRE_SIZE];
    struct timespec deadline;

    size = (uint64_t)t->npages * NASMIG_PAGE_SIZE;
    snprintf(name, sizeof(name), "cabi-rb-%d", t->id);
    t->rb = cabi_lib.ramblock_add(name, size);
    t->rb_shared = cabi_lib.ramblock_add("cabi-rb-shared", 1 << 20);
    snprintf(name, sizeof(name), "cabi-disk-%d", t->id);
    snprintf(file, sizeof(file), "/cabi/disk-%d.raw", t->id);
    t->disk = cabi_lib.disk_add(name, file, size);
    t->disk_shared = cabi_lib.disk_add("cabi-disk-shared", "/cabi/shared.raw", 1 << 20);
    if (t->rb < 0 || t->disk < 0 || t->rb_shared < 0 || t->disk_shared < 0) {
        cabi_fail("thread %d: registration: rb %d disk %d shared %d %d", t->id,
                  t->rb, t->disk, t->rb_shared, t->disk_shared);
        return NULL;
    }
    t->ram = cabi_mmap(size);
    t->dsk = cabi_mmap(size);
    if (!t->ram || !t->dsk) {
        cabi_fail("thread %d: mmap", t->id);
        return NULL;
    }
    for (i = 0; i < size / 8; i++) {
        ((uint64_t *)t->dsk)[i] = xorshift(&seed);
    }

    // Guest reads: page i <- block perm(i), in requests of 1..64 pages.
    for (i = 0; i < t->npages; i += n) {
        unsigned gen_before;

        n = 1 + xorshift(&seed) % NASMIG_MAX_PAGES_PER_CALL;
        if (n > t->npages - i) {
            n = t->npages - i;
        }
        for (k = 0; k < n; k++) {
            hosts[k] = t->ram + (uint64_t)(i + k) * NASMIG_PAGE_SIZE;
        }
        cabi_lib.block_read_begin(hosts, n);
        gen_before = __atomic_load_n(&t->gen, __ATOMIC_SEQ_CST);
        for (k = 0; k < n; k++) {
            uint64_t b = perm(i + k, t->npages);

            memcpy((void *)hosts[k], t->dsk + b * NASMIG_PAGE_SIZE, NASMIG_PAGE_SIZE);
            pages[k].ramblock = t->rb;
            pages[k].reserved = 0;
            pages[k].ram_offset = (uint64_t)(i + k) * NASMIG_PAGE_SIZE;
            pages[k].disk_offset = b * NASMIG_PAGE_SIZE;
            pages[k].host = hosts[k];
        }
        cabi_lib.block_read_done(t->disk, pages, n, &t->gen, gen_before);
        cabi_lib.block_read_end(hosts, n);
    }
    // Guest writes to the blocks of pages 0 mod 8; CPU writes to pages 1 mod 8.
    for (i = 0; i < t->npages; i += 8) {
        uint64_t b = perm(i, t->npages);

        t->dsk[b * NASMIG_PAGE_SIZE + 100] ^= 0xa5;
        __atomic_add_fetch(&t->gen, 1, __ATOMIC_SEQ_CST);
        cabi_lib.block_write_done(t->disk, b * NASMIG_PAGE_SIZE, NASMIG_PAGE_SIZE);
        if (i + 1 < t->npages) {
            t->ram[(uint64_t)(i + 1) * NASMIG_PAGE_SIZE + 17] ^= 0x5a;
        }
    }

    // The saver: wait for the map writer (a Go goroutine) to catch up.
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += 20;
    for (;;) {
        unsigned good = 0;
        struct timespec now;

        for (i = 0; i < t->npages; i++) {
            const uint8_t *host = t->ram + (uint64_t)i * NASMIG_PAGE_SIZE;
            uint64_t b = perm(i, t->npages), h[2];
            int r = cabi_lib.ref_query(t->rb, (uint64_t)i * NASMIG_PAGE_SIZE, host, wire);

            if (r != 0 && r != 1) {
                cabi_fail("thread %d page %u: ref_query returned %d", t->id, i, r);
                return NULL;
            }
            if (i % 8 == 1) {
                if (r) {
                    cabi_fail("thread %d page %u: referenced after a CPU write", t->id, i);
                    return NULL;
                }
                good++;
                continue;
            }
            if (!r) {
                good += i % 8 == 0;
                continue;
            }
            t->refs++;
            nasmig_hash_page(&nasmig_g.mig_key, host, h);
            if (wire[0] != NASMIG_REF_WIRE_VERSION || wire[1] != t->disk ||
                get_be64(wire + 2) != b * NASMIG_PAGE_SIZE ||
                get_be64(wire + 10) != h[0] || get_be64(wire + 18) != h[1]) {
                cabi_fail("thread %d page %u: bad record: ver %u disk %u (want %d) "
                          "offset %#llx (want %#llx)", t->id, i, wire[0], wire[1],
                          t->disk, (unsigned long long)get_be64(wire + 2),
                          (unsigned long long)(b * NASMIG_PAGE_SIZE));
                return NULL;
            }
            // Written blocks may still be offered until their invalidation
            // is applied; all others are final.
            good += i % 8 != 0;
        }
        if (good == t->npages) {
            break;
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec > deadline.tv_sec || cabi_failed()) {
            cabi_fail("thread %d: only %u of %u pages reached their final state "
                      "(is the map writer running?)", t->id, good, t->npages);
            return NULL;
        }
        sleep_us(1000);
    }
    munmap(t->ram, size);
    munmap(t->dsk, size);
    return NULL;
}

// Readers and writers of the last-error message, concurrently.
#define MSG_A_LEN 100
#define MSG_B_LEN 200

static void *cabi_err_setter(void *arg)
{
    char a[MSG_A_LEN + 1], b[MSG_B_LEN + 1];
    long id = (long)arg;

    memset(a, 'A', MSG_A_LEN);
    a[MSG_A_LEN] = 0;
    memset(b, 'B', MSG_B_LEN);
    b[MSG_B_LEN] = 0;
    while (!cabi_stop) {
        nasmig_set_err(id & 1 ? a : b);
        nasmig_set_err(id & 1 ? b : a);
    }
    return NULL;
}

static void *cabi_err_reader(void *arg)
{
    uint64_t seed = 12345 + (long)arg;
    char buf[300];
    struct nasmig_stats st, prev;

    memset(&prev, 0, sizeof(prev));
    while (!cabi_stop) {
        size_t len = xorshift(&seed) % sizeof(buf), k, msglen;
        int r;

        memset(buf, 0x7f, sizeof(buf));
        r = cabi_lib.errmsg(buf, len);
        if (len == 0) {
            if (r != -ERANGE || buf[0] != 0x7f) {
                cabi_fail("errmsg(buf, 0) = %d, wrote %#x", r, buf[0]);
            }
            continue;
        }
        k = strnlen(buf, len);
        if (k == len) {
            cabi_fail("errmsg(buf, %zu): not NUL-terminated", len);
            break;
        }
        if (k + 1 < sizeof(buf) && buf[k + 1] != 0x7f) {
            cabi_fail("errmsg(buf, %zu) wrote past its NUL", len);
            break;
        }
        if (k == 0) {
            continue;
        }
        msglen = buf[0] == 'A' ? MSG_A_LEN : MSG_B_LEN;
        if (k != (msglen < len - 1 ? msglen : len - 1) || (buf[0] != 'A' && buf[0] != 'B') ||
            strspn(buf, buf[0] == 'A' ? "A" : "B") != k) {
            cabi_fail("errmsg(buf, %zu) gave %zu bytes of a torn or wrong message", len, k);
            break;
        }
        if ((r == -ERANGE) != (msglen >= len) || (r != 0 && r != -ERANGE)) {
            cabi_fail("errmsg(buf, %zu) = %d for a message of %zu bytes", len, r, msglen);
            break;
        }
        cabi_lib.stats(&st);
        if (st.ref_pages < prev.ref_pages || st.ref_misses < prev.ref_misses ||
            st.ring_drops < prev.ring_drops || st.invalidations < prev.invalidations) {
            cabi_fail("stats went backwards");
            break;
        }
        prev = st;
    }
    return NULL;
}

static int cabi_concurrent(int nthreads, unsigned npages, char *err, size_t errlen)
{
    struct cabi_thread *t = calloc(nthreads, sizeof(*t));
    pthread_t aux[4];
    int i;

    if (!t) {
        snprintf(err, errlen, "calloc");
        return -1;
    }
    cabi_fill();
    cabi_stop = 0;
    nasmig_set_err("");
    for (i = 0; i < 2; i++) {
        pthread_create(&aux[i], NULL, cabi_err_setter, (void *)(long)i);
        pthread_create(&aux[2 + i], NULL, cabi_err_reader, (void *)(long)i);
    }
    for (i = 0; i < nthreads; i++) {
        t[i].id = i;
        t[i].npages = npages;
        pthread_create(&t[i].tid, NULL, cabi_io_thread, &t[i]);
    }
    for (i = 0; i < nthreads; i++) {
        pthread_join(t[i].tid, NULL);
    }
    cabi_stop = 1;
    for (i = 0; i < 4; i++) {
        pthread_join(aux[i], NULL);
    }
    for (i = 1; i < nthreads && !cabi_failed(); i++) {
        if (t[i].rb_shared != t[0].rb_shared || t[i].disk_shared != t[0].disk_shared) {
            cabi_fail("threads got different handles for one name: rb %d/%d disk %d/%d",
                      t[0].rb_shared, t[i].rb_shared, t[0].disk_shared, t[i].disk_shared);
        }
        if (t[i].rb == t[0].rb || t[i].disk == t[0].disk) {
            cabi_fail("threads 0 and %d got the same handle for different names", i);
        }
    }
    free(t);
    cabi_take_err(err, errlen);
    return err[0] ? -1 : 0;
}

// ---- errmsg, sequentially: truncation and NUL termination ----
static int cabi_errmsg_test(char *err, size_t errlen)
{
    static const char msg[] = "reference received without a nasmig setup section";
    const size_t L = sizeof(msg) - 1;
    uint8_t wire[NASMIG_REF_WIRE_SIZE] = { NASMIG_REF_WIRE_VERSION };
    char page[16], buf[1024];
    int r;

    cabi_fill();
    r = cabi_lib.ref_received(0, 0, page, wire);
    if (r != -EINVAL) {
        snprintf(err, errlen, "ref_received without setup = %d, want -EINVAL", r);
        return -1;
    }
    if ((r = cabi_lib.errmsg(buf, sizeof(buf))) != 0 || strcmp(buf, msg)) {
        snprintf(err, errlen, "errmsg(1024) = %d %s", r, buf);
        return -1;
    }
    memset(buf, 0x7f, sizeof(buf));
    if ((r = cabi_lib.errmsg(buf, L + 1)) != 0 || strcmp(buf, msg)) {
        snprintf(err, errlen, "errmsg(L+1) = %d %s", r, buf);
        return -1;
    }
    memset(buf, 0x7f, sizeof(buf));
    if ((r = cabi_lib.errmsg(buf, L)) != -ERANGE || buf[L - 1] != 0 ||
        strncmp(buf, msg, L - 1) || buf[L] != 0x7f) {
        snprintf(err, errlen, "errmsg(L) = %d, buf[L-1] = %#x", r, buf[L - 1]);
        return -1;
    }
    memset(buf, 0x7f, sizeof(buf));
    if ((r = cabi_lib.errmsg(buf, 1)) != -ERANGE || buf[0] != 0 || buf[1] != 0x7f) {
        snprintf(err, errlen, "errmsg(1) = %d, buf[0] = %#x", r, buf[0]);
        return -1;
    }
    memset(buf, 0x7f, sizeof(buf));
    if ((r = cabi_lib.errmsg(buf, 0)) != -ERANGE || buf[0] != 0x7f) {
        snprintf(err, errlen, "errmsg(buf, 0) = %d, buf[0] = %#x", r, buf[0]);
        return -1;
    }
    if ((r = cabi_lib.errmsg(NULL, 0)) != -ERANGE) {
        snprintf(err, errlen, "errmsg(NULL, 0) = %d", r);
        return -1;
    }
    return 0;
}

// ---- the tables' limits, in a fresh process ----
static int cabi_limits(char *err, size_t errlen)
{
    char name[64];
    int i, r;

    cabi_fill();
    for (i = 0; i < NASMIG_MAX_RAMBLOCKS; i++) {
        snprintf(name, sizeof(name), "limit-rb-%d", i);
        r = cabi_lib.ramblock_add(name, 1 << 20);
        if (r != i) {
            snprintf(err, errlen, "ramblock_add #%d = %d", i, r);
            return -1;
        }
    }
    if ((r = cabi_lib.ramblock_add("limit-rb-one-more", 1 << 20)) != -ENOSPC) {
        snprintf(err, errlen, "ramblock_add past the limit = %d, want -ENOSPC", r);
        return -1;
    }
    if ((r = cabi_lib.ramblock_add("limit-rb-7", 1 << 20)) != 7) {
        snprintf(err, errlen, "ramblock_add of a known name in a full table = %d", r);
        return -1;
    }
    for (i = 0; i < NASMIG_MAX_DISKS; i++) {
        snprintf(name, sizeof(name), "limit-disk-%d", i);
        r = cabi_lib.disk_add(name, name, 1 << 30);
        if (r != i) {
            snprintf(err, errlen, "disk_add #%d = %d", i, r);
            return -1;
        }
    }
    if ((r = cabi_lib.disk_add("limit-disk-one-more", "x", 1 << 20)) != -ENOSPC) {
        snprintf(err, errlen, "disk_add past the limit = %d, want -ENOSPC", r);
        return -1;
    }
    if ((r = cabi_lib.disk_add("limit-disk-9", "other", 1)) != 9) {
        snprintf(err, errlen, "disk_add of a known name in a full table = %d", r);
        return -1;
    }
    return 0;
}
*/
import "C"

import "errors"

func cerr(buf []C.char) error {
	return errors.New(C.GoString(&buf[0]))
}

// CheckFill verifies the entries nasmig_shim_fill writes into the table.
func CheckFill() error {
	buf := make([]C.char, 256)
	if C.cabi_check_fill(&buf[0], C.size_t(len(buf))) != 0 {
		return cerr(buf)
	}
	return nil
}

// Concurrent runs nthreads QEMU-like threads, each registering its own RAM
// block and disk (and one shared name of each), reading npages blocks into
// guest pages, writing some blocks and pages, then asking ref_query until
// every page reaches its final state, while other threads hammer errmsg and
// stats.  A map writer must be draining the ring meanwhile.
func Concurrent(nthreads, npages int) error {
	buf := make([]C.char, 512)
	if C.cabi_concurrent(C.int(nthreads), C.uint(npages), &buf[0], C.size_t(len(buf))) != 0 {
		return cerr(buf)
	}
	return nil
}

// ErrmsgTruncation checks errmsg's truncation and NUL-termination rules
// on a message the library sets itself.
func ErrmsgTruncation() error {
	buf := make([]C.char, 256)
	if C.cabi_errmsg_test(&buf[0], C.size_t(len(buf))) != 0 {
		return cerr(buf)
	}
	return nil
}

// Limits fills both registration tables; it must run in a process of its
// own (the tables are process-global).
func Limits() error {
	buf := make([]C.char, 256)
	if C.cabi_limits(&buf[0], C.size_t(len(buf))) != 0 {
		return cerr(buf)
	}
	return nil
}
