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
type backlog struct {
	runs    []run
	pending []item // arrived since the last flush, unsorted
	n       int    // references queued in runs and pending
}

type run struct {
	items []item
	head  int
}

func (r *run) rest() []item { return r.items[r.head:] }

func itemLess(a, b *item) bool {
	if a.req.Disk() != b.req.Disk() {
		return a.req.Disk() < b.req.Disk()
	}
	return a.req.Block() < b.req.Block()
}

func itemCmp(a, b item) int {
	switch {
	case itemLess(&a, &b):
		return -1
	case itemLess(&b, &a):
		return 1
	}
	return 0
}

func (q *backlog) len() int { return q.n }

func (q *backlog) add(it item) {
	q.pending = append(q.pending, it)
	q.n++
}

// flush turns the references that arrived since the last flush into a run.
func (q *backlog) flush() {
	if len(q.pending) == 0 {
		return
	}
	r := run{items: q.pending}
	q.pending = nil
	slices.SortFunc(r.items, itemCmp)
	q.runs = append(q.runs, r)
	for k := len(q.runs); k >= 2 && len(q.runs[k-2].rest()) <= 2*len(q.runs[k-1].rest()); k = len(q.runs) {
		merged := mergeRuns(q.runs[k-2].rest(), q.runs[k-1].rest())
		q.runs = append(q.runs[:k-2], run{items: merged})
	}
}

func mergeRuns(a, b []item) []item {
	out := make([]item, 0, len(a)+len(b))
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		if itemLess(&b[j], &a[i]) {
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

// next takes the references of one read from the front of the bottom run:
// blocks of one disk that are contiguous (a block referenced twice counts
// once) and span at most maxBlocks.  nil when the backlog is empty; flush
// first to include what arrived last.
func (q *backlog) next(maxBlocks uint64) []item {
	for len(q.runs) > 0 && len(q.runs[0].rest()) == 0 {
		q.runs = q.runs[1:]
	}
	if len(q.runs) == 0 {
		return nil
	}
	r := &q.runs[0]
	rest := r.rest()
	first := rest[0].req
	j := 1
	for j < len(rest) {
		cur, prev := rest[j].req, rest[j-1].req
		if cur.Disk() != first.Disk() || cur.Block()-first.Block() >= maxBlocks ||
			(cur.Block() != prev.Block() && cur.Block() != prev.Block()+1) {
			break
		}
		j++
	}
	r.head += j
	q.n -= j
	if len(r.rest()) == 0 {
		q.runs = q.runs[1:]
	}
	return rest[:j]
}

// takeBack takes up to n references from the back of the bottom run, the
// end the reads reach last (they take its front): what the fetch hands
// back to the migration link.  In ascending order; flush first.
func (q *backlog) takeBack(n int) []item {
	for len(q.runs) > 0 && len(q.runs[0].rest()) == 0 {
		q.runs = q.runs[1:]
	}
	if len(q.runs) == 0 || n <= 0 {
		return nil
	}
	r := &q.runs[0]
	rest := r.rest()
	n = min(n, len(rest))
	out := append([]item(nil), rest[len(rest)-n:]...)
	r.items = r.items[:len(r.items)-n]
	q.n -= n
	if len(r.rest()) == 0 {
		q.runs = q.runs[1:]
	}
	return out
}

// each calls fn for every queued reference; flush first.
func (q *backlog) each(fn func(*item)) {
	for i := range q.runs {
		rest := q.runs[i].rest()
		for j := range rest {
			fn(&rest[j])
		}
	}
}
