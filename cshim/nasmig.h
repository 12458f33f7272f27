/*
 * nasmig.h - the one ABI between QEMU (patched, see qemu-patches/) and
 * libnasmig.so.  Every constant shared by QEMU, the library, the tools and the
 * tests is defined here once; Go code reads them through package nasmig/cshim.
 *
 * Loading: QEMU's -plugin loader dlopens libnasmig.so with every async signal
 * blocked, looks up NASMIG_REGISTER_SYMBOL and calls it with the host's
 * service table.  The library checks the ABI version and fills in its entry
 * points.  The library also exports qemu_plugin_install/qemu_plugin_version so
 * it stays a valid TCG plugin.
 *
 * Threads: every library entry point below may be called from any QEMU thread
 * (vCPU, iothread, migration thread, main loop) and from coroutines.  None of
 * the hot-path entry points (marked HOT) enters the Go runtime: they are plain
 * C working on memory that Go shares with C outside the Go heap.
 *
 * Errors: functions return 0 or a negative errno.  A message for the last
 * failure is available through nasmig_lib.errmsg.
 *
 * QEMU carries a copy as include/nasmig/nasmig.h, added by the host-glue
 * patch in qemu-patches/; build.sh and a unit test check that the two are
 * the same file.
 *
 * Copyright (c) 2026 The nasmig authors
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef NASMIG_H
#define NASMIG_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped on any incompatible change of the structs or semantics below. */
#define NASMIG_ABI_VERSION 11

/* Symbol QEMU looks up after dlopen. Type: nasmig_register_fn. */
#define NASMIG_REGISTER_SYMBOL "nasmig_register"

/*
 * How long the source's migration thread waits at a time for the
 * destination to catch up (NASMIG_RP_CAUGHT_UP).
 */
#define NASMIG_HOLD_POLL_MS 100

/* References are whole 4 KiB pages mapped to 4 KiB-aligned disk offsets. */
#define NASMIG_PAGE_SHIFT 12
#define NASMIG_PAGE_SIZE (1u << NASMIG_PAGE_SHIFT)

/*
 * RAM stream: the free flag bit of QEMU's RAM_SAVE_FLAG_* space used for a
 * disk reference record.  The record is QEMU's usual page header
 * (be64 offset|flags, then the block idstr unless CONTINUE) followed by
 * NASMIG_REF_WIRE_SIZE bytes:
 *
 *   +--------+-----------+----------------------+---------------------------+
 *   | u8 ver | u8 disk   | be64 disk byte offset | 16 bytes keyed page hash |
 *   +--------+-----------+----------------------+---------------------------+
 *   0        1           2                      10                         26
 *
 * ver is NASMIG_REF_WIRE_VERSION; disk indexes the disk table sent in the
 * "nasmig" setup section.
 */
#define NASMIG_RAM_SAVE_FLAG_DISKREF 0x100
#define NASMIG_REF_WIRE_VERSION 1
#define NASMIG_REF_WIRE_SIZE 26
#define NASMIG_HASH_SIZE 16

/* The setup section ("nasmig" savevm section) and its size cap. */
#define NASMIG_SECTION_NAME "nasmig"
#define NASMIG_SECTION_VERSION 3
#define NASMIG_SETUP_MAX_BYTES (1u << 20)

/*
 * Setup flags (the u16 after the setup section's version).
 * HOLD: a live migration with a return path: the source holds the
 * switchover until the destination reports that its fetch has filled
 * every reference the source sent (NASMIG_RP_CAUGHT_UP), so the fetch
 * left at switchover, which is downtime, stays small; its final pass, and
 * any pass after such a report once its first pass is out, send pages.
 * Without it (a save to a file, a stopped guest) the destination verifies
 * every reference when the stream ends and reports nothing.
 */
#define NASMIG_SETUP_FLAG_HOLD 0x1
/*
 * FILL_AFTER (with HOLD): the source switches to postcopy instead of
 * holding, once its first pass is out; references the fetch has not filled
 * by then are filled while the destination's guest runs (placed whole with
 * userfaultfd; a page the guest touches first is read from storage ahead
 * of the rest, or asked from the source when the storage is slow), and
 * the source completes once the count says every reference is filled.
 */
#define NASMIG_SETUP_FLAG_FILL_AFTER 0x2

