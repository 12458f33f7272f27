package cshim

import (
	"crypto/sha256"
	"encoding/binary"
)

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
