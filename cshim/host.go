package cshim

/*
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"unsafe"
)

var errInit = errors.New("cshim: initialisation failed")

// Init sets up the rings; ringSlots must be a power of two.
func Init(ringSlots uint32) error {
	if rc := C.nasmig_shim_init(C.uint(ringSlots)); rc != 0 {
		return fmt.Errorf("%w: ring of %d slots: errno %d", errInit, ringSlots, -rc)
	}
	return nil
}

// FillLib writes the C entry points into the QEMU-facing table.
func FillLib(lib unsafe.Pointer) { C.nasmig_shim_fill((*C.struct_nasmig_lib)(lib)) }

// SetHost remembers QEMU's service table (C memory owned by QEMU).
func SetHost(host unsafe.Pointer) { C.nasmig_set_host((*C.struct_nasmig_host)(host)) }

// MarkDirty asks QEMU to send a page again.
func MarkDirty(rb uint32, off, length uint64) {
	C.nasmig_call_mark_dirty(C.uint32_t(rb), C.uint64_t(off), C.uint64_t(length))
}

// MarkDirtyPages asks QEMU to send the pages (RAM block, page index) again,
// in one cgo crossing for the batch.
func MarkDirtyPages(rbs []uint32, pages []uint64) {
	if len(rbs) == 0 || len(rbs) != len(pages) {
		return
	}
	// C must not keep Go pointers: copy the batch into C memory.
	n := len(rbs)
	crbs := (*[1 << 30]C.uint32_t)(C.malloc(C.size_t(n) * 4))[:n:n]
	cpages := (*[1 << 27]C.uint64_t)(C.malloc(C.size_t(n) * 8))[:n:n]
	defer C.free(unsafe.Pointer(&crbs[0]))
	defer C.free(unsafe.Pointer(&cpages[0]))
	for i := range rbs {
		crbs[i], cpages[i] = C.uint32_t(rbs[i]), C.uint64_t(pages[i])
	}
	C.nasmig_call_mark_dirty_pages(&crbs[0], &cpages[0], C.uint(n))
}

// AttachDisk finds the destination's node for a source disk; track is the
// node's tracking handle on this side (-1 when untracked).
func AttachDisk(filename string, size uint64) (handle, track int, err error) {
	cs := C.CString(filename)
	defer C.free(unsafe.Pointer(cs))
	var msg [512]C.char
	var tr C.int
	rc := C.nasmig_call_disk_attach(cs, C.uint64_t(size), &tr, &msg[0], C.size_t(len(msg)))
	if rc < 0 {
		return -1, -1, fmt.Errorf("%s (errno %d)", C.GoString(&msg[0]), -rc)
	}
	return int(rc), int(tr), nil
}

// SendToSource sends one return-path message (wire.EncodeResend and
// friends) to the source.
func SendToSource(msg []byte) error {
	if len(msg) == 0 {
		return fmt.Errorf("empty message to the source")
	}
	if rc := C.nasmig_call_send_to_source((*C.uint8_t)(unsafe.Pointer(&msg[0])), C.size_t(len(msg))); rc < 0 {
		return fmt.Errorf("message to the source: errno %d", -rc)
	}
	return nil
}

// Kick wakes QEMU's main loop.
func Kick() { C.nasmig_call_kick() }
