/* Points the slow-path entries of the QEMU table at the Go exports, and
 * keeps libnasmig.so a valid TCG plugin for QEMU's -plugin loader. */
#include <stdint.h>
#include "_cgo_export.h"
#include "../cshim/nasmig.h"

/* QEMU's loader requires these two symbols of every plugin. */
__attribute__((visibility("default"))) int qemu_plugin_version = 4;

__attribute__((visibility("default"))) int
qemu_plugin_install(uint64_t id, const void *info, int argc, char **argv)
{
    (void)id; (void)info; (void)argc; (void)argv;
    return 0; /* nasmig_register did the work; no TCG callbacks needed */
}

void nasmig_fill_go(struct nasmig_lib *lib)
{
    lib->source_setup = (int (*)(uint32_t, uint8_t *, uint32_t *))nasmigSourceSetup;
    lib->ramblock_remove = nasmigRAMBlockRemove;
    lib->before_bitmap_sync = nasmigBeforeBitmapSync;
    lib->disk_names = (int (*)(int, const char *, size_t))nasmigDiskNames;
    lib->switchover_hold = nasmigSwitchoverHold;
    lib->source_message = (void (*)(const uint8_t *, size_t))nasmigSourceMessage;
    lib->source_cleanup = nasmigSourceCleanup;
    lib->dest_setup = (int (*)(const uint8_t *, uint32_t))nasmigDestSetup;
    lib->dest_cleanup = nasmigDestCleanup;
    lib->shutdown = nasmigShutdown;
}
