package p2b_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"

	"nasmig/cshim"
	"nasmig/cshim/cabitest"
	"nasmig/cshim/cshimtest"
	"nasmig/plugin/p2b"
	"nasmig/plugin/wire"
)

// testRingSlots is the tracking ring of this test binary: larger than the
// map writer's batch (4096 records) so that a backlog can outlast a batch,
// small enough that the model test overflows it now and then.
const testRingSlots = 8192

var testSeed = [32]byte{'p', '2', 'b'}

// TestMain sets up the process-global C state once: ring, key, the
// switch that makes disks eligible, and a host table whose mark_dirty
// reports to the current test.
func TestMain(m *testing.M) {
	cshimtest.Setup(testRingSlots, testSeed)
	cabitest.InstallHost(func(rb uint32, off, length uint64) { dirtyRec.add(rb, off, length) })
	os.Exit(m.Run())
}

// dirtyRec collects mark_dirty calls (pages the library asks to resend).
var dirtyRec recorder

type recorder struct {
	mu    sync.Mutex
	pages []p2b.PageRef
	bad   []string
	hook  func(p2b.PageRef) // called instead of recording, when set
}

func (r *recorder) add(rb uint32, off, length uint64) {
	r.mu.Lock()
	if off%cshim.PageSize != 0 || length != cshim.PageSize {
		r.bad = append(r.bad, fmt.Sprintf("mark_dirty(%d, %#x, %#x)", rb, off, length))
	}
	hook := r.hook
	if hook == nil {
		r.pages = append(r.pages, p2b.PageRef{RAMBlock: rb, Page: off >> cshim.PageShift})
	}
	r.mu.Unlock()
	if hook != nil {
		hook(p2b.PageRef{RAMBlock: rb, Page: off >> cshim.PageShift})
	}
}

// take returns and forgets what was recorded, failing on malformed calls.
func (r *recorder) take(t testing.TB) []p2b.PageRef {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.bad) > 0 {
		t.Fatalf("malformed mark_dirty calls: %v", r.bad)
	}
	p := r.pages
	r.pages = nil
	return p
}

func (r *recorder) setHook(f func(p2b.PageRef)) {
	r.mu.Lock()
	r.hook = f
	r.mu.Unlock()
}

// env is one registered RAM block and disk with simulated guest RAM and
// disk content in C memory, and a map writer.
type env struct {
	t       testing.TB
	name    string
	rb      uint32
	disk    int
	npages  int
	nblocks int
	ram     []byte
	dsk     []byte
	gen     *uint32 // the disk's write generation (C memory, like bs->write_gen)
	m       *p2b.Map
	r       *rand.Rand
}

var names sync.Map

func newEnv(tb testing.TB, name string, npages, nblocks int) *env {
	tb.Helper()
	if _, dup := names.LoadOrStore(name, true); dup {
		tb.Fatalf("fixture name %q used twice in this binary", name)
	}
	e := &env{t: tb, name: name, npages: npages, nblocks: nblocks, r: rand.New(rand.NewPCG(uint64(len(name)), 99))}
	rb := cshim.RAMBlockAdd("ram-"+name, uint64(npages)*cshim.PageSize)
	if rb < 0 {
		tb.Fatalf("RAMBlockAdd(%s): %d", name, rb)
	}
	e.rb = uint32(rb)
	e.disk = cshim.DiskAdd("node-"+name, "/shared/"+name+".raw", uint64(nblocks)*cshim.PageSize)
	if e.disk < 0 {
		tb.Fatalf("DiskAdd(%s): %d", name, e.disk)
	}
	e.ram = cshimtest.CMem(tb, npages*cshim.PageSize)
	e.dsk = cshimtest.CMem(tb, nblocks*cshim.PageSize)
	cshimtest.FillRandom(e.r, e.dsk)
	e.gen = (*uint32)(unsafe.Pointer(&cshimtest.CMem(tb, cshim.PageSize)[0]))
	e.m = p2b.New()
	e.m.Sync() // leftovers of earlier tests land now, not in this test
	dirtyRec.take(tb)
	return e
}

