// Package fetch is the destination's reader of disk references: it takes
// references from the C request ring as they arrive, coalesces contiguous
// blocks into large reads, keeps several reads in flight through QEMU's
// block layer, verifies every block's hash in C and fills the page.
//
// A block that fails verification (or cannot be read, or lies on a disk
// this side cannot open) is asked from the source over the return path
// when there is one (a live migration): the source drops the mapping and
// sends the page in full, which supersedes the failed fill.  Whatever is
// still failed when the stream ends is re-read, now that the source has
// flushed and inactivated its disks; if it still fails, the migration fails
// and the source resumes.  Nothing here ever lets an unverified page into
// guest RAM.
package fetch

import (
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"nasmig/cshim"
	"nasmig/plugin/wire"
)

const (
	maxReadBlocks = 256 // 1 MiB per coalesced read
	maxInFlight   = 16  // batches out: being read, or filled
	// After the switch to postcopy a read for a page the guest touched
	// queues behind the background reads in flight: fewer of them (4 MiB
	// is 3 ms on a 10 Gbit/s link, 33 ms on 1 Gbit/s), and while the guest
	// is touching pages smaller ones (1 MiB, 8 ms on 1 Gbit/s), keep its
	// wait short; between faults full-size reads keep the fill fast.
	maxInFlightPlacing   = 4
	maxReadBlocksTouched = 64 // 256 KiB
	// touchedRecently: how long after a fault reads stay small.
	touchedRecently = 250 * time.Millisecond
	maxErrors       = 8 // messages kept for the report
	// maxPageLines: failed references logged one by one (Info); past
	// them Debug only, the end-of-migration line counts them all (a
	// migration whose blocks were overwritten fails tens of thousands).
	maxPageLines = 8
)

// batchIDs names every read of every fetch of this process: a read or
// fill still out when its fetch stopped must not pass for a later fetch's.
var batchIDs atomic.Uint64

type item struct {
	req   cshim.FetchReq
	retry bool
}

type batch struct {
	disk    uint32
	first   uint64 // first block
	nblocks uint64
	fb      *cshim.FillBatch // QEMU reads into it; C's fill threads fill from it
	items   []item
	retry   bool
}

// DiskName names a source disk for error messages.
type DiskName func(srcDisk uint32) string

// Fetcher serves one incoming migration.
type Fetcher struct {
	log      zerolog.Logger
	diskName DiskName
	// wake: the eventfd C writes to, read through Go's poller: a sleep
	// in a blocking poll(2) held its P in a system call, which Go's system
	// monitor took back every 20 us while another goroutine ran (7% of
	// the destination QEMU's CPU during a fetch).
	wake *os.File
	stop chan struct{}
	done chan struct{}

	queued backlog
	failed []item
	// inflight: every batch from its read until the fill threads hand it
	// back (sync points and the gate wait for it).
	inflight map[uint64]*batch
	// Verification and fill run on C's fill threads (cshim/fill.c), not
	// on this loop: the fill's first touch of guest RAM (the kernel
	// zeroing each new page) costs as much CPU as the rest of the fetch,
	// and one thread would serialise it.  The loop keeps the storage busy
	// meanwhile.  finished: batches back from them, to account.
	finished []*cshim.FillBatch
	// free: batches done with, kept with their C memory and item slices.
	free  []*batch
	errs  []string
	nerrs int
	// pageLines: failed references logged so far (maxPageLines).
	pageLines int

	// Switchover: the source holds it until this side reports that the
	// fetch has caught up with every reference it sent (reportCaughtUp),
	// so what remains to fetch at switchover (downtime) is small.
	// popped: references of this migration taken off the C queue (every
	// one up to this count is queued, in flight, filled or failed);
	// reported: the count last sent to the source.
	popped, reported uint64
	reportFailed     bool
	lastRef          time.Time
	// hold: the source waits for the report (a live migration with a
	// return path); without it nothing is reported and nothing can be
	// asked from the source.
	hold bool
	// placing: the source switched to postcopy with references still to
	// fill (setup flag FILL_AFTER): fills place pages whole, and a page
	// that fails is asked from the source through postcopy's page request
	// (its dirty bitmap is not synced any more, so RESEND would be lost).
	placing bool
	// touch: the pages the guest touched while they waited for their
	// reference (touch.go).
	touch  touchState
	reqBuf []cshim.FetchReq // popRefs' buffer (C memory)

	handBack handBack

	// Where the destination waited, for the log at the end.
	timings   Timings
	flushSeen time.Time // when the pending sync point was first seen
	// flushAcked: when the last sync point was let through.  Pages sent
	// after a sync point wait behind it (multifd), so a handed-back page
	// is not late while one is pending.
	flushAcked time.Time
}

