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

	"golang.org/x/sys/unix"
)

// FillBatch is one storage read of the destination and the references it
// serves, in C memory (fill.c): QEMU reads the blocks into its buffer from
// its own threads, and the library's fill threads verify and fill from it
// while Go goes on.  Go writes it only while no read or fill holds it.
type FillBatch struct {
	c *C.struct_nasmig_fill_batch
}

// NewFillBatch makes a batch with room for reads of maxBlocks blocks.
func NewFillBatch(maxBlocks int) (*FillBatch, error) {
	c := C.nasmig_fill_batch_new(C.uint32_t(maxBlocks))
	if c == nil {
		return nil, fmt.Errorf("cshim: no memory for a %d-block read", maxBlocks)
	}
	return &FillBatch{c: c}, nil
}

// Free releases the batch; nothing may read into it or fill from it.
func (b *FillBatch) Free() {
	C.nasmig_fill_batch_free(b.c)
	b.c = nil
}

// Prepare names the next read (nblocks blocks from block first) and
// returns room for its n references, for the caller to fill in.
func (b *FillBatch) Prepare(cookie, first, nblocks uint64, n int) ([]FetchReq, error) {
	if nblocks == 0 || nblocks > uint64(b.c.max_blocks) {
		return nil, fmt.Errorf("cshim: a read of %d blocks in a batch of %d", nblocks, b.c.max_blocks)
	}
	if C.nasmig_fill_batch_reserve(b.c, C.uint32_t(n)) < 0 {
		return nil, errors.New("cshim: no memory for a read's references")
	}
	b.c.cookie, b.c.first, b.c.nblocks, b.c.n = C.uint64_t(cookie), C.uint64_t(first), C.uint32_t(nblocks), C.uint32_t(n)
	return unsafe.Slice((*FetchReq)(unsafe.Pointer(b.c.reqs)), n), nil
}

// Read starts QEMU's read of the prepared blocks from disk into the
// buffer.  Its completion goes to the fill threads (QEMU's cookie for the
// read is the batch itself), and FillPop returns the batch once every
// reference has its result, or at once when the read failed (ReadErr).
func (b *FillBatch) Read(disk uint32) error {
	length := uint64(b.c.nblocks) << PageShift
	off := uint64(b.c.first) << PageShift
	b.c.ret = 0
	cookie := C.uint64_t(uintptr(unsafe.Pointer(b.c)))
	if rc := C.nasmig_call_read_disk(C.uint32_t(disk), C.uint64_t(off), unsafe.Pointer(b.c.buf), C.uint64_t(length), cookie); rc < 0 {
		return fmt.Errorf("read of %d bytes at %#x of disk %d: errno %d", length, off, disk, -rc)
	}
	return nil
}

// ReadErr is the errno of a read that failed (0: it did not).
func (b *FillBatch) ReadErr() unix.Errno {
	if b.c.ret < 0 {
		return unix.Errno(-b.c.ret)
	}
	return 0
}

// Cookie is the name Prepare gave the batch.
func (b *FillBatch) Cookie() uint64 { return uint64(b.c.cookie) }

// Results holds one Fill* code per reference of a finished batch.
func (b *FillBatch) Results() []uint8 {
	return unsafe.Slice((*uint8)(unsafe.Pointer(b.c.results)), int(b.c.n))
}

// Bytes is the buffer (tests write blocks into it instead of a read).
func (b *FillBatch) Bytes() []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(b.c.buf)), int(b.c.max_blocks)<<PageShift)
}

// FillBatchesLive counts the batches allocated and not freed (tests: a
// fetch that stopped holds none).
func FillBatchesLive() int64 { return int64(C.nasmig_fill_batches_live()) }

// FillPop appends the batches the fill threads finished to out.  One that
// is not the caller's (its fetch stopped before it came back) is the
// caller's to free.
func FillPop(out []*FillBatch) []*FillBatch {
	for c := C.nasmig_fill_pop(); c != nil; {
		next := c.next
		out = append(out, &FillBatch{c: c})
		c = next
	}
	return out
}

// ReadDone completes the batch's read as QEMU does (tests, without QEMU):
// ret 0 sends it to the fill threads, a negative errno back as failed.
func (b *FillBatch) ReadDone(ret int) {
	C.nasmig_lib_read_done(C.uint64_t(uintptr(unsafe.Pointer(b.c))), C.int(ret))
}
