package p2b_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"nasmig/cshim"
	"nasmig/plugin/p2b"
	"nasmig/plugin/wire"
)

// The model test drives the real C entry points and the real map writer
// from goroutines that play QEMU: guest block reads into RAM, guest block
// writes, guest CPU writes, the RAM saver's questions, the drainer and the
// migration thread's bitmap syncs.  The simulated disk (C memory) is the
// truth.  Invariants (design.md section 3):
//
//   - every reference carries the hash of the page as it is at the query;
//   - its block holds that content at the query, or a write to the block
//     completed after the page's last read (its invalidation is queued);
//   - a page that went out as a reference and was not dirtied since must
//     find its content in the block at every quiescent bitmap sync (all
//     writes reported, everything drained): otherwise the destination
//     would read a block that no longer matches, and the page was never
//     sent again;
//   - such a page is still mapped to that block at every quiescent sync:
//     once the map forgets it, no write to the block can reach it.
//
// Reads racing with writes to the same block (the write_gen bracket), a
// block read into a second page, ring overflows (lost invalidations) and
// migrations ending and starting all happen in the mix.

const (
	modelPages     = 4096
	modelBlocks    = 8192
	modelHotPages  = 64
	modelHotBlocks = 128
	histLen        = 24
)

type evKind uint8

const (
	evRead     evKind = iota + 1 // page <- block (a = block, b = block version)
	evReadInto                   // block -> page (a = page, b = version)
	evWrite                      // block written (b = new version)
	evCPU                        // guest CPU wrote the page
	evRef                        // page sent as a reference (a = block, b = 1 if the block differed)
	evDirty                      // the library asked to resend the page
	evRestart                    // migration ended and a new one started
)

type event struct {
	seq  uint64
	kind evKind
	a, b int64
}

func (ev event) String() string {
	switch ev.kind {
	case evRead:
		return fmt.Sprintf("#%d read block %d (version %d) into the page", ev.seq, ev.a, ev.b)
	case evReadInto:
		return fmt.Sprintf("#%d read into page %d at version %d", ev.seq, ev.a, ev.b)
	case evWrite:
		return fmt.Sprintf("#%d written, now version %d", ev.seq, ev.b)
	case evCPU:
		return fmt.Sprintf("#%d guest CPU write", ev.seq)
	case evRef:
		s := fmt.Sprintf("#%d sent as a reference to block %d", ev.seq, ev.a)
		if ev.b != 0 {
			s += " (block already written; invalidation queued)"
		}
		return s
	case evDirty:
		return fmt.Sprintf("#%d marked dirty by the library", ev.seq)
	case evRestart:
		return fmt.Sprintf("#%d migration restarted", ev.seq)
	}
	return fmt.Sprintf("#%d ?%d", ev.seq, ev.kind)
}

type hist struct {
	ev [histLen]event
	n  int
}

func (h *hist) add(ev event) { h.ev[h.n%histLen] = ev; h.n++ }

func (h *hist) String() string {
	var sb strings.Builder
	for i := max(0, h.n-histLen); i < h.n; i++ {
		fmt.Fprintf(&sb, "\n      %v", h.ev[i%histLen])
	}
	if sb.Len() == 0 {
		return " (none)"
	}
	return sb.String()
}

type sentRef struct {
	block int
	hash  [2]uint64
	seq   uint64
	gen   uint64 // the page's dirtyGen just before the query
}

type pageState struct {
	mu        sync.Mutex // held by the operation on the page (QEMU's ordering)
	lastBlock int        // block of the last read into the page, -1 none
	lastVer   uint64     // its version then
	ref       *sentRef   // outstanding while dirtyGen == ref.gen
	// dirtyGen counts the library's mark_dirty calls for the page.  They
	// come from the bitmap sync without the page's lock, as in QEMU, where
	// marking a page dirty waits for nothing: a call after the query's
	// snapshot means the page goes again.
	dirtyGen atomic.Uint64
	hmu      sync.Mutex // guards h
	h        hist
}

