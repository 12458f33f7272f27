package cabitest_test

import (
	"testing"
	"time"
	"unsafe"

	"nasmig/cshim"
	"nasmig/plugin/wire"
)

// TestFetchRateLibraryOnly measures the destination path inside the
// library alone (request ring, scheduling, coalescing, verification and
// fill, the Go worker's wake-ups) against a host whose reads complete at
// once from memory: the ceiling the library puts on a fetch, printed
// beside a plain memcpy of the same bytes.  A figure, not a pass/fail
// threshold (the machines are shared).
func TestFetchRateLibraryOnly(t *testing.T) {
	const npages = 64 << 10 // 256 MiB
	// The fills enter this side's map, as in QEMU, where the map writer
	// always runs.
	startDrainer(t)
	dst := startDestination(t, "rate", npages, 11, false, false)
	rb, ram, disk := dst.rb, dst.ram, dst.disk
	recs := make([][]byte, npages)
	for p := range recs {
		recs[p] = wire.EncodeRef(wire.Ref{Disk: 0, Offset: uint64(p) * cshim.PageSize,
			Hash: cshim.HashPageMig(disk[p*cshim.PageSize : (p+1)*cshim.PageSize])})
	}

	start := time.Now()
	for p := 0; p < npages; p++ {
		for {
			rc := cshim.RefReceived(uint32(rb), uint64(p)*cshim.PageSize, unsafe.Pointer(&ram[p*cshim.PageSize]), recs[p])
			if rc == 0 {
				break
			}
			if rc != -11 { // -EAGAIN: the request ring is full
				t.Fatalf("page %d: ref_received %d", p, rc)
			}
			time.Sleep(50 * time.Microsecond)
		}
	}
	for {
		st := cshim.StatsSnapshot()
		if st.FetchedPages() >= npages {
			break
		}
		if time.Since(start) > 60*time.Second {
			t.Fatalf("fetched %d of %d after 60 s", st.FetchedPages(), npages)
		}
		time.Sleep(time.Millisecond)
	}
	took := time.Since(start)
	st := cshim.StatsSnapshot()
	copyStart := time.Now()
	copy(ram, disk)
	copyTook := time.Since(copyStart)
	mb := float64(npages*cshim.PageSize) / 1e6
	t.Logf("library-only fetch: %.0f MB in %v = %.0f MB/s (%d reads, mean %.0f KiB); memcpy of the same bytes: %.0f MB/s",
		mb, took.Round(time.Millisecond), mb/took.Seconds(), st.FetchReads(), float64(st.FetchBytes())/float64(st.FetchReads())/1024,
		mb/copyTook.Seconds())
	for cshim.DestFinish() != 0 {
		time.Sleep(time.Millisecond)
	}
}
