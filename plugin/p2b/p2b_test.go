package p2b_test

import (
	"reflect"
	"slices"
	"sync/atomic"
	"testing"
	"unsafe"

	"nasmig/cshim"
	"nasmig/cshim/cshimtest"
	"nasmig/plugin/p2b"
)

func sortedRefs(refs []p2b.PageRef) []p2b.PageRef {
	slices.SortFunc(refs, func(a, b p2b.PageRef) int {
		if a.RAMBlock != b.RAMBlock {
			return int(a.RAMBlock) - int(b.RAMBlock)
		}
		return int(a.Page) - int(b.Page)
	})
	return refs
}

func (e *env) refs(pages ...int) []p2b.PageRef {
	var out []p2b.PageRef
	for _, p := range pages {
		out = append(out, p2b.PageRef{RAMBlock: e.rb, Page: uint64(p)})
	}
	return sortedRefs(out)
}

func TestRegistration(t *testing.T) {
	e := newEnv(t, "registration", 16, 16)
	if rb := cshim.RAMBlockAdd("ram-registration", 999); rb != int(e.rb) {
		t.Fatalf("RAMBlockAdd is not idempotent: %d then %d", e.rb, rb)
	}
	if d := cshim.DiskAdd("node-registration", "other", 1); d != e.disk {
		t.Fatalf("DiskAdd is not idempotent: %d then %d", e.disk, d)
	}
	if got := cshim.RAMBlockName(int(e.rb)); got != "ram-registration" {
		t.Fatalf("RAMBlockName = %q", got)
	}
	if d := cshim.Disk(e.disk); d.NodeName != "node-registration" || d.Filename != "/shared/registration.raw" || d.Size != 16*cshim.PageSize || d.Excluded {
		t.Fatalf("Disk = %+v", d)
	}
	if n := len(cshim.Forward(int(e.rb))); n != 16 {
		t.Fatalf("forward array of %d words, want 16", n)
	}

	// Excluded disks, by node name or filename, are refused every time.
	if err := cshim.SetExclude([]string{"node-excluded", "/shared/excluded2.raw"}); err != nil {
		t.Fatal(err)
	}
	defer cshim.SetExclude(nil)
	for i := 0; i < 2; i++ {
		if d := cshim.DiskAdd("node-excluded", "/shared/x.raw", 1<<20); d != -1 /* -EPERM */ {
			t.Fatalf("excluded node name: DiskAdd = %d, want -EPERM", d)
		}
		if d := cshim.DiskAdd("node-excluded2", "/shared/excluded2.raw", 1<<20); d != -1 {
			t.Fatalf("excluded filename: DiskAdd = %d, want -EPERM", d)
		}
	}
	// Reads from an excluded disk's index never become mappings.
	idx := -1
	for i := 0; i < cshim.DiskCount(); i++ {
		if cshim.Disk(i).NodeName == "node-excluded" {
			idx = i
			if !cshim.Disk(i).Excluded {
				t.Fatalf("disk %d not marked excluded", i)
			}
		}
	}
	if idx < 0 {
		t.Fatalf("excluded disk not in the table")
	}
	// With tracking off, every disk is excluded.
	cshim.SetFlags(false, false, false)
	d := cshim.DiskAdd("node-disabled", "/shared/disabled.raw", 1<<20)
	cshim.SetFlags(true, false, false)
	if d != -1 {
		t.Fatalf("disabled library: DiskAdd = %d, want -EPERM", d)
	}
}

