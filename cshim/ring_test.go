package cshim_test

import (
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"

	"nasmig/cshim"
	"nasmig/cshim/cshimtest"
)

// drainRing empties the tracking ring and returns what it held.
func drainRing() []cshim.Rec {
	var all []cshim.Rec
	buf := make([]cshim.Rec, 64)
	for {
		n := cshim.RingPop(buf)
		if n == 0 {
			return all
		}
		all = append(all, buf[:n]...)
	}
}

func seqRecs(first, n int) []cshim.Rec {
	recs := make([]cshim.Rec, n)
	for i := range recs {
		v := uint64(first + i)
		recs[i] = cshim.NewRec(cshim.RecVoid, uint8(v%64), uint32(v%7), v, v*3, ^v)
	}
	return recs
}

func checkSeq(t *testing.T, got []cshim.Rec, first int) {
	t.Helper()
	for i := range got {
		v := uint64(first + i)
		r := &got[i]
		if cshim.RecType(r) != cshim.RecVoid || cshim.RecDisk(r) != int(v%64) || cshim.RecRAMBlock(r) != uint32(v%7) ||
			cshim.RecPage(r) != v || cshim.RecBlock(r) != v*3 || cshim.RecHash(r) != ^v {
			t.Fatalf("record %d: got page %d block %d (want record %d)", i, cshim.RecPage(r), cshim.RecBlock(r), v)
		}
	}
}

func TestRingPushPopOrder(t *testing.T) {
	drainRing()
	if n := cshim.RingPushTest(seqRecs(0, 100)); n != 100 {
		t.Fatalf("pushed %d of 100 into an empty ring of %d", n, testRingSlots)
	}
	// Pop in uneven batches; a zero-length pop takes nothing.
	if cshim.RingPop(nil) != 0 {
		t.Fatalf("RingPop(nil) took records")
	}
	var got []cshim.Rec
	buf := make([]cshim.Rec, 7)
	for len(got) < 100 {
		n := cshim.RingPop(buf)
		if n == 0 {
			t.Fatalf("ring empty after %d records", len(got))
		}
		got = append(got, buf[:n]...)
	}
	checkSeq(t, got, 0)
	if n := cshim.RingPop(buf); n != 0 {
		t.Fatalf("ring not empty: %d more", n)
	}
}

func TestRingFullDrops(t *testing.T) {
	drainRing()
	if n := cshim.RingPushTest(seqRecs(0, testRingSlots+50)); n != testRingSlots {
		t.Fatalf("pushed %d into a ring of %d", n, testRingSlots)
	}
	if n := cshim.RingPushTest(seqRecs(testRingSlots, 1)); n != 0 {
		t.Fatalf("full ring took %d more", n)
	}
	// Producers on QEMU's paths never wait: a full ring drops and counts.
	st0 := cshim.StatsSnapshot()
	lost0 := cshim.LostInvalidations()
	cshim.BlockWriteDone(1, 0, cshim.PageSize)
	page := cshimtest.CMem(t, (1)*cshim.PageSize)
	gen := (*uint32)(unsafe.Pointer(&cshimtest.CMem(t, (1)*cshim.PageSize)[0]))
	cshim.BlockReadDone(1, 0, []uint64{0, cshim.PageSize}, []uint64{0, cshim.PageSize},
		[]unsafe.Pointer{unsafe.Pointer(&page[0]), unsafe.Pointer(&page[0])}, gen, 0)
	st1 := cshim.StatsSnapshot()
	if d := st1.RingDrops() - st0.RingDrops(); d != 3 {
		t.Fatalf("ring_drops grew by %d, want 3 (one write, two read pages)", d)
	}
	if d := cshim.LostInvalidations() - lost0; d != 1 {
		t.Fatalf("lost invalidations grew by %d, want 1", d)
	}
	// One slot freed takes one record, in order after the others.
	buf := make([]cshim.Rec, 1)
	if cshim.RingPop(buf) != 1 {
		t.Fatalf("pop from a full ring failed")
	}
	checkSeq(t, buf, 0)
	if n := cshim.RingPushTest(seqRecs(testRingSlots, 2)); n != 1 {
		t.Fatalf("ring with one free slot took %d", n)
	}
	got := drainRing()
	if len(got) != testRingSlots {
		t.Fatalf("drained %d, want %d", len(got), testRingSlots)
	}
	checkSeq(t, got, 1)
}

