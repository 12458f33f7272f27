package cabitest_test

import (
	"bytes"
	"math/rand/v2"
	"testing"
	"time"
	"unsafe"

	"github.com/rs/zerolog"

	"nasmig/cshim"
	"nasmig/cshim/cabitest"
	"nasmig/cshim/cshimtest"
	"nasmig/plugin/fetch"
	"nasmig/plugin/wire"
)

// fillAfterBed is a destination whose source fills references after the
// switch to postcopy: npages referenced pages, each on a block of its own
// (spread blocks apart, so that every reference is a read of its own),
// read by a storage that takes delay per read, one read at a time.
type fillAfterBed struct {
	rb          int
	ram, disk   []byte
	spread      uint64
	npages      uint64
	earlierMsgs int // messages to the source before this bed
}

func newFillAfterBed(t *testing.T, name string, npages, spread uint64, delay time.Duration, o fetch.Options) *fillAfterBed {
	t.Helper()
	file := "/shared/" + name + ".raw"
	diskSize := npages * spread * cshim.PageSize
	ramSize := npages * cshim.PageSize
	cabitest.InstallHost(nil)
	rb := cshim.RAMBlockAdd(name+"-ram", ramSize)
	track := cshim.DiskAdd(name+"-disk", file, diskSize)
	if rb < 0 || track < 0 {
		t.Fatalf("registration: ram block %d, disk %d", rb, track)
	}
	b := &fillAfterBed{rb: rb, spread: spread, npages: npages,
		ram: cshimtest.CMem(t, int(ramSize)), disk: cshimtest.CMem(t, int(diskSize))}
	cshimtest.FillRandom(rand.New(rand.NewPCG(13, uint64(len(name)))), b.disk)
	for i := range b.ram {
		b.ram[i] = 0xee // what the pages held before: never to be seen again
	}
	cabitest.SetDisk(b.disk)
	cabitest.SetRAM(rb, b.ram)
	cabitest.SetReadDelay(delay)
	t.Cleanup(func() { cabitest.SetReadDelay(0) })
	cshim.SetMigKey(cshim.ExpandKey([32]byte{'f', 'a'}))
	cshim.DestReset()
	cshim.StatsReset()
	cshim.SetDestDisk(0, 0, diskSize, track)
	cshim.SetDestFillAfter(true)
	o.Hold = true
	f, err := fetch.Start(zerolog.Nop(), func(uint32) string { return file }, o)
	if err != nil {
		t.Fatal(err)
	}
	cshim.SetDestOn(true)
	t.Cleanup(func() {
		// No page of this bed may still wait when the next test's switch
		// walks every RAM block.
		for p := uint64(0); p < npages; p++ {
			cshim.BeforePageWrite(uint32(rb), p*cshim.PageSize, false)
		}
		cshim.SetDestOn(false)
		cshim.CloseFills()
		f.Stop()
	})
	b.earlierMsgs = len(cabitest.Messages())
	return b
}

func (b *fillAfterBed) block(p uint64) []byte {
	o := p * b.spread * cshim.PageSize
	return b.disk[o : o+cshim.PageSize]
}

func (b *fillAfterBed) page(p uint64) []byte {
	return b.ram[p*cshim.PageSize : (p+1)*cshim.PageSize]
}

// sendRefs sends a reference for every page; page bad's carries a wrong
// hash when withBad.
func (b *fillAfterBed) sendRefs(t *testing.T, bad uint64, withBad bool) {
	t.Helper()
	for p := uint64(0); p < b.npages; p++ {
		h := cshim.HashPageMig(b.block(p))
		if withBad && p == bad {
			h[0] ^= 1
		}
		rec := wire.EncodeRef(wire.Ref{Disk: 0, Offset: p * b.spread * cshim.PageSize, Hash: h})
		if rc := cshim.RefReceived(uint32(b.rb), p*cshim.PageSize, unsafe.Pointer(&b.ram[p*cshim.PageSize]), rec); rc != 0 {
			t.Fatalf("page %d: ref_received %d", p, rc)
		}
	}
}

