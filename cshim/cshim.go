// Package cshim is the Go face of nasmig's C half: the ABI constants of
// nasmig.h (their one home), the keyed page hash, the rings, and the shared
// memory that QEMU's threads read without entering Go.
//
// Every cgo crossing of the library happens in this package, once per
// batch, never once per guest page on QEMU's paths.  Each Go file wraps the
// C file of its name (hash, ring, tables, inflight, track, query, dest,
// host, fault).  Go writes none of C's globals itself, nor reads atomically
// one that C writes: small C accessors (shim.h) do.  fill.go is the C
// memory QEMU reads disks into, and the fill threads that empty it.
package cshim

/*
#cgo CFLAGS: -O2 -Wall -Werror
#include "shim.h"
*/
import "C"

import "unsafe"

// ABI constants, read from nasmig.h so that no other file repeats them.
const (
	ABIVersion       = C.NASMIG_ABI_VERSION
	PageShift        = C.NASMIG_PAGE_SHIFT
	PageSize         = C.NASMIG_PAGE_SIZE
	RAMSaveFlagRef   = C.NASMIG_RAM_SAVE_FLAG_DISKREF
	RefWireVersion   = C.NASMIG_REF_WIRE_VERSION
	RefWireSize      = C.NASMIG_REF_WIRE_SIZE
	SetupFlagHold    = C.NASMIG_SETUP_FLAG_HOLD
	SetupFlagAfter   = C.NASMIG_SETUP_FLAG_FILL_AFTER
	ModeOff          = C.NASMIG_MODE_OFF
	ModeLive         = C.NASMIG_MODE_LIVE
	ModeSave         = C.NASMIG_MODE_SAVE
	ModeFillAfter    = C.NASMIG_MODE_FILL_AFTER
	RPCaughtUp       = C.NASMIG_RP_CAUGHT_UP
	RPError          = C.NASMIG_RP_ERROR
	RPResend         = C.NASMIG_RP_RESEND
	RPDiskOff        = C.NASMIG_RP_DISK_OFF
	RPSendFull       = C.NASMIG_RP_SEND_FULL
	HoldExpired      = C.NASMIG_HOLD_EXPIRED
	HoldWait         = C.NASMIG_HOLD_WAIT
	HoldSend         = C.NASMIG_HOLD_SEND
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
	RecContent       = C.NASMIG_REC_CONTENT
	RAMBlockNone     = uint32(C.NASMIG_RAMBLOCK_NONE)
	FillFilled       = C.NASMIG_FILLED
	FillSuperseded   = C.NASMIG_SUPERSEDED
	FillMismatch     = C.NASMIG_MISMATCH
	FillPlaceFailed  = C.NASMIG_PLACE_FAILED
	RegisterSymbol   = C.NASMIG_REGISTER_SYMBOL
	KeyBytes         = int(unsafe.Sizeof(C.struct_nasmig_hash_key{}))
	TrackRecordBytes = int(unsafe.Sizeof(C.struct_nasmig_rec{}))
)
