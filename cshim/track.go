package cshim

/*
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import "unsafe"

// Rec is one tracking record (layout of struct nasmig_rec).
type Rec = C.struct_nasmig_rec

// NewRec builds a tracking record (tests and tools).
func NewRec(typ uint8, disk uint8, ramblock uint32, page, block, hash uint64) Rec {
	return Rec{_type: C.uint8_t(typ), disk: C.uint8_t(disk), ramblock: C.uint32_t(ramblock),
		page: C.uint64_t(page), block: C.uint64_t(block), hash: C.uint64_t(hash)}
}

// Fields of a tracking record.
func RecType(r *Rec) uint8      { return uint8(r._type) }
func RecDisk(r *Rec) int        { return int(r.disk) }
func RecRAMBlock(r *Rec) uint32 { return uint32(r.ramblock) }
func RecPage(r *Rec) uint64     { return uint64(r.page) }
func RecBlock(r *Rec) uint64    { return uint64(r.block) }
func RecHash(r *Rec) uint64     { return uint64(r.hash) }

// LostInvalidations counts write records the full ring could not take.
func LostInvalidations() uint64 { return uint64(C.nasmig_lost_invalidations()) }

// LostHead is the ring position up to which records must be popped and
// applied before the map is dropped for the lost writes that
// LostInvalidations counted (call it after LostInvalidations).
func LostHead() uint64 { return uint64(C.nasmig_lost_head()) }

// BlockWriteDone reports a completed write as QEMU's hook would.
func BlockWriteDone(disk int, off, length uint64) {
	C.nasmig_lib_block_write_done(C.int(disk), C.uint64_t(off), C.uint64_t(length))
}

// BlockReadDone reports a completed read of whole pages (host: C memory).
func BlockReadDone(disk int, rb uint32, ramOffsets, diskOffsets []uint64, hosts []unsafe.Pointer, writeGen *uint32, genBefore uint32) {
	n := len(ramOffsets)
	pages := (*[C.NASMIG_MAX_PAGES_PER_CALL]C.struct_nasmig_page_read)(C.malloc(C.size_t(n) * C.size_t(unsafe.Sizeof(C.struct_nasmig_page_read{}))))
	defer C.free(unsafe.Pointer(pages))
	for i := 0; i < n; i++ {
		pages[i] = C.struct_nasmig_page_read{ramblock: C.uint32_t(rb), ram_offset: C.uint64_t(ramOffsets[i]),
			disk_offset: C.uint64_t(diskOffsets[i]), host: hosts[i]}
	}
	C.nasmig_lib_block_read_done(C.int(disk), &pages[0], C.uint(n), (*C.uint)(unsafe.Pointer(writeGen)), C.uint(genBefore))
}