func (ps *pageState) note(ev event) {
	ps.hmu.Lock()
	ps.h.add(ev)
	ps.hmu.Unlock()
}

func (ps *pageState) history() string {
	ps.hmu.Lock()
	defer ps.hmu.Unlock()
	return ps.h.String()
}

type blockState struct {
	mu  sync.Mutex
	ver uint64
	h   hist
}

type model struct {
	e      *env
	seed   uint64
	pages  []pageState
	blocks []blockState
	world  sync.RWMutex // write-locked to quiesce every actor but the drainer
	seq    atomic.Uint64
	stop   chan struct{}
	halt   sync.Once // closes stop
	failMu sync.Mutex
	fail   string // the first violation

	reads, racedReads, doubleReads, writes, cpuWrites, queries, refs, staleRefs, syncs, quiesced, restarts, resends atomic.Int64

	drops0, lost0 uint64 // the library's ring drops and lost invalidations at the start
}

func (md *model) next() uint64 { return md.seq.Add(1) }

func (md *model) stopped() bool {
	select {
	case <-md.stop:
		return true
	default:
		return false
	}
}

// violation records the first failure with the histories of the page and
// block involved (callers hold no locks of either, or pass them in).
func (md *model) violation(p, b int, pageHist, blockHist string, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	st := cshim.StatsSnapshot()
	md.failMu.Lock()
	if md.fail == "" {
		// Whether ring overflows were in play tells which path to suspect.
		md.fail = fmt.Sprintf("seed %d (NASMIG_MODEL_SEED=%d to reuse): %s\n  so far: %d reads (%d raced), %d writes, %d syncs (%d quiescent, %d restarts), ring drops %d, lost invalidations %d\n  page %d history:%s\n  block %d history:%s",
			md.seed, md.seed, msg, md.reads.Load(), md.racedReads.Load(), md.writes.Load(), md.syncs.Load(), md.quiesced.Load(), md.restarts.Load(),
			st.RingDrops()-md.drops0, cshim.LostInvalidations()-md.lost0, p, pageHist, b, blockHist)
	}
	md.failMu.Unlock()
	md.stopAll()
}

func (md *model) stopAll() { md.halt.Do(func() { close(md.stop) }) }

func (md *model) failure() string {
	md.failMu.Lock()
	defer md.failMu.Unlock()
	return md.fail
}

func (md *model) pickPage(r *rand.Rand) int {
	if r.IntN(2) == 0 {
		return r.IntN(modelHotPages)
	}
	return r.IntN(modelPages)
}

func (md *model) pickBlock(r *rand.Rand) int {
	if r.IntN(2) == 0 {
		return r.IntN(modelHotBlocks)
	}
	return r.IntN(modelBlocks)
}