/*
 * Return-path message of a nasmig destination to a nasmig source (QEMU's
 * MIG_RP_MSG_NASMIG): u8 kind, then kind-specific bytes, at most
 * NASMIG_RP_MAX_BYTES in all.  Only sent when the source's setup section
 * arrived, so only to a source that understands it.
 *
 * NASMIG_RP_CAUGHT_UP: the fetch has filled (or handed back, or found
 * failed and asked for) every reference of this migration up to the
 * count-th one received: be64 count.  References travel on the main
 * channel only, in order, so the source compares the count with the
 * references it sent: while they are equal the switchover may happen
 * (its final pass sends pages), and equal once its first pass is out,
 * the switchover is approved for the rest of the migration.  Sent
 * whenever the count grows while the fetch is caught up.
 */
#define NASMIG_RP_CAUGHT_UP 1
#define NASMIG_RP_ERROR 2   /* UTF-8 text: why the destination failed */
/*
 * A reference failed verification (or its disk cannot be read here): send
 * the page in full.  u8 source disk index | be64 disk offset | be64 RAM
 * offset | RAMBlock idstr (the rest).  The source drops the mapping and
 * marks the page dirty, so the next pass sends it as a normal page.
 */
#define NASMIG_RP_RESEND 3
/* u8 source disk index: the destination cannot read this disk; stop
 * offering references to it in this migration. */
#define NASMIG_RP_DISK_OFF 4
/*
 * The destination's fetch is behind the migration link: send the pages
 * still mapped to these blocks in full, once (the link carries what the
 * storage would take longer to deliver; the destination has taken them
 * off its fetch).  u8 source disk index | be64 disk offset of the first
 * block | be32 number of blocks.  The mapping stays.
 */
#define NASMIG_RP_SEND_FULL 5
#define NASMIG_RP_MAX_BYTES 512

/* Answers of nasmig_lib.switchover_hold. */
#define NASMIG_HOLD_EXPIRED 0
#define NASMIG_HOLD_WAIT 1
#define NASMIG_HOLD_SEND 2

/* Destination disk handle of a source disk this side cannot read. */
#define NASMIG_DEST_DISK_REFUSED (-2)

/*
 * What an outgoing migration does with references (QEMU decides per
 * migration, at its start; the library is told in source_setup).
 */
enum nasmig_mode {
    NASMIG_MODE_OFF = 0,  /* step aside: a stock migration */
    NASMIG_MODE_LIVE = 1, /* live, return path: references and the hold */
    NASMIG_MODE_SAVE = 2, /* no return path, guest stopped or a file:
                           * references, verified when the stream is read */
    NASMIG_MODE_FILL_AFTER = 3, /* LIVE with postcopy-ram: references left
                                 * at the switch are filled after it */
};

/*
 * Destination, the switch to postcopy (nasmig_lib.dest_postcopy).
 * SWITCH: the source's first discard, or its listen when it discards
 * nothing (QEMU's incoming coroutine).  Returns 1 when QEMU must wait for
 * every fill to land first (dest_barrier), as without FILL_AFTER; 0 when
 * fills continue after the switch (they pause until PLACE).
 * LISTEN: before userfaultfd watches RAM: every page still waiting for
 * its reference is discarded (nasmig_host.discard), so that the guest's
 * first touch faults.  PLACE: userfaultfd is set up: fills place pages
 * whole (nasmig_host.place_page) from now on.
 */
enum nasmig_postcopy_stage {
    NASMIG_POSTCOPY_SWITCH = 1,
    NASMIG_POSTCOPY_LISTEN = 2,
    NASMIG_POSTCOPY_PLACE = 3,
};

/* Limits of the tables below. */
#define NASMIG_MAX_DISKS 64
#define NASMIG_MAX_RAMBLOCKS 64
#define NASMIG_MAX_PAGES_PER_CALL 64
/*
 * Name buffers, NUL included, as large as QEMU's own (PATH_MAX for a
 * node's filename, RAMBlock.idstr[256]); a longer name is refused with
 * -ENAMETOOLONG, never truncated (two names sharing a prefix would merge).
 */
#define NASMIG_MAX_FILENAME 4096
#define NASMIG_MAX_NODE_NAME 64
#define NASMIG_MAX_IDSTR 256

