package cshim

/*
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"fmt"
	"sync/atomic"
	"unsafe"
)

// FetchReq is one reference the destination must fill (struct nasmig_fetch_req).
type FetchReq C.struct_nasmig_fetch_req

func (r *FetchReq) RAMBlock() uint32 { return uint32(r.ramblock) }
func (r *FetchReq) Page() uint64     { return uint64(r.page) }
func (r *FetchReq) Block() uint64    { return uint64(r.block) }
func (r *FetchReq) Disk() uint32     { return uint32(r.disk) }
func (r *FetchReq) SrcDisk() uint32  { return uint32(r.src_disk) }
func (r *FetchReq) Gen() uint32      { return uint32(r.gen) }

// NewFetchReq builds a request (tests).
func NewFetchReq(ramblock uint32, page uint64, disk uint32, block uint64) FetchReq {
	return FetchReq{ramblock: C.uint32_t(ramblock), page: C.uint64_t(page), disk: C.uint32_t(disk), block: C.uint64_t(block)}
}

// FetchDone is one finished storage read (struct nasmig_fetch_done).
type FetchDone C.struct_nasmig_fetch_done

func (d *FetchDone) Cookie() uint64 { return uint64(d.cookie) }
func (d *FetchDone) Ret() int64     { return int64(d.ret) }

// ReqPop moves queued references out of the request ring.
func ReqPop(out []FetchReq) int {
	return int(C.nasmig_req_pop((*C.struct_nasmig_fetch_req)(&out[0]), C.uint(len(out))))
}

// DonePop moves finished reads out of the completion ring.
func DonePop(out []FetchDone) int {
	return int(C.nasmig_done_pop((*C.struct_nasmig_fetch_done)(&out[0]), C.uint(len(out))))
}

// FillVerify checks each block (bufs[i], C memory) against its reference
// and fills the still-current pages; results get one Fill* code per page.
func FillVerify(reqs []FetchReq, bufs []unsafe.Pointer, results []uint8) {
	if len(reqs) == 0 {
		return
	}
	// bufs point outside the Go heap, but the slice holding them is Go
	// memory: copy it into C memory so C never sees a Go pointer to pointers.
	cb := (*[1 << 20]unsafe.Pointer)(C.malloc(C.size_t(len(bufs)) * C.size_t(unsafe.Sizeof(uintptr(0)))))
	defer C.free(unsafe.Pointer(cb))
	copy(cb[:len(bufs)], bufs)
	C.nasmig_fill_verify((*C.struct_nasmig_fetch_req)(&reqs[0]), C.uint(len(reqs)), (**C.uint8_t)(unsafe.Pointer(cb)), (*C.uint8_t)(unsafe.Pointer(&results[0])))
}

// FailPage marks a reference failed (awaiting a re-read); false if a later
// record already replaced it.
func FailPage(r *FetchReq) bool { return C.nasmig_fail_page((*C.struct_nasmig_fetch_req)(r)) != 0 }

// AbandonPage stops waiting for a failed page (the migration will fail).
func AbandonPage(r *FetchReq) { C.nasmig_abandon_page((*C.struct_nasmig_fetch_req)(r)) }

// ReadDisk starts an asynchronous read through QEMU into buf (C memory).
func ReadDisk(disk uint32, off uint64, buf unsafe.Pointer, length uint64, cookie uint64) error {
	if rc := C.nasmig_call_read_disk(C.uint32_t(disk), C.uint64_t(off), buf, C.uint64_t(length), C.uint64_t(cookie)); rc < 0 {
		return fmt.Errorf("read of %d bytes at %#x of disk %d: errno %d", length, off, disk, -rc)
	}
	return nil
}

// AttachDisk finds the destination's node for a source disk; track is the
// node's tracking handle on this side (-1 when untracked).
func AttachDisk(filename string, size uint64) (handle, track int, err error) {
	cs := C.CString(filename)
	defer C.free(unsafe.Pointer(cs))
	var msg [512]C.char
	var tr C.int
	rc := C.nasmig_call_disk_attach(cs, C.uint64_t(size), &tr, &msg[0], C.size_t(len(msg)))
	if rc < 0 {
		return -1, -1, fmt.Errorf("%s (errno %d)", C.GoString(&msg[0]), -rc)
	}
	return int(rc), int(tr), nil
}

// SetDestDisk maps a source disk index to a destination handle and to this
// side's tracking handle (pages filled from it enter the map; -1: none).
func SetDestDisk(src, handle int, size uint64, track int) {
	C.nasmig_dest_set_disk(C.int(src), C.int(handle), C.uint64_t(size), C.int(track))
}

// StatsReset zeroes the per-migration counters.
func StatsReset() { C.nasmig_stats_reset() }

// DestReset clears per-migration destination state.
func DestReset() { C.nasmig_dest_reset() }

// SetDestOn opens (or closes) the destination for references.
func SetDestOn(on bool) {
	atomic.StoreInt32((*int32)(unsafe.Pointer(&C.nasmig_g.dest_on)), int32(cbool(on)))
}

// SetWakeFD sets the eventfd C writes to when Go sleeps.
func SetWakeFD(fd int) { C.nasmig_g.wake_fd = C.int(fd) }

// SetSleeping announces that Go is about to sleep on the eventfd.
func SetSleeping() {
	atomic.StoreInt32((*int32)(unsafe.Pointer(&C.nasmig_g.go_sleeping)), 1)
}

// WorkReady reports a request or completion waiting in the rings (called
// after SetSleeping: one published just before found the worker awake and
// did not wake it).
func WorkReady() bool { return C.nasmig_fetch_work_ready() != 0 }

// FlushRequest returns QEMU's latest flush request and the last one
// answered.
func FlushRequest() (req, ack uint32) {
	return atomic.LoadUint32((*uint32)(unsafe.Pointer(&C.nasmig_g.flush_req))),
		atomic.LoadUint32((*uint32)(unsafe.Pointer(&C.nasmig_g.flush_ack)))
}

// AckFlush answers flush request req: no fill is queued or in flight.
func AckFlush(req uint32) {
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&C.nasmig_g.flush_ack)), req)
}

// FinishRequest returns the FinishReqBarrier and FinishReqFinish bits.
func FinishRequest() int32 {
	return atomic.LoadInt32((*int32)(unsafe.Pointer(&C.nasmig_g.finish_req)))
}

// ClearBarrierRequest clears the barrier bit once the barrier is handled.
func ClearBarrierRequest() {
	atomic.AndInt32((*int32)(unsafe.Pointer(&C.nasmig_g.finish_req)), ^int32(FinishReqBarrier))
}

// SetFinishState publishes the outcome of dest_finish: FinishOK or FinishFailed.
func SetFinishState(s int32) {
	atomic.StoreInt32((*int32)(unsafe.Pointer(&C.nasmig_g.finish_state)), s)
}

// SendToSource sends one return-path message (wire.EncodeResend and
// friends) to the source.
func SendToSource(msg []byte) error {
	if len(msg) == 0 {
		return fmt.Errorf("empty message to the source")
	}
	if rc := C.nasmig_call_send_to_source((*C.uint8_t)(unsafe.Pointer(&msg[0])), C.size_t(len(msg))); rc < 0 {
		return fmt.Errorf("message to the source: errno %d", -rc)
	}
	return nil
}

// SetDiskOff marks a disk (source side) whose pages must not go out as
// references in this migration: the destination cannot read it.
func SetDiskOff(disk int, off bool) {
	if disk >= 0 && disk < MaxDisks {
		atomic.StoreInt32((*int32)(unsafe.Pointer(&C.nasmig_g.disk_off[disk])), int32(cbool(off)))
	}
}

// RAMBlockByName returns the handle of the RAM block with QEMU idstr name.
func RAMBlockByName(name string) (uint32, bool) {
	for i := 0; i < RAMBlockCount(); i++ {
		if RAMBlockName(i) == name {
			return uint32(i), true
		}
	}
	return 0, false
}

// Kick wakes QEMU's main loop.
func Kick() { C.nasmig_call_kick() }

// KickWaiter kicks QEMU only if it waits on a -EAGAIN of the library (a
// full request queue, a fill): called after the fetcher made progress.
func KickWaiter() { C.nasmig_kick_waiter() }

// ApproveSwitchover tells QEMU the fetch has caught up: it approves the
// switchover once the source's first pass has arrived, or at once (force).
func ApproveSwitchover(force bool) { C.nasmig_call_approve_switchover(cbool(force)) }

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

// RefQuery is the saver's question for a page whose content is at host
// (C memory or pinned Go memory).
func RefQuery(rb uint32, ramOffset uint64, host unsafe.Pointer) ([RefWireSize]byte, bool) {
	var wire [RefWireSize]byte
	ok := C.nasmig_lib_ref_query(C.uint32_t(rb), C.uint64_t(ramOffset), host, (*C.uint8_t)(unsafe.Pointer(&wire[0]))) == 1
	return wire, ok
}

// RefReceived is the loader's call for a reference record (host: the
// page's C memory).  Returns 0, -EAGAIN or -EINVAL like the ABI.
func RefReceived(rb uint32, ramOffset uint64, host unsafe.Pointer, wire []byte) int {
	return int(C.nasmig_lib_ref_received(C.uint32_t(rb), C.uint64_t(ramOffset), host, (*C.uint8_t)(unsafe.Pointer(&wire[0]))))
}

// BeforePageWrite is the loader's call before it writes a page itself.
func BeforePageWrite(rb uint32, ramOffset uint64, waitFill bool) int {
	return int(C.nasmig_lib_before_page_write(C.uint32_t(rb), C.uint64_t(ramOffset), cbool(waitFill)))
}

// DestFinish is the loader's call once the stream is complete.
func DestFinish() int { return int(C.nasmig_lib_dest_finish()) }

// MapOffers is the lookup half of RefQuery (no hash).
func MapOffers(rb uint32, ramOffset uint64) bool {
	return C.nasmig_map_offers(C.uint32_t(rb), C.uint64_t(ramOffset)) != 0
}

// BlockWriteDone reports a completed write as QEMU's hook would.
func BlockWriteDone(disk int, off, length uint64) {
	C.nasmig_lib_block_write_done(C.int(disk), C.uint64_t(off), C.uint64_t(length))
}

// BlockReadDone reports a completed read of whole pages (host: C memory).
func BlockReadDone(disk int, rb uint32, ramOffsets, diskOffsets []uint64, hosts []unsafe.Pointer, writeGen *uint32, genBefore uint32) {
	n := len(ramOffsets)
	pages := (*[C.NASMIG_MAX_PAGES_PER_CALL]C.struct_nasmig_page_read)(C.malloc(C.size_t(n) * C.size_t(unsafe.Sizeof(C.struct_nasmig_page_read{}))))
	defer C.free(unsafe.Pointer(pages))
	for i := 0; i < n; i++ {
		pages[i] = C.struct_nasmig_page_read{ramblock: C.uint32_t(rb), ram_offset: C.uint64_t(ramOffsets[i]),
			disk_offset: C.uint64_t(diskOffsets[i]), host: hosts[i]}
	}
	C.nasmig_lib_block_read_done(C.int(disk), &pages[0], C.uint(n), (*C.uint)(unsafe.Pointer(writeGen)), C.uint(genBefore))
}

// BlockReadBegin and BlockReadEnd bracket a read into the pages at hosts
// (C memory) as QEMU's hooks around a protocol-node read would.
func BlockReadBegin(hosts []unsafe.Pointer) { blockReadBracket(hosts, false) }
func BlockReadEnd(hosts []unsafe.Pointer)   { blockReadBracket(hosts, true) }

func blockReadBracket(hosts []unsafe.Pointer, end bool) {
	if len(hosts) == 0 {
		return
	}
	arr := (*[1 << 20]unsafe.Pointer)(C.malloc(C.size_t(len(hosts)) * C.size_t(unsafe.Sizeof(uintptr(0)))))
	defer C.free(unsafe.Pointer(arr))
	copy(arr[:len(hosts)], hosts)
	if end {
		C.nasmig_lib_block_read_end(&arr[0], C.uint(len(hosts)))
	} else {
		C.nasmig_lib_block_read_begin(&arr[0], C.uint(len(hosts)))
	}
}

// RingPushTest pushes records as a producer would; returns how many fit.
func RingPushTest(recs []Rec) int {
	return int(C.nasmig_ring_push_test(&recs[0], C.uint(len(recs))))
}
