// Package p2b is the writer of nasmig's page-to-block map.
//
// The map lives in memory shared with C (see cshim/shim.h for the word
// layouts): per RAM block a forward word per guest page (disk, block, 16
// filter bits of the page hash) and per disk a chunked reverse index (page,
// 24 more filter bits).  QEMU's threads read it lock-free in C; this package
// is its only writer, driven by one drainer goroutine and, synchronously,
// by the migration thread before each dirty-bitmap sync.  Writers are
// serialised by Map.mu; readers never lock.
//
// A block maps to at most one page: a later read of the same block moves
// the mapping, so that one reverse word per block suffices (24 bytes per
// tracked page when the disk blocks are dense).  During a migration every
// page the map stops tracking while it may be out as a reference (its
// block read into another page, written, or the page moved to another
// block) is marked dirty at the next bitmap sync.
package p2b

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"nasmig/cshim"
	"nasmig/plugin/content"
)

// PageRef names one guest page.
type PageRef struct {
	RAMBlock uint32
	Page     uint64
}

// Map applies tracking records to the shared map.
type Map struct {
	mu        sync.Mutex
	migrating bool      // invalidated pages must be sent again
	redirty   []PageRef // pages to mark dirty at the next bitmap sync
	buf       []cshim.Rec
	lastLost  uint64
	mapped    atomic.Int64
	perDisk   [cshim.MaxDisks]atomic.Int64 // pages mapped to each disk
	// Content, when set, takes the content records (cshim.SetContentMode)
	// and forgets the blocks every write touches.
	Content *content.Index

	// What this writer knows of C's tables, saving several cgo calls per
	// record (a fetch maps every page it fills): RAM blocks and disks are
	// only ever added, and a published forward array or reverse chunk
	// stays where it is for the life of the process (cshim/tables.c).
	nrb, ndisk int
	fwd        [][]uint64   // per RAM block
	rev        [][][]uint64 // per disk, per chunk
	// mappedDelta: the change of C's mapped-pages counter not added yet
	// (once per batch of records).
	mappedDelta int64
}

// New returns the writer of the (global) shared map.
func New() *Map {
	return &Map{buf: make([]cshim.Rec, 4096), lastLost: cshim.LostInvalidations()}
}

// Mapped is the number of pages the map covers.
func (m *Map) Mapped() int64 { return m.mapped.Load() }

// MappedOn is the number of pages mapped to blocks of disk.
func (m *Map) MappedOn(disk int) int64 {
	if disk < 0 || disk >= cshim.MaxDisks {
		return 0
	}
	return m.perDisk[disk].Load()
}

// DrainOnce applies up to one buffer of records; returns how many.
func (m *Map) DrainOnce() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.drainLocked()
}

func (m *Map) drainLocked() int {
	n := m.popApplyLocked()
	if lost := cshim.LostInvalidations(); lost != m.lastLost {
		// A write we could not record may have hit any block: fail closed.
		// Records queued before it may map pages to the blocks it wrote
		// and no invalidation will follow them: apply them first, so that
		// the drop covers them too.  Their producers are publishing now.
		for until := cshim.LostHead(); cshim.RingTail() < until; {
			k := m.popApplyLocked()
			if k == 0 {
				runtime.Gosched()
			}
			n += k
		}
		m.lastLost = lost
		m.dropAllLocked()
	}
	return n
}

// drainAllLocked applies records until the ring is empty.
func (m *Map) drainAllLocked() {
	for m.drainLocked() > 0 {
	}
}

func (m *Map) popApplyLocked() int {
	n := cshim.RingPop(m.buf)
	for i := 0; i < n; i++ {
		m.apply(&m.buf[i])
	}
	m.flushMapped()
	return n
}

// flushMapped adds the pages mapped and unmapped since the last call to
// C's counter.
func (m *Map) flushMapped() {
	if m.mappedDelta != 0 {
		cshim.AddMappedPages(m.mappedDelta)
		m.mappedDelta = 0
	}
}

func (m *Map) ramBlockKnown(rb uint32) bool {
	if int(rb) >= m.nrb {
		m.nrb = cshim.RAMBlockCount()
	}
	return int(rb) < m.nrb
}

func (m *Map) diskKnown(disk int) bool {
	if disk >= m.ndisk {
		m.ndisk = cshim.DiskCount()
	}
	return disk < m.ndisk
}

// forward is rb's forward array (nil: no such RAM block).
func (m *Map) forward(rb uint32) []uint64 {
	if int(rb) < len(m.fwd) && m.fwd[rb] != nil {
		return m.fwd[rb]
	}
	if !m.ramBlockKnown(rb) {
		return nil
	}
	f := cshim.Forward(int(rb))
	if f != nil {
		for len(m.fwd) <= int(rb) {
			m.fwd = append(m.fwd, nil)
		}
		m.fwd[rb] = f
	}
	return f
}

