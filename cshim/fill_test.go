package cshim_test

import (
	"syscall"
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
	b.ReadDone(0)
	got := waitFilled(t, 7)
	for i, r := range got[0].Results() {
		if r != cshim.FillMismatch {
			t.Errorf("reference %d outside the read: result %d, want FillMismatch (%d)", i, r, cshim.FillMismatch)
		}
	}
	if e := got[0].ReadErr(); e != 0 {
		t.Errorf("a read that succeeded has ReadErr %v", e)
	}

	// A failed read comes back at once with its errno, nothing filled.
	if _, err := b.Prepare(8, 10, 2, 1); err != nil {
		t.Fatal(err)
	}
	b.ReadDone(-int(syscall.EIO))
	if got := waitFilled(t, 8); got[0].ReadErr() != syscall.EIO {
		t.Errorf("failed read: ReadErr %v, want EIO", got[0].ReadErr())
	}
}

// waitFilled waits for the one batch the fill threads hand back.
func waitFilled(t *testing.T, cookie uint64) []*cshim.FillBatch {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var got []*cshim.FillBatch
	for len(got) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the batch never came back from the fill threads")
		}
		got = cshim.FillPop(got)
		time.Sleep(time.Millisecond)
	}
	if len(got) != 1 || got[0].Cookie() != cookie {
		t.Fatalf("FillPop returned %d batches, first cookie %d; want one, cookie %d", len(got), got[0].Cookie(), cookie)
	}
	return got
}
