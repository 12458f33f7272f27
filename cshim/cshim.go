// Package cshim is the Go face of nasmig's C half: the ABI constants of
// nasmig.h (their one home), the keyed page hash, the rings, and the shared
// memory that QEMU's threads read without entering Go.
//
// Every cgo crossing of the library happens in this package, once per
// batch, never once per guest page on QEMU's paths.
package cshim

/*
#cgo CFLAGS: -O2 -Wall -Werror
#include <stdlib.h>
#include <string.h>
#include "shim.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"unsafe"
)

// ABI constants, read from nasmig.h so that no other file repeats them.
const (
	ABIVersion       = C.NASMIG_ABI_VERSION
	PageShift        = C.NASMIG_PAGE_SHIFT
	PageSize         = C.NASMIG_PAGE_SIZE
	RAMSaveFlagRef   = C.NASMIG_RAM_SAVE_FLAG_DISKREF
	RefWireVersion   = C.NASMIG_REF_WIRE_VERSION
	RefWireSize      = C.NASMIG_REF_WIRE_SIZE
	SetupFlagHold    = C.NASMIG_SETUP_FLAG_HOLD
	ModeOff          = C.NASMIG_MODE_OFF
	ModeLive         = C.NASMIG_MODE_LIVE
	ModeSave         = C.NASMIG_MODE_SAVE
	RPApprove        = C.NASMIG_RP_APPROVE
	RPError          = C.NASMIG_RP_ERROR
	RPResend         = C.NASMIG_RP_RESEND
	RPDiskOff        = C.NASMIG_RP_DISK_OFF
	RPMaxBytes       = C.NASMIG_RP_MAX_BYTES
	DestDiskRefused  = C.NASMIG_DEST_DISK_REFUSED
	FinishReqBarrier = C.NASMIG_FINISH_REQ_BARRIER
	FinishReqFinish  = C.NASMIG_FINISH_REQ_FINISH
	FinishOK         = C.NASMIG_FINISH_OK
	FinishFailed     = C.NASMIG_FINISH_FAILED
	HashSize         = C.NASMIG_HASH_SIZE
	SectionName      = C.NASMIG_SECTION_NAME
	SectionVersion   = C.NASMIG_SECTION_VERSION
	SetupMaxBytes    = C.NASMIG_SETUP_MAX_BYTES
	MaxDisks         = C.NASMIG_MAX_DISKS
	MaxRAMBlocks     = C.NASMIG_MAX_RAMBLOCKS
	MaxPagesPerCall  = C.NASMIG_MAX_PAGES_PER_CALL
	MaxFilename      = C.NASMIG_MAX_FILENAME
	MaxNodeName      = C.NASMIG_MAX_NODE_NAME
	MaxIDStr         = C.NASMIG_MAX_IDSTR
	NHWords          = C.NASMIG_NH_WORDS
	NHShift          = C.NASMIG_NH_SHIFT
	RevChunkShift    = C.NASMIG_REV_CHUNK_SHIFT
	RevChunk         = C.NASMIG_REV_CHUNK
	FwdValid         = uint64(C.NASMIG_FWD_VALID)
	FwdDiskShift     = C.NASMIG_FWD_DISK_SHIFT
	FwdDiskMask      = uint64(C.NASMIG_FWD_DISK_MASK)
	FwdH16Shift      = C.NASMIG_FWD_H16_SHIFT
	FwdBlockMask     = uint64(C.NASMIG_FWD_BLOCK_MASK)
	RevH24Shift      = C.NASMIG_REV_H24_SHIFT
	RevRBShift       = C.NASMIG_REV_RB_SHIFT
	RevRBMask        = uint64(C.NASMIG_REV_RB_MASK)
	RevPageMask      = uint64(C.NASMIG_REV_PAGE_MASK)
	RecVoid          = C.NASMIG_REC_VOID
	RecMap           = C.NASMIG_REC_MAP
	RecInval         = C.NASMIG_REC_INVAL
	FillFilled       = C.NASMIG_FILLED
	FillSuperseded   = C.NASMIG_SUPERSEDED
	FillMismatch     = C.NASMIG_MISMATCH
	RegisterSymbol   = C.NASMIG_REGISTER_SYMBOL
	KeyBytes         = int(unsafe.Sizeof(C.struct_nasmig_hash_key{}))
	TrackRecordBytes = int(unsafe.Sizeof(C.struct_nasmig_rec{}))
)

// H16 and H24 are the filter bits the map keeps of a page hash.
func H16(h uint64) uint64 { return h >> 48 }
func H24(h uint64) uint64 { return (h >> 24) & 0xffffff }

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

// SetKey installs the expanded hash key (KeyBytes bytes).
func SetKey(expanded []byte) {
	if len(expanded) != KeyBytes {
		panic(fmt.Sprintf("cshim: hash key of %d bytes, want %d", len(expanded), KeyBytes))
	}
	C.memcpy(unsafe.Pointer(&C.nasmig_g.key), unsafe.Pointer(&expanded[0]), C.size_t(KeyBytes))
}

// SetMigKey installs the expanded key of one migration's references.
func SetMigKey(expanded []byte) {
	if len(expanded) != KeyBytes {
		panic(fmt.Sprintf("cshim: migration key of %d bytes, want %d", len(expanded), KeyBytes))
	}
	C.memcpy(unsafe.Pointer(&C.nasmig_g.mig_key), unsafe.Pointer(&expanded[0]), C.size_t(KeyBytes))
}

// HashPageMig hashes a page with the migration key (what a reference carries).
func HashPageMig(page []byte) [2]uint64 {
	if len(page) < PageSize {
		panic("cshim: HashPageMig needs a whole page")
	}
	var out [2]C.uint64_t
	C.nasmig_hash_page(&C.nasmig_g.mig_key, unsafe.Pointer(&page[0]), &out[0])
	return [2]uint64{uint64(out[0]), uint64(out[1])}
}

// HashPage returns the keyed 128-bit hash of one 4 KiB page.
func HashPage(page []byte) [2]uint64 {
	if len(page) < PageSize {
		panic("cshim: HashPage needs a whole page")
	}
	var out [2]C.uint64_t
	C.nasmig_hash_page(&C.nasmig_g.key, unsafe.Pointer(&page[0]), &out[0])
	return [2]uint64{uint64(out[0]), uint64(out[1])}
}

// SetFlags records the plugin's switches for the C side.
func SetFlags(enabled, autoEnable bool) {
	C.nasmig_g.enabled = cbool(enabled)
	C.nasmig_g.auto_enable = cbool(autoEnable)
}

func cbool(b bool) C.int {
	if b {
		return 1
	}
	return 0
}

// SetExclude stores the names of disks that must never be referenced.
func SetExclude(names []string) error {
	var buf []byte
	for _, n := range names {
		buf = append(buf, n...)
		buf = append(buf, 0)
	}
	buf = append(buf, 0)
	if len(buf) > len(C.nasmig_g.exclude) {
		return fmt.Errorf("cshim: exclude list of %d bytes exceeds %d", len(buf), len(C.nasmig_g.exclude))
	}
	// Take the address outside the call: cgo rewrites an argument of the form
	// &C.var.array[0] to point into a Go copy of the array (the C list then
	// never changes).
	dst := unsafe.Pointer(&C.nasmig_g.exclude[0])
	C.memcpy(dst, unsafe.Pointer(&buf[0]), C.size_t(len(buf)))
	return nil
}

// SetErr sets the message QEMU reads through errmsg.
func SetErr(msg string) {
	cs := C.CString(msg)
	defer C.free(unsafe.Pointer(cs))
	C.nasmig_set_err(cs)
}

// Err returns the current error message (read under its lock).
func Err() string {
	var buf [1024]C.char
	C.nasmig_lib_errmsg(&buf[0], C.size_t(len(buf)))
	return C.GoString(&buf[0])
}