// revChunk is chunk idx of disk's reverse index, allocated if alloc (nil:
// none, or outside the disk).
func (m *Map) revChunk(disk int, idx uint64, alloc bool) []uint64 {
	if disk < len(m.rev) && idx < uint64(len(m.rev[disk])) && m.rev[disk][idx] != nil {
		return m.rev[disk][idx]
	}
	chunk, err := cshim.RevChunkAt(disk, idx, alloc)
	if err != nil || chunk == nil {
		return nil
	}
	for len(m.rev) <= disk {
		m.rev = append(m.rev, nil)
	}
	if uint64(len(m.rev[disk])) <= idx {
		// RevChunkAt returned a chunk, so idx is inside the directory.
		m.rev[disk] = append(m.rev[disk], make([][]uint64, cshim.RevChunkCount(disk)-uint64(len(m.rev[disk])))...)
	}
	m.rev[disk][idx] = chunk
	return chunk
}

// Sync drains everything queued so far and, during a migration, marks every
// page whose block changed dirty again.  Called on the migration thread
// before each dirty-bitmap sync.
func (m *Map) Sync() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.drainAllLocked()
	if len(m.redirty) > 0 {
		rbs, pages := make([]uint32, len(m.redirty)), make([]uint64, len(m.redirty))
		for i, p := range m.redirty {
			rbs[i], pages[i] = p.RAMBlock, p.Page
		}
		cshim.MarkDirtyPages(rbs, pages)
	}
	m.redirty = m.redirty[:0]
}

// SetMigrating switches re-sending of invalidated pages on or off.
func (m *Map) SetMigrating(on bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.migrating = on
	m.redirty = m.redirty[:0]
}

// Run drains the ring until stop is closed.  Polling keeps QEMU's I/O path
// free of wake-ups; the interval grows while the ring stays empty.
func (m *Map) Run(stop <-chan struct{}) {
	idle := 0
	for {
		if m.DrainOnce() > 0 {
			idle = 0
			continue
		}
		idle++
		d := time.Millisecond
		if idle > 100 {
			d = 20 * time.Millisecond
		}
		select {
		case <-stop:
			return
		case <-time.After(d):
		}
	}
}

func (m *Map) apply(r *cshim.Rec) {
	switch cshim.RecType(r) {
	case cshim.RecMap:
		m.mapPage(cshim.RecRAMBlock(r), cshim.RecPage(r), cshim.RecDisk(r), cshim.RecBlock(r), cshim.RecHash(r))
	case cshim.RecInval:
		m.invalidate(cshim.RecDisk(r), cshim.RecBlock(r), cshim.RecPage(r))
		if m.Content != nil {
			m.Content.Drop(uint8(cshim.RecDisk(r)), cshim.RecBlock(r), cshim.RecPage(r))
		}
	case cshim.RecContent:
		if m.Content != nil {
			m.Content.Add(content.Loc{Disk: uint8(cshim.RecDisk(r)), Block: cshim.RecBlock(r)}, cshim.RecHash(r))
		}
	}
}

func fwdWord(disk int, block, hash uint64) uint64 {
	return cshim.FwdValid | uint64(disk)<<cshim.FwdDiskShift | cshim.H16(hash)<<cshim.FwdH16Shift | block
}

func revWord(rb uint32, page, hash uint64) uint64 {
	return cshim.H24(hash)<<cshim.RevH24Shift | uint64(rb)<<cshim.RevRBShift | (page + 1)
}

func fwdDisk(w uint64) int     { return int((w >> cshim.FwdDiskShift) & cshim.FwdDiskMask) }
func fwdBlock(w uint64) uint64 { return w & cshim.FwdBlockMask }

func revPage(w uint64) (uint32, uint64, bool) {
	p := w & cshim.RevPageMask
	if p == 0 {
		return 0, 0, false
	}
	return uint32((w >> cshim.RevRBShift) & cshim.RevRBMask), p - 1, true
}

func (m *Map) revSlot(disk int, block uint64, alloc bool) *uint64 {
	chunk := m.revChunk(disk, block>>cshim.RevChunkShift, alloc)
	if chunk == nil {
		return nil
	}
	return &chunk[block&(cshim.RevChunk-1)]
}

// unmapPage clears page's forward word if it still maps (disk, block).
func (m *Map) unmapPage(rb uint32, page uint64, disk int, block uint64) bool {
	fwd := m.forward(rb)
	if page >= uint64(len(fwd)) {
		return false
	}
	w := atomic.LoadUint64(&fwd[page])
	if w&cshim.FwdValid == 0 || fwdDisk(w) != disk || fwdBlock(w) != block {
		return false
	}
	atomic.StoreUint64(&fwd[page], 0)
	m.mapped.Add(-1)
	m.perDisk[disk].Add(-1)
	m.mappedDelta--
	return true
}

