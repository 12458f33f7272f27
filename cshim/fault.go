package cshim

/*
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"errors"
	"unsafe"
)

// Faults a test can arm through the environment variable FaultEnv (the
// list, its names and where each fires are NASMIG_FAULTS in nasmig.h).
const (
	FaultEnv             = C.NASMIG_FAULT_ENV
	FaultDestReadError   = C.NASMIG_FAULT_DEST_READ_ERROR
	FaultDestReadShort   = C.NASMIG_FAULT_DEST_READ_SHORT
	FaultDestReadCorrupt = C.NASMIG_FAULT_DEST_READ_CORRUPT
	FaultFetchStall      = C.NASMIG_FAULT_FETCH_STALL
	FaultRingFull        = C.NASMIG_FAULT_RING_FULL
	FaultWriteRecordLost = C.NASMIG_FAULT_WRITE_RECORD_LOST
	FaultSetupCutShort   = C.NASMIG_FAULT_SETUP_CUT_SHORT
	faultCount           = C.NASMIG_FAULT_COUNT
)

// ArmFaults arms the faults of spec (NAME, NAME:N or NAME:*, comma-separated).
func ArmFaults(spec string) error {
	cs := C.CString(spec)
	defer C.free(unsafe.Pointer(cs))
	var msg [256]C.char
	if C.nasmig_fault_arm(cs, &msg[0], C.size_t(len(msg))) < 0 {
		return errors.New(C.GoString(&msg[0]))
	}
	return nil
}

// Fault reports whether the armed fault f fires now (and counts it).
func Fault(f int) bool { return C.nasmig_lib_fault(C.enum_nasmig_fault(f)) == 1 }

// FaultNames lists every fault by number, as nasmig.h names them.
func FaultNames() map[int]string {
	names := make(map[int]string)
	for f := 1; f < faultCount; f++ {
		if n := C.nasmig_fault_name(C.int(f)); n != nil {
			names[f] = C.GoString(n)
		}
	}
	return names
}

// FaultsArmed reports whether any fault is armed in this process.
func FaultsArmed() bool { return C.nasmig_faults_armed() != 0 }

// FaultFired is how many times fault f has fired in this process.
func FaultFired(f int) uint64 { return uint64(C.nasmig_fault_fired(C.int(f))) }