// Timings says where an incoming migration waited for the fetch: the sync
// points (multifd flushes, the end of each RAM section) and the final
// verification gate, whose wait is downtime.
type Timings struct {
	FlushWaits     int           // sync points that found fills pending
	FlushWaitTotal time.Duration // the stream stood still this long in all
	FlushWaitMax   time.Duration
	FirstCaughtUp  time.Time // first time the fetch reported caught up
	RefsAfter      int       // references that arrived after it
	FinishSeen     time.Time // the verification gate was reached
	GatePending    int       // references queued or in flight then (downtime)
	FinishDone     time.Time // and passed (or failed)
	// Hand-back (handback.go): pages that came in full, and those fetched
	// after all (late, or still pending when the stream ended).
	HandBackArrived uint64
	HandBackFetched int
	HandBackMapped  uint64 // came in full holding their block: mapped for the next migration
	// Filling after the switchover (touch.go): blocks read ahead of the
	// queue for pages the guest touched, and pages asked from the source
	// (past the fault fallback, or fill-after-max).
	FaultReads, FaultsAsked int
	// AsksFailed: requests for a page in full that could not be sent (no
	// return path, or a postcopy pause: QEMU resends what it recorded).
	AsksFailed int
}

// Timings returns the waits so far (call after Stop, or from the worker).
func (f *Fetcher) Timings() Timings {
	t := f.timings
	t.HandBackArrived, t.HandBackFetched, t.HandBackMapped = f.handBack.arrived, f.handBack.fetched, f.handBack.mapped
	t.FaultReads, t.FaultsAsked = f.touch.reads, f.touch.asked
	return t
}

// refsQuiet: no reference for this long, and the source's pass is out
// (its link idles in the hold).
const refsQuiet = 200 * time.Millisecond

// Options of one incoming migration's fetch.
type Options struct {
	// Hold: a live migration with a return path (the source holds the
	// switchover for the fetch, and can be asked for pages).
	Hold bool
	// HandBack: hand references back to the source while the fetch is
	// behind the link (handback.go).
	HandBack bool
	// FaultFallback and FillAfterMax: filling after the switchover
	// (touch.go; config.Config says what they mean).
	FaultFallback, FillAfterMax time.Duration
}

// Start launches the worker; it sleeps on an eventfd that C writes to.
func Start(log zerolog.Logger, diskName DiskName, o Options) (*Fetcher, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("fetch: eventfd: %w", err)
	}
	f := &Fetcher{log: log, diskName: diskName, wake: os.NewFile(uintptr(fd), "nasmig-fetch-wake"), stop: make(chan struct{}), done: make(chan struct{}),
		inflight: map[uint64]*batch{}, hold: o.Hold, handBack: handBack{off: !o.HandBack},
		reqBuf: cshim.NewReqBuf(1024), touch: newTouchState(o.FaultFallback, o.FillAfterMax)}
	f.touch.drain()
	cshim.SetWakeFD(fd)
	go f.run()
	return f, nil
}

// Stop ends the worker after the reads and fills in flight have finished
// (their batches belong to QEMU or the fill threads until then) or after a
// timeout, and frees the batches it holds.
func (f *Fetcher) Stop() {
	close(f.stop)
	<-f.done
	cshim.SetWakeFD(-1)
	f.wake.Close()
	for _, b := range f.free {
		b.fb.Free()
	}
	f.free = nil
	cshim.FreeReqBuf(f.reqBuf)
	f.reqBuf = nil
}