func TestMapAndQuery(t *testing.T) {
	e := newEnv(t, "map", 64, 256)
	st0 := cshim.StatsSnapshot()
	e.read1(3, 10)
	if e.offers(3) {
		t.Fatalf("page offered before the drainer applied the record")
	}
	e.drain()
	if !e.offers(3) {
		t.Fatalf("page 3 not offered after the drain")
	}
	e.wantRef(3, 10)
	e.wantNoRef(4)
	if got := e.m.Mapped(); got != 1 {
		t.Fatalf("Mapped = %d", got)
	}
	if got := e.checkConsistent(); !reflect.DeepEqual(got, map[int]int{3: 10}) {
		t.Fatalf("map = %v", got)
	}

	// A guest CPU write: still in the map, but never a reference.
	e.page(3)[100] ^= 1
	if !e.offers(3) {
		t.Fatalf("the lookup alone does not hash")
	}
	e.wantNoRef(3)
	e.page(3)[100] ^= 1
	e.wantRef(3, 10)

	st1 := cshim.StatsSnapshot()
	if d := st1.MappedPages() - st0.MappedPages(); d != 1 {
		t.Errorf("mapped_pages grew by %d", d)
	}
	if d := st1.RefPages() - st0.RefPages(); d != 2 {
		t.Errorf("ref_pages grew by %d, want 2", d)
	}
	if d := st1.RefMisses() - st0.RefMisses(); d != 1 {
		t.Errorf("ref_misses grew by %d, want 1", d)
	}

	// Out-of-range questions are answered no.
	for _, q := range []struct {
		rb  uint32
		off uint64
	}{{e.rb, 64 << cshim.PageShift}, {e.rb, 1 << 62}, {cshim.MaxRAMBlocks, 0}, {1 << 31, 0}} {
		if cshim.MapOffers(q.rb, q.off) {
			t.Errorf("MapOffers(%d, %#x) = true", q.rb, q.off)
		}
		if _, ok := cshim.RefQuery(q.rb, q.off, unsafe.Pointer(&e.page(3)[0])); ok {
			t.Errorf("RefQuery(%d, %#x) = true", q.rb, q.off)
		}
	}
	// Records that do not fit the tables are ignored by the writer.
	n := cshim.RingPushTest([]cshim.Rec{
		cshim.NewRec(cshim.RecMap, uint8(e.disk), e.rb, 64, 1, 0),                // page past the block
		cshim.NewRec(cshim.RecMap, uint8(e.disk), cshim.MaxRAMBlocks-1, 0, 1, 0), // unregistered RAM block
		cshim.NewRec(cshim.RecMap, 63, e.rb, 5, 1, 0),                            // unregistered disk
		cshim.NewRec(cshim.RecMap, uint8(e.disk), e.rb, 5, 1<<40, 0),             // block past the field
		cshim.NewRec(cshim.RecInval, 63, 0, 1, 0, 0),                             // unregistered disk
		cshim.NewRec(7, uint8(e.disk), e.rb, 5, 1, 0),                            // unknown type
	})
	if n != 6 {
		t.Fatalf("pushed %d", n)
	}
	e.drain()
	if got := e.checkConsistent(); !reflect.DeepEqual(got, map[int]int{3: 10}) {
		t.Fatalf("bad records changed the map: %v", got)
	}
}

func TestRemapPageToAnotherBlock(t *testing.T) {
	e := newEnv(t, "remap", 64, 256)
	e.m.SetMigrating(true)
	e.read1(3, 10)
	e.drain()
	e.wantRef(3, 10)
	e.read1(3, 20)
	e.drain()
	e.wantRef(3, 20)
	if got := e.checkConsistent(); !reflect.DeepEqual(got, map[int]int{3: 20}) {
		t.Fatalf("map = %v", got)
	}
	if got := e.m.Mapped(); got != 1 {
		t.Fatalf("Mapped = %d, want 1", got)
	}
	// The page may have gone out as a reference to block 10: sent again.
	e.m.Sync()
	if got, want := dirtyRec.take(t), e.refs(3); !reflect.DeepEqual(got, want) {
		t.Fatalf("the remap resent %v, want %v", got, want)
	}
	// The old block no longer reaches the page: writing it changes nothing.
	e.writeBlock(10)
	e.m.Sync()
	e.wantRef(3, 20)
	if got := dirtyRec.take(t); len(got) != 0 {
		t.Fatalf("write to the old block resent %v", got)
	}
	// Reading the same block again keeps one mapping.
	e.read1(3, 20)
	e.drain()
	e.wantRef(3, 20)
	if got := e.m.Mapped(); got != 1 {
		t.Fatalf("Mapped = %d after re-reading the same block", got)
	}
}

