package fetch

import (
	"time"

	"nasmig/cshim"
	"nasmig/plugin/wire"
)

// Hand-back: when the migration link is faster than the storage (a 10 Gbit
// link in front of a slower or busy storage network), the source's first
// pass is over long before the fetch, and the switchover waits for the
// fetch while the link stands idle.  Then the fetch hands the references
// it would read last (the back of its backlog; its reads take the front)
// back to the source, which sends those pages in full during the hold: the
// link and the storage work from both ends and meet in the middle.  The
// handed-back pages stay pending here until they come in full, so the
// approval still waits for every page; the ones that do not come (the
// source's mapping moved on, or an older library that does not know the
// message) are fetched after all.
const (
	handBackTick = 100 * time.Millisecond
	// handBackAhead: hand back only while the backlog would take the
	// fetch longer than this at its current rate.
	handBackAhead = 500 * time.Millisecond
	// handBackMinPages: a backlog smaller than this (16 MiB) is not worth
	// a round trip.
	handBackMinPages = 4096
	// handBackInitial: pages on their way over the link before any came
	// in full (32 MiB); then as many as the link delivers in handBackAhead
	// at the rate measured over handBackWindow.
	handBackInitial = 8192
	handBackWindow  = 500 * time.Millisecond
	// handBackTimeout: a handed-back page that has not come in full by
	// then is fetched after all; if none ever came, hand-back stops.
	handBackTimeout = time.Second
	// handBackGap: blocks between two handed-back ones that one message
	// may cover (the source sends what is mapped there in full too).
	handBackGap = 8
	// handBackPays: fetch and link together must fill this much faster
	// than the fetch did alone, a second into hand-back, or it stops.
	handBackPays = 1.15
)

type handedBack struct {
	it item
	at time.Time
}

type rateSample struct {
	at      time.Time
	fetched uint64 // pages filled from storage so far
	arrived uint64 // handed-back pages that came in full so far
}

type handBack struct {
	off     bool // the source does not send them: the fetch reads everything
	items   []handedBack
	arrived uint64 // came in full
	// Came in full but did not hold their block yet when looked at (the
	// loader had not written them, or the guest changed them): looked at
	// again once the stream has ended.
	recheck []cshim.FetchReq
	mapped  uint64 // came in full holding their block: mapped here
	fetched int    // given back to the fetch
	// The fetch's rate (pages/s) before the first hand-back, and when
	// that was: hand-back goes on only while fetch and link together
	// fill pages faster than the fetch alone did.  Where both draw on
	// the same CPUs (or the same network), it does not pay.
	baseRate float64
	started  time.Time
	paused   bool // it did not pay: nothing more is handed back
	last     time.Time
	samples  []rateSample
}

// tick runs every handBackTick from the fetch loop while the source holds
// the switchover for the fetch.
func (f *Fetcher) handBackTick(now time.Time) {
	h := &f.handBack
	if now.Sub(h.last) < handBackTick {
		return
	}
	h.last = now
	// Once hand-back is off, whatever is still out is read now.
	h.settle(f, now, h.off)
	if !f.hold || h.off {
		return
	}

	st := cshim.StatsSnapshot()
	h.samples = append(h.samples, rateSample{at: now, fetched: st.FetchedPages(), arrived: h.arrived})
	for len(h.samples) > 2 && now.Sub(h.samples[1].at) >= handBackWindow {
		h.samples = h.samples[1:]
	}
	old := h.samples[0]
	span := now.Sub(old.at)
	f.queued.flush()
	backlog := f.queued.len()
	// Only once references stopped coming (the source's first pass is
	// out and the link idles in the hold): before that the link is busy
	// with the pass, and pages handed back would wait behind it.
	if span < handBackWindow || backlog < handBackMinPages || now.Sub(f.lastRef) < refsQuiet {
		return
	}
	fetchRate := float64(st.FetchedPages()-old.fetched) / span.Seconds()
	linkRate := float64(h.arrived-old.arrived) / span.Seconds()
	if !h.started.IsZero() && now.Sub(h.started) >= 2*handBackWindow && !h.paused &&
		fetchRate+linkRate < handBackPays*h.baseRate {
		h.paused = true
		f.log.Info().Float64("fetch_pages_per_s_before", h.baseRate).Float64("fetch_pages_per_s", fetchRate).
			Float64("link_pages_per_s", linkRate).Msg("handing references back does not pay here: the fetch reads the rest")
	}
	if h.paused || fetchRate > 0 && float64(backlog)/fetchRate < handBackAhead.Seconds() {
		return
	}
	// Keep as many on their way over the link as it delivers in
	// handBackAhead, so the two ends share the backlog by their rates; and
	// never more than half of what is left.
	want := max(handBackInitial, int(linkRate*handBackAhead.Seconds()))
	n := min(want-len(h.items), backlog/2)
	if n < maxReadBlocks {
		return
	}
	taken := f.queued.takeBack(n)
	sent := 0
	for i := 0; i < len(taken); {
		j := i + 1
		for j < len(taken) && taken[j].req.Disk() == taken[i].req.Disk() &&
			taken[j].req.Block()-taken[j-1].req.Block() <= handBackGap && taken[j].req.Block()-taken[i].req.Block() < 1<<16 {
			j++
		}
		first, last := taken[i].req, taken[j-1].req
		msg := wire.EncodeSendFull(uint8(first.SrcDisk()), first.Block()<<cshim.PageShift, uint32(last.Block()-first.Block()+1))
		if err := cshim.SendToSource(msg); err != nil {
			// No return path after all: read them.
			f.log.Warn().Err(err).Msg("cannot hand references back to the source; the fetch reads them")
			for _, it := range taken[i:] {
				f.queued.add(it)
			}
			h.off = true
			break
		}
		for _, it := range taken[i:j] {
			h.items = append(h.items, handedBack{it: it, at: now})
		}
		sent += j - i
		i = j
	}
	if sent > 0 {
		if h.started.IsZero() {
			h.started, h.baseRate = now, fetchRate
		}
		cshim.AddHandedBack(uint64(sent))
		f.log.Debug().Int("pages", sent).Int("backlog", f.queued.len()).Float64("fetch_pages_per_s", fetchRate).
			Int("outstanding", len(h.items)).Msg("fetch behind the link: references handed back to the source")
	}
}