func (f *Fetcher) run() {
	defer close(f.done)
	var stopAt time.Time
	var back []*batch
	for {
		busy := f.popRefs()
		back = back[:0]
		f.finished = cshim.FillPop(f.finished[:0])
		for _, fb := range f.finished {
			busy = true
			if b, ok := f.inflight[fb.Cookie()]; ok {
				delete(f.inflight, fb.Cookie())
				back = append(back, b)
			} else {
				// A fetch that stopped before its fill came back left it.
				fb.Free()
			}
		}
		// Refill before accounting: the storage keeps reading meanwhile.
		if f.queued.len() > 0 && len(f.inflight) < f.inFlightLimit() {
			busy = true
			f.issue(false)
		}
		for _, b := range back {
			f.account(b)
		}
		if f.queued.len() > 0 && len(f.inflight) < f.inFlightLimit() {
			busy = true
			f.issue(false)
		}
		f.postcopyTick()
		if f.touchTick(time.Now()) {
			busy = true
		}
		f.settle()
		f.reportCaughtUp()
		f.handBackTick(time.Now())
		select {
		case <-f.stop:
			if stopAt.IsZero() {
				stopAt = time.Now()
			}
			if len(f.inflight) == 0 || time.Since(stopAt) > 5*time.Second {
				// A batch still with QEMU keeps its memory (the read may
				// still land); one still with the fill threads is freed
				// by the next fetch that takes it back.
				return
			}
		default:
		}
		if busy {
			// Requests popped or fills done: what QEMU may wait for.
			cshim.KickWaiter()
		} else {
			f.sleep()
		}
	}
}

// popRefs takes the references that arrived off the C queue; true when
// there were some.
func (f *Fetcher) popRefs() bool {
	received := cshim.RefsReceived()
	n := cshim.ReqPop(f.reqBuf)
	if n < len(f.reqBuf) {
		f.popped = received
	}
	if n == 0 {
		return false
	}
	f.lastRef = time.Now()
	if !f.timings.FirstCaughtUp.IsZero() {
		f.timings.RefsAfter += n
	}
	f.enqueue(f.reqBuf[:n], false)
	return true
}

// reportCaughtUp tells the source how many references the fetch has
// caught up with, whenever that count grows: every reference popped is
// filled, or failed (the source was asked for the page: that message went
// first on the same return path, so the source marks the page dirty before
// it reads the count, and its final pass carries it), and nothing is
// queued, in flight or handed back and still on its way.  The source
// compares the count with the references it sent, so no timer here guesses
// whether more are coming.
func (f *Fetcher) reportCaughtUp() {
	if !f.hold || f.popped == f.reported {
		return
	}
	// Past fill-after-max every page still waiting was asked from the
	// source, whose completion sends it: reads still out do not count.
	if !f.touch.allAsked {
		if f.queued.len() > 0 || len(f.inflight) > 0 {
			return
		}
		if st := cshim.StatsSnapshot(); st.PendingPages() > uint64(len(f.failed)) {
			return
		}
	}
	if err := cshim.SendToSource(wire.EncodeCaughtUp(f.popped)); err != nil {
		if !f.reportFailed {
			f.reportFailed = true
			f.log.Warn().Err(err).Msg("cannot tell the source the fetch caught up; it holds the switchover until its hold-max")
		}
		return
	}
	f.reported = f.popped
	if f.timings.FirstCaughtUp.IsZero() {
		f.log.Debug().Uint64("refs", f.popped).Msg("fetch caught up: told the source")
		f.timings.FirstCaughtUp = time.Now()
	}
}

