package cshim

/*
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"fmt"
	"reflect"
	"unsafe"

	"golang.org/x/sys/unix"
)

// SetFlags records the plugin's switches for the C side.
func SetFlags(enabled, autoEnable, fillAfter bool) {
	C.nasmig_set_flags(cbool(enabled), cbool(autoEnable), cbool(fillAfter))
}

// SetContentMode makes completed reads feed the content index
// (RecContent records) instead of the page-to-block map.
func SetContentMode(on bool) { C.nasmig_set_content_mode(cbool(on)) }

func cbool(b bool) C.int {
	if b {
		return 1
	}
	return 0
}

// SetExclude stores the names of disks that must never be referenced.
func SetExclude(names []string) error {
	var buf []byte
	for _, n := range names {
		buf = append(buf, n...)
		buf = append(buf, 0)
	}
	buf = append(buf, 0)
	if C.nasmig_set_exclude((*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf))) < 0 {
		return fmt.Errorf("cshim: exclude list of %d bytes exceeds %d", len(buf), len(C.nasmig_g.exclude))
	}
	return nil
}

// SetErr sets the message QEMU reads through errmsg.
func SetErr(msg string) {
	cs := C.CString(msg)
	defer C.free(unsafe.Pointer(cs))
	C.nasmig_set_err(cs)
}

// Err returns the current error message (read under its lock).
func Err() string {
	var buf [1024]C.char
	C.nasmig_lib_errmsg(&buf[0], C.size_t(len(buf)))
	return C.GoString(&buf[0])
}

// RAMBlockCount is the number of RAM blocks QEMU registered.
func RAMBlockCount() int { return int(C.nasmig_ramblock_count()) }

// RAMBlockName returns the QEMU idstr of a RAM block.
func RAMBlockName(rb int) string { return C.GoString(&C.nasmig_g.rb[rb].idstr[0]) }

// RAMBlockByName returns the handle of the RAM block with QEMU idstr name.
func RAMBlockByName(name string) (uint32, bool) {
	for i := 0; i < RAMBlockCount(); i++ {
		if RAMBlockName(i) == name {
			return uint32(i), true
		}
	}
	return 0, false
}

// Forward returns the forward words of a RAM block: shared memory outside
// the Go heap that C reads concurrently; access it with sync/atomic only.
func Forward(rb int) []uint64 {
	p := C.nasmig_forward(C.int(rb))
	if p == nil {
		return nil
	}
	return unsafe.Slice((*uint64)(unsafe.Pointer(p)), int(C.nasmig_g.rb[rb].npages))
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
func DiskCount() int { return int(C.nasmig_disk_count()) }

// Disk returns what QEMU told about disk i.
func Disk(i int) DiskInfo {
	d := &C.nasmig_g.disk[i]
	return DiskInfo{Index: i, NodeName: C.GoString(&d.node_name[0]), Filename: C.GoString(&d.filename[0]),
		Size: uint64(d.size), Excluded: d.excluded != 0, Removed: C.nasmig_disk_removed(C.int(i)) != 0}
}

// ExcludeDisk marks disk i as never referenced (a name of it matched
// exclude=).
func ExcludeDisk(i int) { C.nasmig_disk_exclude(C.int(i)) }

// RevChunkAt returns chunk idx of a disk's reverse index, allocating it
// (outside the Go heap) when alloc is set; nil when absent or out of range.
// Only the single map writer may pass alloc.
func RevChunkAt(disk int, idx uint64, alloc bool) ([]uint64, error) {
	if idx >= RevChunkCount(disk) {
		return nil, nil
	}
	if p := C.nasmig_rev_chunk(C.int(disk), C.uint64_t(idx)); p != nil {
		return unsafe.Slice((*uint64)(unsafe.Pointer(p)), RevChunk), nil
	}
	if !alloc {
		return nil, nil
	}
	mem, err := unix.Mmap(-1, 0, RevChunk*8, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("cshim: reverse chunk of disk %d: %w", disk, err)
	}
	chunk := (*C.uint64_t)(unsafe.Pointer(&mem[0]))
	C.nasmig_set_rev_chunk(C.int(disk), C.uint64_t(idx), chunk)
	return unsafe.Slice((*uint64)(unsafe.Pointer(chunk)), RevChunk), nil
}

// RevChunkCount is the number of chunks of a disk's reverse index.
func RevChunkCount(disk int) uint64 { return uint64(C.nasmig_g.disk[disk].ndir) }

// Test entry points: drive the QEMU-facing functions without QEMU.

// RAMBlockAdd registers a RAM block as QEMU would.
func RAMBlockAdd(idstr string, maxLength uint64) int {
	cs := C.CString(idstr)
	defer C.free(unsafe.Pointer(cs))
	return int(C.nasmig_lib_ramblock_add(cs, C.uint64_t(maxLength)))
}

// DiskAdd registers a disk as QEMU would.
func DiskAdd(node, filename string, size uint64) int {
	cn, cf := C.CString(node), C.CString(filename)
	defer C.free(unsafe.Pointer(cn))
	defer C.free(unsafe.Pointer(cf))
	return int(C.nasmig_lib_disk_add(cn, cf, C.uint64_t(size)))
}

// DiskRemove tells the library a disk's node is gone, as QEMU would.
func DiskRemove(disk int) { C.nasmig_lib_disk_remove(C.int(disk)) }

// Stats is struct nasmig_stats.
type Stats C.struct_nasmig_stats

// StatsSnapshot reads the counters.
func StatsSnapshot() Stats {
	var s Stats
	C.nasmig_lib_stats((*C.struct_nasmig_stats)(&s))
	return s
}

// StatsReset zeroes the per-migration counters.
func StatsReset() { C.nasmig_stats_reset() }

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
func AddHandedBack(v uint64) { statAdd(unsafe.Offsetof(C.struct_nasmig_stats{}.handed_back), v) }
func AddFallbacks(v uint64)  { statAdd(unsafe.Offsetof(C.struct_nasmig_stats{}.fallbacks), v) }
func SetFetchTime(ns uint64) { C.nasmig_set_fetch_time(C.uint64_t(ns)) }

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
func (s *Stats) MappedPages() uint64               { return uint64(s.mapped_pages) }
func (s *Stats) RefPages() uint64                  { return uint64(s.ref_pages) }
func (s *Stats) RefMisses() uint64                 { return uint64(s.ref_misses) }
func (s *Stats) SentFull() uint64                  { return uint64(s.sent_full) }
func (s *Stats) HandedBack() uint64                { return uint64(s.handed_back) }
func (s *Stats) FilledAfterSwitchover() uint64     { return uint64(s.filled_after_switchover) }
func (s *Stats) FromSourceAfterSwitchover() uint64 { return uint64(s.from_source_after_switchover) }
func (s *Stats) RingDrops() uint64                 { return uint64(s.ring_drops) }
func (s *Stats) Invalidations() uint64             { return uint64(s.invalidations) }
func (s *Stats) FetchedPages() uint64              { return uint64(s.fetched_pages) }
func (s *Stats) FetchReads() uint64                { return uint64(s.fetch_reads) }
func (s *Stats) FetchBytes() uint64                { return uint64(s.fetch_bytes) }
func (s *Stats) VerifyFailures() uint64            { return uint64(s.verify_failures) }
func (s *Stats) Fallbacks() uint64                 { return uint64(s.fallbacks) }
func (s *Stats) PendingPages() uint64              { return uint64(s.pending_pages) }
func (s *Stats) FaultsFromStorage() uint64         { return uint64(s.faults_from_storage) }
func (s *Stats) FaultsFromSource() uint64          { return uint64(s.faults_from_source) }
func (s *Stats) FaultLatencyMedianUS() uint64      { return uint64(s.fault_latency_median_us) }
func (s *Stats) FaultLatencyP99US() uint64         { return uint64(s.fault_latency_p99_us) }
func (s *Stats) FaultLatencyMaxUS() uint64         { return uint64(s.fault_latency_max_us) }

// NowNS is CLOCK_MONOTONIC in nanoseconds, the clock of first_ref_ns.
func NowNS() uint64 { return uint64(C.nasmig_now_ns()) }
