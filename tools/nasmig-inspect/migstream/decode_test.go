package migstream

import (
	"bytes"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"

	"github.com/google/uuid"

	"nasmig/cshim"
	"nasmig/plugin/wire"
	"nasmig/tools/nasmig-inspect/internal/streamtest"
	"nasmig/tools/nasmig-inspect/qemufmt"
)

// sample is a synthetic stream and what decoding it must find.
type sample struct {
	data       []byte
	ramEnd     int64
	devStart   int64
	eof        int64
	vmdescOff  int64
	setupOff   int64
	sections   []Section
	noVMDesc   bool
	deviceDefs []streamtest.Device
}

var testSetup = &wire.Setup{
	Flags:     cshim.SetupFlagHold,
	Migration: uuid.MustParse("6ba7b810-9dad-11d1-80b4-00c04fd430c8"),
	KeySeed:   [32]byte{1, 2, 3},
	Disks: []wire.Disk{
		{Index: 0, Size: 64 << 10, Filename: "nbd+unix:///disk0?socket=/run/nbd.sock", NodeName: "#block123"},
		{Index: 3, Size: 1 << 20, Filename: "/srv/base.raw", NodeName: "base"},
	},
}

// buildSample writes: header, configuration, RAM START (MEM_SIZE with two
// blocks), nasmig setup, a RAM PART with every page kind, a RAM END, two
// device sections, EOF and (unless noVMDesc) the vmdesc.
func buildSample(noVMDesc bool, caps ...string) *sample {
	return buildSampleOpt(noVMDesc, true, caps...)
}

// buildSampleOpt leaves out the two normal pages unless normal is set.
func buildSampleOpt(noVMDesc, normal bool, caps ...string) *sample {
	e := &streamtest.Enc{}
	s := &sample{noVMDesc: noVMDesc}
	sec := func(off int64, typ string, id uint32, name string, inst, ver uint32) {
		s.sections = append(s.sections, Section{Offset: off, Type: typ, ID: id, Name: name, Instance: inst, Version: ver, Size: e.Off() - off})
	}
	e.Header()
	e.Config("pc-q35-10.0", caps...)

	o := e.Off()
	e.Start(qemufmt.VMSectionStart, 0, "ram", 0, 4)
	e.MemSize([]streamtest.Block{{Name: "pc.ram", Size: 16 << 12}, {Name: "vga.vram", Size: 2 << 12}})
	e.Eos()
	e.Footer(0)
	sec(o, "start", 0, "ram", 0, 4)

	s.setupOff = e.Off()
	e.Setup(1, testSetup)
	sec(s.setupOff, "start", 1, cshim.SectionName, 0, cshim.SectionVersion)

	o = e.Off()
	e.Part(qemufmt.VMSectionPart, 0)
	if normal {
		e.Normal(0x0000, "pc.ram")
		e.Zero(0x1000, "")
	} else {
		e.Zero(0x1000, "pc.ram")
	}
	e.Xbzrle(0x2000, "", 10)
	e.Ref(0x3000, "", wire.Ref{Disk: 0, Offset: 0x4000, Hash: [2]uint64{1, 2}})
	e.Ref(0x4000, "", wire.Ref{Disk: 3, Offset: 0x1000, Hash: [2]uint64{3, 4}})
	if normal {
		e.Normal(0x0000, "vga.vram")
		e.Ref(0x1000, "", wire.Ref{Disk: 0, Offset: 0x5000, Hash: [2]uint64{5, 6}})
	} else {
		e.Ref(0x1000, "vga.vram", wire.Ref{Disk: 0, Offset: 0x5000, Hash: [2]uint64{5, 6}})
	}
	e.Be64(qemufmt.RAMFlagMultifdFlush)
	e.Zero(0x5000, "pc.ram")
	e.Eos()
	e.Footer(0)
	sec(o, "part", 0, "ram", 0, 4)

	s.ramEnd = e.Off()
	e.Part(qemufmt.VMSectionEnd, 0)
	e.Ref(0xf000, "pc.ram", wire.Ref{Disk: 0, Offset: 64 << 10, Hash: [2]uint64{7, 8}}) // past disk 0's end
	e.Ref(0xe000, "", wire.Ref{Disk: 9, Offset: 0, Hash: [2]uint64{9, 9}})              // no such disk
	e.Be64(qemufmt.RAMFlagMultifdFlush)
	e.Eos()
	e.Footer(0)
	sec(s.ramEnd, "end", 0, "ram", 0, 4)

	s.deviceDefs = []streamtest.Device{
		{Name: "timer", Inst: 0, Ver: 2, FieldSizes: []int64{8, 8, 1}},
		{Name: "cpu", Inst: 0, Ver: 12, FieldSizes: []int64{4, 16}, ArrayLen: 8, Sub: "cpu/xsave"},
		{Name: "cpu", Inst: 1, Ver: 12, FieldSizes: []int64{4, 16}, ArrayLen: 8},
	}
	s.devStart = e.Off()
	for i, dv := range s.deviceDefs {
		o := e.Off()
		e.Device(uint32(2+i), dv)
		sec(o, "full", uint32(2+i), dv.Name, dv.Inst, dv.Ver)
	}
	s.eof = e.Off()
	if noVMDesc {
		e.U8(qemufmt.VMEOF)
		s.vmdescOff = -1
	} else {
		e.EofVMDesc(s.deviceDefs)
		s.vmdescOff = s.eof + 1
	}
	s.data = e.B
	return s
}