// read: a guest read of blocks into pages, as QEMU reports it.
func (md *model) read(r *rand.Rand) {
	e := md.e
	n := 1 + r.IntN(8)
	if r.IntN(10) == 0 {
		n = 1 + r.IntN(cshim.MaxPagesPerCall)
	}
	pageSet := map[int]bool{}
	for len(pageSet) < n {
		pageSet[md.pickPage(r)] = true
	}
	pages := make([]int, 0, n)
	for p := range pageSet {
		pages = append(pages, p)
	}
	slices.Sort(pages) // lock order
	blocks := make([]int, n)
	if r.IntN(3) > 0 {
		first := min(md.pickBlock(r), modelBlocks-n)
		for i := range blocks {
			blocks[i] = first + i
		}
		r.Shuffle(n, func(i, j int) { blocks[i], blocks[j] = blocks[j], blocks[i] })
	} else {
		seen := map[int]bool{}
		for i := range blocks {
			b := md.pickBlock(r)
			for seen[b] {
				b = md.pickBlock(r)
			}
			seen[b] = true
			blocks[i] = b
		}
	}

	md.world.RLock()
	defer md.world.RUnlock()
	for _, p := range pages {
		md.pages[p].mu.Lock()
	}
	ramOffs := make([]uint64, n)
	diskOffs := make([]uint64, n)
	hosts := make([]unsafe.Pointer, n)
	for i, p := range pages {
		hosts[i] = e.host(p)
	}
	cshim.BlockReadBegin(hosts)
	genBefore := atomic.LoadUint32(e.gen)
	for i, p := range pages {
		b := blocks[i]
		bs := &md.blocks[b]
		ps := &md.pages[p]
		seq := md.next()
		bs.mu.Lock()
		copy(e.page(p), e.block(b))
		ver := bs.ver
		bs.h.add(event{seq, evReadInto, int64(p), int64(ver)})
		bs.mu.Unlock()
		ps.lastBlock, ps.lastVer = b, ver
		ps.ref = nil // DMA into guest RAM dirties the page
		ps.note(event{seq, evRead, int64(b), int64(ver)})
		ramOffs[i] = uint64(p) << cshim.PageShift
		diskOffs[i] = uint64(b) << cshim.PageShift
		if r.IntN(8) == 0 {
			runtime.Gosched() // let writes race with the read
		}
	}
	if r.IntN(4) == 0 {
		runtime.Gosched()
	}
	cshim.BlockReadDone(e.disk, e.rb, ramOffs, diskOffs, hosts, e.gen, genBefore)
	if atomic.LoadUint32(e.gen) != genBefore {
		md.racedReads.Add(1)
	}
	cshim.BlockReadEnd(hosts)
	for _, p := range pages {
		md.pages[p].mu.Unlock()
	}
	md.reads.Add(1)
}

// doubleRead: two reads in flight into one page (Windows does this); the
// data lands in one order, the completions come in any order.
func (md *model) doubleRead(r *rand.Rand) {
	e := md.e
	p := md.pickPage(r)
	b := [2]int{md.pickBlock(r), md.pickBlock(r)}
	for b[1] == b[0] {
		b[1] = md.pickBlock(r)
	}
	md.world.RLock()
	defer md.world.RUnlock()
	ps := &md.pages[p]
	ps.mu.Lock()
	defer ps.mu.Unlock()
	hosts := []unsafe.Pointer{e.host(p)}
	cshim.BlockReadBegin(hosts)
	cshim.BlockReadBegin(hosts)
	var gen [2]uint32
	gen[0] = atomic.LoadUint32(e.gen)
	gen[1] = atomic.LoadUint32(e.gen)
	landing := r.Perm(2)
	for _, i := range landing {
		bs := &md.blocks[b[i]]
		seq := md.next()
		bs.mu.Lock()
		copy(e.page(p), e.block(b[i]))
		ver := bs.ver
		bs.h.add(event{seq, evReadInto, int64(p), int64(ver)})
		bs.mu.Unlock()
		ps.lastBlock, ps.lastVer = b[i], ver
		ps.ref = nil
		ps.note(event{seq, evRead, int64(b[i]), int64(ver)})
	}
	for _, i := range r.Perm(2) {
		cshim.BlockReadDone(e.disk, e.rb, []uint64{uint64(p) << cshim.PageShift}, []uint64{uint64(b[i]) << cshim.PageShift},
			hosts, e.gen, gen[i])
	}
	cshim.BlockReadEnd(hosts)
	cshim.BlockReadEnd(hosts)
	md.reads.Add(2)
	md.doubleReads.Add(1)
}