// settle drops the handed-back pages that came in full and gives the fetch
// back those that did not in time, or, with all, every one still pending
// (the stream has ended or a page is needed now).
func (h *handBack) settle(f *Fetcher, now time.Time, all bool) {
	if len(h.items) == 0 {
		return
	}
	reqs := make([]cshim.FetchReq, len(h.items))
	for i := range h.items {
		reqs[i] = h.items[i].it.req
	}
	pending := make([]uint8, len(reqs))
	cshim.RefsPending(reqs, pending)
	// While a sync point waits for the fetch, pages sent after it wait
	// too (multifd threads stop there): nothing is late then, and the
	// time it took does not count.
	freq, fack := cshim.FlushRequest()
	atSyncPoint := freq != fack
	var late []item
	var arrived []cshim.FetchReq
	keep := h.items[:0]
	for i, hb := range h.items {
		since := hb.at
		if f.flushAcked.After(since) {
			since = f.flushAcked
		}
		switch {
		case pending[i] == 0:
			h.arrived++
			arrived = append(arrived, hb.it.req)
		case all || !atSyncPoint && now.Sub(since) > handBackTimeout:
			late = append(late, hb.it)
		default:
			keep = append(keep, hb)
		}
	}
	h.items = keep
	h.mapArrived(arrived)
	if len(late) == 0 {
		return
	}
	if h.arrived == 0 && !all {
		f.log.Warn().Int("pages", len(late)+len(h.items)).Msg("the source sent none of the pages handed back to it; the fetch reads them, and reads everything from now on")
		h.off = true
		for _, hb := range h.items {
			late = append(late, hb.it)
		}
		h.items = nil
	}
	h.fetched += len(late)
	f.log.Debug().Int("pages", len(late)).Msg("handed-back pages that did not come in full: the fetch reads them")
	for _, it := range late {
		f.queued.add(it)
	}
}

// mapArrived enters the pages that came in full into this side's map where
// they hold their block, so that hand-back does not cost the next migration
// its references; the others are looked at again when the stream has ended.
func (h *handBack) mapArrived(reqs []cshim.FetchReq) {
	if !cshim.FillCopying() {
		// Postcopy: a page "arrived" may have been dropped by the
		// switch's discard and not be placed yet; reading it would map
		// the zero page where the source's page must go.  Looked at when
		// the stream has ended, every page placed.
		h.recheck = append(h.recheck, reqs...)
		return
	}
	h.recheck = append(h.recheck, h.mapIfBlock(reqs)...)
}

// mapRechecked runs once every page has been loaded (the verification gate
// at the stream's end): a handed-back page that holds its block now is
// mapped; one the guest changed is not.
func (h *handBack) mapRechecked() {
	h.mapIfBlock(h.recheck)
	h.recheck = nil
}

// mapIfBlock maps and counts the pages of reqs that hold their block and
// returns the others.
func (h *handBack) mapIfBlock(reqs []cshim.FetchReq) (unmapped []cshim.FetchReq) {
	if len(reqs) == 0 {
		return nil
	}
	mapped := make([]uint8, len(reqs))
	cshim.MapIfBlock(reqs, mapped)
	for i, m := range mapped {
		if m != 0 {
			h.mapped++
		} else {
			unmapped = append(unmapped, reqs[i])
		}
	}
	return unmapped
}