func (e *env) page(p int) []byte         { return e.ram[p*cshim.PageSize : (p+1)*cshim.PageSize] }
func (e *env) host(p int) unsafe.Pointer { return unsafe.Pointer(&e.ram[p*cshim.PageSize]) }
func (e *env) block(b int) []byte        { return e.dsk[b*cshim.PageSize : (b+1)*cshim.PageSize] }

// read emulates a completed guest read of the given blocks into the given
// pages, as QEMU's read hook would report it: write_gen sampled before
// the copy, the hook after it.
func (e *env) read(pages, blocks []int) {
	e.readGen(pages, blocks, atomic.LoadUint32(e.gen))
}

func (e *env) readGen(pages, blocks []int, genBefore uint32) {
	var ramOffs, diskOffs []uint64
	var hosts []unsafe.Pointer
	for i, p := range pages {
		ramOffs = append(ramOffs, uint64(p)<<cshim.PageShift)
		diskOffs = append(diskOffs, uint64(blocks[i])<<cshim.PageShift)
		hosts = append(hosts, e.host(p))
	}
	cshim.BlockReadBegin(hosts)
	defer cshim.BlockReadEnd(hosts)
	for i, p := range pages {
		copy(e.page(p), e.block(blocks[i]))
	}
	for len(ramOffs) > 0 {
		n := min(len(ramOffs), cshim.MaxPagesPerCall)
		cshim.BlockReadDone(e.disk, e.rb, ramOffs[:n], diskOffs[:n], hosts[:n], e.gen, genBefore)
		ramOffs, diskOffs, hosts = ramOffs[n:], diskOffs[n:], hosts[n:]
	}
}

// read1 reads one block into one page.
func (e *env) read1(p, b int) { e.read([]int{p}, []int{b}) }

// readRange reads blocks [b, b+n) into pages [p, p+n).
func (e *env) readRange(p, b, n int) {
	var ps, bs []int
	for i := 0; i < n; i++ {
		ps = append(ps, p+i)
		bs = append(bs, b+i)
	}
	e.read(ps, bs)
}

// write emulates a completed guest write of new content to [off, off+len):
// data first, then write_gen, then the write hook.
func (e *env) write(off, length uint64) {
	cshimtest.FillRandom(e.r, e.dsk[off:off+length])
	if length%8 != 0 || off%8 != 0 {
		for i := off; i < off+length; i++ {
			e.dsk[i] = byte(e.r.Uint32())
		}
	}
	atomic.AddUint32(e.gen, 1)
	cshim.BlockWriteDone(e.disk, off, length)
}

func (e *env) writeBlock(b int) { e.write(uint64(b)<<cshim.PageShift, cshim.PageSize) }

// drain applies everything queued (like the drainer goroutine, no resends).
func (e *env) drain() {
	for e.m.DrainOnce() > 0 {
	}
}

func (e *env) offers(p int) bool { return cshim.MapOffers(e.rb, uint64(p)<<cshim.PageShift) }

// query asks the saver's question for page p with its current content.
func (e *env) query(p int) (wire.Ref, bool) {
	e.t.Helper()
	w, ok := cshim.RefQuery(e.rb, uint64(p)<<cshim.PageShift, unsafe.Pointer(&e.page(p)[0]))
	if !ok {
		return wire.Ref{}, false
	}
	ref, err := wire.DecodeRef(w[:])
	if err != nil {
		e.t.Fatalf("page %d: the saver's record does not decode: %v", p, err)
	}
	if int(ref.Disk) != e.disk {
		e.t.Fatalf("page %d: reference to disk %d, want %d", p, ref.Disk, e.disk)
	}
	if h := cshim.HashPage(e.page(p)); ref.Hash == h {
		e.t.Fatalf("page %d: the reference carries the tracking key's hash %x, which must never leave the process", p, h)
	}
	if h := cshim.HashPageMig(e.page(p)); ref.Hash != h {
		e.t.Fatalf("page %d: reference hash %x, page hash %x", p, ref.Hash, h)
	}
	return ref, true
}