// write: a guest write (data first, then write_gen, then the hook).
func (md *model) write(r *rand.Rand) {
	e := md.e
	var off, length uint64
	b := md.pickBlock(r)
	if r.IntN(10) < 7 {
		k := 1 + r.IntN(4)
		b = min(b, modelBlocks-k)
		off, length = uint64(b)<<cshim.PageShift, uint64(k)<<cshim.PageShift
	} else {
		off = uint64(b)<<cshim.PageShift + uint64(r.IntN(cshim.PageSize))
		length = 1 + uint64(r.IntN(3*cshim.PageSize))
		length = min(length, modelBlocks*cshim.PageSize-off)
	}
	first, last := int(off>>cshim.PageShift), int((off+length-1)>>cshim.PageShift)

	md.world.RLock()
	defer md.world.RUnlock()
	seq := md.next()
	for blk := first; blk <= last; blk++ {
		md.blocks[blk].mu.Lock()
	}
	data := e.dsk[off : off+length]
	for i := 0; i < len(data); {
		v := r.Uint64()
		for j := 0; j < 8 && i < len(data); j++ {
			data[i] = byte(v >> (8 * j))
			i++
		}
	}
	for blk := first; blk <= last; blk++ {
		bs := &md.blocks[blk]
		bs.ver++
		bs.h.add(event{seq, evWrite, 0, int64(bs.ver)})
		bs.mu.Unlock()
	}
	atomic.AddUint32(e.gen, 1)
	if r.IntN(4) == 0 {
		runtime.Gosched()
	}
	cshim.BlockWriteDone(e.disk, off, length)
	md.writes.Add(1)
}

// cpuWrite: the guest changes bytes of a page in place.
func (md *model) cpuWrite(r *rand.Rand) {
	p := md.pickPage(r)
	md.world.RLock()
	defer md.world.RUnlock()
	ps := &md.pages[p]
	ps.mu.Lock()
	pg := md.e.page(p)
	for i := 1 + r.IntN(8); i > 0; i-- {
		pg[r.IntN(cshim.PageSize)] ^= byte(1 + r.IntN(255))
	}
	ps.ref = nil // dirty logging sees CPU writes
	ps.note(event{md.next(), evCPU, 0, 0})
	ps.mu.Unlock()
	md.cpuWrites.Add(1)
}

// query: the RAM saver's question for a page whose dirty bit it cleared.
func (md *model) query(r *rand.Rand) {
	e := md.e
	p := md.pickPage(r)
	md.world.RLock()
	defer md.world.RUnlock()
	ps := &md.pages[p]
	ps.mu.Lock()
	defer ps.mu.Unlock()
	md.queries.Add(1)
	gen := ps.dirtyGen.Load()
	w, ok := cshim.RefQuery(e.rb, uint64(p)<<cshim.PageShift, unsafe.Pointer(&e.page(p)[0]))
	if !ok {
		return
	}
	md.refs.Add(1)
	ref, err := wire.DecodeRef(w[:])
	if err != nil || int(ref.Disk) != e.disk || ref.Offset >= modelBlocks*cshim.PageSize {
		md.violation(p, -1, ps.history(), "", "page %d: bad reference record % x (%v)", p, w, err)
		return
	}
	b := int(ref.Offset >> cshim.PageShift)
	if h := cshim.HashPageMig(e.page(p)); h != ref.Hash {
		md.violation(p, b, ps.history(), "", "page %d: reference hash %x, but the page hashes to %x", p, ref.Hash, h)
		return
	}
	bs := &md.blocks[b]
	bs.mu.Lock()
	defer bs.mu.Unlock()
	seq := md.next()
	stale := cshim.HashPageMig(e.block(b)) != ref.Hash
	if stale {
		// Allowed only while the write's invalidation is on its way: the
		// block changed after the read that put this content in the page.
		if ps.lastBlock != b || bs.ver <= ps.lastVer {
			md.violation(p, b, ps.history(), bs.h.String(),
				"page %d sent as a reference to block %d, whose content differs, and no write to that block followed the page's last read (last read: block %d version %d; block now version %d)",
				p, b, ps.lastBlock, ps.lastVer, bs.ver)
			return
		}
		md.staleRefs.Add(1)
	}
	ps.ref = &sentRef{block: b, hash: ref.Hash, seq: seq, gen: gen}
	ps.note(event{seq, evRef, int64(b), map[bool]int64{false: 0, true: 1}[stale]})
}