// fault is postcopy's fault thread handing the library a fault on page p,
// which waits for its reference: the library must take it.
func (b *fillAfterBed) fault(t *testing.T, p uint64) {
	t.Helper()
	if !cshim.DestPageFault(uint32(b.rb), p*cshim.PageSize) {
		t.Fatalf("a fault on page %d, waiting for its reference: not taken by the library", p)
	}
}

// switchToPostcopy runs the three stages at once (no pause between).
func (b *fillAfterBed) switchToPostcopy(t *testing.T) {
	t.Helper()
	for _, stage := range []int{cshim.PostcopySwitch, cshim.PostcopyListen, cshim.PostcopyPlace} {
		if rc := cshim.DestPostcopy(stage); rc != 0 {
			t.Fatalf("postcopy stage %d: %d", stage, rc)
		}
	}
}

// waitFor polls cond for up to d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", d, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// A page the guest touches after the switch, before its fill, is read
// from storage ahead of the background queue: the page the queue reaches
// last is placed while most of the others still wait, and nothing is
// asked from the source.  Its fault is counted as served from storage and
// timed.  A page already filled, or one without a reference, is not the
// library's: QEMU asks the source itself.
func TestGuestTouchReadsAheadOfTheQueue(t *testing.T) {
	const npages = 64
	b := newFillAfterBed(t, "touchahead", npages, 300, 10*time.Millisecond,
		fetch.Options{FaultFallback: 10 * time.Second})
	b.sendRefs(t, 0, false)
	b.switchToPostcopy(t)
	last := uint64(npages - 1) // the queue reads in block order: this one last
	b.fault(t, last)
	var fetchedThen uint64
	waitFor(t, 5*time.Second, "the touched page was not placed", func() bool {
		if !bytes.Equal(b.page(last), b.block(last)) {
			return false
		}
		st := cshim.StatsSnapshot()
		fetchedThen = st.FetchedPages()
		return true
	})
	if fetchedThen > npages/2 {
		t.Errorf("the touched page came with %d of %d pages filled: not ahead of the queue", fetchedThen, npages)
	}
	waitFor(t, 10*time.Second, "not every page filled", func() bool {
		st := cshim.StatsSnapshot()
		return st.PendingPages() == 0
	})
	st := cshim.StatsSnapshot()
	if _, _, requested, _ := cabitest.PostcopyCounts(); requested != 0 {
		t.Errorf("%d pages asked from the source: the storage served the fault in time", requested)
	}
	if st.FaultsFromStorage() != 1 || st.FaultsFromSource() != 0 {
		t.Errorf("faults from storage %d, from the source %d; want 1 and 0", st.FaultsFromStorage(), st.FaultsFromSource())
	}
	med, p99, maxUS := st.FaultLatencyMedianUS(), st.FaultLatencyP99US(), st.FaultLatencyMaxUS()
	if med == 0 || med != p99 || p99 != maxUS || med < 10000 {
		// One fault: median and p99 are its bucket's top, capped at the
		// maximum, which is the sample; at least one 10 ms read.
		t.Errorf("fault latency median %d us, p99 %d, max %d: want one sample of >= 10 ms, all three equal", med, p99, maxUS)
	}
	if cshim.DestPageFault(uint32(b.rb), last*cshim.PageSize) {
		t.Errorf("a fault on a filled page: taken by the library, want QEMU's own request")
	}
	for p := uint64(0); p < npages; p++ {
		if !bytes.Equal(b.page(p), b.block(p)) {
			t.Fatalf("page %d does not hold its block", p)
		}
	}
}