func TestRingWraparound(t *testing.T) {
	drainRing()
	r := rand.New(rand.NewPCG(11, 12))
	next, want := 0, 0
	buf := make([]cshim.Rec, testRingSlots)
	for lap := 0; want < 300*testRingSlots; lap++ {
		k := 1 + r.IntN(testRingSlots)
		n := cshim.RingPushTest(seqRecs(next, k))
		next += n
		if n < k && next-want != testRingSlots {
			t.Fatalf("lap %d: ring took %d of %d with %d queued", lap, n, k, next-want)
		}
		m := cshim.RingPop(buf[:1+r.IntN(testRingSlots)])
		checkSeq(t, buf[:m], want)
		want += m
	}
	rest := drainRing()
	checkSeq(t, rest, want)
	if want+len(rest) != next {
		t.Fatalf("pushed %d, popped %d", next, want+len(rest))
	}
}

func TestBlockReadDoneRecords(t *testing.T) {
	drainRing()
	r := rand.New(rand.NewPCG(13, 14))
	pages := cshimtest.CMem(t, (3)*cshim.PageSize)
	cshimtest.FillRandom(r, pages)
	genMem := cshimtest.CMem(t, (1)*cshim.PageSize)
	gen := (*uint32)(unsafe.Pointer(&genMem[0]))
	atomic.StoreUint32(gen, 41)
	ramOffs := []uint64{5 << cshim.PageShift, 9 << cshim.PageShift, 2 << cshim.PageShift}
	diskOffs := []uint64{100 << cshim.PageShift, 101 << cshim.PageShift, 7 << cshim.PageShift}
	var hosts []unsafe.Pointer
	for i := 0; i < 3; i++ {
		hosts = append(hosts, unsafe.Pointer(&pages[i*cshim.PageSize]))
	}
	cshim.BlockReadDone(3, 2, ramOffs, diskOffs, hosts, gen, 41)
	got := drainRing()
	if len(got) != 3 {
		t.Fatalf("%d records, want 3", len(got))
	}
	for i := range got {
		rec := &got[i]
		h := cshim.HashPage(pages[i*cshim.PageSize:])
		if cshim.RecType(rec) != cshim.RecMap || cshim.RecDisk(rec) != 3 || cshim.RecRAMBlock(rec) != 2 ||
			cshim.RecPage(rec) != ramOffs[i]>>cshim.PageShift || cshim.RecBlock(rec) != diskOffs[i]>>cshim.PageShift ||
			cshim.RecHash(rec) != h[0] {
			t.Fatalf("record %d: type %d disk %d rb %d page %d block %d hash %x", i, cshim.RecType(rec), cshim.RecDisk(rec),
				cshim.RecRAMBlock(rec), cshim.RecPage(rec), cshim.RecBlock(rec), cshim.RecHash(rec))
		}
	}
	// A write raced with the read: the slots stay, as VOID.
	cshim.BlockReadDone(3, 2, ramOffs, diskOffs, hosts, gen, 40)
	got = drainRing()
	if len(got) != 3 {
		t.Fatalf("raced read: %d records, want 3", len(got))
	}
	for i := range got {
		if cshim.RecType(&got[i]) != cshim.RecVoid {
			t.Fatalf("raced read: record %d has type %d", i, cshim.RecType(&got[i]))
		}
	}
	// Bad disks and empty reads record nothing.
	cshim.BlockReadDone(-1, 2, ramOffs, diskOffs, hosts, gen, 41)
	cshim.BlockReadDone(cshim.MaxDisks, 2, ramOffs, diskOffs, hosts, gen, 41)
	cshim.BlockReadDone(3, 2, nil, nil, nil, gen, 41)
	cshim.BlockWriteDone(-1, 0, 4096)
	cshim.BlockWriteDone(cshim.MaxDisks, 0, 4096)
	if got := drainRing(); len(got) != 0 {
		t.Fatalf("invalid calls recorded %d records", len(got))
	}
}

