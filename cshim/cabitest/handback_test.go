package cabitest_test

import (
	"bytes"
	"testing"
	"time"
	"unsafe"

	"nasmig/cshim"
	"nasmig/cshim/cabitest"
	"nasmig/plugin/p2b"
	"nasmig/plugin/wire"
)

// A storage far slower than the migration link: the fetch hands the
// references it would read last back to the source (NASMIG_RP_SEND_FULL,
// contiguous blocks from the back of its backlog), keeps them pending
// until their pages come in full, and reads the rest from the front.
// Here the test is the source: it answers every message with the pages in
// full, as QEMU's loader writes them.  Every page ends filled from the
// disk or written in full, none twice, none missing.
func TestFetchHandsBackWhenBehind(t *testing.T) {
	const npages = 16 << 10 // 64 MiB, 64 reads of 1 MiB
	cabitest.SetReadDelay(40 * time.Millisecond)
	t.Cleanup(func() { cabitest.SetReadDelay(0) })
	dst := startDestination(t, "handback", npages, 13, true, true)
	rb, ram, disk := dst.rb, dst.ram, dst.disk
	page := func(b []byte, p uint64) []byte { return b[p*cshim.PageSize : (p+1)*cshim.PageSize] }
	m := p2b.New()

	for p := uint64(0); p < npages; p++ {
		rec := wire.EncodeRef(wire.Ref{Disk: 0, Offset: p * cshim.PageSize, Hash: cshim.HashPageMig(page(disk, p))})
		for {
			rc := cshim.RefReceived(uint32(rb), p*cshim.PageSize, unsafe.Pointer(&ram[p*cshim.PageSize]), rec)
			if rc == 0 {
				break
			}
			if rc != -11 { // -EAGAIN: the request ring is full
				t.Fatalf("page %d: ref_received %d", p, rc)
			}
			time.Sleep(time.Millisecond)
		}
	}

	// The source: send in full what the destination hands back, each
	// message's pages answerDelay after it came (a link with its pass still
	// under way), so the fetch may finish its part while pages handed back
	// are still on their way: it must not report every reference caught
	// up before they come.
	const answerDelay = 300 * time.Millisecond
	var seenAt []time.Time
	full := map[uint64]bool{}
	earlier := len(cabitest.Messages()) // earlier tests' messages stay
	answered := 0
	deadline := time.Now().Add(60 * time.Second)
	for {
		asks, caughtUp := splitMessages(t, cabitest.Messages()[earlier:])
		st := cshim.StatsSnapshot()
		if n := len(caughtUp); n > 0 && caughtUp[n-1] == npages && st.PendingPages() > 0 {
			// Pages only leave pending now; reported before this read, the
			// report came with pages handed back and not yet come.
			t.Fatalf("caught up with every reference reported while %d pages were pending", st.PendingPages())
		}
		if st.PendingPages() == 0 {
			break
		}
		for len(seenAt) < len(asks) {
			seenAt = append(seenAt, time.Now())
		}
		for ; answered < len(asks) && time.Since(seenAt[answered]) >= answerDelay; answered++ {
			m, err := wire.DecodeSourceMsg(asks[answered])
			if err != nil || m.Kind != cshim.RPSendFull || m.Disk != 0 {
				t.Fatalf("message %d to the source: %+v (%v), want SEND_FULL of disk 0", answered, m, err)
			}
			first := m.DiskOffset / cshim.PageSize
			for p := first; p < first+uint64(m.Blocks); p++ { // page p holds block p here
				if rc := cshim.BeforePageWrite(uint32(rb), p*cshim.PageSize, false); rc != 0 {
					t.Fatalf("before_page_write of page %d: %d", p, rc)
				}
				copy(page(ram, p), page(disk, p))
				full[p] = true
			}
		}
		if time.Now().After(deadline) {
			st := cshim.StatsSnapshot()
			t.Fatalf("after 60 s: %d pending, %d fetched, %d handed back", st.PendingPages(), st.FetchedPages(), st.HandedBack())
		}
		time.Sleep(5 * time.Millisecond)
	}
	for cshim.DestFinish() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("dest_finish did not complete")
		}
		time.Sleep(5 * time.Millisecond)
	}

	st := cshim.StatsSnapshot()
	if st.HandedBack() == 0 || len(full) == 0 {
		t.Fatalf("nothing handed back (handed back %d, sent in full %d) with a fetch of %d MiB at 25 MiB/s",
			st.HandedBack(), len(full), npages>>8)
	}
	if st.FetchedPages()+uint64(len(full)) != npages {
		t.Errorf("fetched %d + sent in full %d, want %d in all", st.FetchedPages(), len(full), npages)
	}
	// The back of the backlog went, never its front (the reads' end), in
	// runs of contiguous blocks: no more runs than messages.
	runs := 0
	for p := uint64(0); p < npages; p++ {
		if full[p] && (p == 0 || !full[p-1]) {
			runs++
		}
	}
	if full[0] || runs > answered {
		t.Errorf("handed back the first page %v; %d runs of pages in %d messages", full[0], runs, answered)
	}
	// And then, with every page filled or come, it caught up with all.
	for {
		if _, caughtUp := splitMessages(t, cabitest.Messages()[earlier:]); len(caughtUp) > 0 && caughtUp[len(caughtUp)-1] == npages {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no caught-up report of every reference after the last page came")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !bytes.Equal(ram, disk) {
		t.Error("RAM differs from the disk after the fetch and the full pages")
	}
	// Every page, filled or come in full holding its block, is this side's
	// map: hand-back must not cost the next migration its references.
	m.Sync()
	unmapped := 0
	for p := uint64(0); p < npages; p++ {
		if !cshim.MapOffers(uint32(rb), p*cshim.PageSize) {
			unmapped++
		}
	}
	if unmapped != 0 {
		t.Errorf("%d of %d pages not mapped after the migration (%d came in full)", unmapped, npages, len(full))
	}
	t.Logf("%d pages: %d fetched, %d handed back and sent in full, %d messages", npages, st.FetchedPages(), len(full), answered)
}