// pipe hides the reader's Seek/ReadAt: decoding as from stdin.
type pipe struct{ r io.Reader }

func (p pipe) Read(b []byte) (int, error) { return p.r.Read(b) }

func readers(data []byte) map[string]func() io.Reader {
	return map[string]func() io.Reader{
		"file": func() io.Reader { return bytes.NewReader(data) },
		"pipe": func() io.Reader { return pipe{bytes.NewReader(data)} },
	}
}

func TestDecodeSample(t *testing.T) {
	s := buildSample(false)
	for name, mk := range readers(s.data) {
		t.Run(name, func(t *testing.T) {
			var pages []Page
			rep, err := Decode(mk(), Options{OnPage: func(p Page) error { pages = append(pages, p); return nil }})
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			checkSample(t, s, rep)
			if len(pages) != 10 {
				t.Errorf("OnPage saw %d pages, want 10", len(pages))
			}
			if p := pages[3]; p.Kind != PageRef || p.Block != "pc.ram" || p.Offset != 0x3000 || p.Ref.Offset != 0x4000 || p.Ref.Hash != [2]uint64{1, 2} {
				t.Errorf("4th page %+v", p)
			}
		})
	}
}

func checkSample(t *testing.T, s *sample, rep *Report) {
	t.Helper()
	eq := func(what string, got, want any) {
		t.Helper()
		if got != want {
			t.Errorf("%s = %v, want %v", what, got, want)
		}
	}
	eq("schema", rep.Schema, Schema)
	eq("version", rep.Version, uint32(qemufmt.FileVersion))
	eq("machine", rep.Configuration.Machine, "pc-q35-10.0")
	eq("total bytes", rep.TotalBytes, int64(len(s.data)))
	eq("ram end offset", rep.RAMEndOffset, s.ramEnd)
	eq("device state offset", rep.DeviceStateOffset, s.devStart)
	eq("eof offset", rep.EOFOffset, s.eof)
	eq("vmdesc offset", rep.VMDescOffset, s.vmdescOff)
	eq("ram complete", rep.RAMComplete, true)
	eq("stopped", rep.Stopped, "")
	eq("multifd flushes", rep.MultifdFlushes, uint64(2))
	if len(rep.Sections) != len(s.sections) {
		t.Fatalf("%d sections, want %d: %+v", len(rep.Sections), len(s.sections), rep.Sections)
	}
	for i := range s.sections {
		eq("section", rep.Sections[i], s.sections[i])
	}
	if len(rep.RAMBlocks) != 2 {
		t.Fatalf("%d RAM blocks", len(rep.RAMBlocks))
	}
	pc, vga := rep.RAMBlocks[0], rep.RAMBlocks[1]
	eq("pc.ram", pc.Name+"/"+vga.Name, "pc.ram/vga.vram")
	eq("pc.ram size", pc.Size, uint64(16<<12))
	hdr := func(named string) uint64 { // page header bytes
		if named == "" {
			return 8
		}
		return 8 + 1 + uint64(len(named))
	}
	eq("pc.ram normal", pc.Normal, PageCounts{1, hdr("pc.ram") + 4096})
	eq("pc.ram zero", pc.Zero, PageCounts{2, hdr("") + 1 + hdr("pc.ram") + 1})
	eq("pc.ram xbzrle", pc.XBZRLE, PageCounts{1, hdr("") + 3 + 10})
	eq("pc.ram refs", pc.Refs, PageCounts{4, 3*hdr("") + hdr("pc.ram") + 4*cshim.RefWireSize})
	eq("pc.ram refs disk 0", pc.RefsByDisk[0], uint64(2))
	eq("pc.ram refs disk 3", pc.RefsByDisk[3], uint64(1))
	eq("pc.ram refs disk 9", pc.RefsByDisk[9], uint64(1))
	eq("vga normal", vga.Normal, PageCounts{1, hdr("vga.vram") + 4096})
	eq("vga refs", vga.Refs, PageCounts{1, hdr("") + cshim.RefWireSize})
	eq("total refs", rep.Totals.Refs.Pages, uint64(5))
	eq("total zero", rep.Totals.Zero.Pages, uint64(2))
	eq("total normal", rep.Totals.Normal.Pages, uint64(2))
	if len(rep.RefsByDisk) != 3 {
		t.Fatalf("refs by disk %+v", rep.RefsByDisk)
	}
	eq("disk 0", *rep.RefsByDisk[0], DiskRefs{Index: 0, Refs: 3, OutOfRange: 1})
	eq("disk 3", *rep.RefsByDisk[1], DiskRefs{Index: 3, Refs: 1})
	eq("disk 9", *rep.RefsByDisk[2], DiskRefs{Index: 9, Refs: 1, Unknown: true})
	st := rep.Setup
	if st == nil {
		t.Fatalf("no setup")
	}
	eq("setup offset", st.Offset, s.setupOff)
	eq("setup hold", st.Hold, true)
	eq("setup migration", st.Migration, testSetup.Migration.String())
	eq("setup key", st.KeySeed(), testSetup.KeySeed)
	eq("setup disks", len(st.Disks), 2)
	eq("setup disk 1", st.Disks[1], SetupDisk{Index: 3, Size: 1 << 20, Filename: "/srv/base.raw", NodeName: "base"})
}

