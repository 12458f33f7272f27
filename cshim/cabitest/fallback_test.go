package cabitest_test

import (
	"math/rand/v2"
	"testing"
	"time"
	"unsafe"

	"github.com/rs/zerolog"

	"nasmig/cshim"
	"nasmig/cshim/cabitest"
	"nasmig/cshim/cshimtest"
	"nasmig/plugin/fetch"
	"nasmig/plugin/p2b"
	"nasmig/plugin/wire"
)

// destination is one incoming migration's state in the library, as QEMU's
// loader sets it up: a RAM block, a shared disk image in C memory served by
// the test host's read_disk, and the fetcher running.
type destination struct {
	rb, track int // RAM block handle, this side's tracking handle of the disk
	ram, disk []byte
}

// startDestination registers NAME-ram and NAME-disk (/shared/NAME.raw) of
// npages pages, fills the disk from seed and starts the fetcher (hold: a
// live migration with a return path; handBack: it may hand references back
// to the source); all of it ends with the test.
func startDestination(t *testing.T, name string, npages int, seed uint64, hold, handBack bool) destination {
	t.Helper()
	file := "/shared/" + name + ".raw"
	size := uint64(npages) * cshim.PageSize
	cabitest.InstallHost(nil)
	rb := cshim.RAMBlockAdd(name+"-ram", size)
	track := cshim.DiskAdd(name+"-disk", file, size)
	if rb < 0 || track < 0 {
		t.Fatalf("registration: ram block %d, disk %d", rb, track)
	}
	d := destination{rb: rb, track: track, ram: cshimtest.CMem(t, int(size)), disk: cshimtest.CMem(t, int(size))}
	cshimtest.FillRandom(rand.New(rand.NewPCG(seed, seed)), d.disk)
	cabitest.SetDisk(d.disk)
	cshim.SetMigKey(cshim.ExpandKey([32]byte{'m', 'i', 'g'}))
	cshim.DestReset()
	cshim.StatsReset()
	cshim.SetDestDisk(0, 0, size, track)
	f, err := fetch.Start(zerolog.Nop(), func(uint32) string { return file }, fetch.Options{Hold: hold, HandBack: handBack})
	if err != nil {
		t.Fatal(err)
	}
	cshim.SetDestOn(true)
	t.Cleanup(func() {
		cshim.SetDestOn(false)
		f.Stop()
		// Every read ended before Stop returned: it freed every batch
		// (each incoming migration once kept its read buffers, 16 MiB).
		if n := cshim.FillBatchesLive(); n != 0 {
			t.Errorf("%d read batches left after the fetch stopped", n)
		}
	})
	return d
}

// splitMessages separates what the destination sent to the source into
// CAUGHT_UP counts and the rest; a CAUGHT_UP in front of a message means
// the source read that message first.
func splitMessages(t *testing.T, msgs [][]byte) (others [][]byte, caughtUp []uint64) {
	t.Helper()
	for _, b := range msgs {
		if len(b) > 0 && b[0] == cshim.RPCaughtUp {
			n, err := wire.DecodeCaughtUp(b)
			if err != nil {
				t.Fatal(err)
			}
			if len(caughtUp) > 0 && n <= caughtUp[len(caughtUp)-1] {
				t.Errorf("caught-up counts %v then %d: each report must add references", caughtUp, n)
			}
			caughtUp = append(caughtUp, n)
			continue
		}
		if len(caughtUp) > 0 && caughtUp[len(caughtUp)-1] == uint64(cshim.RefsReceived()) {
			t.Errorf("message % x came after the caught-up report of every reference", b[:min(len(b), 4)])
		}
		others = append(others, b)
	}
	return others, caughtUp
}