// The storage stalls after the switch: a page the guest touches is asked
// from the source once the fault fallback has passed, and the source's
// page ends the wait (timed, counted as from the source).  Past
// fill-after-max every page still waiting is asked from the source, and
// the fetch reports itself caught up although reads are still out, so the
// source can complete without the storage.
func TestGuestTouchFallsBackToTheSource(t *testing.T) {
	const npages = 32
	b := newFillAfterBed(t, "touchstall", npages, 300, 200*time.Millisecond,
		fetch.Options{FaultFallback: 30 * time.Millisecond, FillAfterMax: 250 * time.Millisecond})
	b.sendRefs(t, 0, false)
	b.switchToPostcopy(t)
	const touched = 20
	start := time.Now()
	b.fault(t, touched)
	waitFor(t, 2*time.Second, "the touched page was never asked from the source", func() bool {
		_, _, requested, last := cabitest.PostcopyCounts()
		return requested >= 1 && last == touched*cshim.PageSize
	})
	if waited := time.Since(start); waited < 30*time.Millisecond {
		t.Errorf("asked the source after %v, before the 30 ms fallback", waited)
	}
	// The source's page arrives through the stream.
	if rc := cshim.BeforePageWrite(uint32(b.rb), touched*cshim.PageSize, false); rc != 0 {
		t.Fatalf("before_page_write: %d", rc)
	}
	st := cshim.StatsSnapshot()
	if st.FaultsFromSource() != 1 || st.FaultsFromStorage() != 0 || st.FaultLatencyMaxUS() < 30000 {
		t.Errorf("faults from the source %d, from storage %d, max latency %d us; want 1, 0, >= 30000",
			st.FaultsFromSource(), st.FaultsFromStorage(), st.FaultLatencyMaxUS())
	}
	// fill-after-max: the rest is asked from the source.
	waitFor(t, 3*time.Second, "fill-after-max did not ask the source for the pages still waiting", func() bool {
		_, _, requested, _ := cabitest.PostcopyCounts()
		return requested >= npages-1
	})
	waitFor(t, 3*time.Second, "no CAUGHT_UP count for every reference after fill-after-max", func() bool {
		for _, m := range cabitest.Messages()[b.earlierMsgs:] {
			if m[0] == cshim.RPCaughtUp {
				if n, err := wire.DecodeCaughtUp(m); err == nil && n == npages {
					return true
				}
			}
		}
		return false
	})
	// The source's pages supersede every reference still waiting.
	for p := uint64(0); p < npages; p++ {
		if rc := cshim.BeforePageWrite(uint32(b.rb), p*cshim.PageSize, false); rc != 0 {
			t.Fatalf("before_page_write %d: %d", p, rc)
		}
	}
	if st := cshim.StatsSnapshot(); st.PendingPages() != 0 {
		t.Errorf("%d pages still pending after the source sent them all", st.PendingPages())
	}
	// Let the stalled reads finish before the fetcher stops: their
	// buffers are the storage's until then.
	cabitest.SetReadDelay(0)
	time.Sleep(1200 * time.Millisecond)
}

// A fault reads ahead: the blocks after the touched one (a file's next
// pages, which the guest reads next) come with it, in one read, long
// before the background queue reaches them.
func TestGuestTouchReadsAhead(t *testing.T) {
	// More than the reads in flight before the switch cover (16 of 1 MiB).
	const npages = 8192
	b := newFillAfterBed(t, "touchreadahead", npages, 1, 20*time.Millisecond,
		fetch.Options{FaultFallback: 10 * time.Second})
	b.sendRefs(t, 0, false)
	b.switchToPostcopy(t)
	const touched = 8000
	b.fault(t, touched)
	waitFor(t, 5*time.Second, "the touched page was not placed", func() bool {
		return bytes.Equal(b.page(touched), b.block(touched))
	})
	for p := uint64(touched); p < touched+32; p++ {
		if !bytes.Equal(b.page(p), b.block(p)) {
			t.Errorf("page %d, %d after the touched one: not read ahead with it", p, p-touched)
		}
	}
	if bytes.Equal(b.page(7000), b.block(7000)) {
		t.Errorf("page 7000 filled already: the background queue, not the fault, may have filled the pages after 8000")
	}
	waitFor(t, 10*time.Second, "not every page filled", func() bool {
		st := cshim.StatsSnapshot()
		return st.PendingPages() == 0
	})
}
