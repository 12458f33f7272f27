/* A host table (struct nasmig_host) for tests: mark_dirty reports to Go,
 * log and kick count their calls.  C memory, as QEMU's table would be. */
#include <stdint.h>
#include "_cgo_export.h"
#include "nasmig.h"

static uint64_t kicks, logs;

static void cabi_mark_dirty(uint32_t ramblock, uint64_t offset, uint64_t len)
{
    cabitestMarkDirty(ramblock, offset, len);
}

static void cabi_kick(void)
{
    __atomic_add_fetch(&kicks, 1, __ATOMIC_RELAXED);
}

static void cabi_log(int level, const char *msg)
{
    (void)level;
    (void)msg;
    __atomic_add_fetch(&logs, 1, __ATOMIC_RELAXED);
}

struct nasmig_host cabi_host = {
    .abi_version = NASMIG_ABI_VERSION,
    .struct_size = sizeof(struct nasmig_host),
    .mark_dirty = cabi_mark_dirty,
    .kick = cabi_kick,
    .log = cabi_log,
};

uint64_t cabi_kicks(void) { return __atomic_load_n(&kicks, __ATOMIC_RELAXED); }
uint64_t cabi_logs(void) { return __atomic_load_n(&logs, __ATOMIC_RELAXED); }
