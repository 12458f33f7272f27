package cshim

/*
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"fmt"
	"reflect"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// RAMBlockCount is the number of RAM blocks QEMU registered.
func RAMBlockCount() int {
	return int(atomic.LoadInt32((*int32)(unsafe.Pointer(&C.nasmig_g.nrb))))
}

// RAMBlockName returns the QEMU idstr of a RAM block.
func RAMBlockName(rb int) string { return C.GoString(&C.nasmig_g.rb[rb].idstr[0]) }

// Forward returns the forward words of a RAM block: shared memory outside
// the Go heap that C reads concurrently; access it with sync/atomic only.
func Forward(rb int) []uint64 {
	info := &C.nasmig_g.rb[rb]
	p := (*uint64)(atomic.LoadPointer((*unsafe.Pointer)(unsafe.Pointer(&info.forward))))
	if p == nil {
		return nil
	}
	return unsafe.Slice(p, int(info.npages))
}

// DiskInfo describes a disk the source tracks.
type DiskInfo struct {
	Index    int
	NodeName string
	Filename string
	Size     uint64
	Excluded bool // never referenced: by configuration, or removed
	Removed  bool // its node is gone
}

// DiskCount is the number of disks QEMU registered.
func DiskCount() int {
	return int(atomic.LoadInt32((*int32)(unsafe.Pointer(&C.nasmig_g.ndisk))))
}

// Disk returns what QEMU told about disk i.
func Disk(i int) DiskInfo {
	d := &C.nasmig_g.disk[i]
	return DiskInfo{Index: i, NodeName: C.GoString(&d.node_name[0]), Filename: C.GoString(&d.filename[0]),
		Size: uint64(d.size), Excluded: d.excluded != 0, Removed: atomic.LoadInt32((*int32)(unsafe.Pointer(&d.removed))) != 0}
}

// ExcludeDisk marks disk i as never referenced (a name of it matched
// exclude=).
func ExcludeDisk(i int) { C.nasmig_disk_exclude(C.int(i)) }

// RevChunkAt returns chunk idx of a disk's reverse index, allocating it
// (outside the Go heap) when alloc is set; nil when absent or out of range.
// Only the single map writer may pass alloc.
func RevChunkAt(disk int, idx uint64, alloc bool) ([]uint64, error) {
	d := &C.nasmig_g.disk[disk]
	if idx >= uint64(d.ndir) {
		return nil, nil
	}
	slot := (*unsafe.Pointer)(unsafe.Add(unsafe.Pointer(d.dir), uintptr(idx)*unsafe.Sizeof(uintptr(0))))
	if p := atomic.LoadPointer(slot); p != nil {
		return unsafe.Slice((*uint64)(p), RevChunk), nil
	}
	if !alloc {
		return nil, nil
	}
	mem, err := unix.Mmap(-1, 0, RevChunk*8, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("cshim: reverse chunk of disk %d: %w", disk, err)
	}
	atomic.StorePointer(slot, unsafe.Pointer(&mem[0]))
	return unsafe.Slice((*uint64)(unsafe.Pointer(&mem[0])), RevChunk), nil
}

// RevChunkCount is the number of chunks of a disk's reverse index.
func RevChunkCount(disk int) uint64 { return uint64(C.nasmig_g.disk[disk].ndir) }

// RingPop moves up to len(out) tracking records out of the ring.
func RingPop(out []Rec) int {
	if len(out) == 0 {
		return 0
	}
	return int(C.nasmig_ring_pop(&out[0], C.uint(len(out))))
}

// LostInvalidations counts write records the full ring could not take.
func LostInvalidations() uint64 { return uint64(C.nasmig_lost_invalidations()) }

// LostHead is the ring position up to which records must be popped and
// applied before the map is dropped for the lost writes that
// LostInvalidations counted (call it after LostInvalidations).
func LostHead() uint64 { return uint64(C.nasmig_lost_head()) }

// RingTail is the consumer's position in the tracking ring.
func RingTail() uint64 { return uint64(C.nasmig_ring_tail()) }

// Stats is struct nasmig_stats.
type Stats C.struct_nasmig_stats

// StatsSnapshot reads the counters.
func StatsSnapshot() Stats {
	var s Stats
	C.nasmig_lib_stats((*C.struct_nasmig_stats)(&s))
	return s
}

// StatAdd adds to a counter named by its offset (use the Stat* helpers).
func statAdd(off uintptr, v uint64) { C.nasmig_stat_add(C.size_t(off), C.uint64_t(v)) }

func AddMappedPages(v int64) {
	statAdd(unsafe.Offsetof(C.struct_nasmig_stats{}.mapped_pages), uint64(v))
}
func AddInvalidations(v uint64) {
	statAdd(unsafe.Offsetof(C.struct_nasmig_stats{}.invalidations), v)
}
func AddFetchReads(v uint64) { statAdd(unsafe.Offsetof(C.struct_nasmig_stats{}.fetch_reads), v) }
func AddFetchBytes(v uint64) { statAdd(unsafe.Offsetof(C.struct_nasmig_stats{}.fetch_bytes), v) }
func AddVerifyFailures(v uint64) {
	statAdd(unsafe.Offsetof(C.struct_nasmig_stats{}.verify_failures), v)
}
func AddFallbacks(v uint64) { statAdd(unsafe.Offsetof(C.struct_nasmig_stats{}.fallbacks), v) }
func SetFetchTime(ns uint64) {
	atomic.StoreUint64((*uint64)(unsafe.Pointer(&C.nasmig_g.stats.fetch_time_ns)), ns)
}

// StatNames are the counters of struct nasmig_stats (cshim/nasmig.h, their
// one home), in order, by their C names.
func StatNames() []string {
	t := reflect.TypeOf(Stats{})
	names := make([]string, t.NumField())
	for i := range names {
		names[i] = t.Field(i).Name
	}
	return names
}

// Map returns every counter by its C name: the debug report and the tests
// read the list from the struct itself, so a new counter cannot be missed.
func (s *Stats) Map() map[string]uint64 {
	v := reflect.ValueOf(s).Elem()
	m := make(map[string]uint64, v.NumField())
	for i, name := range StatNames() {
		m[name] = v.Field(i).Uint()
	}
	return m
}

// Field accessors of Stats for Go callers.
func (s *Stats) MappedPages() uint64    { return uint64(s.mapped_pages) }
func (s *Stats) RefPages() uint64       { return uint64(s.ref_pages) }
func (s *Stats) RefMisses() uint64      { return uint64(s.ref_misses) }
func (s *Stats) RingDrops() uint64      { return uint64(s.ring_drops) }
func (s *Stats) Invalidations() uint64  { return uint64(s.invalidations) }
func (s *Stats) FetchedPages() uint64   { return uint64(s.fetched_pages) }
func (s *Stats) FetchReads() uint64     { return uint64(s.fetch_reads) }
func (s *Stats) FetchBytes() uint64     { return uint64(s.fetch_bytes) }
func (s *Stats) VerifyFailures() uint64 { return uint64(s.verify_failures) }
func (s *Stats) Fallbacks() uint64      { return uint64(s.fallbacks) }
func (s *Stats) PendingPages() uint64   { return uint64(s.pending_pages) }

// NowNS is CLOCK_MONOTONIC in nanoseconds, the clock of first_ref_ns.
func NowNS() uint64 { return uint64(C.nasmig_now_ns()) }

// FirstRefNS is when the destination saw its first reference (0: none).
func FirstRefNS() uint64 {
	return atomic.LoadUint64((*uint64)(unsafe.Pointer(&C.nasmig_g.first_ref_ns)))
}

// MarkDirty asks QEMU to send a page again.
func MarkDirty(rb uint32, off, length uint64) {
	C.nasmig_call_mark_dirty(C.uint32_t(rb), C.uint64_t(off), C.uint64_t(length))
}

// MarkDirtyPages asks QEMU to send the pages (RAM block, page index) again,
// in one cgo crossing for the batch.
func MarkDirtyPages(rbs []uint32, pages []uint64) {
	if len(rbs) == 0 || len(rbs) != len(pages) {
		return
	}
	// C must not keep Go pointers: copy the batch into C memory.
	n := len(rbs)
	crbs := (*[1 << 30]C.uint32_t)(C.malloc(C.size_t(n) * 4))[:n:n]
	cpages := (*[1 << 27]C.uint64_t)(C.malloc(C.size_t(n) * 8))[:n:n]
	defer C.free(unsafe.Pointer(&crbs[0]))
	defer C.free(unsafe.Pointer(&cpages[0]))
	for i := range rbs {
		crbs[i], cpages[i] = C.uint32_t(rbs[i]), C.uint64_t(pages[i])
	}
	C.nasmig_call_mark_dirty_pages(&crbs[0], &cpages[0], C.uint(n))
}
