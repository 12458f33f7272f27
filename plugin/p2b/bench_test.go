package p2b_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"nasmig/cshim"
	"nasmig/cshim/cshimtest"
	"nasmig/plugin/p2b"
)

// benchMap is a warm map shared by the benchmarks: benchPages pages, page p
// mapped to block p, page content cycling over 64 pages of C memory.
const benchPages = 1 << 16

var benchFix struct {
	once    sync.Once
	rb      uint32
	disk    int
	hostbuf []byte
	err     error
}

func mmapLeak(n int) ([]byte, error) {
	// Lives as long as the process: the C map keeps its words anyway.
	return unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
}

func benchMap(b *testing.B) (uint32, []byte) {
	b.Helper()
	f := &benchFix
	f.once.Do(func() {
		rb := cshim.RAMBlockAdd("bench-warm", benchPages*cshim.PageSize)
		f.disk = cshim.DiskAdd("bench-warm", "/shared/bench-warm.raw", benchPages*cshim.PageSize)
		if rb < 0 || f.disk < 0 {
			f.err = fmt.Errorf("registration: %d %d", rb, f.disk)
			return
		}
		f.rb = uint32(rb)
		if f.hostbuf, f.err = mmapLeak(64 * cshim.PageSize); f.err != nil {
			return
		}
		cshimtest.FillRandom(rand.New(rand.NewPCG(5, 5)), f.hostbuf)
		m := p2b.New()
		genMem, err := mmapLeak(cshim.PageSize)
		if err != nil {
			f.err = err
			return
		}
		genp := (*uint32)(unsafe.Pointer(&genMem[0]))
		ramOffs := make([]uint64, 64)
		hosts := make([]unsafe.Pointer, 64)
		for p := 0; p < benchPages; p += 64 {
			for j := range ramOffs {
				ramOffs[j] = uint64(p+j) << cshim.PageShift
				hosts[j] = unsafe.Pointer(&f.hostbuf[j*cshim.PageSize])
			}
			cshim.BlockReadDone(f.disk, f.rb, ramOffs, ramOffs, hosts, genp, 0)
			if p%4096 == 0 {
				m.Sync()
			}
		}
		m.Sync()
		for p := 0; p < benchPages; p++ {
			if !cshim.MapOffers(f.rb, uint64(p)<<cshim.PageShift) {
				f.err = fmt.Errorf("page %d not mapped", p)
				return
			}
		}
	})
	if f.err != nil {
		b.Fatal(f.err)
	}
	return f.rb, f.hostbuf
}

// BenchmarkRefQueryLookup: the map lookup alone (MapOffers, through cgo).
func BenchmarkRefQueryLookup(b *testing.B) {
	rb, _ := benchMap(b)
	hits := 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if cshim.MapOffers(rb, uint64(i&(benchPages-1))<<cshim.PageShift) {
			hits++
		}
	}
	b.StopTimer()
	if hits != b.N {
		b.Fatalf("%d hits of %d", hits, b.N)
	}
}

// BenchmarkRefQueryHit: the saver's full question for an unchanged mapped
// page (lookup, hash of 4 KiB, record), through cgo.
func BenchmarkRefQueryHit(b *testing.B) {
	rb, hostbuf := benchMap(b)
	hits := 0
	b.SetBytes(cshim.PageSize)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		p := i & (benchPages - 1)
		if _, ok := cshim.RefQuery(rb, uint64(p)<<cshim.PageShift, unsafe.Pointer(&hostbuf[(p%64)*cshim.PageSize])); ok {
			hits++
		}
	}
	b.StopTimer()
	if hits != b.N {
		b.Fatalf("%d hits of %d", hits, b.N)
	}
}

// BenchmarkBlockReadDone: tracking one 4 KiB page of a completed read
// (hash + ring record), in calls of 64 pages; one op is one page.  The
// ring is drained outside the timer.
func BenchmarkBlockReadDone(b *testing.B) {
	const npages = 1 << 16
	var fix struct {
		rb   int
		disk int
	}
	fix.rb = cshim.RAMBlockAdd("bench-brd", npages*cshim.PageSize)
	fix.disk = cshim.DiskAdd("bench-brd", "/shared/bench-brd.raw", npages*cshim.PageSize)
	if fix.rb < 0 || fix.disk < 0 {
		b.Fatalf("registration: %d %d", fix.rb, fix.disk)
	}
	hostbuf, err := mmapLeak(64 * cshim.PageSize)
	if err != nil {
		b.Fatal(err)
	}
	cshimtest.FillRandom(rand.New(rand.NewPCG(6, 6)), hostbuf)
	genMem, err := mmapLeak(cshim.PageSize)
	if err != nil {
		b.Fatal(err)
	}
	gen := (*uint32)(unsafe.Pointer(&genMem[0]))
	m := p2b.New()
	m.Sync()
	st0 := cshim.StatsSnapshot()
	ramOffs := make([]uint64, 64)
	hosts := make([]unsafe.Pointer, 64)
	for j := range hosts {
		hosts[j] = unsafe.Pointer(&hostbuf[j*cshim.PageSize])
	}
	b.SetBytes(cshim.PageSize)
	b.ResetTimer()
	calls := 0
	for i := 0; i < b.N; i += 64 {
		n := min(64, b.N-i)
		for j := 0; j < n; j++ {
			ramOffs[j] = uint64((i+j)&(npages-1)) << cshim.PageShift
		}
		cshim.BlockReadDone(fix.disk, uint32(fix.rb), ramOffs[:n], ramOffs[:n], hosts[:n], gen, 0)
		if calls++; calls%64 == 0 {
			b.StopTimer()
			m.Sync()
			b.StartTimer()
		}
	}
	b.StopTimer()
	m.Sync()
	st1 := cshim.StatsSnapshot()
	if d := st1.RingDrops() - st0.RingDrops(); d != 0 {
		b.Fatalf("%d records dropped", d)
	}
}

