package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"nasmig/tests/harness"
	"nasmig/tools/nasmig-inspect/migstream"
)

// nasmig-inspect on what the real patched QEMU produced: its counts must be
// QEMU's own, its verdicts must follow the disk.

// inspect runs out/nasmig-inspect; it returns the exit status, stdout and
// stderr (a failure to run at all fails the test).
func inspect(t *testing.T, ctx context.Context, env harness.Env, args ...string) (int, []byte, string) {
	t.Helper()
	cmd := exec.CommandContext(ctx, filepath.Join(env.Out, "nasmig-inspect"), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("nasmig-inspect %s: %v", strings.Join(args, " "), err)
	}
	return cmd.ProcessState.ExitCode(), stdout.Bytes(), stderr.String()
}

// inspectJSON runs a subcommand with --json that must exit with want, and
// decodes its output into v.
func inspectJSON(t *testing.T, ctx context.Context, env harness.Env, want int, v any, args ...string) {
	t.Helper()
	start := time.Now()
	code, out, errs := inspect(t, ctx, env, append(args, "--json")...)
	t.Logf("nasmig-inspect %s: exit %d in %.1f s", strings.Join(args, " "), code, time.Since(start).Seconds())
	if code != want {
		t.Fatalf("nasmig-inspect %s: exit %d, want %d\n%s", strings.Join(args, " "), code, want, errs)
	}
	if err := json.Unmarshal(out, v); err != nil {
		t.Fatalf("nasmig-inspect %s --json: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// logHuman logs a subcommand's default (human) output, for the reader of
// the test log and the README's examples.
func logHuman(t *testing.T, ctx context.Context, env harness.Env, args ...string) {
	t.Helper()
	code, out, errs := inspect(t, ctx, env, args...)
	t.Logf("$ nasmig-inspect %s   (exit %d)\n%s%s", strings.Join(args, " "), code, out, errs)
}

// checkSavedStream decodes a save file with nasmig-inspect stream: every
// count must equal the source's query-migrate for the same migration.
func checkSavedStream(t *testing.T, ctx context.Context, p *pair, path string, info harness.MigrationInfo) *migstream.Report {
	t.Helper()
	var rep migstream.Report
	inspectJSON(t, ctx, p.env, 0, &rep, "stream", path)
	logHuman(t, ctx, p.env, "stream", path)
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	tot := rep.Totals
	t.Logf("stream: %d bytes, %d sections, normal %d, zero %d, xbzrle %d, refs %d pages; RAM END at %d, device state at %d, EOF at %d",
		rep.TotalBytes, len(rep.Sections), tot.Normal.Pages, tot.Zero.Pages, tot.XBZRLE.Pages, tot.Refs.Pages,
		rep.RAMEndOffset, rep.DeviceStateOffset, rep.EOFOffset)
	if rep.Stopped != "" || !rep.RAMComplete || rep.EOFOffset < 0 || rep.TotalBytes != st.Size() {
		t.Errorf("stream not decoded to its end: stopped %q, RAM complete %v, EOF at %d, %d of %d bytes",
			rep.Stopped, rep.RAMComplete, rep.EOFOffset, rep.TotalBytes, st.Size())
	}
	ram := info.RAM
	if ram == nil {
		t.Fatal("the source's query-migrate has no ram object")
	}
	var refs int64
	if info.DiskRefs != nil {
		refs = info.DiskRefs.RefPages
	}
	if x := info.XBZRLE; x != nil {
		// QEMU counts an XBZRLE page before encoding it: a page unchanged
		// since it was cached (encoded to nothing, not sent) and one whose
		// delta overflowed (sent as a normal page) count too. Its byte
		// counter holds each record without 8 bytes of its header, and
		// a page's size for each overflow.
		records := int64(tot.XBZRLE.Pages)
		wantBytes := x.Bytes - x.Overflow*4096 + 8*records
		t.Logf("XBZRLE: %d records, %d bytes in the stream; query-migrate: pages %d (overflow %d, the rest unchanged pages not sent), bytes %d",
			records, tot.XBZRLE.Bytes, x.Pages, x.Overflow, x.Bytes)
		if records > x.Pages-x.Overflow || int64(tot.XBZRLE.Bytes) != wantBytes {
			t.Errorf("stream's XBZRLE: %d records of %d bytes; query-migrate's: %d pages, %d overflows, %d bytes (so %d bytes of records)",
				records, tot.XBZRLE.Bytes, x.Pages, x.Overflow, x.Bytes, wantBytes)
		}
	} else if tot.XBZRLE.Pages != 0 {
		t.Errorf("stream has %d XBZRLE pages, query-migrate no xbzrle-cache", tot.XBZRLE.Pages)
	}
	var present uint64
	for _, b := range rep.RAMBlocks {
		if b.MappedRAM != nil {
			present += b.MappedRAM.PagesPresent
		}
	}
	if present > 0 {
		// mapped-ram: pages sit at fixed offsets with a bitmap of those
		// written, no page records; a page sent twice is counted twice by
		// QEMU but present once, a zero page is not written at all.
		t.Logf("mapped-ram: %d pages present in the file, query-migrate: normal %d, duplicate %d", present, ram.Normal, ram.Duplicate)
		if present > uint64(ram.Normal) || tot.Normal.Pages != 0 || tot.Refs.Pages != 0 || refs != 0 {
			t.Errorf("mapped-ram stream: %d pages present, %d normal and %d reference records; query-migrate: normal %d, ref-pages %d",
				present, tot.Normal.Pages, tot.Refs.Pages, ram.Normal, refs)
		}
		return &rep
	}
	for _, c := range []struct {
		what      string
		got, want int64
	}{
		{"normal pages", int64(tot.Normal.Pages), ram.Normal},
		{"zero pages (duplicate)", int64(tot.Zero.Pages), ram.Duplicate},
		{"references (ref-pages)", int64(tot.Refs.Pages), refs},
	} {
		if c.got != c.want {
			t.Errorf("stream's %s: %d, query-migrate's: %d", c.what, c.got, c.want)
		}
	}
	if (refs > 0) != (rep.Setup != nil) {
		t.Errorf("references %d but nasmig setup section present: %v", refs, rep.Setup != nil)
	}
	return &rep
}

// streamRef is one reference record of a stream.
type streamRef struct {
	block     string
	ramOffset uint64
	disk      uint8
	offset    uint64
}

// streamRefs decodes the references of a saved stream in stream order.
func streamRefs(t *testing.T, path string) []streamRef {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var refs []streamRef
	_, err = migstream.Decode(f, migstream.Options{OnPage: func(pg migstream.Page) error {
		if pg.Kind == migstream.PageRef {
			refs = append(refs, streamRef{pg.Block, pg.Offset, pg.Ref.Disk, pg.Ref.Offset})
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	return refs
}

// verifyReport is the part of verify's JSON the test reads.
type verifyReport struct {
	Refs, Checked, Matched, Mismatched, Unchecked uint64
	StaleBad                                      uint64 `json:"stale_mismatched"`
	OK                                            bool
	Disks                                         []struct {
		Image     string
		FromTable bool `json:"from_table"`
	}
	Failures []struct {
		RAMBlock   string `json:"ramblock"`
		RAMOffset  uint64 `json:"ram_offset"`
		Disk       uint8
		DiskOffset uint64 `json:"disk_offset"`
		Reason     string
	}
}

// checkVerify runs verify on a save file against the shared export, as
// the stream's disk table names it: all must match; then it changes a few
// referenced blocks through NBD (another client of the export, as another
// host would) and verify must report exactly the references to them; the
// blocks are put back and verify passes again.
func checkVerify(t *testing.T, ctx context.Context, p *pair, path string) {
	t.Helper()
	var vr verifyReport
	inspectJSON(t, ctx, p.env, 0, &vr, "verify", path)
	if !vr.OK || vr.Checked != vr.Refs || vr.Matched+vr.StaleBad != vr.Refs || len(vr.Disks) != 1 || !vr.Disks[0].FromTable {
		t.Fatalf("verify of an intact export: %+v", vr)
	}
	logHuman(t, ctx, p.env, "verify", path)
	t.Logf("verify: %d references checked against %s (the stream's own filename): %d match, %d stale ones (a later record replaced the page) do not",
		vr.Checked, vr.Disks[0].Image, vr.Matched, vr.StaleBad)
	// Stale references whose block changed since: not failures, but
	// listed; they are no part of what the change below must show.
	baseline := map[[2]uint64]bool{}
	for _, f := range vr.Failures {
		baseline[[2]uint64{f.RAMOffset, f.DiskOffset}] = true
	}

	refs := streamRefs(t, path)
	if uint64(len(refs)) != vr.Refs {
		t.Fatalf("verify counted %d references, the decoder %d", vr.Refs, len(refs))
	}
	// Three distinct blocks: the first, middle and last reference's.
	picked := map[uint64]bool{}
	for _, i := range []int{0, len(refs) / 2, len(refs) - 1} {
		picked[refs[i].offset] = true
	}
	want := map[[2]uint64]bool{} // every reference to a picked block: RAM offset, disk offset
	for _, r := range refs {
		if k := [2]uint64{r.ramOffset, r.offset}; picked[r.offset] && !baseline[k] {
			want[k] = true
		}
	}
	originals := map[uint64][]byte{}
	restore := func() {
		for off, data := range originals {
			if err := p.storage.WriteAt(ctx, data, int64(off)); err != nil {
				t.Fatalf("putting block %#x back: %v", off, err)
			}
		}
	}
	for off := range picked {
		data, err := p.storage.ReadAt(ctx, 4096, int64(off))
		if err != nil {
			t.Fatal(err)
		}
		originals[off] = data
		changed := bytes.Clone(data)
		changed[100] ^= 0x5a
		if err := p.storage.WriteAt(ctx, changed, int64(off)); err != nil {
			restore()
			t.Fatal(err)
		}
	}
	inspectJSON(t, ctx, p.env, 1, &vr, "verify", path)
	logHuman(t, ctx, p.env, "verify", path)
	restore()
	got := map[[2]uint64]bool{}
	for _, f := range vr.Failures {
		k := [2]uint64{f.RAMOffset, f.DiskOffset}
		if baseline[k] {
			continue
		}
		if f.Reason != "mismatch" || !picked[f.DiskOffset] {
			t.Errorf("verify after changing %d blocks reports %+v", len(picked), f)
		}
		got[k] = true
	}
	if len(got) != len(want) {
		t.Errorf("verify after changing %d blocks: %d references failed, want the %d that name them", len(picked), len(got), len(want))
	}
	for k := range want {
		if !got[k] {
			t.Errorf("the reference of RAM offset %#x to changed block %#x was not reported", k[0], k[1])
		}
	}
	t.Logf("verify after changing %d blocks through NBD: %d references failed, exactly those to the changed blocks",
		len(picked), len(got))
	inspectJSON(t, ctx, p.env, 0, &vr, "verify", path)
	if !vr.OK {
		t.Fatalf("verify after putting the blocks back: %+v", vr)
	}
}

// oracleReport is the part of oracle's JSON the test reads.
type oracleReport struct {
	Pages, Zero, Identical, Other uint64
	Stream                        *struct {
		Refs      uint64
		FinalRefs uint64 `json:"final_refs"`
		Coverage  float64
	}
}

// checkOracle dumps the paused source's RAM (dump-guest-memory, ELF) and
// runs oracle against the disk image, and the stream when given: the
// references can only cover pages identical to a disk block, and a guest
// that read nasmig.mib MiB holds at least that much of them; a guest that
// read nothing (workload idle) holds almost none.
func checkOracle(t *testing.T, ctx context.Context, p *pair, streamPath string) {
	t.Helper()
	dump := p.run.Path("src.elf")
	p.run.Scratch(dump)
	if _, err := p.src.QMP.Execute(ctx, "dump-guest-memory", map[string]any{"paging": false, "protocol": "file:" + dump}); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(dump)
	args := []string{"oracle", "--ram", dump, "--disk", p.image}
	if streamPath != "" {
		args = append(args, "--stream", streamPath)
	}
	var or oracleReport
	inspectJSON(t, ctx, p.env, 0, &or, args...)
	logHuman(t, ctx, p.env, args...)
	if or.Pages == 0 || (or.Stream == nil) != (streamPath == "") {
		t.Fatalf("oracle: %+v", or)
	}
	identical := float64(or.Identical) / float64(or.Pages)
	t.Logf("oracle: %d pages: zero %.1f%%, identical to a disk block %.1f%%, other %.1f%%",
		or.Pages, 100*float64(or.Zero)/float64(or.Pages), 100*identical, 100*float64(or.Other)/float64(or.Pages))
	switch p.c.workload {
	case "pagecache-read":
		if or.Identical*4096 < uint64(guestMiB)<<20 {
			t.Errorf("oracle: %d identical pages, fewer than the %d MiB the guest read", or.Identical, guestMiB)
		}
	case "idle":
		if identical > 0.05 {
			t.Errorf("oracle: %.1f%% of an idle guest's pages identical to a disk block", 100*identical)
		}
	}
	if st := or.Stream; st != nil {
		t.Logf("oracle: the stream's %d final references cover %.1f%% of the identical pages", st.FinalRefs, 100*st.Coverage)
		if st.FinalRefs > or.Identical {
			t.Errorf("oracle: %d pages end as references but only %d are identical to a disk block", st.FinalRefs, or.Identical)
		}
		if st.Coverage < 0.9 {
			t.Errorf("oracle: references cover %.1f%% of the identical pages", 100*st.Coverage)
		}
	}
}

// mapReport is the part of map's JSON the test reads.
type mapReport struct {
	Mapped  uint64
	Stats   map[string]uint64
	Dumped  bool
	Entries uint64
}

// checkMap reads the live map of the running source through its debug
// socket while the guest runs: the map's own page count, the library's
// mapped-pages counter and the dump's lines must agree; dumping it over
// and over must not stop the guest (its heartbeats are counted).
func checkMap(t *testing.T, ctx context.Context, p *pair) {
	t.Helper()
	socket := p.run.SocketPath(srcDebugSocket)
	dump := p.run.Path("map.jsonl")
	p.run.Scratch(dump)
	var rep mapReport
	inspectJSON(t, ctx, p.env, 0, &rep, "map", socket)
	logHuman(t, ctx, p.env, "map", socket)
	beatsBefore := heartbeatsIn(t, ctx, p, 3*time.Second, nil)
	// The guest is not quite still (its kernel may drop or read a page):
	// the walk, the counter and the dump are taken one after the other,
	// so a dump counts when all three agree, and most must.
	dumps, agreed := 0, 0
	var f []byte
	beatsDuring := heartbeatsIn(t, ctx, p, 3*time.Second, func() {
		code, out, errs := inspect(t, ctx, p.env, "map", socket, "--dump", dump, "--json")
		if code != 0 || json.Unmarshal(out, &rep) != nil {
			t.Fatalf("nasmig-inspect map --dump: exit %d: %s%s", code, out, errs)
		}
		var err error
		if f, err = os.ReadFile(dump); err != nil {
			t.Fatal(err)
		}
		dumps++
		lines := uint64(bytes.Count(f, []byte("\n")))
		if rep.Mapped > 0 && rep.Dumped && rep.Mapped == rep.Stats["mapped_pages"] && rep.Entries == rep.Mapped && lines == rep.Mapped {
			agreed++
		} else {
			t.Logf("map: %d mapped, counter %d, dumped %v with %d entries, %d lines", rep.Mapped, rep.Stats["mapped_pages"], rep.Dumped, rep.Entries, lines)
		}
	})
	t.Logf("map: %d pages mapped (counter mapped_pages %d); walk, counter and dump lines agreed in %d of %d dumps; guest heartbeats in 3 s: %d before, %d while dumping",
		rep.Mapped, rep.Stats["mapped_pages"], agreed, dumps, beatsBefore, beatsDuring)
	if dumps == 0 || agreed*2 < dumps {
		t.Errorf("map: walk, counter and dump agreed in %d of %d dumps", agreed, dumps)
	}
	if beatsDuring+1 < beatsBefore {
		t.Errorf("the guest printed %d heartbeats in 3 s while its map was dumped, %d before", beatsDuring, beatsBefore)
	}
	var entry struct {
		RAMBlock string `json:"ramblock"`
		Page     uint64 `json:"page"`
		Disk     int    `json:"disk"`
		Block    uint64 `json:"block"`
	}
	if i := bytes.IndexByte(f, '\n'); i < 0 || json.Unmarshal(f[:i], &entry) != nil || entry.RAMBlock == "" {
		t.Errorf("map --dump: first line %q is no mapping", f[:min(len(f), 200)])
	}
	os.Remove(dump)
}

// heartbeatsIn counts the guest's heartbeat lines over d, calling work
// over and over meanwhile (nil: just wait).
func heartbeatsIn(t *testing.T, ctx context.Context, p *pair, d time.Duration, work func()) int {
	t.Helper()
	first, _ := p.src.Heartbeat()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if work != nil {
			work()
			continue
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	last, _ := p.src.Heartbeat()
	return int(last - first)
}

// srcDebugSocket is the source library's debug socket, in the run's
// socket folder (debug-socket= in the plugin arguments of a case with
// debugSocket set).
const srcDebugSocket = "src.nasmig-debug.sock"