// A page's mapping record applied after the saver answered from the
// page's older mapping (found by TestModelConcurrent): page 17 reads block
// 110, then 88, then 110 again, the last read racing a write (no record);
// the saver sends the page as a reference to 110 before the drainer has
// applied the read of 88.  Applying it moves the page to block 88, so a
// later write to 110 can no longer reach it: the move itself must send the
// page again.
func TestLateRemapResendsPage(t *testing.T) {
	e := newEnv(t, "late-remap", 64, 256)
	e.m.SetMigrating(true)
	e.read1(17, 110)
	e.drain()
	e.read1(17, 88) // queued, not applied yet
	gen := atomic.LoadUint32(e.gen)
	e.writeBlock(200)                     // some write to the disk while the next read runs
	e.readGen([]int{17}, []int{110}, gen) // raced: recorded as nothing
	e.wantRef(17, 110)                    // answered from the first read's mapping
	e.drain()
	e.writeBlock(110)
	e.m.Sync()
	if got := dirtyRec.take(t); !slices.Contains(got, e.refs(17)[0]) {
		t.Fatalf("page 17 went out as a reference to block 110, was moved to block 88 and block 110 was written: resent %v, want page 17 among them", got)
	}
}

func TestBlockIntoSecondPage(t *testing.T) {
	e := newEnv(t, "second", 64, 256)
	e.read1(3, 10)
	e.drain()
	e.read1(5, 10)
	e.drain()
	if e.offers(3) {
		t.Fatalf("page 3 still offered after block 10 was read into page 5")
	}
	e.wantNoRef(3)
	e.wantRef(5, 10)
	if got := e.checkConsistent(); !reflect.DeepEqual(got, map[int]int{5: 10}) {
		t.Fatalf("map = %v", got)
	}
	if got := e.m.Mapped(); got != 1 {
		t.Fatalf("Mapped = %d, want 1", got)
	}
	e.m.Sync()
	if got := dirtyRec.take(t); len(got) != 0 {
		t.Fatalf("resends outside a migration: %v", got)
	}
	// Both pages in one read: the later page wins.
	e.read([]int{7, 8}, []int{30, 30})
	e.drain()
	if got := e.checkConsistent(); !reflect.DeepEqual(got, map[int]int{5: 10, 8: 30}) {
		t.Fatalf("map = %v", got)
	}
}

func TestInvalidateRange(t *testing.T) {
	e := newEnv(t, "inval", 128, 256)
	e.readRange(0, 100, 100) // pages 0..99 <- blocks 100..199 (two calls)
	e.drain()
	if got := len(e.checkConsistent()); got != 100 {
		t.Fatalf("%d pages mapped, want 100", got)
	}
	st0 := cshim.StatsSnapshot()
	// Bytes [120*4096+100, 150*4096+99] touch blocks 120..150.
	e.write(120*cshim.PageSize+100, 30*cshim.PageSize)
	e.drain()
	mapped := e.checkConsistent()
	for p := 0; p < 100; p++ {
		b := 100 + p
		_, ok := mapped[p]
		if want := b < 120 || b > 150; ok != want {
			t.Errorf("page %d (block %d): mapped %v, want %v", p, b, ok, want)
		}
		if want := b < 120 || b > 150; want {
			e.wantRef(p, b)
		}
	}
	st1 := cshim.StatsSnapshot()
	if d := st1.Invalidations() - st0.Invalidations(); d != 31 {
		t.Errorf("invalidations grew by %d, want 31", d)
	}
	if got := e.m.Mapped(); got != 100-31 {
		t.Errorf("Mapped = %d, want %d", got, 100-31)
	}
	// A write past every mapping, and one to unmapped blocks, drop nothing.
	e.write(0, 100*cshim.PageSize)
	e.write(200*cshim.PageSize, 56*cshim.PageSize)
	e.drain()
	if got := len(e.checkConsistent()); got != 69 {
		t.Fatalf("%d mapped after writes elsewhere, want 69", got)
	}
	// The last byte of a block counts.
	e.write(119*cshim.PageSize+4095, 1)
	e.drain()
	if _, ok := e.checkConsistent()[19]; ok {
		t.Fatalf("a one-byte write to block 119 left page 19 mapped")
	}
	// Not migrating: nothing to resend.
	e.m.Sync()
	if got := dirtyRec.take(t); len(got) != 0 {
		t.Fatalf("resends outside a migration: %v", got)
	}
}