/*
 * Fault injection, for tests only: the points where the library or QEMU's
 * glue can be made to fail on purpose, so that a test proves what the
 * failure leads to (the same guest RAM, or a failed migration with the
 * source still running).  A process arms faults with the environment
 * variable NASMIG_FAULT_ENV: a comma-separated list of NAME (fires once),
 * NAME:N (the first N times its point is reached) or NAME:* (every time).
 * Nothing is armed without it.
 *
 * X(enum suffix, number, NAME, where and what)
 */
#define NASMIG_FAULT_ENV "NASMIG_FAULT"
#define NASMIG_FAULTS(X)                                                      \
    X(DEST_READ_ERROR, 1, "dest-read-error",                                  \
      "destination glue: a storage read completes with -EIO")                 \
    X(DEST_READ_SHORT, 2, "dest-read-short",                                  \
      "destination glue: a storage read fills only its first half")           \
    X(DEST_READ_CORRUPT, 3, "dest-read-corrupt",                              \
      "destination glue: a storage read returns one byte flipped")            \
    X(FETCH_STALL, 4, "fetch-stall",                                          \
      "destination library: the fetcher stalls 3 s before a read")            \
    X(RING_FULL, 5, "ring-full",                                              \
      "source library: the tracking ring refuses records as if full")         \
    X(WRITE_RECORD_LOST, 6, "write-record-lost",                              \
      "source library: a disk write's invalidation is silently lost")         \
    X(SETUP_CUT_SHORT, 7, "setup-cut-short",                                  \
      "source glue: the nasmig setup section is sent cut to half")            \
    X(RP_PAGE_REQUEST_FAILS, 8, "rp-page-request-fails",                      \
      "source glue: a postcopy page request fails, which ends the return "    \
      "path (as a request naming no RAM block would)")

enum nasmig_fault {
    NASMIG_FAULT_NONE = 0,
#define NASMIG_FAULT_ENUM(name, num, str, what) NASMIG_FAULT_##name = num,
    NASMIG_FAULTS(NASMIG_FAULT_ENUM)
#undef NASMIG_FAULT_ENUM
    NASMIG_FAULT_COUNT
};

/*
 * Services QEMU hands to the library.  All of them are callable from any
 * thread, including Go threads.
 */
struct nasmig_host {
    uint32_t abi_version; /* NASMIG_ABI_VERSION of the QEMU build */
    uint32_t struct_size; /* sizeof(struct nasmig_host) of the QEMU build */

    /* Marks [offset, offset+len) of RAM block `ramblock` dirty for migration. */
    void (*mark_dirty)(uint32_t ramblock, uint64_t offset, uint64_t len);

    /*
     * Starts an asynchronous read of `len` bytes at byte `offset` of the
     * destination's disk `disk` (a handle from disk_attach) into `buf`
     * (memory owned by the library, not Go heap).  On completion QEMU calls
     * nasmig_lib.read_done(cookie, ret) from its main loop.
     * Returns: 0 when queued, -ENODEV for an unknown disk.
     */
    int (*read_disk)(uint32_t disk, uint64_t offset, void *buf, uint64_t len,
                     uint64_t cookie);

    /*
     * Finds the destination's node for a disk described by the source's
     * disk table.  Returns a handle >= 0, or a negative errno with a message
     * in err: -ENOENT (no such node), -EINVAL (smaller here than the
     * source's size), -EOPNOTSUPP (not safe to read while the image is
     * inactive).  *track gets the node's tracking handle (as disk_add
     * returns it), so that pages filled from it enter this side's map, or
     * a negative errno when the node is not tracked.
     */
    int (*disk_attach)(const char *filename, uint64_t size, int *track,
                       char *err, size_t errlen);

    /* Wakes QEMU's main loop (a fill it waits for has finished). */
    void (*kick)(void);

    /*
     * Destination: sends one NASMIG_RP_* message (kind byte first, at most
     * NASMIG_RP_MAX_BYTES) to the source over the return path.  Only
     * during an incoming migration whose setup carried
     * NASMIG_SETUP_FLAG_HOLD.  Returns: 0, -ENOTCONN without a return
     * path, -EINVAL when too long.  Callable from any thread.
     */
    int (*send_to_source)(const uint8_t *buf, size_t len);

