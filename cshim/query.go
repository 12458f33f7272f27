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
