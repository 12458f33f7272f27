package cshim

/*
#include "shim.h"
*/
import "C"

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"unsafe"
)

// H16 and H24 are the filter bits the map keeps of a page hash.
func H16(h uint64) uint64 { return h >> 48 }
func H24(h uint64) uint64 { return (h >> 24) & 0xffffff }

// ExpandKey derives the hash key (KeyBytes bytes) from a 32-byte seed with
// SHA-256 in counter mode, so that both sides compute the same key from the
// seed the setup section carries.
func ExpandKey(seed [32]byte) []byte {
	out := make([]byte, 0, KeyBytes+sha256.Size)
	var block [36]byte
	copy(block[:], seed[:])
	for i := uint32(0); len(out) < KeyBytes; i++ {
		binary.BigEndian.PutUint32(block[32:], i)
		sum := sha256.Sum256(block[:])
		out = append(out, sum[:]...)
	}
	return out[:KeyBytes]
}

// SetKey installs the expanded hash key (KeyBytes bytes).
func SetKey(expanded []byte) {
	if len(expanded) != KeyBytes {
		panic(fmt.Sprintf("cshim: hash key of %d bytes, want %d", len(expanded), KeyBytes))
	}
	C.nasmig_set_key(unsafe.Pointer(&expanded[0]))
}

// SetMigKey installs the expanded key of one migration's references.
func SetMigKey(expanded []byte) {
	if len(expanded) != KeyBytes {
		panic(fmt.Sprintf("cshim: migration key of %d bytes, want %d", len(expanded), KeyBytes))
	}
	C.nasmig_set_mig_key(unsafe.Pointer(&expanded[0]))
}

// HashPageMig hashes a page with the migration key (what a reference carries).
func HashPageMig(page []byte) [2]uint64 {
	if len(page) < PageSize {
		panic("cshim: HashPageMig needs a whole page")
	}
	var out [2]C.uint64_t
	C.nasmig_hash_page(&C.nasmig_g.mig_key, unsafe.Pointer(&page[0]), &out[0])
	return [2]uint64{uint64(out[0]), uint64(out[1])}
}

// HashPage returns the keyed 128-bit hash of one 4 KiB page.
func HashPage(page []byte) [2]uint64 {
	if len(page) < PageSize {
		panic("cshim: HashPage needs a whole page")
	}
	var out [2]C.uint64_t
	C.nasmig_hash_page(&C.nasmig_g.key, unsafe.Pointer(&page[0]), &out[0])
	return [2]uint64{uint64(out[0]), uint64(out[1])}
}

// HashPageFill is a destination fill's one pass over a page: the
// migration key's hash and the first word of the tracking key's (tests
// hold it to HashPageMig and HashPage).
func HashPageFill(page []byte) (mig [2]uint64, track uint64) {
	if len(page) < PageSize {
		panic("cshim: HashPageFill needs a whole page")
	}
	var out [2]C.uint64_t
	var t C.uint64_t
	C.nasmig_hash_page_fill(&C.nasmig_g.mig_key, &C.nasmig_g.key, unsafe.Pointer(&page[0]), &out[0], &t)
	return [2]uint64{uint64(out[0]), uint64(out[1])}, uint64(t)
}