func TestInvalidationDuringMigrationResends(t *testing.T) {
	e := newEnv(t, "resend", 64, 256)
	e.readRange(0, 0, 10)
	e.drain()
	e.m.SetMigrating(true)
	e.writeBlock(2)
	e.write(5*cshim.PageSize, 2*cshim.PageSize)
	e.drain()
	if got := dirtyRec.take(t); len(got) != 0 {
		t.Fatalf("resent before the bitmap sync: %v", got)
	}
	e.m.Sync()
	if got, want := sortedRefs(dirtyRec.take(t)), e.refs(2, 5, 6); !reflect.DeepEqual(got, want) {
		t.Fatalf("resent %v, want %v", got, want)
	}
	e.m.Sync()
	if got := dirtyRec.take(t); len(got) != 0 {
		t.Fatalf("second sync resent %v again", got)
	}
	// Queued resends of a migration that ended are forgotten.
	e.writeBlock(7)
	e.drain()
	e.m.SetMigrating(false)
	e.m.Sync()
	if got := dirtyRec.take(t); len(got) != 0 {
		t.Fatalf("resends after the migration ended: %v", got)
	}
	e.writeBlock(8)
	e.drain() // applied before the migration: nothing to resend
	e.m.SetMigrating(true)
	e.m.Sync()
	if got := dirtyRec.take(t); len(got) != 0 {
		t.Fatalf("a write before the migration resent %v", got)
	}
	if got := len(e.checkConsistent()); got != 10-5 {
		t.Fatalf("%d mapped, want 5", got)
	}
}

func TestReadRacingWriteMapsNothing(t *testing.T) {
	e := newEnv(t, "race", 64, 256)
	e.read1(1, 1)
	e.drain()
	// The read sampled write_gen, then a write to the disk completed before
	// the read's hook ran: whatever the read copied may be stale.
	gen := atomic.LoadUint32(e.gen)
	copy(e.page(2), e.block(2))
	e.writeBlock(2)
	e.readGen([]int{2}, []int{2}, gen) // copies the new content, but the gen moved
	e.drain()
	if e.offers(2) {
		t.Fatalf("a read that raced with a write was mapped")
	}
	// The raced read does not disturb the page's earlier mapping.
	e.readGen([]int{1}, []int{1}, gen)
	e.drain()
	e.wantRef(1, 1)
	// The write's invalidation queued before the read's mapping: the read
	// wins (it saw the new data).
	e.writeBlock(3)
	e.read1(3, 3)
	e.drain()
	e.wantRef(3, 3)
	// The read's mapping queued before the write's invalidation: dropped.
	e.read1(4, 4)
	e.writeBlock(4)
	e.drain()
	e.wantNoRef(4)
}

func TestLostInvalidationsDropEverything(t *testing.T) {
	e := newEnv(t, "lost", 64, 256)
	e.readRange(0, 0, 20)
	e.drain()
	e.m.SetMigrating(true)
	e.m.Sync()
	dirtyRec.take(t)
	// Fill the ring, then a write cannot be recorded.
	fill := make([]cshim.Rec, testRingSlots)
	if n := cshim.RingPushTest(fill); n != testRingSlots {
		t.Fatalf("ring took %d of %d empty records", n, testRingSlots)
	}
	lost0 := cshim.LostInvalidations()
	e.writeBlock(200) // a block no page maps: still everything must go
	if cshim.LostInvalidations() != lost0+1 {
		t.Fatalf("write not counted as lost")
	}
	e.m.Sync()
	if got := len(e.checkConsistent()); got != 0 {
		t.Fatalf("%d pages still mapped after a lost invalidation", got)
	}
	var want []int
	for p := 0; p < 20; p++ {
		want = append(want, p)
		e.wantNoRef(p)
	}
	var ours []p2b.PageRef
	for _, r := range dirtyRec.take(t) {
		if r.RAMBlock == e.rb {
			ours = append(ours, r)
		}
	}
	if got := sortedRefs(ours); !reflect.DeepEqual(got, e.refs(want...)) {
		t.Fatalf("resent %v, want all 20 pages", got)
	}
	// Tracking resumes.
	e.read1(1, 1)
	e.m.Sync()
	e.wantRef(1, 1)
}

