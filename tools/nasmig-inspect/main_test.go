package main

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/uuid"

	"nasmig/cshim"
	"nasmig/plugin/debugproto"
	"nasmig/plugin/wire"
	"nasmig/tools/nasmig-inspect/internal/streamtest"
	"nasmig/tools/nasmig-inspect/migstream"
	"nasmig/tools/nasmig-inspect/qemufmt"
)

func runCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, env{stdin: strings.NewReader(""), stdout: &out, stderr: &errb})
	return code, out.String(), errb.String()
}

// testRef is a reference the stream built by writeStream holds.
type testRef struct {
	block     string
	ramOff    uint64
	disk      uint8
	diskOff   uint64
	streamOff int64
	replaced  bool // a later normal page replaces it
	wrongHash bool
}

// writeStream writes a stream whose references hash the given disk
// images' blocks with the key from seed, as the source library would.
func writeStream(t *testing.T, dir string, seed [32]byte, disks []wire.Disk, imgs map[uint8][]byte, refs []*testRef) string {
	t.Helper()
	cshim.SetMigKey(cshim.ExpandKey(seed))
	e := &streamtest.Enc{}
	e.Header()
	e.Config("pc-q35-10.0")
	e.Start(qemufmt.VMSectionStart, 0, "ram", 0, qemufmt.RAMSectionVersion)
	e.MemSize([]streamtest.Block{{Name: "pc.ram", Size: 64 << 12}})
	e.Eos()
	e.Footer(0)
	e.Setup(1, &wire.Setup{Migration: uuid.New(), KeySeed: seed, Disks: disks})
	e.Part(qemufmt.VMSectionPart, 0)
	first := true
	for _, r := range refs {
		var h [2]uint64
		if img := imgs[r.disk]; img != nil && r.diskOff+cshim.PageSize <= uint64(len(img)) {
			h = cshim.HashPageMig(img[r.diskOff : r.diskOff+cshim.PageSize])
		}
		if r.wrongHash {
			h[1] ^= 1
		}
		r.streamOff = e.Off()
		name := ""
		if first {
			name, first = r.block, false
		}
		e.Ref(r.ramOff, name, wire.Ref{Disk: r.disk, Offset: r.diskOff, Hash: h})
	}
	for _, r := range refs {
		if r.replaced {
			e.Normal(r.ramOff, "")
		}
	}
	e.Xbzrle(refs[0].ramOff, "", 4) // patches a filled page: no replacement
	e.Eos()
	e.Footer(0)
	e.Part(qemufmt.VMSectionEnd, 0)
	e.Eos()
	e.Footer(0)
	e.EofVMDesc(nil)
	p := filepath.Join(dir, "vm.mig")
	if err := os.WriteFile(p, e.B, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func randomImage(r *rand.Rand, blocks int) []byte {
	b := make([]byte, blocks*cshim.PageSize)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestStreamCommand(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(1, 1))
	img := randomImage(r, 8)
	refs := []*testRef{{block: "pc.ram", ramOff: 0, disk: 0, diskOff: 0}, {block: "pc.ram", ramOff: 0x1000, disk: 0, diskOff: 0x3000}}
	path := writeStream(t, dir, [32]byte{9}, []wire.Disk{{Index: 0, Size: uint64(len(img)), Filename: "/d0.raw", NodeName: "d0"}}, map[uint8][]byte{0: img}, refs)

	code, out, errs := runCmd(t, "stream", path)
	if code != exitOK {
		t.Fatalf("stream: exit %d: %s", code, errs)
	}
	for _, want := range []string{"pc.ram", "disk 0: 2 references", "nasmig setup at", "/d0.raw", "multifd flush markers: 0"} {
		if !strings.Contains(out, want) {
			t.Errorf("stream output lacks %q:\n%s", want, out)
		}
	}
	code, out, _ = runCmd(t, "stream", "--json", path)
	var rep migstream.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil || code != exitOK {
		t.Fatalf("stream --json: exit %d, %v:\n%s", code, err, out)
	}
	if rep.Schema != "nasmig-inspect/1" || rep.Totals.Refs.Pages != 2 || rep.Totals.XBZRLE.Pages != 1 || rep.Setup == nil || len(rep.Setup.Disks) != 1 {
		t.Errorf("stream --json: %+v", rep)
	}

	// Bad input: exit 2 and the offset on stderr.
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("QEVM\x00\x00\x00\x03\x01"), 0o644)
	code, _, errs = runCmd(t, "stream", bad)
	if code != exitBad || !strings.Contains(errs, "byte offset 9") {
		t.Errorf("truncated stream: exit %d, %q", code, errs)
	}
	if code, _, _ := runCmd(t, "stream"); code != exitBad {
		t.Errorf("no argument: exit %d", code)
	}
	if code, out, _ := runCmd(t, "--help"); code != exitOK || !strings.Contains(out, "nasmig-inspect oracle --ram") {
		t.Errorf("--help: exit %d", code)
	}
}

func TestVerify(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(2, 2))
	img0, img3 := randomImage(r, 16), randomImage(r, 4)
	disks := []wire.Disk{
		{Index: 0, Size: uint64(len(img0)), Filename: "nbd+unix:///d0?socket=/run/s.sock", NodeName: "node0"},
		{Index: 3, Size: uint64(len(img3)), Filename: filepath.Join(dir, "d3.raw"), NodeName: "base"},
	}
	var refs []*testRef
	for i := range 10 {
		refs = append(refs, &testRef{block: "pc.ram", ramOff: uint64(i) << 12, disk: 0, diskOff: uint64(15-i) << 12})
	}
	refs = append(refs, &testRef{block: "pc.ram", ramOff: 10 << 12, disk: 3, diskOff: 2 << 12})
	refs[7].replaced = true // its block changes too: a stale reference, no failure
	path := writeStream(t, dir, [32]byte{1, 2, 3}, disks, map[uint8][]byte{0: img0, 3: img3}, refs)

	p0, p3 := filepath.Join(dir, "d0.raw"), filepath.Join(dir, "d3.raw")
	os.WriteFile(p3, img3, 0o644)
	os.WriteFile(p0, img0, 0o644)
	if code, out, errs := runCmd(t, "verify", path, "--disk", "0="+p0, "--disk", "base="+p3); code != exitOK {
		t.Fatalf("intact images: exit %d\n%s%s", code, out, errs)
	}
	// Modify the block of reference 4 and of the stale reference 7.
	mod := bytes.Clone(img0)
	mod[refs[4].diskOff+100] ^= 0xff
	mod[refs[7].diskOff+5] ^= 0xff
	os.WriteFile(p0, mod, 0o644)
	code, out, errs := runCmd(t, "verify", "--json", path, "--disk", "node0="+p0, "--disk", "3="+p3)
	if code != exitMismatch {
		t.Fatalf("modified block: exit %d\n%s%s", code, out, errs)
	}
	var vr VerifyReport
	if err := json.Unmarshal([]byte(out), &vr); err != nil {
		t.Fatal(err)
	}
	want := []VerifyFail{
		{StreamOffset: refs[4].streamOff, RAMBlock: "pc.ram", RAMOffset: refs[4].ramOff, Disk: 0, DiskOffset: refs[4].diskOff, Reason: "mismatch"},
		{StreamOffset: refs[7].streamOff, RAMBlock: "pc.ram", RAMOffset: refs[7].ramOff, Disk: 0, DiskOffset: refs[7].diskOff, Reason: "mismatch", Stale: true},
	}
	if !slices.Equal(vr.Failures, want) || vr.Mismatched != 1 || vr.StaleBad != 1 || vr.Matched != 9 || vr.Checked != 11 {
		t.Errorf("failures %+v (mismatched %d, stale %d, matched %d, checked %d), want %+v", vr.Failures, vr.Mismatched, vr.StaleBad, vr.Matched, vr.Checked, want)
	}
	// The filename (an NBD URI with '=' in it) names the disk too.
	code, out, _ = runCmd(t, "verify", path, "--disk", disks[0].Filename+"="+p0, "--disk", "3="+p3)
	if code != exitMismatch || !strings.Contains(out, "mismatch: stream offset "+strconv.FormatInt(refs[4].streamOff, 10)) {
		t.Errorf("by filename: exit %d\n%s", code, out)
	}
	// A disk without an image: its references are not checked, exit 1.
	// Disk 0's own filename is an export that is not there: said so.
	if code, out, errs := runCmd(t, "verify", path, "--disk", "3="+p3); code != exitMismatch || !strings.Contains(errs, "10 were not checked") ||
		!strings.Contains(out, "the stream's filename does not open here: nbd connect /run/s.sock") {
		t.Errorf("missing image: exit %d, %s%s", code, out, errs)
	}
	// Disk 3 is read at its filename in the stream when not given.
	os.WriteFile(p0, img0, 0o644)
	if code, out, errs := runCmd(t, "verify", path, "--disk", "0="+p0); code != exitOK || !strings.Contains(out, "the stream's own filename") {
		t.Errorf("disk from the stream's table: exit %d, %s%s", code, out, errs)
	}
	if code, _, errs := runCmd(t, "verify", path, "--disk", "0="+p0, "--no-default-disks"); code != exitMismatch || !strings.Contains(errs, "1 were not checked") {
		t.Errorf("--no-default-disks: exit %d, %s", code, errs)
	}
	if code, _, errs := runCmd(t, "verify", path, "--disk", "0=nbd+unix:///x?socket=/nonexistent.sock"); code != exitBad || !strings.Contains(errs, "nbd connect /nonexistent.sock") {
		t.Errorf("NBD export not there: exit %d, %s", code, errs)
	}
	if code, _, errs := runCmd(t, "verify", path, "--disk", "0=nbds://h/x"); code != exitBad || !strings.Contains(errs, "TLS") {
		t.Errorf("NBD over TLS: exit %d, %s", code, errs)
	}
	if code, _, errs := runCmd(t, "verify", path, "--disk", "7="+p0); code != exitBad || !strings.Contains(errs, "no disk") {
		t.Errorf("unknown disk: exit %d, %s", code, errs)
	}
	// A short image: the references past its end fail as out-of-range.
	os.WriteFile(p0, img0[:8*cshim.PageSize], 0o644)
	code, out, _ = runCmd(t, "verify", "--json", path, "--disk", "0="+p0, "--disk", "3="+p3)
	json.Unmarshal([]byte(out), &vr)
	if code != exitMismatch || vr.OutOfRange != 8 {
		t.Errorf("short image: exit %d, out of range %d", code, vr.OutOfRange)
	}
}