    /*
     * Destination, postcopy with FILL_AFTER: places a verified 4 KiB page
     * whole at [offset] of RAM block `ramblock` (userfaultfd; wakes whoever
     * waits for it).  Returns 0 or a negative errno.
     */
    int (*place_page)(uint32_t ramblock, uint64_t offset, const void *buf);

    /*
     * Destination, postcopy: asks the source for the page in full (QEMU's
     * postcopy page request); the page arrives through the stream.
     */
    int (*request_page)(uint32_t ramblock, uint64_t offset);

    /* Destination: drops the content of these pages (postcopy's discard). */
    int (*discard)(uint32_t ramblock, uint64_t offset, uint64_t len);
};

/*
 * The ramblock of a page read into memory that is no guest RAM (a bounce
 * buffer, Xen's qdisk grant copies): only its content can be indexed.
 */
#define NASMIG_RAMBLOCK_NONE 0xffffffffu

/* One 4 KiB page that a completed block read filled from disk. */
struct nasmig_page_read {
    uint32_t ramblock;    /* handle from nasmig_lib.ramblock_add, or NONE */
    uint32_t reserved;
    uint64_t ram_offset;  /* page-aligned offset inside the RAM block (NONE: 0) */
    uint64_t disk_offset; /* 4 KiB-aligned byte offset on the disk */
    const void *host;     /* host address of the page */
};

/*
 * Statistics, both sides.  Each counter describes the current (or last)
 * migration: source_setup and dest_setup zero them; mapped_pages is a
 * gauge of the map and is never zeroed.
 */
struct nasmig_stats {
    uint64_t mapped_pages;    /* guest pages the map covers now (source) */
    uint64_t ref_pages;       /* pages sent as references (source) */
    uint64_t ref_misses;      /* mapped pages whose content changed at send (source) */
    uint64_t ring_drops;      /* tracking records dropped because the ring was full */
    uint64_t invalidations;   /* mappings dropped by disk writes */
    uint64_t fetched_pages;   /* pages filled from shared storage (destination) */
    uint64_t fetch_reads;     /* coalesced storage reads (destination) */
    uint64_t fetch_bytes;     /* bytes read from shared storage (destination) */
    uint64_t verify_failures; /* blocks whose hash did not match (destination) */
    uint64_t fallbacks;       /* failed references recovered: the page came
                               * in full from the source, or a re-read
                               * after its final flush verified */
    uint64_t fetch_time_ns;   /* wall time from first reference to last fill */
    uint64_t pending_pages;   /* fills not finished yet (destination) */
    uint64_t sent_full;       /* mapped pages sent in full because the
                               * destination asked (NASMIG_RP_SEND_FULL) */
    uint64_t handed_back;     /* references the destination's fetch handed
                               * back to the link (NASMIG_RP_SEND_FULL) */
    uint64_t filled_after_switchover; /* fetched_pages filled after the
                                       * switch to postcopy (destination,
                                       * FILL_AFTER) */
    uint64_t from_source_after_switchover; /* references whose page came
                                            * from the source after the
                                            * switch instead: the guest
                                            * touched it first, or it
                                            * failed verification */
    /*
     * FILL_AFTER, destination: the guest touched a page still waiting for
     * its reference (a userfaultfd fault).  Served from storage: the
     * fill placed it; from the source: its page came first.  Latency from
     * the fault to the page being placed, over every such fault of this
     * migration, in microseconds (a log-linear histogram: within 1/8).
     */
    uint64_t faults_from_storage;
    uint64_t faults_from_source;
    uint64_t fault_latency_median_us;
    uint64_t fault_latency_p99_us;
    uint64_t fault_latency_max_us;
};

/* The library's entry points, filled in by nasmig_register. */
struct nasmig_lib {
    uint32_t abi_version;
    uint32_t struct_size;

    /* --- tracking (source side; HOT) --- */

    /*
     * Registers a RAM block; returns its handle (>= 0), -ENOSPC, or
     * -ENAMETOOLONG.  Idempotent for the same idstr.
     */
    int (*ramblock_add)(const char *idstr, uint64_t max_length);

    /*
     * The RAM block is gone (memory hot-unplug, object-del of its backend):
     * QEMU has forgotten its pointer, and the library drops every mapping
     * of its pages.  A block added later under the same idstr gets the
     * handle back, with nothing mapped.  Main thread.
     */
    void (*ramblock_remove)(int ramblock);

