/* A host table (struct nasmig_host) for tests: mark_dirty reports to Go,
 * kick counts its calls, read_disk reads a disk image in C memory
 * (and completes at once, as a read served from a cache would), and
 * send_to_source keeps the messages for the test.  C memory, as QEMU's
 * table would be. */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
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

static int cabi_read_disk(uint32_t disk, uint64_t off, void *buf, uint64_t len,
                          uint64_t cookie)
{
    int ret = 0;

    if (disk != 0 || !disk_img) {
        return -ENODEV;
    }
    if (off + len > disk_len) {
        ret = -EIO;
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

struct nasmig_host cabi_host = {
    .abi_version = NASMIG_ABI_VERSION,
    .struct_size = sizeof(struct nasmig_host),
    .mark_dirty = cabi_mark_dirty,
    .kick = cabi_kick,
    .read_disk = cabi_read_disk,
    .send_to_source = cabi_send_to_source,
};

uint64_t cabi_kicks(void) { return __atomic_load_n(&kicks, __ATOMIC_RELAXED); }