// TestLostInvalidationAfterBacklog: a read completed, its mapping waits in
// a long ring; then a write to the same block finds the ring full.  The
// writer drops the whole map, but the waiting mapping must not survive it:
// no invalidation for that write will ever come.
func TestLostInvalidationAfterBacklog(t *testing.T) {
	e := newEnv(t, "backlog", 64, 256)
	e.m.SetMigrating(true)
	e.m.Sync()
	// More queued records than one drain batch, then the read.
	if n := cshim.RingPushTest(make([]cshim.Rec, 5000)); n != 5000 {
		t.Fatalf("ring took %d", n)
	}
	e.read1(3, 7)
	free := testRingSlots - 5001
	if n := cshim.RingPushTest(make([]cshim.Rec, free)); n != free {
		t.Fatalf("ring took %d of %d", n, free)
	}
	lost0 := cshim.LostInvalidations()
	e.writeBlock(7)
	if cshim.LostInvalidations() != lost0+1 {
		t.Fatalf("write not lost")
	}
	e.m.Sync()
	if ref, ok := e.query(3); ok {
		t.Fatalf("page 3 offered as block %d, whose content changed by a lost write (stale mapping)",
			ref.Offset>>cshim.PageShift)
	}
	if e.offers(3) {
		t.Fatalf("page 3 still mapped after a lost invalidation")
	}
}

// TestEvictedPageResent: a page went out as a reference to a block, then
// the block was read into another page (one page per block), then written.
// The first page still holds the old content and the destination will look
// for it in the block: the page must be sent again.
func TestEvictedPageResent(t *testing.T) {
	e := newEnv(t, "evict", 64, 256)
	e.m.SetMigrating(true)
	e.m.Sync()
	e.read1(3, 10)
	e.drain()
	e.wantRef(3, 10) // sent as a reference
	e.read1(5, 10)   // block 10 moves to page 5
	e.drain()
	e.writeBlock(10)
	e.m.Sync()
	got := dirtyRec.take(t)
	if !slices.Contains(got, p2b.PageRef{RAMBlock: e.rb, Page: 3}) {
		t.Fatalf("page 3 went out as a reference to block 10, which changed, and is not resent (resent: %v)", got)
	}
	if !slices.Contains(got, p2b.PageRef{RAMBlock: e.rb, Page: 5}) {
		t.Fatalf("page 5 not resent (resent: %v)", got)
	}
}

