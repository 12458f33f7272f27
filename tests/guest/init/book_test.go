package main

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"nasmig/tests/guest/internal/gen"
)

// memFile is a blockFile in memory. dropWrites makes it lose writes, like a
// destination that kept a stale page.
type memFile struct {
	data       []byte
	dropWrites bool
}

func (m *memFile) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > int64(len(m.data)) {
		return 0, errors.New("read past end")
	}
	return copy(p, m.data[off:]), nil
}

func (m *memFile) WriteAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > int64(len(m.data)) {
		return 0, errors.New("write past end")
	}
	if !m.dropWrites {
		copy(m.data[off:], p)
	}
	return len(p), nil
}

const testBlocks = 64

func newTestMixed(t *testing.T) (*mixedFile, *memFile) {
	t.Helper()
	seed := gen.SeedOf(gen.MixedPath)
	f := &memFile{data: make([]byte, testBlocks*gen.BlockSize)}
	gen.Fill(f.data, seed, 0, 0) // the data disk's content
	return newMixedFile(f, seed, testBlocks, 1), f
}

func TestMixedBookkeeping(t *testing.T) {
	m, f := newTestMixed(t)
	restored, err := m.load(3 * gen.BlockSize)
	if err != nil || restored != 0 {
		t.Fatalf("load = %d, %v", restored, err)
	}
	for i := 0; i < 2000; i++ {
		m.step()
	}
	if m.writes == 0 || m.reads == 0 || m.problems.n != 0 {
		t.Fatalf("writes=%d reads=%d problems=%v", m.writes, m.reads, m.problems.first)
	}
	r := &report{}
	m.check(r, "mixed")
	if len(r.fails) != 0 || r.checked != testBlocks {
		t.Fatalf("check: checked=%d fails=%v", r.checked, r.fails)
	}
	// The file holds exactly what the book says.
	exp := make([]byte, gen.BlockSize)
	for b := 0; b < testBlocks; b++ {
		gen.FillBlock(exp, m.book.seed, uint64(b), m.book.versions[b])
		if !bytes.Equal(exp, f.data[b*gen.BlockSize:(b+1)*gen.BlockSize]) {
			t.Fatalf("block %d does not hold version %d", b, m.book.versions[b])
		}
	}

	// One changed byte anywhere is reported, with the block number.
	f.data[5*gen.BlockSize+100] ^= 1
	r = &report{}
	m.check(r, "mixed")
	if len(r.fails) != 1 || !strings.Contains(r.fails[0], "block 5 ") {
		t.Fatalf("corrupted block 5: fails=%v", r.fails)
	}
}

func TestMixedDetectsLostWrites(t *testing.T) {
	m, f := newTestMixed(t)
	if _, err := m.load(gen.MiB); err != nil {
		t.Fatal(err)
	}
	f.dropWrites = true
	for i := 0; i < 500; i++ {
		m.step()
	}
	if m.problems.n == 0 {
		t.Fatal("read-backs did not notice lost writes")
	}
	r := &report{}
	m.check(r, "mixed")
	if len(r.fails) == 0 {
		t.Fatal("check did not notice lost writes")
	}
	lines := r.lines()
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, "FAIL done failures=") {
		t.Fatalf("last line %q", last)
	}
}

func TestMixedLoadRestores(t *testing.T) {
	m, f := newTestMixed(t)
	// Blocks left by an earlier boot: not version 0.
	gen.FillBlock(f.data[2*gen.BlockSize:3*gen.BlockSize], m.book.seed, 2, 9)
	f.data[testBlocks*gen.BlockSize-1] ^= 0xff
	restored, err := m.load(gen.MiB)
	if err != nil || restored != 2 {
		t.Fatalf("load = %d, %v; want 2 restored", restored, err)
	}
	r := &report{}
	m.check(r, "mixed")
	if len(r.fails) != 0 {
		t.Fatal(r.fails)
	}
}

func TestReportLines(t *testing.T) {
	r := &report{checked: 3}
	if got := r.lines(); len(got) != 1 || got[0] != "PASS checked=3" {
		t.Fatalf("lines = %q", got)
	}
	for i := 0; i < maxFailLines+5; i++ {
		r.failf("problem %d", i)
	}
	got := r.lines()
	if len(got) != maxFailLines+2 || got[0] != "FAIL problem 0" ||
		got[maxFailLines] != "FAIL ... and 5 more" || got[maxFailLines+1] != "FAIL done failures=45 checked=3" {
		t.Fatalf("lines = %q", got)
	}
}

func TestMmapStamp(t *testing.T) {
	seed := gen.SeedOf(gen.MmapDir + "/00.bin")
	v0 := make([]byte, gen.BlockSize)
	expectedMmapPage(v0, seed, 3, 700, 0)
	plain := make([]byte, gen.BlockSize)
	gen.FillBlock(plain, seed, 3, 0)
	if !bytes.Equal(v0, plain) {
		t.Fatal("version 0 must be the disk content")
	}
	// Stamping the disk content in place gives the expected page.
	page := append([]byte(nil), plain...)
	putStamp(page, 700, 1)
	putStamp(page, 700, 2)
	exp := make([]byte, gen.BlockSize)
	expectedMmapPage(exp, seed, 3, 700, 2)
	if !bytes.Equal(page, exp) {
		t.Fatal("stamped page differs from expectedMmapPage")
	}
	diff := 0
	for i := range page {
		if page[i] != plain[i] {
			diff++
		}
	}
	if diff == 0 || diff > 16 {
		t.Fatalf("stamp changed %d bytes", diff)
	}
	expectedMmapPage(exp, seed, 3, 700, 1)
	if bytes.Equal(page, exp) {
		t.Fatal("versions 1 and 2 look the same")
	}
	for gp := uint64(0); gp < 1000; gp++ {
		if off := stampOffset(gp); off < 0 || off+16 > gen.BlockSize || off%16 != 0 {
			t.Fatalf("stampOffset(%d) = %d", gp, off)
		}
	}
}

func TestHotPattern(t *testing.T) {
	page := make([]byte, gen.BlockSize)
	fillHotPage(page, 5, 9)
	if i := checkHotPage(page, 5, 9); i != -1 {
		t.Fatalf("fresh page: word %d bad", i)
	}
	if checkHotPage(page, 4, 9) != 0 || checkHotPage(page, 5, 8) != 0 {
		t.Fatal("pattern does not encode pass and page")
	}
	page[8*100+3] ^= 1
	if i := checkHotPage(page, 5, 9); i != 100 {
		t.Fatalf("flipped word 100, checkHotPage = %d", i)
	}
}

func TestCappedFailsListsTenThenCounts(t *testing.T) {
	for _, n := range []int{0, 10, 11, 25} {
		r := &report{}
		c := cappedFails{r: r}
		for i := 0; i < n; i++ {
			c.failf("page %d differs", i)
		}
		c.more("%s: %d more pages differ", "x")
		listed := min(n, maxListed)
		want := listed
		if n > maxListed {
			want++
		}
		if len(r.fails) != want {
			t.Fatalf("%d failures: %d lines %q, want %d", n, len(r.fails), r.fails, want)
		}
		if n > maxListed && r.fails[want-1] != fmt.Sprintf("x: %d more pages differ", n-maxListed) {
			t.Fatalf("%d failures: last line %q", n, r.fails[want-1])
		}
	}
}
