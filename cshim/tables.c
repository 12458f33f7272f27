/*
 * tables.c - the state C and Go share: the RAM blocks and disks QEMU
 * registers, the error message and counters QEMU reads, and the accessors
 * through which Go reads and writes what C reads on QEMU's threads.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "shim.h"

struct nasmig_shared nasmig_g;
pthread_mutex_t nasmig_table_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t err_lock = PTHREAD_MUTEX_INITIALIZER;

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
    nasmig_touch_reset();
}

void nasmig_lib_stats(struct nasmig_stats *out)
{
    uint64_t *dst = (uint64_t *)out;
    const uint64_t *src = (const uint64_t *)&nasmig_g.stats;
    size_t i;

    for (i = 0; i < sizeof(*out) / 8; i++) {
        dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
    }
    nasmig_touch_stats(out);
}

/* Go's store of the time the fetch took (Go's sync/atomic: seq_cst). */
void nasmig_set_fetch_time(uint64_t ns)
{
    __atomic_store_n(&nasmig_g.stats.fetch_time_ns, ns, __ATOMIC_SEQ_CST);
}

void nasmig_set_flags(int enabled, int auto_enable, int fill_after_default)
{
    nasmig_g.enabled = enabled;
    nasmig_g.auto_enable = auto_enable;
    nasmig_g.fill_after_default = fill_after_default;
}

void nasmig_set_content_mode(int on)
{
    STORE_REL(&nasmig_g.content_mode, on);
}

int nasmig_lib_auto_enable(void)
{
    return nasmig_g.auto_enable && nasmig_g.enabled;
}

int nasmig_lib_fill_after_default(void)
{
    return nasmig_g.fill_after_default && nasmig_g.enabled;
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
    pthread_mutex_lock(&nasmig_table_lock);
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
    pthread_mutex_unlock(&nasmig_table_lock);
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
    pthread_mutex_lock(&nasmig_table_lock);
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
    pthread_mutex_unlock(&nasmig_table_lock);
    return ret;
}

void nasmig_lib_disk_remove(int disk)
{
    struct nasmig_disk_info *d;
    uint64_t size;

    if (disk < 0 || disk >= NASMIG_MAX_DISKS) {
        return;
    }
    pthread_mutex_lock(&nasmig_table_lock);
    if (disk >= nasmig_g.ndisk || nasmig_g.disk[disk].removed) {
        pthread_mutex_unlock(&nasmig_table_lock);
        return;
    }
    d = &nasmig_g.disk[disk];
    /* A node created later under the same name is another disk. */
    d->node_name[0] = '\0';
    d->excluded = 1;
    STORE_REL(&d->removed, 1);
    STORE_REL(&nasmig_g.disk_off[disk], 1);
    size = d->size;
    pthread_mutex_unlock(&nasmig_table_lock);
    /* Its mappings go as if the whole disk had been written. */
    nasmig_lib_block_write_done(disk, 0, size ? size : NASMIG_PAGE_SIZE);
}

/* Called by Go's disk_names once a name matched exclude=. */
void nasmig_disk_exclude(int disk)
{
    if (disk < 0 || disk >= NASMIG_MAX_DISKS) {
        return;
    }
    pthread_mutex_lock(&nasmig_table_lock);
    if (disk < nasmig_g.ndisk) {
        nasmig_g.disk[disk].excluded = 1;
        STORE_REL(&nasmig_g.disk_off[disk], 1);
    }
    pthread_mutex_unlock(&nasmig_table_lock);
}

/* Stores the exclude= list (NUL-separated, double NUL at the end);
 * -ENOSPC when it does not fit. */
int nasmig_set_exclude(const char *list, size_t len)
{
    if (len > sizeof(nasmig_g.exclude)) {
        return -ENOSPC;
    }
    memcpy(nasmig_g.exclude, list, len);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Go's reads of the tables (the map writer's too), sequentially consistent
 * as Go's sync/atomic was. */

int nasmig_ramblock_count(void)
{
    return __atomic_load_n(&nasmig_g.nrb, __ATOMIC_SEQ_CST);
}

uint64_t *nasmig_forward(int rb)
{
    return __atomic_load_n(&nasmig_g.rb[rb].forward, __ATOMIC_SEQ_CST);
}

int nasmig_disk_count(void)
{
    return __atomic_load_n(&nasmig_g.ndisk, __ATOMIC_SEQ_CST);
}

int nasmig_disk_removed(int disk)
{
    return __atomic_load_n(&nasmig_g.disk[disk].removed, __ATOMIC_SEQ_CST);
}

/* Chunk idx of a disk's reverse index, or NULL (idx < ndir). */
uint64_t *nasmig_rev_chunk(int disk, uint64_t idx)
{
    return __atomic_load_n(&nasmig_g.disk[disk].dir[idx], __ATOMIC_SEQ_CST);
}

/* Publishes a new chunk (only the single map writer calls). */
void nasmig_set_rev_chunk(int disk, uint64_t idx, uint64_t *chunk)
{
    __atomic_store_n(&nasmig_g.disk[disk].dir[idx], chunk, __ATOMIC_SEQ_CST);
}
