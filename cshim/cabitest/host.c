/* A host table (struct nasmig_host) for tests: mark_dirty reports to Go,
 * kick counts its calls, read_disk reads a disk image in C memory
 * (and completes at once, as a read served from a cache would), and
 * send_to_source keeps the messages for the test.  C memory, as QEMU's
 * table would be. */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "_cgo_export.h"
#include "nasmig.h"

static uint64_t kicks;

static void cabi_mark_dirty(uint32_t ramblock, uint64_t offset, uint64_t len)
{
    cabitestMarkDirty(ramblock, offset, len);
}

static void cabi_kick(void)
{
    __atomic_add_fetch(&kicks, 1, __ATOMIC_RELAXED);
}

/* The library's completion entry point (cshim/dest.c). */
void nasmig_lib_read_done(uint64_t cookie, int ret);

static const uint8_t *disk_img;
static uint64_t disk_len;

void cabi_set_disk(const uint8_t *img, uint64_t len)
{
    disk_img = img;
    disk_len = len;
}

/* A storage slower than the migration link: it serves one read at a time,
 * each taking this long, and completes it on a thread of its own (as
 * QEMU's reads complete in its main loop while the fetcher goes on). */
static uint64_t read_delay_ns;
static pthread_mutex_t storage_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t storage_free_at; /* CLOCK_MONOTONIC ns */

void cabi_set_read_delay(uint64_t ns)
{
    __atomic_store_n(&read_delay_ns, ns, __ATOMIC_RELAXED);
}

struct slow_read {
    uint64_t off, len, cookie, done_at;
    void *buf;
};

static void *slow_read_thread(void *opaque)
{
    struct slow_read *r = opaque;
    struct timespec ts = { r->done_at / 1000000000, r->done_at % 1000000000 };

    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) != 0) {
        /* interrupted */
    }
    memcpy(r->buf, disk_img + r->off, r->len);
    nasmig_lib_read_done(r->cookie, 0);
    free(r);
    return NULL;
}

static int cabi_read_disk(uint32_t disk, uint64_t off, void *buf, uint64_t len,
                          uint64_t cookie)
{
    uint64_t delay = __atomic_load_n(&read_delay_ns, __ATOMIC_RELAXED);
    int ret = 0;

    if (disk != 0 || !disk_img) {
        return -ENODEV;
    }
    if (off + len > disk_len) {
        ret = -EIO;
    } else if (delay) {
        struct slow_read *r = malloc(sizeof(*r));
        struct timespec now;
        uint64_t now_ns, done_at;
        pthread_t th;

        if (!r) {
            return -ENOMEM;
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
        now_ns = (uint64_t)now.tv_sec * 1000000000 + now.tv_nsec;
        pthread_mutex_lock(&storage_lock);
        done_at = (storage_free_at > now_ns ? storage_free_at : now_ns) + delay;
        storage_free_at = done_at;
        pthread_mutex_unlock(&storage_lock);
        *r = (struct slow_read){ off, len, cookie, done_at, buf };
        if (pthread_create(&th, NULL, slow_read_thread, r) != 0) {
            free(r);
            return -EAGAIN;
        }
        pthread_detach(th);
        return 0;
    } else {
        memcpy(buf, disk_img + off, len);
    }
    nasmig_lib_read_done(cookie, ret);
    return 0;
}

#define CABI_MSGS 64
static pthread_mutex_t msg_lock = PTHREAD_MUTEX_INITIALIZER;
static uint8_t msgs[CABI_MSGS][NASMIG_RP_MAX_BYTES];
static size_t msg_lens[CABI_MSGS];
static unsigned nmsgs;

static int cabi_send_to_source(const uint8_t *buf, size_t len)
{
    if (len < 1 || len > NASMIG_RP_MAX_BYTES) {
        return -EINVAL;
    }
    pthread_mutex_lock(&msg_lock);
    if (nmsgs < CABI_MSGS) {
        memcpy(msgs[nmsgs], buf, len);
        msg_lens[nmsgs++] = len;
    }
    pthread_mutex_unlock(&msg_lock);
    return 0;
}

/* Copies message i into out (NASMIG_RP_MAX_BYTES); returns its length, or
 * 0 when there is no message i. */
size_t cabi_msg(unsigned i, uint8_t *out)
{
    size_t n = 0;

    pthread_mutex_lock(&msg_lock);
    if (i < nmsgs) {
        n = msg_lens[i];
        memcpy(out, msgs[i], n);
    }
    pthread_mutex_unlock(&msg_lock);
    return n;
}

/*
 * Postcopy: one RAM block's memory, where place_page copies a page and
 * discard zeroes (as MADV_DONTNEED leaves anonymous memory), counting
 * both; request_page counts the pages asked for.
 */
static uint32_t ram_rb = UINT32_MAX;
static uint8_t *ram_base;
static uint64_t ram_len;
static uint64_t placed, discarded, requested, last_request;

void cabi_set_ram(uint32_t rb, uint8_t *base, uint64_t len)
{
    ram_rb = rb;
    ram_base = base;
    ram_len = len;
    __atomic_store_n(&placed, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&discarded, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&requested, 0, __ATOMIC_SEQ_CST);
}

static int cabi_place_page(uint32_t rb, uint64_t off, const void *buf)
{
    if (rb != ram_rb || off + NASMIG_PAGE_SIZE > ram_len) {
        return -EINVAL;
    }
    memcpy(ram_base + off, buf, NASMIG_PAGE_SIZE);
    __atomic_add_fetch(&placed, 1, __ATOMIC_SEQ_CST);
    return 0;
}

static int cabi_discard(uint32_t rb, uint64_t off, uint64_t len)
{
    if (rb != ram_rb || off + len > ram_len) {
        return -EINVAL;
    }
    memset(ram_base + off, 0, len);
    __atomic_add_fetch(&discarded, len / NASMIG_PAGE_SIZE, __ATOMIC_SEQ_CST);
    return 0;
}

static int cabi_request_page(uint32_t rb, uint64_t off)
{
    if (rb != ram_rb || off >= ram_len) {
        return -EINVAL;
    }
    __atomic_store_n(&last_request, off, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&requested, 1, __ATOMIC_SEQ_CST);
    return 0;
}

/* Pages placed, discarded and asked for since cabi_set_ram; the last asked. */
void cabi_postcopy_counts(uint64_t *p, uint64_t *d, uint64_t *r, uint64_t *last)
{
    *p = __atomic_load_n(&placed, __ATOMIC_SEQ_CST);
    *d = __atomic_load_n(&discarded, __ATOMIC_SEQ_CST);
    *r = __atomic_load_n(&requested, __ATOMIC_SEQ_CST);
    *last = __atomic_load_n(&last_request, __ATOMIC_SEQ_CST);
}

struct nasmig_host cabi_host = {
    .abi_version = NASMIG_ABI_VERSION,
    .struct_size = sizeof(struct nasmig_host),
    .mark_dirty = cabi_mark_dirty,
    .kick = cabi_kick,
    .read_disk = cabi_read_disk,
    .send_to_source = cabi_send_to_source,
    .place_page = cabi_place_page,
    .request_page = cabi_request_page,
    .discard = cabi_discard,
};

uint64_t cabi_kicks(void) { return __atomic_load_n(&kicks, __ATOMIC_RELAXED); }