// The destination's side of a live migration, driven through the ABI as
// QEMU's loader drives it, with a host whose read_disk reads a disk image
// in memory: references whose block verifies fill their page and enter this
// side's map (the next hop sends them again); one whose block does not
// verify is asked from the source in full (NASMIG_RP_RESEND), and the full
// page that follows recovers it (fallbacks).
func TestDestinationFillsMapsAndAsksForFailedPages(t *testing.T) {
	const npages = 8
	const bad = 5 // the page whose reference carries the wrong hash
	dst := startDestination(t, "fallback", npages, 7, true, false)
	rb, ram, disk := dst.rb, dst.ram, dst.disk
	earlier := len(cabitest.Messages()) // earlier tests' messages stay
	m := p2b.New()

	for p := uint64(0); p < npages; p++ {
		block := disk[p*cshim.PageSize : (p+1)*cshim.PageSize]
		h := cshim.HashPageMig(block)
		if p == bad {
			h[1] ^= 1 // the block changed after the source hashed its page
		}
		rec := wire.EncodeRef(wire.Ref{Disk: 0, Offset: p * cshim.PageSize, Hash: h})
		if rc := cshim.RefReceived(uint32(rb), p*cshim.PageSize, unsafe.Pointer(&ram[p*cshim.PageSize]), rec); rc != 0 {
			t.Fatalf("page %d: ref_received %d", p, rc)
		}
	}
	// The fetch tells the source it caught up with all npages references
	// once the good ones are filled and the bad one asked for, and only
	// after asking: the source must mark that page dirty before it reads
	// the count, or its final pass would miss the page.
	deadline := time.Now().Add(10 * time.Second)
	var asks [][]byte
	for {
		var caughtUp []uint64
		asks, caughtUp = splitMessages(t, cabitest.Messages()[earlier:])
		if n := len(caughtUp); n > 0 && caughtUp[n-1] == npages {
			break
		}
		if time.Now().After(deadline) {
			st := cshim.StatsSnapshot()
			t.Fatalf("after 10 s: fetched %d of %d, messages %d, caught up %v", st.FetchedPages(), npages-1, len(asks), caughtUp)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if st := cshim.StatsSnapshot(); st.FetchedPages() != npages-1 || len(asks) != 1 {
		t.Fatalf("caught up with %d references, but fetched %d (want %d) and %d messages besides (want 1)", npages, st.FetchedPages(), npages-1, len(asks))
	}
	for p := uint64(0); p < npages; p++ {
		got, want := ram[p*cshim.PageSize:(p+1)*cshim.PageSize], disk[p*cshim.PageSize:(p+1)*cshim.PageSize]
		if filled := string(got) == string(want); filled != (p != bad) {
			t.Errorf("page %d: filled %v, want %v", p, filled, p != bad)
		}
	}
	msg, err := wire.DecodeSourceMsg(asks[0])
	want := wire.SourceMsg{Kind: cshim.RPResend, Disk: 0, DiskOffset: bad * cshim.PageSize, RAMOffset: bad * cshim.PageSize, RAMBlock: "fallback-ram"}
	if err != nil || msg != want {
		t.Fatalf("message to the source: %+v (%v), want %+v", msg, err, want)
	}
	if st := cshim.StatsSnapshot(); st.PendingPages() != 1 || st.VerifyFailures() != 1 {
		t.Fatalf("pending %d, verify failures %d: want 1 and 1", st.PendingPages(), st.VerifyFailures())
	}

	// The source's full page arrives: QEMU's loader asks before writing it.
	if rc := cshim.BeforePageWrite(uint32(rb), bad*cshim.PageSize, false); rc != 0 {
		t.Fatalf("before_page_write: %d", rc)
	}
	if st := cshim.StatsSnapshot(); st.PendingPages() != 0 || st.Fallbacks() != 1 {
		t.Fatalf("after the full page: pending %d, fallbacks %d; want 0 and 1", st.PendingPages(), st.Fallbacks())
	}
	for cshim.DestFinish() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("dest_finish did not complete")
		}
		time.Sleep(5 * time.Millisecond)
	}

	// The filled pages are this side's map now, under its own tracking key.
	m.Sync()
	for p := uint64(0); p < npages; p++ {
		if offers := cshim.MapOffers(uint32(rb), p*cshim.PageSize); offers != (p != bad) {
			t.Errorf("page %d: map offers %v, want %v", p, offers, p != bad)
		}
	}
	if _, ok := cshim.RefQuery(uint32(rb), 0, unsafe.Pointer(&ram[0])); !ok {
		t.Errorf("a filled page is not offered as a reference for the next hop")
	}

	// As the next hop's source: the destination hands blocks 4-6 back
	// (NASMIG_RP_SEND_FULL).  The pages still mapped to them (not bad's:
	// it never verified) are marked dirty and go once in full; the
	// mappings stay.
	var dirty []uint64
	cabitest.SetMarkDirty(func(_ uint32, off, _ uint64) { dirty = append(dirty, off/cshim.PageSize) })
	defer cabitest.SetMarkDirty(nil)
	cshim.StatsReset()
	if n := cshim.SendFull(dst.track, bad-1, 3); n != 2 || len(dirty) != 2 || dirty[0] != bad-1 || dirty[1] != bad+1 {
		t.Fatalf("send_full of blocks %d-%d: %d pages marked, dirty %v; want pages %d and %d", bad-1, bad+1, n, dirty, bad-1, bad+1)
	}
	if got := cshim.SendFullOutstanding(); got != 2 {
		t.Errorf("%d pages outstanding, want 2", got)
	}
	for pass := 0; pass < 2; pass++ {
		for _, p := range []uint64{bad - 1, bad + 1} {
			_, ok := cshim.RefQuery(uint32(rb), p*cshim.PageSize, unsafe.Pointer(&ram[p*cshim.PageSize]))
			if ok != (pass == 1) {
				t.Errorf("pass %d, page %d: reference %v, want %v (in full once, then references again)", pass, p, ok, pass == 1)
			}
		}
	}
	if st := cshim.StatsSnapshot(); st.SentFull() != 2 || cshim.SendFullOutstanding() != 0 {
		t.Errorf("sent in full %d, outstanding %d: want 2 and 0", st.SentFull(), cshim.SendFullOutstanding())
	}
	cshim.SendFullReset()
}
