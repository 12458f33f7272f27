package harness

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeDump writes a synthetic RAM dump of size bytes, filled from seed, and
// returns its path.
func writeDump(t *testing.T, name string, size int, seed uint64, mutate func([]byte)) string {
	t.Helper()
	data := make([]byte, size)
	rng := rand.New(rand.NewPCG(seed, seed))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	if mutate != nil {
		mutate(data)
	}
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// The dumps span several 1 MiB compare chunks and end in a partial one, so
// that the chunk and page arithmetic is exercised at its edges.
const dumpSize = 3<<20 + 5*GuestPageSize

func TestCompareRAMDumpsIdentical(t *testing.T) {
	a := writeDump(t, "a.ram", dumpSize, 1, nil)
	b := writeDump(t, "b.ram", dumpSize, 1, nil)
	diff, err := CompareRAMDumps(a, b, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !diff.Equal() || diff.ComparedBytes != dumpSize || len(diff.FirstPages) != 0 {
		t.Errorf("identical dumps: %+v", diff)
	}
}

func TestCompareRAMDumpsOneByte(t *testing.T) {
	// A page in the second chunk, to check the GPA includes chunk offsets.
	const flipped = 1<<20 + 7*GuestPageSize + 123
	const baseGPA = 1 << 32
	a := writeDump(t, "a.ram", dumpSize, 2, nil)
	b := writeDump(t, "b.ram", dumpSize, 2, func(data []byte) { data[flipped] ^= 0x01 })
	diff, err := CompareRAMDumps(a, b, baseGPA)
	if err != nil {
		t.Fatal(err)
	}
	wantGPA := uint64(baseGPA + flipped&^(GuestPageSize-1))
	if diff.Equal() || diff.DifferingPages != 1 || len(diff.FirstPages) != 1 {
		t.Fatalf("one flipped byte: %+v", diff)
	}
	if page := diff.FirstPages[0]; page.GPA != wantGPA || page.DifferingBytes != 1 {
		t.Errorf("differing page = {GPA %#x, %d bytes}, want {GPA %#x, 1 byte}", page.GPA, page.DifferingBytes, wantGPA)
	}
	if s := diff.String(); !strings.Contains(s, fmt.Sprintf("GPA %#012x: 1 bytes differ", wantGPA)) {
		t.Errorf("String() does not name the page: %s", s)
	}
}

func TestCompareRAMDumpsManyPagesAndLastPartialPage(t *testing.T) {
	a := writeDump(t, "a.ram", dumpSize, 3, nil)
	b := writeDump(t, "b.ram", dumpSize, 3, func(data []byte) {
		for page := 0; page < 40; page++ {
			data[page*2*GuestPageSize] ^= 0xff
			data[page*2*GuestPageSize+1] ^= 0xff
		}
		data[dumpSize-1] ^= 0xff // in the last, partial chunk
	})
	diff, err := CompareRAMDumps(a, b, 0)
	if err != nil {
		t.Fatal(err)
	}
	if diff.DifferingPages != 41 || len(diff.FirstPages) != maxReportedPages {
		t.Fatalf("diff = %d pages, %d reported; want 41, %d", diff.DifferingPages, len(diff.FirstPages), maxReportedPages)
	}
	for i, page := range diff.FirstPages {
		if page.GPA != uint64(i*2*GuestPageSize) || page.DifferingBytes != 2 {
			t.Errorf("page %d = %+v, want GPA %#x with 2 bytes", i, page, i*2*GuestPageSize)
		}
	}
	if !strings.Contains(diff.String(), "and 25 more pages") {
		t.Errorf("String() does not count the unreported pages: %s", diff.String())
	}
}

func TestCompareRAMDumpsSizeMismatch(t *testing.T) {
	a := writeDump(t, "a.ram", dumpSize, 4, nil)
	b := writeDump(t, "b.ram", dumpSize-GuestPageSize, 4, nil)
	if _, err := CompareRAMDumps(a, b, 0); err == nil {
		t.Error("dumps of different sizes compared without error")
	}
	if _, err := CompareRAMDumps(a, filepath.Join(t.TempDir(), "missing"), 0); err == nil {
		t.Error("missing dump compared without error")
	}
}

func TestRAMDiffAddKeepsFirstPages(t *testing.T) {
	var total RAMDiff
	low := RAMDiff{ComparedBytes: 2 << 30, DifferingPages: 10}
	for i := range 10 {
		low.FirstPages = append(low.FirstPages, PageDiff{GPA: uint64(i) * GuestPageSize, DifferingBytes: 1})
	}
	high := RAMDiff{ComparedBytes: 1 << 30, DifferingPages: 10}
	for i := range 10 {
		high.FirstPages = append(high.FirstPages, PageDiff{GPA: 1<<32 + uint64(i)*GuestPageSize, DifferingBytes: 1})
	}
	total.add(low)
	total.add(high)
	if total.DifferingPages != 20 || len(total.FirstPages) != maxReportedPages || total.ComparedBytes != 3<<30 {
		t.Errorf("merged diff: %d pages, %d reported, %d bytes", total.DifferingPages, len(total.FirstPages), total.ComparedBytes)
	}
	if total.FirstPages[10].GPA != 1<<32 {
		t.Errorf("merged pages out of order: %+v", total.FirstPages)
	}
}

func TestQ35RAMRanges(t *testing.T) {
	for _, tc := range []struct {
		mib  uint64
		want []RAMRange
	}{
		{512, []RAMRange{{0, 512 << 20}}},
		{2048, []RAMRange{{0, 2048 << 20}}},
		{2815, []RAMRange{{0, 2815 << 20}}},
		{2816, []RAMRange{{0, 2 << 30}, {4 << 30, 768 << 20}}},
		{4096, []RAMRange{{0, 2 << 30}, {4 << 30, 2 << 30}}},
	} {
		got := Q35RAMRanges(tc.mib << 20)
		if len(got) != len(tc.want) {
			t.Errorf("%d MiB: %+v, want %+v", tc.mib, got, tc.want)
			continue
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Errorf("%d MiB: %+v, want %+v", tc.mib, got, tc.want)
			}
		}
	}
}