// settle answers barrier and finish requests once nothing is queued or in flight.
func (f *Fetcher) settle() {
	if freq, fack := cshim.FlushRequest(); freq != fack {
		if f.flushSeen.IsZero() {
			f.flushSeen = time.Now()
		}
		if f.queued.len() == 0 && len(f.inflight) == 0 {
			// A multifd sync point: every fill issued so far has landed
			// (failed pages wait: a page from the stream may still replace
			// them, and the final re-read comes at finish).
			cshim.AckFlush(freq)
			cshim.Kick()
			f.flushAcked = time.Now()
			if waited := time.Since(f.flushSeen); waited > time.Millisecond {
				f.log.Debug().Dur("waited", waited).Msg("sync point: the stream waited for the fetch")
				f.timings.FlushWaits++
				f.timings.FlushWaitTotal += waited
				f.timings.FlushWaitMax = max(f.timings.FlushWaitMax, waited)
			}
			f.flushSeen = time.Time{}
		}
	}
	req := cshim.FinishRequest()
	if req != 0 && len(f.handBack.items) > 0 {
		// The stream has ended, or a page is needed now: whatever was
		// handed back and has not come is read.
		f.handBack.settle(f, time.Now(), true)
	}
	if req&cshim.FinishReqFinish != 0 {
		f.handBack.off = true
	}
	if req&cshim.FinishReqFinish != 0 && f.timings.FinishSeen.IsZero() {
		f.log.Debug().Int("queued", f.queued.len()).Int("in_flight", len(f.inflight)).Msg("verification gate reached")
		f.timings.FinishSeen = time.Now()
		f.timings.GatePending = f.queued.len()
		for _, b := range f.inflight {
			f.timings.GatePending += len(b.items)
		}
	}
	if req == 0 || f.queued.len() > 0 || len(f.inflight) > 0 {
		return
	}
	if len(f.failed) > 0 {
		// Re-read what failed: the source's data is on storage by now (at a
		// barrier, as far as it will be before the pages are needed).  A
		// page that came in full meanwhile (the source was asked for it)
		// needs no read: in a migration whose blocks were overwritten,
		// that is most of them.
		reqs := make([]cshim.FetchReq, len(f.failed))
		for i, it := range f.failed {
			reqs[i] = it.req
		}
		f.failed = nil
		still := make([]uint8, len(reqs))
		cshim.RefsFailed(reqs, still)
		n := 0
		for i := range reqs {
			if still[i] != 0 {
				reqs[n] = reqs[i]
				n++
			}
		}
		if n > 0 {
			f.enqueue(reqs[:n], true)
			f.issue(true)
			return
		}
	}
	if req&cshim.FinishReqBarrier != 0 {
		cshim.ClearBarrierRequest()
		cshim.Kick()
	}
	if req&cshim.FinishReqFinish != 0 {
		st := cshim.StatsSnapshot()
		if f.nerrs > 0 || st.PendingPages() != 0 {
			msg := strings.Join(f.errs, "; ")
			if f.nerrs > len(f.errs) {
				msg += fmt.Sprintf("; and %d more", f.nerrs-len(f.errs))
			}
			if msg == "" {
				msg = fmt.Sprintf("%d pages still pending", st.PendingPages())
			}
			cshim.SetErr(fmt.Sprintf("%d disk references failed: %s", f.nerrs, msg))
			cshim.SetFinishState(cshim.FinishFailed)
		} else {
			f.handBack.mapRechecked()
			cshim.SetFinishState(cshim.FinishOK)
		}
		if f.timings.FinishDone.IsZero() {
			f.timings.FinishDone = time.Now()
		}
		cshim.Kick()
	}
}

func (f *Fetcher) sleep() {
	timeout := 20 // ms
	if len(f.touch.waiting) > 0 {
		timeout = 2 // a fault's fallback is due soon
	}
	cshim.SetSleeping()
	// Re-check after announcing sleep: C may have queued work just before.
	if cshim.WorkReady() {
		return
	}
	if freq, fack := cshim.FlushRequest(); (cshim.FinishRequest() != 0 || freq != fack) && f.queued.len() == 0 && len(f.inflight) == 0 {
		return
	}
	// The eventfd is non-blocking, so the read parks this goroutine in Go's
	// poller until C writes or the deadline passes.
	f.wake.SetReadDeadline(time.Now().Add(time.Duration(timeout) * time.Millisecond))
	var b [8]byte
	f.wake.Read(b[:])
}

// buffer is a batch to read into, a free one if there is one.
func (f *Fetcher) buffer() (*batch, error) {
	if n := len(f.free); n > 0 {
		b := f.free[n-1]
		f.free = f.free[:n-1]
		return b, nil
	}
	// Outside the Go heap: QEMU and the fill threads use it from theirs.
	fb, err := cshim.NewFillBatch(maxReadBlocks)
	if err != nil {
		return nil, err
	}
	return &batch{fb: fb}, nil
}

