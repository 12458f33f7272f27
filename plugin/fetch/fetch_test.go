package fetch

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"nasmig/cshim"
)

// drain takes every read the backlog gives and checks each: one disk,
// blocks in order and contiguous, within maxBlocks.
func drain(t testing.TB, q *backlog, maxBlocks uint64, limit int) []item {
	var out []item
	for k := 0; k < limit && q.len() > 0; k++ {
		got := q.next(maxBlocks)
		if len(got) == 0 {
			t.Fatalf("next gave nothing with %d queued", q.len())
		}
		first := got[0].req
		for i := 1; i < len(got); i++ {
			cur, prev := got[i].req, got[i-1].req
			if cur.Disk() != first.Disk() || cur.Block() < prev.Block() || cur.Block() > prev.Block()+1 ||
				cur.Block()-first.Block() >= maxBlocks {
				t.Fatalf("read of %d items not one contiguous run of disk %d: item %d is disk %d block %d after block %d",
					len(got), first.Disk(), i, cur.Disk(), cur.Block(), prev.Block())
			}
		}
		out = append(out, got...)
	}
	return out
}

// Every reference that arrives is read exactly once, however they arrive
// (batches of any size, any order, duplicate blocks) and however reads
// interleave with arrivals; each read is a contiguous run.
func TestBacklogReadsEveryReferenceOnce(t *testing.T) {
	r := rand.New(rand.NewPCG(2026, 12))
	var q backlog
	want := map[uint64]bool{}
	var got []item
	page := uint64(0)
	for pass := 0; pass < 300; pass++ {
		for i := r.IntN(400); i > 0; i-- {
			q.add(item{req: cshim.NewFetchReq(0, page, uint32(r.IntN(3)), uint64(r.IntN(5000)))})
			want[page] = true
			page++
		}
		q.flush()
		got = append(got, drain(t, &q, 256, r.IntN(20))...)
	}
	q.flush()
	got = append(got, drain(t, &q, 256, 1<<30)...)
	if q.len() != 0 || len(got) != len(want) {
		t.Fatalf("%d read, %d left, want %d", len(got), q.len(), len(want))
	}
	for _, it := range got {
		if !want[it.req.Page()] {
			t.Fatalf("page %d read twice", it.req.Page())
		}
		delete(want, it.req.Page())
	}
}

// A backlog that arrived at once is read in (disk, block) order, in reads
// as large as contiguity allows.
func TestBacklogCoalesces(t *testing.T) {
	var q backlog
	perm := rand.New(rand.NewPCG(1, 1)).Perm(1024)
	for i, b := range perm {
		q.add(item{req: cshim.NewFetchReq(0, uint64(i), 0, uint64(b))})
	}
	q.flush()
	for k := 0; k < 4; k++ {
		if got := q.next(256); len(got) != 256 || got[0].req.Block() != uint64(256*k) {
			t.Fatalf("read %d: %d blocks from %d, want 256 from %d", k, len(got), got[0].req.Block(), 256*k)
		}
	}
	if q.next(256) != nil {
		t.Fatal("a fifth read from 1024 blocks")
	}
}

// The runs stay few: their sizes halve from the bottom up.
func TestBacklogRunsStayLogarithmic(t *testing.T) {
	var q backlog
	r := rand.New(rand.NewPCG(5, 5))
	for pass := 0; pass < 4096; pass++ {
		for i := 0; i < 1024; i++ {
			q.add(item{req: cshim.NewFetchReq(0, 0, 0, r.Uint64N(1<<30))})
		}
		q.flush()
		if len(q.runs) > 2*22 {
			t.Fatalf("pass %d: %d runs for %d references", pass, len(q.runs), q.len())
		}
	}
	sizes := make([]int, len(q.runs))
	for i := range q.runs {
		sizes[i] = len(q.runs[i].rest())
	}
	if !slices.IsSortedFunc(sizes, func(a, b int) int { return b - a }) {
		t.Fatalf("run sizes %v not decreasing", sizes)
	}
	t.Logf("%d references in %d runs: %v", q.len(), len(q.runs), sizes)
}

// BenchmarkBacklog: 4 M references arrive in batches of 1024 while reads
// of up to 1 MiB take from the front, as during a large migration.  The
// cost per reference must not grow with the backlog.
func BenchmarkBacklog(b *testing.B) {
	for _, total := range []int{1 << 18, 1 << 22} {
		b.Run(fmt.Sprintf("refs=%d", total), func(b *testing.B) {
			r := rand.New(rand.NewPCG(9, 9))
			start := time.Now()
			for n := 0; n < b.N; n++ {
				var q backlog
				block := uint64(0)
				for added := 0; added < total; added += 1024 {
					for i := 0; i < 1024; i++ {
						// Mostly sequential files, with jumps.
						if r.IntN(64) == 0 {
							block = r.Uint64N(1 << 28)
						}
						block++
						q.add(item{req: cshim.NewFetchReq(0, 0, 0, block)})
					}
					q.flush()
					q.next(256)
				}
				for q.next(256) != nil {
				}
			}
			b.ReportMetric(float64(time.Since(start).Nanoseconds())/float64(b.N*total), "ns/ref")
		})
	}
}

// What the fetch hands back comes from the end its reads reach last, and
// nothing is read and handed back both.
func TestBacklogTakeBack(t *testing.T) {
	var q backlog
	for b := uint64(0); b < 1000; b++ {
		q.add(item{req: cshim.NewFetchReq(0, b, 0, b)})
	}
	q.flush()
	front := q.next(256)
	back := q.takeBack(100)
	if len(front) != 256 || len(back) != 100 || q.len() != 644 {
		t.Fatalf("read %d, took back %d, left %d", len(front), len(back), q.len())
	}
	for i, it := range back {
		if it.req.Block() != uint64(900+i) {
			t.Fatalf("took back block %d at %d, want %d", it.req.Block(), i, 900+i)
		}
	}
	rest := drain(t, &q, 256, 1<<30)
	if len(rest) != 644 || rest[0].req.Block() != 256 || rest[len(rest)-1].req.Block() != 899 {
		t.Fatalf("the reads got %d, blocks %d..%d", len(rest), rest[0].req.Block(), rest[len(rest)-1].req.Block())
	}
	if got := q.takeBack(10); got != nil {
		t.Fatalf("an empty backlog gave back %d", len(got))
	}
}

// A return path that is gone fails every request after it: the first is
// logged, every one is counted for the end-of-migration line.
func TestAskFailedLogsOnceCountsAll(t *testing.T) {
	var out bytes.Buffer
	f := &Fetcher{log: zerolog.New(&out)}
	for i := 0; i < 5; i++ {
		f.askFailed(errors.New("no return path"))
	}
	if got := f.Timings().AsksFailed; got != 5 {
		t.Errorf("AsksFailed %d, want 5", got)
	}
	if lines := strings.Count(out.String(), "\n"); lines != 1 || !strings.Contains(out.String(), `"level":"warn"`) {
		t.Errorf("want one warning, got %d lines:\n%s", lines, out.String())
	}
}
