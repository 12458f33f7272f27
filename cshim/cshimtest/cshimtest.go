// Package cshimtest holds helpers shared by tests that hand memory to
// nasmig's C code: such memory must never be Go heap.
package cshimtest

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"nasmig/cshim"
)

// CMem maps n bytes outside the Go heap for the test's life.
func CMem(tb testing.TB, n int) []byte {
	tb.Helper()
	mem, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		tb.Fatalf("mmap %d bytes: %v", n, err)
	}
	tb.Cleanup(func() { unix.Munmap(mem) })
	return mem
}

// FillRandom overwrites b with pseudo-random words from r.
func FillRandom(r *rand.Rand, b []byte) {
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
}

// Setup prepares the process-global C state once per test binary: the
// rings, the tracking key expanded from seed, a different migration key
// (as in a real migration, where it is drawn afresh), and tracking
// switched on (auto enable off).  It exits the process if the rings cannot
// be set up.
func Setup(ringSlots uint32, seed [32]byte) {
	if err := cshim.Init(ringSlots); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cshim.SetKey(cshim.ExpandKey(seed))
	mig := seed
	mig[0] ^= 0xff
	cshim.SetMigKey(cshim.ExpandKey(mig))
	cshim.SetFlags(true, false, false)
}