    /*
     * Registers a disk node whose reads land in guest RAM; returns its
     * handle (>= 0), -EPERM when configuration excludes it, -ENOSPC, or
     * -ENAMETOOLONG.  Idempotent for the same node name.
     */
    int (*disk_add)(const char *node_name, const char *filename, uint64_t size);

    /*
     * The disk's node is gone (blockdev-del, hot-unplug, a job's pivot):
     * its handle is never used again, its mappings go, and a later node of
     * the same name is a new disk.  Main thread.
     */
    void (*disk_remove)(int disk);

    /*
     * The names an operator may know the disk by, besides its node name and
     * filename: node names above it, drive ids, device ids and paths
     * (`names` holds `len` bytes of NUL-terminated strings).  Sent at each
     * migration setup, before source_setup, from the main thread.  Returns
     * -EPERM when configuration excludes the disk by one of them (QEMU then
     * stops tracking it), else 0.
     */
    int (*disk_names)(int disk, const char *names, size_t len);

    /*
     * HOT. A read of `disk` completed into the given pages: guest RAM, and
     * (ramblock NASMIG_RAMBLOCK_NONE) other page-aligned buffers whose
     * content the library may index.  The library hashes each page now
     * (before the guest is told) and queues the mappings; if *write_gen no
     * longer equals gen_before after the mappings were reserved, a write
     * raced with the read and they are dropped.  Also called, after
     * block_write_done, for a data write that succeeded: every page is
     * then NASMIG_RAMBLOCK_NONE and gen_before counts that write.
     */
    void (*block_read_done)(int disk, const struct nasmig_page_read *pages,
                            unsigned n, const unsigned *write_gen,
                            unsigned gen_before);

    /*
     * HOT. A read into these page-aligned host addresses starts, and (end)
     * it finished, successfully or not, after any block_read_done.  A page
     * that two reads in flight target at once gets no mapping from either:
     * its final content depends on the order the data landed.
     */
    void (*block_read_begin)(const void *const *hosts, unsigned n);
    void (*block_read_end)(const void *const *hosts, unsigned n);

    /* HOT. A write (or discard, zero-write, truncate) to `disk` completed. */
    void (*block_write_done)(int disk, uint64_t offset, uint64_t len);

    /* --- migration source --- */

    /*
     * Migration setup (mode is NASMIG_MODE_LIVE or NASMIG_MODE_SAVE): draws
     * a fresh key for this migration's hashes, zeroes the counters, writes
     * the setup section (flags, disk table, key) into buf (at most *len
     * bytes, NASMIG_SETUP_MAX_BYTES) and sets *len.
     */
    int (*source_setup)(uint32_t mode, uint8_t *buf, uint32_t *len);

    /*
     * Called before every dirty-bitmap sync: applies queued invalidations,
     * marking every page whose disk block changed dirty again.
     */
    void (*before_bitmap_sync)(void);

    /*
     * HOT. May the page be sent as a reference?  On yes, writes the
     * NASMIG_REF_WIRE_SIZE-byte record into wire and returns 1; else 0.
     * `host` is the page's current content; its dirty bit is already clear.
     */
    int (*ref_query)(uint32_t ramblock, uint64_t ram_offset, const void *host,
                     uint8_t *wire);

    /*
     * Source, from QEMU's return-path thread: a NASMIG_RP_RESEND or
     * NASMIG_RP_DISK_OFF message of the destination (the whole message,
     * kind byte first).
     */
    void (*source_message)(const uint8_t *buf, size_t len);

    /*
     * Source, migration thread, NASMIG_MODE_LIVE: little is left to send
     * but the destination has not caught up with the references sent.
     * Returns NASMIG_HOLD_WAIT to hold on (QEMU then sends nothing and
     * waits up to NASMIG_HOLD_POLL_MS for NASMIG_RP_CAUGHT_UP, or for any
     * message of the destination, before it asks again); NASMIG_HOLD_SEND
     * when the destination asked for pages in full (NASMIG_RP_SEND_FULL):
     * QEMU sends what is dirty now, then asks again; NASMIG_HOLD_EXPIRED
     * once the hold has lasted the library's bound (hold-max): references
     * stop for the rest of this migration and the switchover may happen;
     * the fetch still pending then joins the downtime.
     */
    int (*switchover_hold)(void);