func TestDecodeNoVMDesc(t *testing.T) {
	s := buildSample(true)
	for name, mk := range readers(s.data) {
		t.Run(name, func(t *testing.T) {
			rep, err := Decode(mk(), Options{})
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			want := "device state begins at byte offset " + strconv.FormatInt(s.devStart, 10)
			if !strings.Contains(rep.Stopped, want) {
				t.Errorf("stopped = %q, want it to say %q", rep.Stopped, want)
			}
			if rep.DeviceStateOffset != s.devStart || !rep.RAMComplete || rep.TotalBytes != int64(len(s.data)) {
				t.Errorf("device state %d (want %d), ram complete %v, total %d", rep.DeviceStateOffset, s.devStart, rep.RAMComplete, rep.TotalBytes)
			}
			if last := rep.Sections[len(rep.Sections)-1]; last.Offset != s.devStart || last.Size != -1 {
				t.Errorf("last section %+v", last)
			}
		})
	}
}

// Every strict prefix of a stream fails with an error naming an offset
// inside it, or stops at device state; none panics.
func TestTruncated(t *testing.T) {
	s := buildSample(false)
	for name := range readers(nil) {
		t.Run(name, func(t *testing.T) {
			for n := 0; n < len(s.data); n++ {
				rep, err := Decode(readers(s.data[:n])[name](), Options{})
				if err == nil {
					if rep.Stopped == "" && n != int(s.eof)+1 {
						t.Fatalf("prefix of %d bytes decoded without error", n)
					}
					continue
				}
				var fe *FormatError
				if !errors.As(err, &fe) {
					t.Fatalf("prefix of %d bytes: %v is no FormatError", n, err)
				}
				if fe.Offset < 0 || fe.Offset > int64(n) {
					t.Fatalf("prefix of %d bytes: error at offset %d: %v", n, fe.Offset, err)
				}
			}
		})
	}
}

func TestSmallSample(t *testing.T) {
	for _, noVMDesc := range []bool{false, true} {
		rep, err := Decode(bytes.NewReader(smallSample(noVMDesc)), Options{})
		if err != nil || rep.Totals.Normal.Pages != 0 || rep.Totals.Refs.Pages != 5 || (rep.Stopped != "") != noVMDesc {
			t.Errorf("small sample (no vmdesc %v): %v, %+v, stopped %q", noVMDesc, err, rep.Totals, rep.Stopped)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	s := buildSample(false)
	mut := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(s.data)) }
	cases := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "byte offset 0: expected 4 bytes of file magic"},
		{"magic", mut(func(b []byte) []byte { b[0] = 'X'; return b }), "not a migration stream"},
		{"version", mut(func(b []byte) []byte { b[7] = 2; return b }), "file version 2"},
		{"section type", mut(func(b []byte) []byte { b[s.sections[0].Offset] = 0x42; return b }), "expected a section type"},
		{"footer id", mut(func(b []byte) []byte { b[s.sections[0].Offset+s.sections[0].Size-1] ^= 1; return b }), "section footer names section"},
		{"vmdesc mismatch", mut(func(b []byte) []byte { b[s.sections[len(s.sections)-1].Offset+10] = 'X'; return b }), "vmdesc entry"},
		{"trailing", trailing(), "byte offset 56: expected the vmdesc (0x06) or the end after QEMU_VM_EOF, found 0x42"},
	}
	for _, c := range cases {
		_, err := Decode(bytes.NewReader(c.data), Options{})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}
}