func TestOracle(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(3, 3))
	d0, d1 := randomImage(r, 6), randomImage(r, 3)
	copy(d0[2*cshim.PageSize:3*cshim.PageSize], zeroPage) // a zero block: not indexed
	other := randomImage(r, 3)
	// RAM: 3 zero pages, 4 identical (d0 block 0, 5; d1 block 1; d0 block 0 again), 3 other.
	pages := [][]byte{zeroPage, d0[0:4096], other[0:4096], d1[4096:8192], zeroPage, d0[5*4096 : 6*4096], other[4096:8192], d0[0:4096], zeroPage, other[8192:]}
	ram := bytes.Join(pages, nil)
	ram = append(ram, 1, 2, 3) // a partial page
	rp, p0, p1 := filepath.Join(dir, "ram"), filepath.Join(dir, "d0"), filepath.Join(dir, "d1")
	os.WriteFile(rp, ram, 0o644)
	os.WriteFile(p0, d0, 0o644)
	os.WriteFile(p1, d1, 0o644)

	// A stream with 3 references: one is replaced by a normal page later.
	refs := []*testRef{{block: "pc.ram", ramOff: 0x1000}, {block: "pc.ram", ramOff: 0x3000}, {block: "pc.ram", ramOff: 0x5000, replaced: true}}
	sp := writeStream(t, dir, [32]byte{4}, []wire.Disk{{Index: 0, Size: uint64(len(d0)), Filename: "/d0", NodeName: "n"}}, nil, refs)

	code, out, errs := runCmd(t, "oracle", "--json", "--ram", rp, "--disk", p0, "--disk", p1, "--stream", sp)
	if code != exitOK {
		t.Fatalf("oracle: exit %d: %s", code, errs)
	}
	var rep OracleReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Pages != 10 || rep.Zero != 3 || rep.Identical != 4 || rep.Other != 3 || rep.TailBytes != 3 || rep.Format != "raw" {
		t.Errorf("oracle: %+v", rep)
	}
	if rep.Shares != (OracleShares{Zero: 0.3, Identical: 0.4, Other: 0.3}) {
		t.Errorf("shares %+v", rep.Shares)
	}
	if rep.Disks[0].ZeroBlocks != 1 || rep.Disks[0].Blocks != 6 {
		t.Errorf("disk 0: %+v", rep.Disks[0])
	}
	if s := rep.Stream; s == nil || s.Refs != 3 || s.FinalRefs != 2 || s.Coverage != 0.5 {
		t.Errorf("stream: %+v", rep.Stream)
	}
	if code, _, _ := runCmd(t, "oracle", "--ram", rp); code != exitBad {
		t.Errorf("no --disk: exit %d", code)
	}
}