func rssBytes() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b))
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}

// resident counts the resident bytes of page-aligned memory at p.
func resident(t *testing.T, p unsafe.Pointer, n int) int64 {
	t.Helper()
	vec := make([]byte, (n+os.Getpagesize()-1)/os.Getpagesize())
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(p), uintptr(n), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		t.Fatalf("mincore: %v", e)
	}
	var r int64
	for _, v := range vec {
		if v&1 != 0 {
			r += int64(os.Getpagesize())
		}
	}
	return r
}

// TestMemoryFootprint64GiB maps half the pages of a 64 GiB guest (every
// other page, to contiguous blocks of a 64 GiB disk) through the real ring
// and drainer, and prints the map's resident memory.
func TestMemoryFootprint64GiB(t *testing.T) {
	if os.Getenv("NASMIG_BENCH") != "1" {
		t.Skip("skipping the 64 GiB footprint measurement (~200 MiB RSS, a few seconds): set NASMIG_BENCH=1 to run it")
	}
	const size = 64 << 30
	const guestPages = size / cshim.PageSize
	const tracked = guestPages / 2
	rss0 := rssBytes()
	rb := cshim.RAMBlockAdd("footprint-64g", size)
	disk := cshim.DiskAdd("footprint-64g", "/shared/footprint.raw", size)
	if rb < 0 || disk < 0 {
		t.Fatalf("registration: %d %d", rb, disk)
	}
	hostbuf := cshimtest.CMem(t, 64*cshim.PageSize)
	cshimtest.FillRandom(rand.New(rand.NewPCG(7, 7)), hostbuf)
	gen := (*uint32)(unsafe.Pointer(&cshimtest.CMem(t, cshim.PageSize)[0]))

	m := p2b.New()
	m.Sync()
	stop := make(chan struct{})
	ran := make(chan struct{})
	go func() { m.Run(stop); close(ran) }()
	defer func() { close(stop); <-ran }()

	start := time.Now()
	ramOffs := make([]uint64, 64)
	diskOffs := make([]uint64, 64)
	hosts := make([]unsafe.Pointer, 64)
	for j := range hosts {
		hosts[j] = unsafe.Pointer(&hostbuf[j*cshim.PageSize])
	}
	retries := 0
	for k := uint64(0); k < tracked; k += 64 {
		for j := uint64(0); j < 64; j++ {
			ramOffs[j] = (2 * (k + j)) << cshim.PageShift // every other page
			diskOffs[j] = (k + j) << cshim.PageShift      // contiguous blocks
		}
		for {
			st0 := cshim.StatsSnapshot()
			cshim.BlockReadDone(disk, uint32(rb), ramOffs, diskOffs, hosts, gen, 0)
			st1 := cshim.StatsSnapshot()
			if st1.RingDrops() == st0.RingDrops() {
				break
			}
			retries++ // the ring was full: QEMU would lose these mappings; we wait
			time.Sleep(200 * time.Microsecond)
		}
	}
	for deadline := time.Now().Add(2 * time.Minute); m.Mapped() < tracked; {
		if time.Now().After(deadline) {
			t.Fatalf("drainer stuck at %d of %d mappings", m.Mapped(), tracked)
		}
		time.Sleep(10 * time.Millisecond)
	}
	elapsed := time.Since(start)
	if got := m.Mapped(); got != tracked {
		t.Fatalf("%d pages mapped, want %d", got, tracked)
	}

	fwd := cshim.Forward(rb)
	fwdRes := resident(t, unsafe.Pointer(&fwd[0]), len(fwd)*8)
	var revRes, chunks int64
	for idx := uint64(0); idx < cshim.RevChunkCount(disk); idx++ {
		c, _ := cshim.RevChunkAt(disk, idx, false)
		if c == nil {
			continue
		}
		chunks++
		revRes += resident(t, unsafe.Pointer(&c[0]), len(c)*8)
	}
	dirBytes := int64(cshim.RevChunkCount(disk)) * 8
	total := fwdRes + revRes + dirBytes
	rss1 := rssBytes()
	report := fmt.Sprintf(`memory footprint, 64 GiB guest, %d of %d pages tracked (every other page, contiguous blocks of a 64 GiB disk):
  mapped through ring + drainer in %v (%d ring-full retries)
  forward array resident   %8.1f MiB (of %.0f MiB reserved)
  reverse chunks resident  %8.1f MiB (%d chunks of %d KiB)
  chunk directory          %8.1f KiB
  total                    %8.1f MiB = %.1f bytes per tracked page = %.3f%% of guest RAM
  process RSS grew by      %8.1f MiB`,
		tracked, guestPages, elapsed.Round(time.Millisecond), retries,
		float64(fwdRes)/(1<<20), float64(len(fwd)*8)/(1<<20),
		float64(revRes)/(1<<20), chunks, cshim.RevChunk*8/1024,
		float64(dirBytes)/1024,
		float64(total)/(1<<20), float64(total)/tracked, 100*float64(total)/size,
		float64(rss1-rss0)/(1<<20))
	fmt.Println(report)

	// Leave no mappings behind for later tests' map-wide drops.
	cshim.BlockWriteDone(disk, 0, size)
	m.Sync()
	if got := m.Mapped(); got != 0 {
		t.Fatalf("%d mappings left after writing the whole disk", got)
	}
}