    /* Migration ended on the source (completed, failed or cancelled). */
    void (*source_cleanup)(int failed);

    /* --- migration destination --- */

    /*
     * Reads the source's setup section; attaches the disks; zeroes the
     * counters.  The key it carries verifies this migration only; this
     * side's own tracking key is never replaced.
     */
    int (*dest_setup)(const uint8_t *buf, uint32_t len);

    /*
     * HOT. A reference record arrived for the page at `host`.
     * Returns 0 (queued), -EAGAIN (queue full: yield and retry),
     * -EINVAL (bad record: the message says why).
     */
    int (*ref_received)(uint32_t ramblock, uint64_t ram_offset, void *host,
                        const uint8_t *wire);

    /*
     * HOT. QEMU is about to write the page itself (a later normal, zero or
     * XBZRLE record).  A pending fill is cancelled (returns 0), or, when
     * wait_fill is set (XBZRLE needs the filled content), -EAGAIN is returned
     * while the fill is still pending: yield and call again.
     */
    int (*before_page_write)(uint32_t ramblock, uint64_t ram_offset,
                             int wait_fill);

    /* A read started with nasmig_host.read_disk finished (main loop). */
    void (*read_done)(uint64_t cookie, int ret);

    /*
     * The stream is complete: re-reads what failed verification and finishes
     * every fill.  Returns -EAGAIN while work remains (yield and call again),
     * 0 when every referenced page is filled and verified, or -EIO when a
     * page could not be verified (the message names page, disk and reason).
     */
    int (*dest_finish)(void);

    /* Pages with fills in flight or awaiting a re-read; 0 when none. HOT. */
    uint64_t (*dest_pending)(void);

    /*
     * Ordering barrier (before multifd channels may write pages again):
     * returns -EAGAIN while any fill is queued or in flight (yield and call
     * again), 0 once none can land later.  Pages that failed verification
     * stay failed: a page of the stream (the source's resend, on a multifd
     * channel too) may still replace them; dest_finish re-reads what is
     * left and fails the migration if that fails again.
     */
    int (*dest_barrier)(void);

    /* Incoming migration ended; frees its state. */
    void (*dest_cleanup)(int failed);

    /* The switch to postcopy reached a stage (enum nasmig_postcopy_stage). */
    int (*dest_postcopy)(int stage);

    /*
     * Destination, postcopy's fault thread: the guest touched a page that
     * has not arrived.  Returns 1 when the page waits for its reference
     * (FILL_AFTER): the library reads that block ahead of its queue and
     * places the page, or, when the storage does not deliver within its
     * fault-fallback, asks the source for it (nasmig_host.request_page);
     * QEMU then asks nothing itself.  0: not the library's page; QEMU
     * asks the source as usual.
     */
    int (*dest_page_fault)(uint32_t ramblock, uint64_t offset);

    /* --- both --- */

    /* Fills *out. */
    void (*stats)(struct nasmig_stats *out);

    /*
     * Copies the message of the last failure into buf, always NUL-terminated.
     * Returns 0, or -ERANGE when truncated.
     */
    int (*errmsg)(char *buf, size_t len);

    /*
     * 1 when every migration that can use references should (auto=on);
     * 0 when only migrations with capability x-disk-refs do.
     */
    int (*auto_enable)(void);

    /*
     * 1 when a migration with postcopy-ram should fill references after
     * the switchover (NASMIG_MODE_FILL_AFTER) without capability
     * x-disk-refs-after-switchover (fill-after-switchover=on).
     */
    int (*fill_after_default)(void);

    /* QEMU is exiting. */
    void (*shutdown)(void);

    /*
     * Tests only: 1 when the fault armed through NASMIG_FAULT_ENV fires at
     * this point now, else 0 (always 0 when nothing is armed).  HOT-safe:
     * one load when nothing is armed.
     */
    int (*fault)(enum nasmig_fault fault);
};

/*
 * nasmig_register - hands the host table to the library and gets its entry
 * points.  args/nargs are the plugin's "key=value" arguments.
 * Returns: 0; -EPROTO on an ABI version mismatch; -EINVAL on a bad argument.
 * On failure err holds a NUL-terminated message.
 */
typedef int (*nasmig_register_fn)(const struct nasmig_host *host,
                                  struct nasmig_lib *lib, const char **args,
                                  int nargs, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif /* NASMIG_H */