// clearRevSlot clears the block's reverse word if it still names page.
func (m *Map) clearRevSlot(disk int, block uint64, rb uint32, page uint64) {
	if slot := m.revSlot(disk, block, false); slot != nil {
		if orb, opage, ok := revPage(atomic.LoadUint64(slot)); ok && orb == rb && opage == page {
			atomic.StoreUint64(slot, 0)
		}
	}
}

func (m *Map) mapPage(rb uint32, page uint64, disk int, block, hash uint64) {
	if !m.diskKnown(disk) || block > cshim.FwdBlockMask {
		return
	}
	fwd := m.forward(rb)
	if page >= uint64(len(fwd)) || page+1 > cshim.RevPageMask {
		return
	}
	// The page's previous mapping goes first; readers see an invalid word
	// while the reverse side changes.
	if old := atomic.LoadUint64(&fwd[page]); old&cshim.FwdValid != 0 {
		oldDisk, oldBlock := fwdDisk(old), fwdBlock(old)
		m.unmapPage(rb, page, oldDisk, oldBlock)
		m.clearRevSlot(oldDisk, oldBlock, rb, page)
		// This record may be applied after the saver sent the page as a
		// reference to its old block: the read it reports dirtied the
		// page, but a later read put the old block's content back before
		// the saver came (its own record not applied yet, or dropped as
		// racing a write).  Writes to the old block no longer reach the
		// page, so send it again.
		if m.migrating && (oldDisk != disk || oldBlock != block) {
			m.redirty = append(m.redirty, PageRef{rb, page})
		}
	}
	slot := m.revSlot(disk, block, true)
	if slot == nil {
		return
	}
	// One page per block: the block's previous page loses its mapping.  It
	// may have gone out as a reference to the block already, and only the
	// new page will hear of later writes to it: send it again.
	if prb, ppage, ok := revPage(atomic.LoadUint64(slot)); ok && (prb != rb || ppage != page) {
		if m.unmapPage(prb, ppage, disk, block) && m.migrating {
			m.redirty = append(m.redirty, PageRef{prb, ppage})
		}
	}
	atomic.StoreUint64(slot, revWord(rb, page, hash))
	atomic.StoreUint64(&fwd[page], fwdWord(disk, block, hash))
	m.mapped.Add(1)
	m.perDisk[disk].Add(1)
	m.mappedDelta++
}

// invalidate drops every mapping to blocks [first, first+count) of disk.
func (m *Map) invalidate(disk int, first, count uint64) {
	if !m.diskKnown(disk) || count == 0 {
		return
	}
	end := first + count
	if end < first { // overflow: to the end of the disk
		end = ^uint64(0)
	}
	var dropped uint64
	for b := first; b < end; {
		idx := b >> cshim.RevChunkShift
		if idx >= cshim.RevChunkCount(disk) {
			break
		}
		chunkEnd := (idx + 1) << cshim.RevChunkShift
		chunk := m.revChunk(disk, idx, false)
		if chunk == nil {
			b = chunkEnd
			continue
		}
		stop := min(end, chunkEnd)
		for ; b < stop; b++ {
			slot := &chunk[b&(cshim.RevChunk-1)]
			w := atomic.LoadUint64(slot)
			rb, page, ok := revPage(w)
			if !ok {
				continue
			}
			m.unmapPage(rb, page, disk, b)
			atomic.StoreUint64(slot, 0)
			dropped++
			if m.migrating {
				m.redirty = append(m.redirty, PageRef{rb, page})
			}
		}
	}
	if dropped > 0 {
		cshim.AddInvalidations(dropped)
	}
}

// DropRAMBlock forgets every mapping of rb's pages (the block is gone:
// memory hot-unplug) and returns how many there were.  Records already
// queued are applied first, so none maps a page of rb afterwards; none can
// follow, since no read lands in a block that no longer exists.
func (m *Map) DropRAMBlock(rb uint32) int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	defer m.flushMapped()
	m.drainAllLocked()
	if int(rb) >= cshim.RAMBlockCount() {
		return 0
	}
	var dropped int64
	fwd := cshim.Forward(int(rb))
	for page := range fwd {
		w := atomic.LoadUint64(&fwd[page])
		if w&cshim.FwdValid == 0 {
			continue
		}
		disk, block := fwdDisk(w), fwdBlock(w)
		if !m.unmapPage(rb, uint64(page), disk, block) {
			continue
		}
		dropped++
		m.clearRevSlot(disk, block, rb, uint64(page))
	}
	// Nothing of rb is left to mark dirty either.
	kept := m.redirty[:0]
	for _, p := range m.redirty {
		if p.RAMBlock != rb {
			kept = append(kept, p)
		}
	}
	m.redirty = kept
	return dropped
}

func (m *Map) dropAllLocked() {
	for d := 0; d < cshim.DiskCount(); d++ {
		m.invalidate(d, 0, ^uint64(0))
		if m.Content != nil {
			m.Content.DropDisk(uint8(d))
		}
	}
	m.flushMapped()
}
