package fetch

import "slices"

// backlog holds the references waiting for a storage read, in sorted runs
// of (disk, block) so that contiguous blocks coalesce into large reads.
//
// A pass costs O(new work), not O(backlog): the references that arrived in
// a pass are sorted once and pushed as a run; a run is merged into the one
// below it only while it is at least half that one's size (the sizes of the
// runs halve from the bottom up, so there are O(log n) of them and each
// reference is merged O(log n) times); reads take from the bottom run, the
// oldest and largest, through a head index, without moving the rest.  A
// backlog of millions of references (a 32 GiB page cache is 8 M) costs
// O(n log n) in all, not O(n) per completed read.
//
// The items themselves never move: they stay in slots, and the runs sort
// and merge 16-byte keys that name their slot.  Merged-away runs' arrays
// are reused, so a migration's sorting does not keep asking the Go heap
// (and the kernel) for fresh memory.  (Sorting and merging the items
// directly, 80 bytes each then, cost about 2 us per reference on this test
// bed: half a second per GiB of page cache on the destination's CPU.)
type backlog struct {
	slabs   [][]item // the items, in slots; a slot is reused once its item is taken
	nslots  uint32
	free    []uint32 // slots to reuse
	runs    []run
	pending []key // arrived since the last flush, unsorted
	n       int   // references queued in runs and pending
	spare   [][]key
	taken   []item // what next and takeBack hand out, valid until the next call
}

// key orders a reference by disk, then block.
type key struct {
	order uint64 // disk in the top 8 bits, block below
	slot  uint32
}

type run struct {
	keys []key
	head int
}

func (r *run) rest() []key { return r.keys[r.head:] }

func orderOf(it *item) uint64 { return uint64(it.req.Disk())<<56 | it.req.Block()&(1<<56-1) }

func keyCmp(a, b key) int {
	switch {
	case a.order < b.order:
		return -1
	case a.order > b.order:
		return 1
	}
	return 0
}

func (q *backlog) len() int { return q.n }

// Slots live in fixed slabs, so that a growing backlog never copies them.
const slabBits = 12

func (q *backlog) slot(s uint32) *item { return &q.slabs[s>>slabBits][s&(1<<slabBits-1)] }

func (q *backlog) add(it item) {
	var s uint32
	if n := len(q.free); n > 0 {
		s = q.free[n-1]
		q.free = q.free[:n-1]
	} else {
		s = q.nslots
		q.nslots++
		if int(s>>slabBits) == len(q.slabs) {
			q.slabs = append(q.slabs, make([]item, 1<<slabBits))
		}
	}
	*q.slot(s) = it
	q.pending = append(q.pending, key{order: orderOf(&it), slot: s})
	q.n++
}

// buf gives an empty key array of at least n, reusing a spare one.
func (q *backlog) buf(n int) []key {
	for i := len(q.spare) - 1; i >= 0; i-- {
		if cap(q.spare[i]) >= n {
			b := q.spare[i][:0]
			q.spare = slices.Delete(q.spare, i, i+1)
			return b
		}
	}
	return make([]key, 0, max(n, 1024))
}

// release keeps b's array for reuse: the largest few.
func (q *backlog) release(b []key) {
	if cap(b) == 0 {
		return
	}
	q.spare = append(q.spare, b[:0])
	if len(q.spare) > 8 {
		smallest := 0
		for i := range q.spare {
			if cap(q.spare[i]) < cap(q.spare[smallest]) {
				smallest = i
			}
		}
		q.spare = slices.Delete(q.spare, smallest, smallest+1)
	}
}

// flush turns the references that arrived since the last flush into a run.
func (q *backlog) flush() {
	if len(q.pending) == 0 {
		return
	}
	r := run{keys: q.pending}
	q.pending = q.buf(len(r.keys))
	slices.SortFunc(r.keys, keyCmp)
	q.runs = append(q.runs, r)
	for k := len(q.runs); k >= 2 && len(q.runs[k-2].rest()) <= 2*len(q.runs[k-1].rest()); k = len(q.runs) {
		a, b := q.runs[k-2], q.runs[k-1]
		merged := mergeRuns(q.buf(len(a.rest())+len(b.rest())), a.rest(), b.rest())
		q.release(a.keys)
		q.release(b.keys)
		q.runs = append(q.runs[:k-2], run{keys: merged})
	}
}

func mergeRuns(out, a, b []key) []key {
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		if b[j].order < a[i].order {
			out = append(out, b[j])
			j++
		} else {
			out = append(out, a[i])
			i++
		}
	}
	out = append(out, a[i:]...)
	return append(out, b[j:]...)
}

// take hands out the items of keys and frees their slots.
func (q *backlog) take(keys []key) []item {
	q.taken = q.taken[:0]
	for _, k := range keys {
		q.taken = append(q.taken, *q.slot(k.slot))
		q.free = append(q.free, k.slot)
	}
	q.n -= len(keys)
	if q.n == 0 {
		// Empty: the slots start over (their slabs stay).
		q.nslots, q.free = 0, q.free[:0]
	}
	return q.taken
}

// dropEmpty forgets the exhausted runs at the bottom.
func (q *backlog) dropEmpty() {
	for len(q.runs) > 0 && len(q.runs[0].rest()) == 0 {
		q.release(q.runs[0].keys)
		q.runs = q.runs[1:]
	}
}

// next takes the references of one read from the front of the bottom run:
// blocks of one disk that are contiguous (a block referenced twice counts
// once) and span at most maxBlocks.  nil when the backlog is empty; flush
// first to include what arrived last.  The slice is valid until the next
// call of next or takeBack.
func (q *backlog) next(maxBlocks uint64) []item {
	q.dropEmpty()
	if len(q.runs) == 0 {
		return nil
	}
	r := &q.runs[0]
	rest := r.rest()
	first := rest[0].order
	j := 1
	for j < len(rest) {
		cur, prev := rest[j].order, rest[j-1].order
		// Another disk differs in the top bits: past maxBlocks too.
		if cur-first >= maxBlocks || (cur != prev && cur != prev+1) {
			break
		}
		j++
	}
	r.head += j
	out := q.take(rest[:j])
	q.dropEmpty()
	return out
}

// takeBack takes up to n references from the back of the bottom run, the
// end the reads reach last (they take its front): what the fetch hands
// back to the migration link.  In ascending order; flush first.  The
// slice is valid until the next call of next or takeBack.
func (q *backlog) takeBack(n int) []item {
	q.dropEmpty()
	if len(q.runs) == 0 || n <= 0 {
		return nil
	}
	r := &q.runs[0]
	rest := r.rest()
	n = min(n, len(rest))
	out := q.take(rest[len(rest)-n:])
	r.keys = r.keys[:len(r.keys)-n]
	q.dropEmpty()
	return out
}

// each calls fn for every queued reference; flush first.
func (q *backlog) each(fn func(*item)) {
	for i := range q.runs {
		for _, k := range q.runs[i].rest() {
			fn(q.slot(k.slot))
		}
	}
}