// issue coalesces queued items into reads of contiguous blocks, each
// block read once however many pages reference it.
// enqueue takes references that arrived; those on a disk this side cannot
// read fail at once.
func (f *Fetcher) enqueue(reqs []cshim.FetchReq, retry bool) {
	var refused []item
	for _, r := range reqs {
		it := item{req: r, retry: retry}
		if f.placing {
			f.touch.late[reqKey(&r)] = r
		}
		if int32(r.Disk()) == cshim.DestDiskRefused {
			refused = append(refused, it)
		} else {
			f.queued.add(it)
		}
	}
	if len(refused) > 0 {
		f.fail(refused, "the disk is not usable on this side")
	}
}

// How long the fetch-stall fault (nasmig.h) stops the fetcher: longer than
// a hold poll and a sync point, shorter than any test's bound.
const injectedStall = 3 * time.Second

// issue starts coalesced reads from the backlog while fewer than
// maxInFlight are in flight (a final re-read starts them all).
func (f *Fetcher) issue(retry bool) {
	f.queued.flush()
	for f.queued.len() > 0 && (len(f.inflight) < f.inFlightLimit() || retry) {
		buf, err := f.buffer()
		if err != nil {
			f.log.Error().Err(err).Msg("no buffer for a storage read; retrying later")
			break
		}
		f.startRead(buf, f.queued.next(f.readBlocks()), retry)
	}
}

// startRead reads the blocks of items (contiguous, on one disk) into b,
// a batch from buffer.
func (f *Fetcher) startRead(b *batch, items []item, retry bool) {
	first, last := items[0].req, items[len(items)-1].req.Block()
	id := batchIDs.Add(1)
	b.disk, b.first, b.nblocks, b.retry = first.Disk(), first.Block(), last-first.Block()+1, retry
	b.items = append(b.items[:0], items...)
	fb := b.fb
	if cshim.Fault(cshim.FaultFetchStall) {
		f.log.Warn().Dur("for", injectedStall).Msg("injected fault: the fetch stalls")
		time.Sleep(injectedStall)
	}
	reqs, err := fb.Prepare(id, b.first, b.nblocks, len(items))
	if err == nil {
		for i := range items {
			reqs[i] = items[i].req
		}
		f.inflight[id] = b
		if err = fb.Read(b.disk); err != nil {
			delete(f.inflight, id)
		}
	}
	if err != nil {
		f.free = append(f.free, b)
		f.fail(b.items, err.Error())
		return
	}
	cshim.AddFetchReads(1)
	cshim.AddFetchBytes(b.nblocks * cshim.PageSize)
}

// readBlocks is the size of a background read, in blocks.
func (f *Fetcher) readBlocks() uint64 {
	if f.placing && time.Since(f.touch.lastFault) < touchedRecently {
		return maxReadBlocksTouched
	}
	return maxReadBlocks
}

// inFlightLimit is how many background reads may be out at once.
func (f *Fetcher) inFlightLimit() int {
	if f.placing {
		return maxInFlightPlacing
	}
	return maxInFlight
}

// account takes a batch back from the fill threads (out of inflight):
// fails the items of a read that failed or did not verify, counts, frees
// its buffer.
func (f *Fetcher) account(b *batch) {
	if errno := b.fb.ReadErr(); errno != 0 {
		f.free = append(f.free, b)
		f.fail(b.items, fmt.Sprintf("storage read failed: %v", errno))
		return
	}
	var bad, unplaced []item
	for i, r := range b.fb.Results() {
		switch r {
		case cshim.FillFilled:
			if b.retry {
				cshim.AddFallbacks(1)
			}
		case cshim.FillMismatch:
			cshim.AddVerifyFailures(1)
			bad = append(bad, b.items[i])
		case cshim.FillPlaceFailed:
			unplaced = append(unplaced, b.items[i])
		}
	}
	f.free = append(f.free, b)
	if len(bad) > 0 {
		f.fail(bad, "block content does not match the reference's hash")
	}
	if len(unplaced) > 0 {
		f.fail(unplaced, "userfaultfd could not place the verified page")
	}
	if first := cshim.FirstRefNS(); first != 0 {
		cshim.SetFetchTime(cshim.NowNS() - first)
	}
}