// smallSample is buildSample without its normal pages.
func smallSample(noVMDesc bool, caps ...string) []byte {
	return buildSampleOpt(noVMDesc, false, caps...).data
}

// trailing is an empty stream with a byte after its EOF.
func trailing() []byte {
	e := &streamtest.Enc{}
	e.Header()
	e.Config("pc")
	e.U8(qemufmt.VMEOF)
	e.U8(0x42)
	return e.B
}

func TestMappedRAM(t *testing.T) {
	e := &streamtest.Enc{}
	e.Header()
	e.Config("pc-q35-10.0", "mapped-ram")
	e.Start(qemufmt.VMSectionStart, 0, "ram", 0, 4)
	const size = 70 << 12 // 70 pages: the bitmap's second word is partial
	e.Be64(size | qemufmt.RAMFlagMemSize)
	e.Str("pc.ram")
	e.Be64(size)
	hdr := e.Off()
	bitmap := hdr + qemufmt.MappedRAMHeaderSize
	pages := (bitmap + 16 + 0xfffff) &^ 0xfffff
	e.Be32(1)
	e.Be64(qemufmt.TargetPageSize)
	e.Be64(uint64(bitmap))
	e.Be64(uint64(pages))
	bm := make([]byte, 16)
	bm[0], bm[3], bm[8] = 0xff, 0x81, 0xff // 8 + 2 + 6 (pages 64..69 only)
	e.Raw(bm)
	e.Raw(make([]byte, pages-e.Off()+size))
	e.Eos()
	e.Footer(0)
	e.Part(qemufmt.VMSectionEnd, 0)
	e.Eos()
	e.Footer(0)
	e.U8(qemufmt.VMEOF)
	for name, mk := range readers(e.B) {
		rep, err := Decode(mk(), Options{})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		m := rep.RAMBlocks[0].MappedRAM
		if m == nil || m.PagesPresent != 16 || m.PagesOffset != uint64(pages) || m.HeaderOffset != hdr {
			t.Errorf("%s: mapped-ram %+v", name, m)
		}
	}
	// A page record is invalid with mapped-ram.
	b := e.B[:len(e.B)-1-5-8-5-5-8-5]
	e2 := &streamtest.Enc{B: bytes.Clone(b)}
	e2.Normal(0, "pc.ram")
	if _, err := Decode(bytes.NewReader(e2.B), Options{}); err == nil || !strings.Contains(err.Error(), "mapped-ram stream") {
		t.Errorf("page in a mapped-ram stream: %v", err)
	}
}

func FuzzStream(f *testing.F) {
	// Small seeds (no 4 KiB pages) keep the fuzzer's minimisation fast;
	// TestDecodeSample and TestTruncated cover the normal pages.
	f.Add(smallSample(false))
	f.Add(smallSample(true))
	f.Add(smallSample(false, "x-ignore-shared", "mapped-ram"))
	f.Add(trailing())
	if real := qemuStreamSeed(f); real != nil {
		f.Add(real)
		f.Add(real[:len(real)/2])
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		rep, err := Decode(bytes.NewReader(data), Options{MaxTail: 1 << 20})
		if rep == nil {
			t.Fatalf("nil report")
		}
		var fe *FormatError
		if err != nil && !errors.As(err, &fe) {
			t.Fatalf("error %v is no FormatError", err)
		}
		if err != nil && (fe.Offset < 0 || fe.Offset > int64(len(data))) {
			t.Fatalf("error offset %d outside %d bytes", fe.Offset, len(data))
		}
		// A pipe may fail where a file does not (mapped-ram reading
		// backwards), but never otherwise than with a FormatError.
		if _, err := Decode(pipe{bytes.NewReader(data)}, Options{MaxTail: 1 << 20}); err != nil && !errors.As(err, &fe) {
			t.Fatalf("pipe: error %v is no FormatError", err)
		}
	})
}
