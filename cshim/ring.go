package cshim

/*
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import "unsafe"

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

// NewReqBuf is room for n references popped from the request ring, in C
// memory: a FetchReq holds a C pointer, and a Go buffer of them would have
// cgo check every element of it on each pop (2% of a fetch's CPU).  Free
// it with FreeReqBuf.
func NewReqBuf(n int) []FetchReq {
	p := C.calloc(C.size_t(n), C.size_t(unsafe.Sizeof(FetchReq{})))
	if p == nil {
		panic("cshim: out of memory for a request buffer")
	}
	return unsafe.Slice((*FetchReq)(p), n)
}

// FreeReqBuf frees a buffer from NewReqBuf.
func FreeReqBuf(b []FetchReq) { C.free(unsafe.Pointer(&b[0])) }

// ReqPop moves queued references out of the request ring (into a buffer
// from NewReqBuf, or any other).
func ReqPop(out []FetchReq) int {
	return int(C.nasmig_req_pop((*C.struct_nasmig_fetch_req)(&out[0]), C.uint(len(out))))
}

// WorkReady reports a request, fault or finished fill waiting (called
// after SetSleeping: one published just before found the worker awake and
// did not wake it).
func WorkReady() bool { return C.nasmig_fetch_work_ready() != 0 }