// fakeLibrary serves the debug socket like plugin/debug.go: the report,
// then (dump set and asked for) the entries.
func fakeLibrary(t *testing.T, dump bool, entries []debugproto.Entry) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "dbg.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			var req [16]byte
			n := 0
			if dump {
				n, _ = c.Read(req[:])
			}
			rep := map[string]any{
				"stats":     map[string]uint64{"mapped_pages": 3, "ring_drops": 7, "invalidations": 11},
				"ramblocks": []map[string]any{{"name": "pc.ram", "pages": 8, "mapped": 3}, {"name": "vga.vram", "pages": 4, "mapped": 0}},
				"disks": []cshim.DiskInfo{{Index: 0, NodeName: "n0", Filename: "/d0", Size: 16 << 12},
					{Index: 1, NodeName: "n1", Filename: "/d1", Size: 0, Excluded: true}},
			}
			enc := json.NewEncoder(c)
			enc.Encode(rep)
			if dump && string(req[:n]) == debugproto.RequestDump+"\n" {
				for _, e := range entries {
					enc.Encode(e)
				}
			}
			c.Close()
		}
	}()
	return sock
}

func TestMap(t *testing.T) {
	entries := []debugproto.Entry{
		{RAMBlock: "pc.ram", Page: 0, Disk: 0, Block: 5},
		{RAMBlock: "pc.ram", Page: 1, Disk: 0, Block: 6},
		{RAMBlock: "pc.ram", Page: 7, Disk: 1, Block: 0},
	}
	sock := fakeLibrary(t, true, entries)
	dumpPath := filepath.Join(t.TempDir(), "dump.jsonl")
	code, out, errs := runCmd(t, "map", "--json", sock, "--dump", dumpPath)
	if code != exitOK {
		t.Fatalf("map: exit %d: %s", code, errs)
	}
	var mr MapReport
	if err := json.Unmarshal([]byte(out), &mr); err != nil {
		t.Fatal(err)
	}
	if mr.Mapped != 3 || !mr.Dumped || mr.Entries != 3 || mr.Stats["ring_drops"] != 7 || mr.RAMBlocks[0].Share != 3.0/8 {
		t.Errorf("map: %+v", mr)
	}
	if d := mr.Disks[0]; d.Mapped == nil || *d.Mapped != 2 || *d.Share != 2.0/16 {
		t.Errorf("disk 0: %+v", d)
	}
	if d := mr.Disks[1]; d.Mapped == nil || *d.Mapped != 1 || d.Share != nil || !d.Excluded {
		t.Errorf("disk 1: %+v", d)
	}
	b, _ := os.ReadFile(dumpPath)
	if lines := strings.Split(strings.TrimSpace(string(b)), "\n"); len(lines) != 3 || lines[0] != `{"ramblock":"pc.ram","page":0,"disk":0,"block":5}` {
		t.Errorf("dump file:\n%s", b)
	}

	// Text, from a library that predates the dump request.
	old := fakeLibrary(t, false, nil)
	code, out, _ = runCmd(t, "map", old)
	for _, want := range []string{"3 pages tracked", "pc.ram", "3/8", "37.5%", "ring drops 7, invalidations 11", "excluded", "(--dump)"} {
		if !strings.Contains(out, want) || code != exitOK {
			t.Errorf("map text lacks %q (exit %d):\n%s", want, code, out)
		}
	}
	code, out, errs = runCmd(t, "map", old, "--dump", filepath.Join(t.TempDir(), "d"))
	if code != exitOK || !strings.Contains(out, "predates the dump request") {
		t.Errorf("old library with --dump: exit %d\n%s%s", code, out, errs)
	}
	if code, _, _ := runCmd(t, "map", filepath.Join(t.TempDir(), "none")); code != exitBad {
		t.Errorf("no socket: exit %d", code)
	}
}

// The counters map prints by name must exist in struct nasmig_stats.
func TestMapCounterNames(t *testing.T) {
	names := cshim.StatNames()
	for _, n := range []string{"ring_drops", "invalidations"} {
		if !slices.Contains(names, n) {
			t.Errorf("struct nasmig_stats has no %s (it has %v)", n, names)
		}
	}
}

func TestParseArgs(t *testing.T) {
	code, _, errs := runCmd(t, "stream", "a", "b")
	if code != exitBad || !strings.Contains(errs, "2 arguments") {
		t.Errorf("two files: exit %d, %s", code, errs)
	}
	if code, _, errs := runCmd(t, "nope"); code != exitBad || !strings.Contains(errs, "unknown command") {
		t.Errorf("unknown command: exit %d, %s", code, errs)
	}
}
