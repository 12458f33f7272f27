package cshim_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"math/rand/v2"
	"os"
	"testing"

	"nasmig/cshim"
	"nasmig/cshim/cshimtest"
)

// testRingSlots is the tracking ring of this test binary: small, so that
// the ring tests can fill it.
const testRingSlots = 256

var testSeed = [32]byte{'n', 'a', 's', 'm', 'i', 'g', '-', 'c', 's', 'h', 'i', 'm'}

// TestMain sets up the process-global C state once: the ring and a fixed key.
func TestMain(m *testing.M) {
	cshimtest.Setup(testRingSlots, testSeed)
	os.Exit(m.Run())
}

// withKey installs the key expanded from seed for the duration of f.
func withKey(seed [32]byte, f func()) {
	cshim.SetKey(cshim.ExpandKey(seed))
	defer cshim.SetKey(cshim.ExpandKey(testSeed))
	f()
}

func TestConstants(t *testing.T) {
	checks := []struct {
		name      string
		got, want int
	}{
		{"PageSize", cshim.PageSize, 1 << cshim.PageShift},
		{"PageSize", cshim.PageSize, 4096},
		{"RefWireSize", cshim.RefWireSize, 1 + 1 + 8 + cshim.HashSize},
		{"HashSize", cshim.HashSize, 16},
		{"KeyBytes", cshim.KeyBytes, 4*(cshim.NHWords+cshim.NHShift) + 16},
		{"TrackRecordBytes", cshim.TrackRecordBytes, 32},
		{"RevChunk", cshim.RevChunk, 1 << cshim.RevChunkShift},
		{"MaxDisks fits the forward word's disk field", cshim.MaxDisks - 1, int(cshim.MaxDisks-1) & int(cshim.FwdDiskMask)},
		{"MaxRAMBlocks fits the reverse word's ramblock field", cshim.MaxRAMBlocks - 1, int(cshim.MaxRAMBlocks-1) & int(cshim.RevRBMask)},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
	// The forward word's fields must not overlap.
	if cshim.FwdBlockMask>>cshim.FwdH16Shift != 0 || (0xffff<<cshim.FwdH16Shift)&(cshim.FwdDiskMask<<cshim.FwdDiskShift) != 0 ||
		(cshim.FwdDiskMask<<cshim.FwdDiskShift)&cshim.FwdValid != 0 {
		t.Errorf("forward word fields overlap")
	}
	if cshim.RevPageMask>>cshim.RevRBShift != 0 || (cshim.RevRBMask<<cshim.RevRBShift)>>cshim.RevH24Shift != 0 {
		t.Errorf("reverse word fields overlap")
	}
}

// fmix64 and refHash are an independent Go rendering of nasmig_hash_page:
// the C function is compiled in several clones (AVX2 and default) and both
// sides of a migration may run different ones, so all must agree with this.
func fmix64(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

func refHash(key, page []byte) [2]uint64 {
	k := func(i int) uint32 { return binary.LittleEndian.Uint32(key[4*i:]) }
	var a, b uint64
	for i := 0; i < cshim.NHWords; i += 2 {
		m0 := binary.LittleEndian.Uint32(page[4*i:])
		m1 := binary.LittleEndian.Uint32(page[4*i+4:])
		a += uint64(m0+k(i)) * uint64(m1+k(i+1))
		b += uint64(m0+k(i+cshim.NHShift)) * uint64(m1+k(i+1+cshim.NHShift))
	}
	fin := 4 * (cshim.NHWords + cshim.NHShift)
	return [2]uint64{fmix64(a ^ binary.LittleEndian.Uint64(key[fin:])), fmix64(b ^ binary.LittleEndian.Uint64(key[fin+8:]))}
}

func TestHashMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	page := cshimtest.CMem(t, (1)*cshim.PageSize)
	key := cshim.ExpandKey(testSeed)
	patterns := map[string]func(){
		"zero": func() { clear(page) },
		"ones": func() {
			for i := range page {
				page[i] = 0xff
			}
		},
		"random": func() { cshimtest.FillRandom(r, page) },
	}
	for name, fill := range patterns {
		for i := 0; i < 20; i++ {
			fill()
			if got, want := cshim.HashPage(page), refHash(key, page); got != want {
				t.Fatalf("%s page %d: C hash %x, reference %x", name, i, got, want)
			}
		}
	}
	// Other keys too.
	for i := 0; i < 10; i++ {
		var seed [32]byte
		cshimtest.FillRandom(r, seed[:])
		cshimtest.FillRandom(r, page)
		withKey(seed, func() {
			if got, want := cshim.HashPage(page), refHash(cshim.ExpandKey(seed), page); got != want {
				t.Fatalf("key %x: C hash %x, reference %x", seed, got, want)
			}
		})
	}
}

func TestHashDeterministic(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	a, b := cshimtest.CMem(t, (1)*cshim.PageSize), cshimtest.CMem(t, (1)*cshim.PageSize)
	for i := 0; i < 100; i++ {
		cshimtest.FillRandom(r, a)
		copy(b, a)
		h1, h2, h3 := cshim.HashPage(a), cshim.HashPage(a), cshim.HashPage(b)
		if h1 != h2 || h1 != h3 {
			t.Fatalf("same content, hashes %x %x %x", h1, h2, h3)
		}
	}
	// Only the first PageSize bytes count.
	big := cshimtest.CMem(t, (2)*cshim.PageSize)
	cshimtest.FillRandom(r, big)
	h := cshim.HashPage(big)
	big[cshim.PageSize] ^= 1
	if cshim.HashPage(big) != h {
		t.Fatalf("bytes past the page changed the hash")
	}
}

func TestHashKeysDiffer(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	page := cshimtest.CMem(t, (1)*cshim.PageSize)
	cshimtest.FillRandom(r, page)
	seen := map[[2]uint64][32]byte{}
	for i := 0; i < 64; i++ {
		var seed [32]byte
		cshimtest.FillRandom(r, seed[:])
		if i == 0 {
			seed = [32]byte{} // the all-zero seed is a key like any other
		}
		withKey(seed, func() {
			h := cshim.HashPage(page)
			if prev, ok := seen[h]; ok {
				t.Fatalf("seeds %x and %x give the same hash %x", prev, seed, h)
			}
			seen[h] = seed
		})
	}
	// One flipped bit of the seed is another key.
	var s1 [32]byte
	cshimtest.FillRandom(r, s1[:])
	s2 := s1
	s2[31] ^= 0x80
	var h1, h2 [2]uint64
	withKey(s1, func() { h1 = cshim.HashPage(page) })
	withKey(s2, func() { h2 = cshim.HashPage(page) })
	if h1 == h2 || h1[0] == h2[0] || h1[1] == h2[1] {
		t.Fatalf("seeds one bit apart: %x and %x", h1, h2)
	}
}

func TestHashBitFlip(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	page := cshimtest.CMem(t, (1)*cshim.PageSize)
	for _, name := range []string{"random", "zero"} {
		if name == "random" {
			cshimtest.FillRandom(r, page)
		} else {
			clear(page)
		}
		base := cshim.HashPage(page)
		// Every bit of the first and last words, then sampled positions.
		var bits []int
		for i := 0; i < 64; i++ {
			bits = append(bits, i, cshim.PageSize*8-1-i)
		}
		for i := 0; i < 4000; i++ {
			bits = append(bits, r.IntN(cshim.PageSize*8))
		}
		for _, bit := range bits {
			page[bit/8] ^= 1 << (bit % 8)
			h := cshim.HashPage(page)
			page[bit/8] ^= 1 << (bit % 8)
			// Each half on its own must change: the map's filter uses the
			// first, the destination checks both.
			if h[0] == base[0] || h[1] == base[1] {
				t.Fatalf("%s page: flipping bit %d gives %x, unflipped %x", name, bit, h, base)
			}
			// The filter bits the map keeps must change too (for all but
			// ~2^-40 of the flips; a fixed seed makes this deterministic).
			if cshim.H16(h[0]) == cshim.H16(base[0]) && cshim.H24(h[0]) == cshim.H24(base[0]) {
				t.Fatalf("%s page: flipping bit %d keeps the 40 filter bits", name, bit)
			}
		}
		if cshim.HashPage(page) != base {
			t.Fatalf("page not restored")
		}
	}
}

func TestExpandKey(t *testing.T) {
	var s1, s2 [32]byte
	for i := range s1 {
		s1[i] = byte(i)
		s2[i] = byte(i)
	}
	s2[0] ^= 1
	k1, k1b, k2 := cshim.ExpandKey(s1), cshim.ExpandKey(s1), cshim.ExpandKey(s2)
	if len(k1) != cshim.KeyBytes {
		t.Fatalf("ExpandKey: %d bytes, want %d", len(k1), cshim.KeyBytes)
	}
	if !bytes.Equal(k1, k1b) {
		t.Fatalf("ExpandKey is not deterministic")
	}
	if bytes.Equal(k1, k2) {
		t.Fatalf("different seeds expand to the same key")
	}
	// The documented construction: SHA-256(seed || be32 counter), concatenated.
	for _, ctr := range []uint32{0, 1, uint32(cshim.KeyBytes/sha256.Size - 1)} {
		var blk [36]byte
		copy(blk[:], s1[:])
		binary.BigEndian.PutUint32(blk[32:], ctr)
		sum := sha256.Sum256(blk[:])
		off := int(ctr) * sha256.Size
		if !bytes.Equal(k1[off:off+sha256.Size], sum[:]) {
			t.Fatalf("block %d of the key is not SHA-256(seed||%d)", ctr, ctr)
		}
	}
	// The key block past the whole hashes is the tail of the next one.
	n := cshim.KeyBytes / sha256.Size
	if rest := cshim.KeyBytes % sha256.Size; rest != 0 {
		var blk [36]byte
		copy(blk[:], s1[:])
		binary.BigEndian.PutUint32(blk[32:], uint32(n))
		sum := sha256.Sum256(blk[:])
		if !bytes.Equal(k1[n*sha256.Size:], sum[:rest]) {
			t.Fatalf("last partial block of the key differs")
		}
	}
	// ExpandKey must not alias its output between calls.
	k1[0] ^= 0xff
	if cshim.ExpandKey(s1)[0] == k1[0] {
		t.Fatalf("ExpandKey returned shared memory")
	}
}

func TestSetKeyRejectsWrongSize(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatalf("SetKey accepted a short key")
		}
	}()
	cshim.SetKey(make([]byte, cshim.KeyBytes-1))
}