// markDirty receives the library's resends (inside Map.Sync).
func (md *model) markDirty(pr p2b.PageRef) {
	if pr.RAMBlock != md.e.rb {
		return
	}
	if pr.Page >= modelPages {
		md.violation(int(pr.Page), -1, "", "", "mark_dirty for page %d past the RAM block", pr.Page)
		return
	}
	ps := &md.pages[pr.Page]
	ps.dirtyGen.Add(1)
	ps.note(event{md.next(), evDirty, 0, 0})
	md.resends.Add(1)
}

// checkQuiescent runs with the world stopped, right after a Sync: every
// outstanding reference must still match its block, and the map's two
// halves must agree.
func (md *model) checkQuiescent() {
	e := md.e
	for p := range md.pages {
		ps := &md.pages[p]
		if ps.ref == nil || ps.dirtyGen.Load() != ps.ref.gen {
			continue
		}
		b := ps.ref.block
		// Every way the map forgets a page during a migration (another
		// page takes its block, the block is written, the map is dropped)
		// asks for it again; only a new read into the page (which clears
		// ref here) may move it quietly.  Checked first: it fails where
		// the resend was lost, before the block changes.
		if w := atomic.LoadUint64(&cshim.Forward(int(e.rb))[p]); !e.offers(p) || w&cshim.FwdBlockMask != uint64(b) {
			md.violation(p, b, ps.history(), md.blocks[b].h.String(),
				"page %d went out as a reference to block %d (#%d); the map no longer has it there (forward word %#x) and the page was never marked for resending",
				p, b, ps.ref.seq, w)
			return
		}
		if cshim.HashPageMig(e.block(b)) != ps.ref.hash {
			md.violation(p, b, ps.history(), md.blocks[b].h.String(),
				"page %d went out as a reference to block %d (#%d); the block changed since and the page was never marked for resending",
				p, b, ps.ref.seq)
			return
		}
	}
	if _, err := e.consistency(); err != nil {
		md.violation(-1, -1, "", "", "map inconsistent: %v", err)
	}
}

func modelDuration() time.Duration {
	if s := os.Getenv("NASMIG_MODEL_SECONDS"); s != "" {
		if f, err := strconv.ParseFloat(s, 64); err == nil {
			return time.Duration(f * float64(time.Second))
		}
	}
	if testing.Short() {
		return time.Second
	}
	if raceEnabled {
		return 2 * time.Second
	}
	return 4 * time.Second
}