// TestOverlappingReadsMapNothing: two reads in flight into one page (the
// data may land in either order) give the page no mapping from either.
func TestOverlappingReadsMapNothing(t *testing.T) {
	e := newEnv(t, "overlap", 64, 256)
	h := func(ps ...int) []unsafe.Pointer {
		var out []unsafe.Pointer
		for _, p := range ps {
			out = append(out, e.host(p))
		}
		return out
	}
	done := func(p, b int) {
		cshim.BlockReadDone(e.disk, e.rb, []uint64{uint64(p) << cshim.PageShift}, []uint64{uint64(b) << cshim.PageShift},
			h(p), e.gen, atomic.LoadUint32(e.gen))
	}
	// A: page 3 <- block 10.  B: page 3 <- block 11, page 4 <- block 12.
	cshim.BlockReadBegin(h(3))
	cshim.BlockReadBegin(h(3, 4))
	copy(e.page(3), e.block(11))
	copy(e.page(3), e.block(10)) // A's data landed last, but B completes last
	copy(e.page(4), e.block(12))
	done(3, 10)
	done(3, 11)
	done(4, 12)
	cshim.BlockReadEnd(h(3))
	cshim.BlockReadEnd(h(3, 4))
	e.drain()
	if got := e.checkConsistent(); !reflect.DeepEqual(got, map[int]int{4: 12}) {
		t.Fatalf("map = %v, want only page 4 (page 3 had two reads in flight)", got)
	}
	e.wantNoRef(3)
	// Once both ended, reads of the page map again; reads one after the
	// other are no overlap.
	e.read1(3, 10)
	e.read1(3, 11)
	e.drain()
	e.wantRef(3, 11)

	// A read that overlaps an earlier one still in flight also maps nothing,
	// and the earlier one (ending later) neither.
	cshim.BlockReadBegin(h(5))
	e.read1(5, 20) // begins, completes and ends while the other is in flight
	copy(e.page(5), e.block(21))
	done(5, 21)
	cshim.BlockReadEnd(h(5))
	e.drain()
	if e.offers(5) {
		t.Fatalf("page 5 mapped although two reads targeted it at once")
	}
}

// TestInflightTableOverflowFailsClosed: when the table of pages targeted
// by reads in flight is full, no read completing meanwhile maps anything.
func TestInflightTableOverflowFailsClosed(t *testing.T) {
	e := newEnv(t, "overflow", 64, 256)
	const slots = 1 << 15                                 // INFLIGHT_SLOTS in cshim/inflight.c
	fake := cshimtest.CMem(t, (slots+100)*cshim.PageSize) // never touched: addresses only
	var hosts []unsafe.Pointer
	for i := 0; i < slots+100; i++ {
		hosts = append(hosts, unsafe.Pointer(&fake[i*cshim.PageSize]))
	}
	cshim.BlockReadBegin(hosts)
	e.read1(1, 1)
	e.drain()
	if e.offers(1) {
		cshim.BlockReadEnd(hosts)
		t.Fatalf("a read completing while the in-flight table overflowed was mapped")
	}
	cshim.BlockReadEnd(hosts)
	e.read1(1, 1)
	e.drain()
	e.wantRef(1, 1)
}

func TestDropRAMBlock(t *testing.T) {
	e := newEnv(t, "droprb", 64, 256)
	e.m.SetMigrating(true)
	e.read([]int{1, 2, 3, 4}, []int{10, 11, 12, 13})
	e.drain()
	// A write still queued when the block goes: its resend concerns a page
	// that no longer exists.
	e.writeBlock(11)
	if got := e.m.DropRAMBlock(e.rb); got != 3 {
		t.Fatalf("DropRAMBlock = %d, want 3 (page 2's mapping went with the write)", got)
	}
	if got := e.m.Mapped(); got != 0 {
		t.Fatalf("Mapped = %d after the drop, want 0", got)
	}
	if got := e.checkConsistent(); len(got) != 0 {
		t.Fatalf("map after the drop = %v", got)
	}
	for p := 1; p <= 4; p++ {
		e.wantNoRef(p)
	}
	e.m.Sync()
	if got := dirtyRec.take(t); len(got) != 0 {
		t.Fatalf("pages of the removed block marked dirty: %v", got)
	}
	// The reverse index forgot them too: the blocks map afresh, and moving
	// one to another page resends nothing of the old block.
	e.read([]int{7, 8}, []int{10, 12})
	e.drain()
	e.m.Sync()
	if got := dirtyRec.take(t); len(got) != 0 {
		t.Fatalf("re-mapping after the drop resent %v", got)
	}
	e.wantRef(7, 10)
	e.wantRef(8, 12)
	if got := e.m.Mapped(); got != 2 {
		t.Fatalf("Mapped = %d, want 2", got)
	}
	if got := e.m.DropRAMBlock(uint32(cshim.MaxRAMBlocks - 1)); got != 0 {
		t.Fatalf("DropRAMBlock of an unregistered handle = %d", got)
	}
}