func TestHashPageRejectsShortPage(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatalf("HashPage accepted a short page")
		}
	}()
	cshim.HashPage(make([]byte, cshim.PageSize-1))
}

func TestErr(t *testing.T) {
	cshim.SetErr("first")
	if got := cshim.Err(); got != "first" {
		t.Fatalf("Err = %q", got)
	}
	long := string(bytes.Repeat([]byte("x"), 5000))
	cshim.SetErr(long)
	if got := cshim.Err(); len(got) != 1023 || got != long[:1023] {
		t.Fatalf("long message: got %d bytes", len(got))
	}
	cshim.SetErr("")
}

func BenchmarkHashPage(b *testing.B) {
	page := cshimtest.CMem(b, (64)*cshim.PageSize)
	cshimtest.FillRandom(rand.New(rand.NewPCG(9, 10)), page)
	b.SetBytes(cshim.PageSize)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		off := (i & 63) * cshim.PageSize
		cshim.HashPage(page[off : off+cshim.PageSize])
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)*cshim.PageSize/b.Elapsed().Seconds()/1e9, "GB/s")
}

// A fill's one pass gives exactly the two hashes it replaces, whatever the
// keys and the page (zero, all ones, random).
func TestHashPageFillMatchesBoth(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	page := cshimtest.CMem(t, cshim.PageSize)
	var migSeed [32]byte
	cshimtest.FillRandom(r, migSeed[:])
	cshim.SetMigKey(cshim.ExpandKey(migSeed))
	for i := 0; i < 64; i++ {
		switch i {
		case 0:
			clear(page)
		case 1:
			for j := range page {
				page[j] = 0xff
			}
		default:
			cshimtest.FillRandom(r, page)
		}
		mig, track := cshim.HashPageFill(page)
		if want := cshim.HashPageMig(page); mig != want {
			t.Fatalf("page %d: migration hash %x, want %x", i, mig, want)
		}
		if want := cshim.HashPage(page)[0]; track != want {
			t.Fatalf("page %d: tracking hash %#x, want %#x", i, track, want)
		}
	}
}