// postcopyTick notices the switch to postcopy (once): what was asked from
// the source before it may have come too late for the source's last sync,
// so failed pages are asked again through postcopy's page request, and
// handed-back ones are read from storage after all (hand-back stops: the
// source's link is no longer what the fetch races).
func (f *Fetcher) postcopyTick() {
	if f.placing || !cshim.FillPlacing() {
		return
	}
	f.placing = true
	f.handBack.off = true
	f.handBack.settle(f, time.Now(), true)
	for i := range f.failed {
		f.askSource(&f.failed[i].req)
	}
	f.touch.start(f, time.Now())
	f.log.Debug().Int("queued", f.queued.len()).Int("in_flight", len(f.inflight)).Int("failed", len(f.failed)).
		Msg("postcopy started: the rest of the references are filled while the guest runs")
}

// askSource asks the source to send the page of a failed reference in
// full; false when the message could not be sent.
func (f *Fetcher) askSource(r *cshim.FetchReq) bool {
	if f.placing {
		return f.requestPage(r.RAMBlock(), r.Page())
	}
	msg, err := wire.EncodeResend(uint8(r.SrcDisk()), r.Block()<<cshim.PageShift, r.Page()<<cshim.PageShift,
		cshim.RAMBlockName(int(r.RAMBlock())))
	if err == nil {
		err = cshim.SendToSource(msg)
	}
	if err != nil {
		f.askFailed(err)
		return false
	}
	return true
}

// requestPage asks the source for a page through postcopy's page request.
func (f *Fetcher) requestPage(rb uint32, page uint64) bool {
	if err := cshim.RequestPage(rb, page<<cshim.PageShift); err != nil {
		f.askFailed(err)
		return false
	}
	return true
}

// askFailed: a request could not be sent.  A return path that is gone
// fails every request after it: the first one is logged, all are counted.
func (f *Fetcher) askFailed(err error) {
	if f.timings.AsksFailed == 0 {
		f.log.Warn().Err(err).Msg("cannot ask the source for a page (later failures are counted in the end-of-migration line)")
	}
	f.timings.AsksFailed++
}

// fail parks items for a re-read, or, for items that were already re-read,
// records the error that will fail the migration.
func (f *Fetcher) fail(items []item, reason string) {
	for _, it := range items {
		r := it.req
		where := fmt.Sprintf("page %s+%#x: block %#x of disk %d (%s)", cshim.RAMBlockName(int(r.RAMBlock())),
			r.Page()<<cshim.PageShift, r.Block()<<cshim.PageShift, r.SrcDisk(), f.diskName(r.SrcDisk()))
		if !cshim.FailPage(&r) {
			continue // a later record replaced this reference
		}
		if !it.retry {
			f.pageLines++
			level := zerolog.InfoLevel
			if f.pageLines > maxPageLines {
				level = zerolog.DebugLevel
			} else if f.pageLines == maxPageLines {
				reason += " (further failed references are logged at debug level only)"
			}
			if f.hold && f.askSource(&r) {
				f.log.WithLevel(level).Str("where", where).Str("reason", reason).Msg("disk reference failed; asked the source for the page")
			} else {
				if level == zerolog.InfoLevel {
					level = zerolog.WarnLevel
				}
				f.log.WithLevel(level).Str("where", where).Str("reason", reason).Msg("disk reference failed; will re-read after the source's final flush")
			}
			// Kept for the final re-read, in case the page never comes.
			f.failed = append(f.failed, item{req: r})
			continue
		}
		f.log.Error().Str("where", where).Str("reason", reason).Msg("disk reference failed again after the final flush")
		f.nerrs++
		if len(f.errs) < maxErrors {
			f.errs = append(f.errs, where+": "+reason)
		}
		cshim.AbandonPage(&r)
	}
}
