package fetch

import (
	"math/rand/v2"
	"sort"
	"testing"

	"nasmig/cshim"
)

// The backlog stays in (disk, block) order however references arrive: in
// batches, in any order, with duplicates, while reads take from its front.
func TestBacklogStaysSorted(t *testing.T) {
	r := rand.New(rand.NewPCG(2026, 12))
	f := &Fetcher{}
	var all []item
	for pass := 0; pass < 200; pass++ {
		for i := r.IntN(300); i > 0; i-- {
			it := item{req: cshim.NewFetchReq(0, uint64(len(all)), uint32(r.IntN(3)), uint64(r.IntN(5000)))}
			f.queued = append(f.queued, it)
			all = append(all, it)
		}
		f.sortQueued()
		if !sort.SliceIsSorted(f.queued, func(i, j int) bool { return itemLess(&f.queued[i], &f.queued[j]) }) {
			t.Fatalf("pass %d: backlog of %d out of order", pass, len(f.queued))
		}
		// A read takes a run from the front, as issue does.
		n := min(len(f.queued), r.IntN(100))
		f.queued = append(f.queued[:0], f.queued[n:]...)
		f.sorted = len(f.queued)
	}
	t.Logf("%d references queued over 200 passes", len(all))
}

func TestMergeKeepsEveryItem(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	f := &Fetcher{}
	want := map[uint64]bool{}
	page := uint64(0)
	for pass := 0; pass < 50; pass++ {
		for i := r.IntN(500); i > 0; i-- {
			f.queued = append(f.queued, item{req: cshim.NewFetchReq(0, page, uint32(r.IntN(2)), uint64(r.IntN(1000)))})
			want[page] = true
			page++
		}
		f.sortQueued()
	}
	if len(f.queued) != len(want) {
		t.Fatalf("%d items after merging, want %d", len(f.queued), len(want))
	}
	for _, it := range f.queued {
		if !want[it.req.Page()] {
			t.Fatalf("page %d twice or unknown", it.req.Page())
		}
		delete(want, it.req.Page())
	}
}