// wantRef checks that page p is offered as a reference to block b.
func (e *env) wantRef(p, b int) {
	e.t.Helper()
	ref, ok := e.query(p)
	if !ok {
		e.t.Fatalf("page %d: no reference, want block %d", p, b)
	}
	if ref.Offset != uint64(b)<<cshim.PageShift {
		e.t.Fatalf("page %d: reference to block %d, want %d", p, ref.Offset>>cshim.PageShift, b)
	}
	if h := cshim.HashPageMig(e.block(b)); ref.Hash != h {
		e.t.Fatalf("page %d: block %d hashes to %x, reference says %x", p, b, h, ref.Hash)
	}
}

func (e *env) wantNoRef(p int) {
	e.t.Helper()
	if ref, ok := e.query(p); ok {
		e.t.Fatalf("page %d: unexpected reference to block %d", p, ref.Offset>>cshim.PageShift)
	}
}

// checkConsistent verifies that the forward words of the env's RAM block
// and the reverse words of its disk agree, and returns the mapped pages.
func (e *env) checkConsistent() map[int]int {
	e.t.Helper()
	mapped, err := e.consistency()
	if err != nil {
		e.t.Fatal(err)
	}
	return mapped
}

// consistency is checkConsistent for goroutines other than the test's.
func (e *env) consistency() (map[int]int, error) {
	mapped := map[int]int{}
	fwd := cshim.Forward(int(e.rb))
	for p := range fwd {
		w := atomic.LoadUint64(&fwd[p])
		if w&cshim.FwdValid == 0 {
			if w != 0 {
				return nil, fmt.Errorf("page %d: invalid forward word %#x is not zero", p, w)
			}
			continue
		}
		d := int((w >> cshim.FwdDiskShift) & cshim.FwdDiskMask)
		b := w & cshim.FwdBlockMask
		if d != e.disk {
			return nil, fmt.Errorf("page %d maps disk %d, but only disk %d is read into this RAM block", p, d, e.disk)
		}
		chunk, _ := cshim.RevChunkAt(d, b>>cshim.RevChunkShift, false)
		if chunk == nil {
			return nil, fmt.Errorf("page %d maps block %d without a reverse chunk", p, b)
		}
		rw := atomic.LoadUint64(&chunk[b&(cshim.RevChunk-1)])
		if rw&cshim.RevPageMask != uint64(p)+1 || (rw>>cshim.RevRBShift)&cshim.RevRBMask != uint64(e.rb) {
			return nil, fmt.Errorf("page %d maps block %d, whose reverse word %#x disagrees", p, b, rw)
		}
		mapped[p] = int(b)
	}
	// Every reverse word of our disk points back.
	for idx := uint64(0); idx < cshim.RevChunkCount(e.disk); idx++ {
		chunk, _ := cshim.RevChunkAt(e.disk, idx, false)
		for i := range chunk {
			rw := atomic.LoadUint64(&chunk[i])
			if rw&cshim.RevPageMask == 0 {
				if rw != 0 {
					return nil, fmt.Errorf("block %d: empty reverse word %#x is not zero", int(idx<<cshim.RevChunkShift)+i, rw)
				}
				continue
			}
			b := int(idx<<cshim.RevChunkShift) + i
			p := int(rw&cshim.RevPageMask) - 1
			if mb, ok := mapped[p]; uint32((rw>>cshim.RevRBShift)&cshim.RevRBMask) != e.rb || !ok || mb != b {
				return nil, fmt.Errorf("block %d: reverse word %#x has no matching forward word", b, rw)
			}
		}
	}
	return mapped, nil
}
