package gen

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
)

// TestGolden pins the generator: changing it changes every data disk, and
// guests built before the change would fail verification.
func TestGolden(t *testing.T) {
	buf := make([]byte, BlockSize)
	FillBlock(buf, SeedOf(MixedPath), 7, 3)
	sum := sha256.Sum256(buf)
	const want = "6b5e719eac2b7dc2a10cf45231574f45829a77501dede5888c934c88969c0de7"
	if got := hex.EncodeToString(sum[:]); got != want {
		t.Fatalf("FillBlock(mixed, 7, 3) sha256 = %s, want %s", got, want)
	}
}

func TestFillBlockDistinct(t *testing.T) {
	seed := SeedOf("files/000.bin")
	base := make([]byte, BlockSize)
	FillBlock(base, seed, 0, 0)
	again := make([]byte, BlockSize)
	FillBlock(again, seed, 0, 0)
	if !bytes.Equal(base, again) {
		t.Fatal("FillBlock is not deterministic")
	}
	seen := map[[32]byte]string{sha256.Sum256(base): "base"}
	for _, c := range []struct {
		name  string
		seed  uint64
		block uint64
		ver   uint32
	}{
		{"next block", seed, 1, 0},
		{"next version", seed, 0, 1},
		{"other file", SeedOf("files/001.bin"), 0, 0},
		{"far block", seed, 1 << 20, 0},
		{"far version", seed, 0, 1 << 20},
	} {
		b := make([]byte, BlockSize)
		FillBlock(b, c.seed, c.block, c.ver)
		s := sha256.Sum256(b)
		if prev, dup := seen[s]; dup {
			t.Errorf("%s has the same content as %s", c.name, prev)
		}
		seen[s] = c.name
	}
}

func TestFillMatchesBlocks(t *testing.T) {
	seed := SeedOf("x")
	const size = 5*BlockSize + 123
	whole := make([]byte, size)
	Fill(whole, seed, 3*BlockSize, 2)
	for i := 0; i*BlockSize < size; i++ {
		n := min(BlockSize, size-i*BlockSize)
		b := make([]byte, n)
		FillBlock(b, seed, uint64(3+i), 2)
		if !bytes.Equal(b, whole[i*BlockSize:i*BlockSize+n]) {
			t.Fatalf("block %d of Fill differs from FillBlock", i)
		}
	}
	// A short block is the prefix of the full one (files ending mid-block).
	full := make([]byte, BlockSize)
	FillBlock(full, seed, 9, 0)
	for _, n := range []int{1, 7, 8, 9, 4095} {
		short := make([]byte, n)
		FillBlock(short, seed, 9, 0)
		if !bytes.Equal(short, full[:n]) {
			t.Errorf("FillBlock of %d bytes is not a prefix of the full block", n)
		}
	}
}

func TestPlan(t *testing.T) {
	for _, mib := range []int{64, 300, 1300} {
		files := Plan(mib)
		again := Plan(mib)
		if len(files) != len(again) {
			t.Fatalf("Plan(%d) not deterministic", mib)
		}
		var total int64
		have := map[string]bool{}
		small, mmaps := 0, 0
		for i, f := range files {
			if f != again[i] {
				t.Fatalf("Plan(%d) not deterministic at %d", mib, i)
			}
			if i > 0 && files[i-1].Path >= f.Path {
				t.Fatalf("Plan(%d) not sorted: %s then %s", mib, files[i-1].Path, f.Path)
			}
			if f.Size <= 0 {
				t.Fatalf("Plan(%d): %s has size %d", mib, f.Path, f.Size)
			}
			have[f.Path] = true
			total += f.Size
			switch {
			case strings.HasPrefix(f.Path, "small/"):
				small++
				if f.Size > 64*1024 {
					t.Errorf("small file %s has %d bytes", f.Path, f.Size)
				}
			case strings.HasPrefix(f.Path, MmapDir+"/"):
				mmaps++
				if f.Size%BlockSize != 0 {
					t.Errorf("%s: size %d not block-aligned", f.Path, f.Size)
				}
			case strings.HasPrefix(f.Path, "files/"):
				if f.Size > 64*MiB {
					t.Errorf("%s has %d bytes", f.Path, f.Size)
				}
			}
		}
		if !have[MixedPath] || small < 100 || mmaps == 0 {
			t.Errorf("Plan(%d): mixed=%v small=%d mmap=%d", mib, have[MixedPath], small, mmaps)
		}
		if mib >= 1024 {
			for _, f := range files {
				if f.Path == MixedPath && f.Size != 256*MiB {
					t.Errorf("Plan(%d): %s has %d bytes, want 256 MiB", mib, MixedPath, f.Size)
				}
			}
		}
		if d := total - int64(mib)*MiB; d > 0 || d < -MiB-64*1024 {
			t.Errorf("Plan(%d) totals %d bytes (%+d)", mib, total, d)
		}
	}
}

func BenchmarkFill(b *testing.B) {
	buf := make([]byte, MiB)
	b.SetBytes(MiB)
	for i := 0; b.Loop(); i++ {
		Fill(buf, 1, int64(i)*MiB, 0)
	}
}
