package cshim

/*
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"fmt"
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

// FailPage marks a reference failed (awaiting a re-read); false if a later
// record already replaced it.
func FailPage(r *FetchReq) bool { return C.nasmig_fail_page((*C.struct_nasmig_fetch_req)(r)) != 0 }

// RefsPending sets pending[i] for the references that still wait for a
// fill: a page that came in full since has moved on.
func RefsPending(reqs []FetchReq, pending []uint8) { refsInState(reqs, C.NASMIG_FILL_PENDING, pending) }

// RefsFailed sets failed[i] for the references whose fill failed and whose
// page has not come in full since.
func RefsFailed(reqs []FetchReq, failed []uint8) { refsInState(reqs, C.NASMIG_FILL_FAILED, failed) }

func refsInState(reqs []FetchReq, state C.uint32_t, out []uint8) {
	if len(reqs) == 0 {
		return
	}
	C.nasmig_refs_in_state((*C.struct_nasmig_fetch_req)(&reqs[0]), C.uint(len(reqs)), state,
		(*C.uint8_t)(unsafe.Pointer(&out[0])))
}

// MapIfBlock enters into this side's map the pages that hold exactly their
// reference's block (handed back, they came in full); mapped[i] = 1 for those.
func MapIfBlock(reqs []FetchReq, mapped []uint8) {
	if len(reqs) == 0 {
		return
	}
	C.nasmig_map_if_block((*C.struct_nasmig_fetch_req)(&reqs[0]), C.uint(len(reqs)), (*C.uint8_t)(unsafe.Pointer(&mapped[0])))
}

// AbandonPage stops waiting for a failed page (the migration will fail).
func AbandonPage(r *FetchReq) { C.nasmig_abandon_page((*C.struct_nasmig_fetch_req)(r)) }

// SetDestDisk maps a source disk index to a destination handle and to this
// side's tracking handle (pages filled from it enter the map; -1: none).
func SetDestDisk(src, handle int, size uint64, track int) {
	C.nasmig_dest_set_disk(C.int(src), C.int(handle), C.uint64_t(size), C.int(track))
}

// DestReset clears per-migration destination state.
func DestReset() { C.nasmig_dest_reset() }

// SetDestOn opens (or closes) the destination for references.
func SetDestOn(on bool) { C.nasmig_set_dest_on(cbool(on)) }

// SetDestFillAfter says that references left at the switch to postcopy
// are filled after it (the source's setup flag FILL_AFTER).
func SetDestFillAfter(on bool) { C.nasmig_set_dest_fill_after(cbool(on)) }

// FillPlacing is true once postcopy runs and fills place pages whole.
func FillPlacing() bool { return C.nasmig_fill_placing() != 0 }

// FillCopying is true before the switch to postcopy (fills copy pages in),
// when guest RAM may be read: after it, a page not placed yet must not be
// touched (a read maps the zero page before userfaultfd watches RAM, and
// waits for the page after).
func FillCopying() bool { return C.nasmig_fill_copying() != 0 }

// CloseFills makes every later fill write nothing (the migration is over).
func CloseFills() { C.nasmig_close_fills() }

// RequestPage asks the source for a page in full through postcopy's page
// request (after the switch, when a reference failed).
func RequestPage(ramblock uint32, offset uint64) error {
	if rc := C.nasmig_call_request_page(C.uint32_t(ramblock), C.uint64_t(offset)); rc < 0 {
		return fmt.Errorf("postcopy page request: errno %d", -rc)
	}
	return nil
}

// SetWakeFD sets the eventfd C writes to when Go sleeps.
func SetWakeFD(fd int) { C.nasmig_set_wake_fd(C.int(fd)) }

// SetSleeping announces that Go is about to sleep on the eventfd.
func SetSleeping() { C.nasmig_set_go_sleeping() }

// KickWaiter kicks QEMU only if it waits on a -EAGAIN of the library (a
// full request queue, a fill): called after the fetcher made progress.
func KickWaiter() { C.nasmig_kick_waiter() }

// FlushRequest returns QEMU's latest flush request and the last one
// answered.
func FlushRequest() (req, ack uint32) {
	var r, a C.uint32_t
	C.nasmig_flush_state(&r, &a)
	return uint32(r), uint32(a)
}

// AckFlush answers flush request req: no fill is queued or in flight.
func AckFlush(req uint32) { C.nasmig_ack_flush(C.uint32_t(req)) }

// FinishRequest returns the FinishReqBarrier and FinishReqFinish bits.
func FinishRequest() int32 { return int32(C.nasmig_finish_req()) }

// ClearBarrierRequest clears the barrier bit once the barrier is handled.
func ClearBarrierRequest() { C.nasmig_clear_barrier_req() }

// SetFinishState publishes the outcome of dest_finish: FinishOK or FinishFailed.
func SetFinishState(s int32) { C.nasmig_set_finish_state(C.int(s)) }

// RefsReceived counts the references received in this migration.  Read it
// before ReqPop: once a pop leaves the queue empty, every reference the
// count includes has been popped.
func RefsReceived() uint64 { return uint64(C.nasmig_refs_received()) }

// FirstRefNS is when the destination saw its first reference (0: none).
func FirstRefNS() uint64 { return uint64(C.nasmig_first_ref_ns()) }

// RefReceived is the loader's call for a reference record (host: the
// page's C memory).  Returns 0, -EAGAIN or -EINVAL like the ABI.
func RefReceived(rb uint32, ramOffset uint64, host unsafe.Pointer, wire []byte) int {
	return int(C.nasmig_lib_ref_received(C.uint32_t(rb), C.uint64_t(ramOffset), host, (*C.uint8_t)(unsafe.Pointer(&wire[0]))))
}

// BeforePageWrite is the loader's call before it writes a page itself.
func BeforePageWrite(rb uint32, ramOffset uint64, waitFill bool) int {
	return int(C.nasmig_lib_before_page_write(C.uint32_t(rb), C.uint64_t(ramOffset), cbool(waitFill)))
}

// Postcopy stages (enum nasmig_postcopy_stage).
const (
	PostcopySwitch = C.NASMIG_POSTCOPY_SWITCH
	PostcopyListen = C.NASMIG_POSTCOPY_LISTEN
	PostcopyPlace  = C.NASMIG_POSTCOPY_PLACE
)

// DestPostcopy is the loader's call at each stage of the switch to postcopy.
func DestPostcopy(stage int) int { return int(C.nasmig_lib_dest_postcopy(C.int(stage))) }

// DestPageFault is postcopy's fault thread's call for a page the guest
// touched: true when the library serves it (it waits for its reference).
func DestPageFault(rb uint32, ramOffset uint64) bool {
	return C.nasmig_lib_dest_page_fault(C.uint32_t(rb), C.uint64_t(ramOffset)) != 0
}

// TouchReq is a fault on a page waiting for its reference.
type TouchReq C.struct_nasmig_touch_req

func (t *TouchReq) RAMBlock() uint32 { return uint32(t.ramblock) }
func (t *TouchReq) Page() uint64     { return uint64(t.page) }

// TouchPop moves faults on waiting pages out of their ring.
func TouchPop(out []TouchReq) int {
	return int(C.nasmig_touch_pop((*C.struct_nasmig_touch_req)(&out[0]), C.uint(len(out))))
}

// LatencyBucketTop is the value the fault-latency histogram reports for a
// latency of us microseconds (the top of its bucket).
func LatencyBucketTop(us uint64) uint64 { return uint64(C.nasmig_touch_bucket_top_of(C.uint64_t(us))) }

// DestFinish is the loader's call once the stream is complete.
func DestFinish() int { return int(C.nasmig_lib_dest_finish()) }
