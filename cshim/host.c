/*
 * host.c - where QEMU and the library meet: the nasmig_lib table QEMU gets,
 * the library's set-up, and QEMU's services (struct nasmig_host) for Go,
 * which cgo cannot call through function pointers.
 */
#include <errno.h>
#include <stdio.h>

#include "shim.h"

static const struct nasmig_host *host_ops;

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

int nasmig_call_place_page(uint32_t rb, uint64_t off, const void *buf)
{
    if (!host_ops || !host_ops->place_page) {
        return -ENOSYS;
    }
    return host_ops->place_page(rb, off, buf);
}

int nasmig_call_request_page(uint32_t rb, uint64_t off)
{
    if (!host_ops || !host_ops->request_page) {
        return -ENOSYS;
    }
    return host_ops->request_page(rb, off);
}

int nasmig_call_discard(uint32_t rb, uint64_t off, uint64_t len)
{
    if (!host_ops || !host_ops->discard) {
        return -ENOSYS;
    }
    return host_ops->discard(rb, off, len);
}

void nasmig_call_kick(void)
{
    if (host_ops && host_ops->kick) {
        host_ops->kick();
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
    ret = nasmig_ring_init(&nasmig_track_ring, ring_slots,
                           sizeof(struct nasmig_rec));
    if (!ret) {
        ret = nasmig_ring_init(&nasmig_req_ring, NASMIG_REQ_RING_SLOTS,
                               sizeof(struct nasmig_fetch_req));
    }
    if (!ret) {
        ret = nasmig_ring_init(&nasmig_touch_ring, NASMIG_TOUCH_RING_SLOTS,
                               sizeof(struct nasmig_touch_req));
    }
    return ret;
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
    lib->fill_after_default = nasmig_lib_fill_after_default;
    lib->dest_postcopy = nasmig_lib_dest_postcopy;
    lib->dest_page_fault = nasmig_lib_dest_page_fault;
    lib->fault = nasmig_lib_fault;
}
