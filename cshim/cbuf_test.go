package cshim_test

import (
	"testing"

	"nasmig/cshim"
)

// A CBuf is zeroed, writable memory of its size until Free; an offset
// outside it panics before any C code sees the address.
func TestCBuf(t *testing.T) {
	b, err := cshim.NewCBuf(3 * cshim.PageSize)
	if err != nil {
		t.Fatal(err)
	}
	if b.Len() != 3*cshim.PageSize || len(b.Bytes()) != b.Len() {
		t.Fatalf("Len %d, Bytes %d, want %d", b.Len(), len(b.Bytes()), 3*cshim.PageSize)
	}
	for i, v := range b.Bytes() {
		if v != 0 {
			t.Fatalf("byte %d is %#x, want 0", i, v)
		}
	}
	b.Bytes()[b.Len()-1] = 1
	func() {
		defer func() {
			if recover() == nil {
				t.Error("FillVerify took a page past the end of its buffer")
			}
		}()
		reqs := []cshim.FetchReq{cshim.NewFetchReq(0, 0, 0, 0)}
		cshim.FillVerify(reqs, b, []uint64{2*cshim.PageSize + 1}, make([]uint8, 1))
	}()
	if err := b.Free(); err != nil {
		t.Fatal(err)
	}
	if b.Len() != 0 || b.Bytes() != nil {
		t.Fatalf("after Free: Len %d, Bytes %v", b.Len(), b.Bytes() != nil)
	}
	if err := b.Free(); err != nil {
		t.Fatalf("second Free: %v", err)
	}
}