func TestBlockWriteDoneRecords(t *testing.T) {
	drainRing()
	cases := []struct {
		off, length  uint64
		first, count uint64
	}{
		{0, 4096, 0, 1},
		{4096, 8192, 1, 2},
		{4095, 2, 0, 2},  // straddles a block boundary
		{512, 512, 0, 1}, // sector inside one block
		{10 << 12, 1 << 30, 10, 1 << 18},
		{(1 << 40) - 4096, 4096, (1 << 28) - 1, 1},
	}
	for _, c := range cases {
		cshim.BlockWriteDone(5, c.off, c.length)
	}
	got := drainRing()
	if len(got) != len(cases) {
		t.Fatalf("%d records for %d writes", len(got), len(cases))
	}
	for i, c := range cases {
		r := &got[i]
		if cshim.RecType(r) != cshim.RecInval || cshim.RecDisk(r) != 5 || cshim.RecBlock(r) != c.first || cshim.RecPage(r) != c.count {
			t.Errorf("write %#x+%#x: type %d disk %d blocks %d+%d, want %d+%d", c.off, c.length, cshim.RecType(r),
				cshim.RecDisk(r), cshim.RecBlock(r), cshim.RecPage(r), c.first, c.count)
		}
	}
}

// TestRingConcurrentProducers runs several writers (QEMU threads calling
// block_write_done) against one consumer: every record is either popped or
// counted as dropped, and each producer's records come out in its order.
func TestRingConcurrentProducers(t *testing.T) {
	drainRing()
	const producers = 6
	perProducer := 20000
	if testing.Short() {
		perProducer = 2000
	}
	st0 := cshim.StatsSnapshot()
	lost0 := cshim.LostInvalidations()

	var wg sync.WaitGroup
	var done atomic.Bool
	for p := 0; p < producers; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			for i := 0; i < perProducer; i++ {
				// The producer id rides in the disk, its sequence in the block.
				cshim.BlockWriteDone(p, uint64(i)<<cshim.PageShift, cshim.PageSize)
				if i%97 == 0 {
					runtime.Gosched()
				}
			}
		}(p)
	}
	go func() { wg.Wait(); done.Store(true) }()

	popped := 0
	last := make([]int64, producers)
	for i := range last {
		last[i] = -1
	}
	buf := make([]cshim.Rec, 37)
	for {
		finished := done.Load()
		n := cshim.RingPop(buf)
		for i := 0; i < n; i++ {
			r := &buf[i]
			p := cshim.RecDisk(r)
			if cshim.RecType(r) != cshim.RecInval || p >= producers || cshim.RecPage(r) != 1 {
				t.Fatalf("unexpected record: type %d disk %d count %d", cshim.RecType(r), p, cshim.RecPage(r))
			}
			seq := int64(cshim.RecBlock(r))
			if seq <= last[p] {
				t.Fatalf("producer %d: record %d after %d", p, seq, last[p])
			}
			last[p] = seq
		}
		popped += n
		if n == 0 {
			if finished {
				break
			}
			runtime.Gosched()
		}
	}
	st1 := cshim.StatsSnapshot()
	dropped := st1.RingDrops() - st0.RingDrops()
	lost := cshim.LostInvalidations() - lost0
	total := producers * perProducer
	t.Logf("%d records pushed: %d popped, %d dropped (ring of %d)", total, popped, dropped, testRingSlots)
	if uint64(popped)+dropped != uint64(total) {
		t.Fatalf("pushed %d != popped %d + dropped %d", total, popped, dropped)
	}
	if lost != dropped {
		t.Fatalf("lost invalidations %d != dropped write records %d", lost, dropped)
	}
}
