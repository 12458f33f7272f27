package fetch

import (
	"cmp"
	"slices"
	"time"

	"nasmig/cshim"
	"nasmig/plugin/config"
)

// Filling after the switchover (the source's setup flag FILL_AFTER): the
// guest runs here while references are still being filled.  A page it
// touches before its fill faults; QEMU's fault thread hands the fault to
// the library (cshim/touch.c), and the fetcher reads that one block ahead
// of the background queue.  If the page is not placed within the fault
// fallback, the source, which still holds the page, is asked for it: the
// storage may be slow or stalled, or the read may wait for the very
// thread that faulted (QEMU's main loop serves the block layer, and may
// itself be the one touching guest RAM).  Whichever comes first places
// the page; the other is dropped (same content).
//
// fill-after-max bounds the whole: past it every page still waiting is
// asked from the source, so the migration completes without the storage.

// faultReadAhead: a fault reads the blocks after the touched one too, up
// to this many in all (those still waiting for a fill): a guest that reads
// a file touches its next pages next, and they are its next blocks on
// disk, though anywhere in its RAM.  128 KiB cost the read little more
// than its first block.
const faultReadAhead = 32

// touchState is the fetcher's part of it.
type touchState struct {
	fallback, fillMax time.Duration
	// index: every reference waiting at the switch, by (RAM block, page);
	// no reference arrives after it.
	index []cshim.FetchReq
	// byBlock: positions in index, by (disk, block), for read-ahead.
	byBlock []int32
	// late: references the fetcher took after the switch (popped late,
	// or re-read).
	late    map[uint64]cshim.FetchReq
	waiting map[uint64]*touched
	since   time.Time // the switch
	// lastFault: reads stay small for a while after it (fetch.go).
	lastFault time.Time
	// allAsked: past fill-after-max every waiting page was asked from the
	// source.
	allAsked bool
	pops     []cshim.TouchReq
	// For the log at the end.
	faults, reads, asked int
}

type touched struct {
	req   cshim.FetchReq
	due   time.Time
	asked bool
}

func newTouchState(fallback, fillMax time.Duration) touchState {
	if fallback <= 0 {
		fallback = config.DefaultFaultFallback
	}
	return touchState{fallback: fallback, fillMax: fillMax, waiting: map[uint64]*touched{},
		late: map[uint64]cshim.FetchReq{},
		pops: make([]cshim.TouchReq, 64)}
}

func touchKey(rb uint32, page uint64) uint64 { return uint64(rb)<<48 | page }

func reqKey(r *cshim.FetchReq) uint64 { return touchKey(r.RAMBlock(), r.Page()) }

func reqCmp(a, b cshim.FetchReq) int { return cmp.Compare(reqKey(&a), reqKey(&b)) }

// drain drops faults a previous migration left in the ring.
func (t *touchState) drain() {
	for cshim.TouchPop(t.pops) > 0 {
	}
}

// start indexes every reference still waiting, at the switch.
func (t *touchState) start(f *Fetcher, now time.Time) {
	t.since = now
	// Every reference published so far goes into the index (read-ahead
	// looks only there).
	for f.popRefs() {
	}
	f.queued.flush()
	f.queued.each(func(it *item) { t.index = append(t.index, it.req) })
	for _, b := range f.inflight {
		for i := range b.items {
			t.index = append(t.index, b.items[i].req)
		}
	}
	for i := range f.failed {
		t.index = append(t.index, f.failed[i].req)
	}
	slices.SortFunc(t.index, reqCmp)
	t.byBlock = make([]int32, len(t.index))
	for i := range t.byBlock {
		t.byBlock[i] = int32(i)
	}
	slices.SortFunc(t.byBlock, func(a, b int32) int { return blockCmp(&t.index[a], &t.index[b]) })
}

func blockCmp(a, b *cshim.FetchReq) int {
	switch {
	case a.Disk() != b.Disk():
		return cmp.Compare(a.Disk(), b.Disk())
	case a.Block() != b.Block():
		return cmp.Compare(a.Block(), b.Block())
	}
	return 0
}

// readAhead is r and the references after it on its disk, within
// faultReadAhead blocks, that still wait for their fill: one read.
func (t *touchState) readAhead(r cshim.FetchReq) []item {
	items := []item{{req: r}}
	i, _ := slices.BinarySearchFunc(t.byBlock, r, func(j int32, r cshim.FetchReq) int {
		return blockCmp(&t.index[j], &r)
	})
	var next []cshim.FetchReq
	for ; i < len(t.byBlock); i++ {
		c := t.index[t.byBlock[i]]
		if c.Disk() != r.Disk() || c.Block() >= r.Block()+faultReadAhead {
			break
		}
		if c.Block() > r.Block() {
			next = append(next, c)
		}
	}
	if len(next) == 0 {
		return items
	}
	pending := make([]uint8, len(next))
	cshim.RefsPending(next, pending)
	for k, c := range next {
		if pending[k] != 0 {
			items = append(items, item{req: c})
		}
	}
	return items
}

