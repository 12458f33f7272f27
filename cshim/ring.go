package cshim

/*
#include "shim.h"
*/
import "C"

// RingPop moves up to len(out) tracking records out of the ring.
func RingPop(out []Rec) int {
	if len(out) == 0 {
		return 0
	}
	return int(C.nasmig_ring_pop(&out[0], C.uint(len(out))))
}

// RingTail is the consumer's position in the tracking ring.
func RingTail() uint64 { return uint64(C.nasmig_ring_tail()) }

// RingPushTest pushes records as a producer would; returns how many fit.
func RingPushTest(recs []Rec) int {
	return int(C.nasmig_ring_push_test(&recs[0], C.uint(len(recs))))
}

// ReqPop moves queued references out of the request ring.
func ReqPop(out []FetchReq) int {
	return int(C.nasmig_req_pop((*C.struct_nasmig_fetch_req)(&out[0]), C.uint(len(out))))
}

// DonePop moves finished reads out of the completion ring.
func DonePop(out []FetchDone) int {
	return int(C.nasmig_done_pop((*C.struct_nasmig_fetch_done)(&out[0]), C.uint(len(out))))
}

// WorkReady reports a request or completion waiting in the rings (called
// after SetSleeping: one published just before found the worker awake and
// did not wake it).
func WorkReady() bool { return C.nasmig_fetch_work_ready() != 0 }
