package cshim

/*
#include "shim.h"
*/
import "C"

import "unsafe"

// RefQuery is the saver's question for a page whose content is at host
// (C memory or pinned Go memory).
func RefQuery(rb uint32, ramOffset uint64, host unsafe.Pointer) ([RefWireSize]byte, bool) {
	var wire [RefWireSize]byte
	ok := C.nasmig_lib_ref_query(C.uint32_t(rb), C.uint64_t(ramOffset), host, (*C.uint8_t)(unsafe.Pointer(&wire[0]))) == 1
	return wire, ok
}

// MapOffers is the lookup half of RefQuery (no hash).
func MapOffers(rb uint32, ramOffset uint64) bool {
	return C.nasmig_map_offers(C.uint32_t(rb), C.uint64_t(ramOffset)) != 0
}

// SetDiskOff marks a disk (source side) whose pages must not go out as
// references in this migration: the destination cannot read it.
func SetDiskOff(disk int, off bool) {
	if disk >= 0 && disk < MaxDisks {
		C.nasmig_set_disk_off(C.int(disk), cbool(off))
	}
}

// SendFull marks the pages still mapped to count blocks of disk from block
// first to go once in full (and dirty); it returns how many it marked.
func SendFull(disk int, first, count uint64) uint64 {
	if disk < 0 || disk >= MaxDisks {
		return 0
	}
	return uint64(C.nasmig_send_full(C.uint(disk), C.uint64_t(first), C.uint64_t(count)))
}

// SendFullReset forgets, after a migration, what the destination asked for.
func SendFullReset() { C.nasmig_send_full_reset() }

// SendFullOutstanding is the number of pages marked to go in full that
// have not gone yet.
func SendFullOutstanding() int64 { return int64(C.nasmig_send_full_outstanding()) }