// lookup finds the reference of a page (the newest, if it had several).
func (t *touchState) lookup(rb uint32, page uint64) (cshim.FetchReq, bool) {
	key := touchKey(rb, page)
	if r, ok := t.late[key]; ok {
		return r, true
	}
	i, _ := slices.BinarySearchFunc(t.index, key, func(r cshim.FetchReq, k uint64) int {
		return cmp.Compare(reqKey(&r), k)
	})
	var found cshim.FetchReq
	ok := false
	for ; i < len(t.index) && reqKey(&t.index[i]) == key; i++ {
		if !ok || t.index[i].Gen() > found.Gen() {
			found, ok = t.index[i], true
		}
	}
	return found, ok
}

// touchTick takes the guest's new faults, asks the source for those the
// storage has not served within the fallback, and enforces fill-after-max.
// True when it did something; faults merely waiting for their read are
// not work (the loop's sleep wakes every 2 ms while there are some).
func (f *Fetcher) touchTick(now time.Time) bool {
	t := &f.touch
	if !f.placing {
		return false
	}
	// References published before a fault are taken first, so that its
	// lookup finds them.
	busy := f.popRefs()
	for {
		n := cshim.TouchPop(t.pops)
		for i := 0; i < n; i++ {
			f.touchArrived(t.pops[i].RAMBlock(), t.pops[i].Page(), now)
		}
		busy = busy || n > 0
		if n < len(t.pops) {
			break
		}
	}
	if len(t.waiting) > 0 && f.touchSettle(now) {
		busy = true
	}
	if t.fillMax > 0 && !t.allAsked && now.Sub(t.since) > t.fillMax {
		f.askAllWaiting()
		busy = true
	}
	return busy
}

// touchArrived: the guest touched a page that waits for its reference.
func (f *Fetcher) touchArrived(rb uint32, page uint64, now time.Time) {
	t := &f.touch
	key := touchKey(rb, page)
	if _, ok := t.waiting[key]; ok {
		return
	}
	t.faults++
	t.lastFault = now
	r, ok := t.lookup(rb, page)
	if !ok {
		// Not a reference this side knows: the source has the page.
		f.requestPage(rb, page)
		t.asked++
		return
	}
	w := &touched{req: r, due: now.Add(t.fallback)}
	t.waiting[key] = w
	if buf, err := f.buffer(); err == nil {
		// Ahead of the background reads: this block and the next ones.
		f.startRead(buf, t.readAhead(r), false)
		t.reads++
	} else {
		w.due = now
	}
}

// touchSettle forgets the touched pages that are placed (or failed: then
// the source was asked already) and asks the source for those past due;
// true when it asked for one.
func (f *Fetcher) touchSettle(now time.Time) bool {
	asked := false
	t := &f.touch
	reqs := make([]cshim.FetchReq, 0, len(t.waiting))
	keys := make([]uint64, 0, len(t.waiting))
	for k, w := range t.waiting {
		reqs = append(reqs, w.req)
		keys = append(keys, k)
	}
	pending := make([]uint8, len(reqs))
	cshim.RefsPending(reqs, pending)
	for i, k := range keys {
		w := t.waiting[k]
		if pending[i] == 0 {
			delete(t.waiting, k)
			continue
		}
		if !w.asked && !now.Before(w.due) {
			w.asked = true
			asked = true
			t.asked++
			f.requestPage(w.req.RAMBlock(), w.req.Page())
		}
	}
	return asked
}

// askAllWaiting: fill-after-max has passed; the source sends every page
// still waiting for its fill (its completion waits for them).
func (f *Fetcher) askAllWaiting() {
	t := &f.touch
	t.allAsked = true
	asked := 0
	all := t.index
	if len(t.late) > 0 {
		// Taken after the switch: not in the index.
		all = slices.Clone(t.index)
		for _, r := range t.late {
			all = append(all, r)
		}
	}
	const chunk = 4096
	pending := make([]uint8, chunk)
	for off := 0; off < len(all); off += chunk {
		reqs := all[off:min(off+chunk, len(all))]
		cshim.RefsPending(reqs, pending[:len(reqs)])
		for i := range reqs {
			if pending[i] == 0 {
				continue
			}
			if !f.requestPage(reqs[i].RAMBlock(), reqs[i].Page()) {
				continue
			}
			asked++
		}
	}
	t.asked += asked
	f.log.Warn().Dur("fill_after_max", t.fillMax).Int("pages", asked).
		Msg("the fills after the switchover took longer than fill-after-max: the source sends the pages still waiting")
}
