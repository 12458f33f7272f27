package cabitest_test

import (
	"bytes"
	"testing"
	"time"

	"nasmig/cshim"
	"nasmig/cshim/cabitest"
	"nasmig/plugin/fetch"
)

// References filled after the switch to postcopy (setup flag FILL_AFTER),
// driven through the ABI as QEMU's loader drives it: the storage is slow,
// so most references still wait at the switch.  At SWITCH fills pause; at
// LISTEN every page still waiting is discarded (its stale content must not
// reach the guest); after PLACE fills place pages whole through the host
// (userfaultfd) instead of copying.  A reference that fails verification
// after the switch is asked from the source through postcopy's page
// request, not RESEND, and the page that comes supersedes it.
func TestFillAfterSwitchoverPlacesPages(t *testing.T) {
	const npages = 48
	const bad = 40 // its reference carries the wrong hash
	b := newFillAfterBed(t, "fillafter", npages, 300, 15*time.Millisecond, fetch.Options{})
	block, page, earlier := b.block, b.page, b.earlierMsgs
	b.sendRefs(t, bad, true)
	time.Sleep(100 * time.Millisecond)

	if rc := cshim.DestPostcopy(cshim.PostcopySwitch); rc != 0 {
		t.Fatalf("switch: %d, want 0 (fills go on after it)", rc)
	}
	fetched := func() uint64 { st := cshim.StatsSnapshot(); return st.FetchedPages() }
	atSwitch := fetched()
	time.Sleep(100 * time.Millisecond) // reads complete; their fills must wait
	if got := fetched(); got != atSwitch {
		t.Fatalf("%d pages filled while fills were paused (%d at the switch)", got-atSwitch, atSwitch)
	}
	if rc := cshim.DestPostcopy(cshim.PostcopyListen); rc != 0 {
		t.Fatalf("listen: %d", rc)
	}
	_, discarded, _, _ := cabitest.PostcopyCounts()
	if atSwitch == 0 || atSwitch >= npages-1 || discarded != npages-atSwitch {
		t.Fatalf("%d filled at the switch, %d discarded: want some of %d filled and every other page discarded", atSwitch, discarded, npages)
	}
	for p := uint64(0); p < npages; p++ {
		if !bytes.Equal(page(p), block(p)) && !bytes.Equal(page(p), make([]byte, cshim.PageSize)) {
			t.Fatalf("page %d is neither filled nor discarded: stale content would reach the guest", p)
		}
	}

	if rc := cshim.DestPostcopy(cshim.PostcopyPlace); rc != 0 {
		t.Fatalf("place: %d", rc)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		placed, _, requested, last := cabitest.PostcopyCounts()
		st := cshim.StatsSnapshot()
		if st.FetchedPages() == npages-1 && requested == 1 && st.PendingPages() == 1 {
			if placed != npages-1-atSwitch || st.FilledAfterSwitchover() != placed {
				t.Fatalf("placed %d (library counts %d), want %d: every fill after the switch places", placed, st.FilledAfterSwitchover(), npages-1-atSwitch)
			}
			if last != bad*cshim.PageSize {
				t.Fatalf("asked the source for offset %#x, want %#x", last, bad*cshim.PageSize)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10 s: fetched %d, placed %d, asked %d, pending %d", st.FetchedPages(), placed, requested, st.PendingPages())
		}
		time.Sleep(5 * time.Millisecond)
	}
	for _, b := range cabitest.Messages()[earlier:] {
		if b[0] == cshim.RPResend {
			t.Errorf("a RESEND after the switch: the source's bitmap is no longer synced, it would be lost")
		}
	}
	// The source's page for the failed reference arrives in postcopy.
	if rc := cshim.BeforePageWrite(uint32(b.rb), bad*cshim.PageSize, false); rc != 0 {
		t.Fatalf("before_page_write: %d", rc)
	}
	if st := cshim.StatsSnapshot(); st.PendingPages() != 0 || st.FromSourceAfterSwitchover() != 1 {
		t.Fatalf("after the source's page: pending %d, from the source %d; want 0 and 1", st.PendingPages(), st.FromSourceAfterSwitchover())
	}
	for p := uint64(0); p < npages; p++ {
		if p != bad && !bytes.Equal(page(p), block(p)) {
			t.Errorf("page %d does not hold its block", p)
		}
	}
	for cshim.DestFinish() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("dest_finish did not complete")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
