package cshim

/*
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import "unsafe"

// BlockReadBegin and BlockReadEnd bracket a read into the pages at hosts
// (C memory) as QEMU's hooks around a protocol-node read would.
func BlockReadBegin(hosts []unsafe.Pointer) { blockReadBracket(hosts, false) }
func BlockReadEnd(hosts []unsafe.Pointer)   { blockReadBracket(hosts, true) }

func blockReadBracket(hosts []unsafe.Pointer, end bool) {
	if len(hosts) == 0 {
		return
	}
	arr := (*[1 << 20]unsafe.Pointer)(C.malloc(C.size_t(len(hosts)) * C.size_t(unsafe.Sizeof(uintptr(0)))))
	defer C.free(unsafe.Pointer(arr))
	copy(arr[:len(hosts)], hosts)
	if end {
		C.nasmig_lib_block_read_end(&arr[0], C.uint(len(hosts)))
	} else {
		C.nasmig_lib_block_read_begin(&arr[0], C.uint(len(hosts)))
	}
}
