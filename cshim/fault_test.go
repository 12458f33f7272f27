package cshim

import (
	"strings"
	"testing"
)

// One process, one arming: the cases run in order and each uses its own fault.
func TestFaults(t *testing.T) {
	if Fault(FaultRingFull) || FaultsArmed() {
		t.Fatal("a fault fired, or counts as armed, with nothing armed")
	}
	for _, bad := range []string{"no-such-fault", "ring-full:0", "ring-full:x", "ring-full:", "," + strings.Repeat("x", 600)} {
		if err := ArmFaults(bad); err == nil {
			t.Errorf("ArmFaults(%.20q) accepted", bad)
		}
	}
	if err := ArmFaults("dest-read-error,fetch-stall:3,setup-cut-short:*"); err != nil {
		t.Fatal(err)
	}
	if !FaultsArmed() {
		t.Fatal("FaultsArmed false after arming")
	}
	count := func(f, tries int) (n int) {
		for range tries {
			if Fault(f) {
				n++
			}
		}
		return n
	}
	if n := count(FaultDestReadError, 5); n != 1 {
		t.Errorf("NAME fired %d times, want 1", n)
	}
	if n := count(FaultFetchStall, 5); n != 3 {
		t.Errorf("NAME:3 fired %d times, want 3", n)
	}
	if n := count(FaultSetupCutShort, 50); n != 50 {
		t.Errorf("NAME:* fired %d of 50 times", n)
	}
	if n := count(FaultRingFull, 5); n != 0 {
		t.Errorf("a fault not armed fired %d times", n)
	}
	if FaultFired(FaultFetchStall) != 3 || FaultFired(FaultRingFull) != 0 {
		t.Errorf("fired counters: stall %d, ring %d", FaultFired(FaultFetchStall), FaultFired(FaultRingFull))
	}
	names := FaultNames()
	if names[FaultWriteRecordLost] != "write-record-lost" || len(names) != faultCount-1 {
		t.Errorf("names %v", names)
	}
}
