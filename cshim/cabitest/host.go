package cabitest

/*
#cgo CFLAGS: -O2 -Wall -Werror -I${SRCDIR}/..
#include <stdint.h>
#include "nasmig.h"
extern struct nasmig_host cabi_host;
uint64_t cabi_kicks(void);
void cabi_set_disk(const uint8_t *img, uint64_t len);
size_t cabi_msg(unsigned i, uint8_t *out);
void cabi_set_read_delay(uint64_t ns);
void cabi_set_ram(uint32_t rb, uint8_t *base, uint64_t len);
void cabi_postcopy_counts(uint64_t *p, uint64_t *d, uint64_t *r, uint64_t *last);
*/
import "C"

import (
	"sync/atomic"
	"time"
	"unsafe"

	"nasmig/cshim"
)

// MarkDirtyFunc receives the library's mark_dirty calls (QEMU would set the
// pages' dirty bits for migration).
type MarkDirtyFunc func(ramblock uint32, offset, length uint64)

var markDirty atomic.Pointer[MarkDirtyFunc]

//export cabitestMarkDirty
func cabitestMarkDirty(rb C.uint32_t, off, length C.uint64_t) {
	if f := markDirty.Load(); f != nil {
		(*f)(uint32(rb), uint64(off), uint64(length))
	}
}

// InstallHost hands the library a host table (in C memory) whose mark_dirty
// calls f; f may be replaced later with SetMarkDirty.
func InstallHost(f MarkDirtyFunc) {
	SetMarkDirty(f)
	cshim.SetHost(unsafe.Pointer(&C.cabi_host))
}

// SetMarkDirty replaces the receiver of mark_dirty calls (nil: ignore them).
func SetMarkDirty(f MarkDirtyFunc) {
	if f == nil {
		markDirty.Store(nil)
		return
	}
	markDirty.Store(&f)
}

// SetDisk makes img (C memory, e.g. from cshimtest.CMem) the host's disk 0
// for read_disk.
func SetDisk(img []byte) {
	C.cabi_set_disk((*C.uint8_t)(unsafe.Pointer(&img[0])), C.uint64_t(len(img)))
}

// SetReadDelay makes every read_disk take d (0: complete at once).
func SetReadDelay(d time.Duration) { C.cabi_set_read_delay(C.uint64_t(d)) }

// Messages returns what the library sent to the source so far.
func Messages() [][]byte {
	var out [][]byte
	buf := make([]byte, cshim.RPMaxBytes)
	for i := 0; ; i++ {
		n := C.cabi_msg(C.uint(i), (*C.uint8_t)(unsafe.Pointer(&buf[0])))
		if n == 0 {
			return out
		}
		out = append(out, append([]byte(nil), buf[:n]...))
	}
}

// SetRAM makes ram (C memory) RAM block rb for the host's postcopy calls:
// place_page copies pages into it, discard zeroes them; the counts restart.
func SetRAM(rb int, ram []byte) {
	C.cabi_set_ram(C.uint32_t(rb), (*C.uint8_t)(unsafe.Pointer(&ram[0])), C.uint64_t(len(ram)))
}

// PostcopyCounts returns the pages placed, discarded and asked from the
// source since SetRAM, and the offset last asked for.
func PostcopyCounts() (placed, discarded, requested, lastRequest uint64) {
	var p, d, r, l C.uint64_t
	C.cabi_postcopy_counts(&p, &d, &r, &l)
	return uint64(p), uint64(d), uint64(r), uint64(l)
}

// Kicks counts the host's kick calls.
func Kicks() uint64 { return uint64(C.cabi_kicks()) }
