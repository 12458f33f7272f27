package cshim_test

import (
	"testing"
	"time"

	"nasmig/cshim"
)

// A batch's buffer is zeroed memory of its size; a read larger than it is
// refused before QEMU sees it, and a reference to a block outside its read
// (a bug on Go's side) fails verification instead of filling anything.
func TestFillBatch(t *testing.T) {
	b, err := cshim.NewFillBatch(2)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Free()
	if n := len(b.Bytes()); n != 2*cshim.PageSize {
		t.Fatalf("buffer of %d bytes, want %d", n, 2*cshim.PageSize)
	}
	for i, v := range b.Bytes() {
		if v != 0 {
			t.Fatalf("byte %d is %#x, want 0", i, v)
		}
	}
	if _, err := b.Prepare(1, 10, 3, 1); err == nil {
		t.Fatal("a 3-block read was prepared in a 2-block batch")
	}
	// More references than blocks: several pages may name one block.
	reqs, err := b.Prepare(7, 10, 2, 5)
	if err != nil {
		t.Fatal(err)
	}
	for i := range reqs {
		reqs[i] = cshim.NewFetchReq(0, uint64(i), 0, 12+uint64(i)) // past the read's blocks 10 and 11
	}
	b.Fill()
	deadline := time.Now().Add(10 * time.Second)
	var got []*cshim.FillBatch
	for len(got) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the batch never came back from the fill threads")
		}
		got = cshim.FillPop(got)
		time.Sleep(time.Millisecond)
	}
	if len(got) != 1 || got[0].Cookie() != 7 {
		t.Fatalf("FillPop returned %d batches, first cookie %d; want one, cookie 7", len(got), got[0].Cookie())
	}
	for i, r := range got[0].Results() {
		if r != cshim.FillMismatch {
			t.Errorf("reference %d outside the read: result %d, want FillMismatch (%d)", i, r, cshim.FillMismatch)
		}
	}
}
