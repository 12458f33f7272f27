package xenstream

import (
	"bytes"
	"errors"
	"io"
	"math/rand"
	"strings"
	"testing"
)

// sampleStream builds a migration stream as xl writes one for a PV guest:
// xl header with configuration, libxl header, libxc context with page
// records (one with invalid and allocate-only entries), an odd-length
// emulator record, libxl END, then xl's GO message.
func sampleStream(rng *rand.Rand) ([]byte, int) {
	var b Builder
	b.XLHeader([]byte(`{"c_info":{"name":"g"},"disks":[{"pdev_path":"/srv/d.img","vdev":"xvda","backend":"qdisk","format":"raw"}]}`))
	b.LibxlHeader()
	b.Record(LibxlLibxcContext, nil)
	b.LibxcHeaders(1)
	b.Record(2, []byte{8, 4, 0, 0, 0, 0, 0, 0}) // X86_PV_INFO
	pages := 0
	for r := 0; r < 5; r++ {
		var pfns []uint64
		var data []byte
		for i := 0; i < 1+rng.Intn(40); i++ {
			pfn := uint64(rng.Intn(1 << 20))
			switch i % 7 {
			case 3:
				pfns = append(pfns, PfnTypeXtab<<PfnTypeShift|pfn)
				continue
			case 5:
				pfns = append(pfns, PfnTypeXalloc<<PfnTypeShift|pfn)
				continue
			case 6:
				pfn |= 1 << PfnTypeShift // an L1 page table
			}
			pfns = append(pfns, pfn)
			page := make([]byte, PageSize)
			rng.Read(page)
			data = append(data, page...)
			pages++
		}
		b.PageData(pfns, data)
	}
	b.Record(LibxcEnd, nil)
	b.Record(LibxlEmulatorCtx, []byte("emulator context, 29 bytes..")) // padded
	b.Record(LibxlEnd, nil)
	b.Bytes = append(b.Bytes, "domain is yours, you are cleared to unpause"...)
	return b.Bytes, pages
}

// splitAll returns the concatenated pieces and the pages found.
func splitAll(t *testing.T, in []byte) ([]byte, int, *Splitter, error) {
	t.Helper()
	sp := NewSplitter(bytes.NewReader(in))
	var out []byte
	pages := 0
	for {
		pc, err := sp.Next()
		if err != nil {
			if err == io.EOF {
				err = nil
			}
			return out, pages, sp, err
		}
		for _, b := range pc.Bytes() {
			out = append(out, b...)
		}
		if pc.Pages != nil {
			if n, err := CarriedPages(pc.Pages.Head); err != nil || n != pc.Pages.NPages() {
				t.Fatalf("CarriedPages(head) = %d, %v; record carries %d", n, err, pc.Pages.NPages())
			}
			pages += pc.Pages.NPages()
		}
	}
}

func TestSplitterRoundTrip(t *testing.T) {
	in, want := sampleStream(rand.New(rand.NewSource(1)))
	out, pages, sp, err := splitAll(t, in)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, in) {
		t.Fatal("pieces do not add up to the stream")
	}
	if pages != want || sp.PageRecords != 5 || sp.Warning != "" || sp.Domain != 1 {
		t.Fatalf("pages %d (want %d), records %d, warning %q, domain %d", pages, want, sp.PageRecords, sp.Warning, sp.Domain)
	}
	disks, err := ConfigDisks(sp.Config)
	if err != nil || len(disks) != 1 || disks[0].Path != "/srv/d.img" || disks[0].Backend != "qdisk" {
		t.Fatalf("config disks %+v, %v", disks, err)
	}
}

func TestSplitterPassesOnWhatItDoesNotKnow(t *testing.T) {
	in, _ := sampleStream(rand.New(rand.NewSource(2)))
	lx := bytes.Index(in, []byte("XENF"))
	lb := bytes.Index(in, []byte("LibxlFmt"))
	for name, mutate := range map[string]func([]byte){
		"not xl":             func(b []byte) { b[0] = 'Y' },
		"libxl version 3":    func(b []byte) { b[lb+11] = 3 },
		"libxc version 4":    func(b []byte) { b[lx+7] = 4 },
		"big-endian libxc":   func(b []byte) { b[lx+9] = 1 },
		"page length wrong":  func(b []byte) { b[lx+52]++ }, // first PAGE_DATA
		"xl mandatory flags": func(b []byte) { b[len(XLMagic)+4] |= 0x80 },
	} {
		b := append([]byte(nil), in...)
		mutate(b)
		out, _, sp, err := splitAll(t, b)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.Equal(out, b) {
			t.Fatalf("%s: bytes changed", name)
		}
		if sp.Warning == "" {
			t.Errorf("%s: no warning", name)
		}
		t.Logf("%s: %d page records, warning %q", name, sp.PageRecords, sp.Warning)
	}
}

func TestSplitterTruncated(t *testing.T) {
	in, _ := sampleStream(rand.New(rand.NewSource(3)))
	for _, n := range []int{0, 10, 47, 48, 60, len(in) / 3, len(in) - 60, len(in) - 1} {
		out, _, _, err := splitAll(t, in[:n])
		if !bytes.Equal(out, in[:n]) {
			t.Fatalf("cut at %d: %d bytes out", n, len(out))
		}
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("cut at %d: %v", n, err)
		}
	}
}

// FuzzSplitter: whatever the input, no byte is lost or changed, and a page
// record handed out is one CarriedPages accepts.
func FuzzSplitter(f *testing.F) {
	in, _ := sampleStream(rand.New(rand.NewSource(4)))
	f.Add(in)
	f.Add(in[:200])
	f.Add([]byte(strings.Repeat("x", 100)))
	f.Fuzz(func(t *testing.T, b []byte) {
		out, _, _, _ := splitAll(t, b)
		if !bytes.Equal(out, b) {
			t.Fatalf("%d bytes in, %d out or different", len(b), len(out))
		}
	})
}

// xl's header carries the configuration as a C string, NUL included (seen
// in `xl migrate` of Xen 4.17).
func TestConfigDisksNulTerminated(t *testing.T) {
	disks, err := ConfigDisks([]byte(`{"c_info":{"name":"g"},"disks":[{"pdev_path":"/dev/vdc","vdev":"xvda","backend":"qdisk","format":"raw"}]}` + "\x00"))
	if err != nil || len(disks) != 1 || disks[0].Path != "/dev/vdc" || disks[0].Backend != "qdisk" {
		t.Fatalf("ConfigDisks = %+v, %v", disks, err)
	}
}