func TestModelConcurrent(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("NASMIG_MODEL_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("NASMIG_MODEL_SEED: %v", err)
		}
		seed = v
	}
	dur := modelDuration()
	t.Logf("model seed %d (NASMIG_MODEL_SEED=%d to reuse), running %v", seed, seed, dur)

	e := newEnv(t, "model", modelPages, modelBlocks)
	md := &model{e: e, seed: seed, pages: make([]pageState, modelPages), blocks: make([]blockState, modelBlocks),
		stop: make(chan struct{})}
	for i := range md.pages {
		md.pages[i].lastBlock = -1
	}
	dirtyRec.setHook(md.markDirty)
	defer dirtyRec.setHook(nil)
	e.m.SetMigrating(true)
	e.m.Sync()

	st0 := cshim.StatsSnapshot()
	lost0 := cshim.LostInvalidations()
	md.drops0, md.lost0 = st0.RingDrops(), lost0
	var wg sync.WaitGroup
	actor := func(id int, op func(*rand.Rand)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, uint64(id)))
			for !md.stopped() {
				op(r)
			}
		}()
	}
	// Actors mix the operations so that cheap ones (CPU writes) do not
	// drown the others.
	mixed := func(r *rand.Rand) {
		switch k := r.IntN(100); {
		case k < 28:
			md.read(r)
		case k < 30:
			md.doubleRead(r)
		case k < 42:
			md.write(r)
		case k < 50:
			md.cpuWrite(r)
		default:
			md.query(r)
		}
	}
	for i := 1; i <= 4; i++ {
		actor(i, mixed)
	}

	// The drainer, with pauses like Map.Run's idle sleeps so that bursts
	// overflow the ring now and then.
	wg.Add(1)
	go func() {
		defer wg.Done()
		r := rand.New(rand.NewPCG(seed, 100))
		nextStall := time.Now().Add(200 * time.Millisecond)
		for !md.stopped() {
			if time.Now().After(nextStall) {
				// A long stall (Map.Run sleeps up to 20 ms, a loaded host
				// longer): the ring fills and writes get lost.
				time.Sleep(time.Duration(80+r.IntN(80)) * time.Millisecond)
				nextStall = time.Now().Add(time.Duration(200+r.IntN(400)) * time.Millisecond)
			}
			if e.m.DrainOnce() > 0 {
				continue
			}
			switch r.IntN(64) {
			case 0:
				time.Sleep(time.Duration(5+r.IntN(25)) * time.Millisecond)
			default:
				time.Sleep(time.Duration(r.IntN(200)) * time.Microsecond)
			}
		}
	}()

	// The migration thread: bitmap syncs, some with the world stopped and
	// checked, and now and then the migration ends and another begins.
	quiesce := func(restart bool) {
		md.world.Lock()
		defer md.world.Unlock()
		e.m.Sync()
		md.checkQuiescent()
		md.quiesced.Add(1)
		if restart {
			e.m.SetMigrating(false)
			seq := md.next()
			for p := range md.pages {
				md.pages[p].ref = nil
				md.pages[p].note(event{seq, evRestart, 0, 0})
			}
			e.m.SetMigrating(true)
			e.m.Sync()
			md.restarts.Add(1)
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		r := rand.New(rand.NewPCG(seed, 200))
		for i := 1; !md.stopped(); i++ {
			time.Sleep(time.Duration(500+r.IntN(3000)) * time.Microsecond)
			switch {
			case i%97 == 0:
				quiesce(true)
			case i%9 == 0:
				quiesce(false)
			default:
				e.m.Sync()
			}
			md.syncs.Add(1)
		}
	}()

	timer := time.AfterFunc(dur, md.stopAll)
	defer timer.Stop()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(dur + 60*time.Second):
		buf := make([]byte, 1<<20)
		t.Fatalf("seed %d: actors did not stop (deadlock?)\n%s", seed, buf[:runtime.Stack(buf, true)])
	}
	if f := md.failure(); f != "" {
		t.Fatal(f)
	}
	// Everything reported: the final sync must leave no stale reference.
	quiesce(false)
	if f := md.failure(); f != "" {
		t.Fatal(f)
	}

	st1 := cshim.StatsSnapshot()
	t.Logf("seed %d: %d reads (%d raced with a write, %d pairs in flight into one page), %d writes, %d CPU writes, %d queries -> %d references (%d to a block with a queued invalidation), %d resends, %d syncs (%d quiescent, %d restarts); ring drops %d, lost invalidations %d, invalidations %d",
		seed, md.reads.Load(), md.racedReads.Load(), md.doubleReads.Load(), md.writes.Load(), md.cpuWrites.Load(), md.queries.Load(), md.refs.Load(),
		md.staleRefs.Load(), md.resends.Load(), md.syncs.Load(), md.quiesced.Load(), md.restarts.Load(),
		st1.RingDrops()-st0.RingDrops(), cshim.LostInvalidations()-lost0, st1.Invalidations()-st0.Invalidations())
	if md.refs.Load() == 0 {
		t.Fatalf("seed %d: no query was ever answered with a reference; the model tests nothing", seed)
	}
}
