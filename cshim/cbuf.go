package cshim

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// CBuf is memory outside the Go heap, for C and QEMU's threads to write
// while Go goes on (a storage read in flight): the garbage collector never
// moves or frees it.  It lives until Free, which the owner calls once
// nothing writes into it any more.
type CBuf struct {
	mem []byte
}

// NewCBuf maps n bytes of zeroed, page-aligned memory.
func NewCBuf(n int) (*CBuf, error) {
	mem, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, err
	}
	return &CBuf{mem: mem}, nil
}

// Bytes is the buffer's memory (nil after Free).
func (b *CBuf) Bytes() []byte { return b.mem }

// Len is the buffer's size in bytes (0 after Free).
func (b *CBuf) Len() int { return len(b.mem) }

// Free unmaps the buffer.
func (b *CBuf) Free() error {
	if b.mem == nil {
		return nil
	}
	err := unix.Munmap(b.mem)
	b.mem = nil
	return err
}

// at is the C address of bytes [off, off+n) of b; it panics when they are
// not all inside.
func (b *CBuf) at(off, n uint64) unsafe.Pointer {
	if off >= uint64(len(b.mem)) || n > uint64(len(b.mem))-off {
		panic(fmt.Sprintf("cshim: bytes [%d, +%d) outside a buffer of %d", off, n, len(b.mem)))
	}
	return unsafe.Pointer(&b.mem[off])
}
