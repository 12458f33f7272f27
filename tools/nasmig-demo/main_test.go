package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"nasmig/tests/harness"
)

func TestRealDiskInfo(t *testing.T) {
	got := realDiskInfo("files 41234\nbytes 1503238553\nzstd1-bytes 501079517\nzstd1-ratio 3.00\ndisk-mib 1920\npackages gcc-12=12.2.0-14\n")
	want := "41234 files of Debian packages, 1433 MiB, zstd -1 compresses them 3.00x"
	if got != want {
		t.Fatalf("realDiskInfo = %q, want %q", got, want)
	}
}

func TestBenchDoneParsesQemuImgBench(t *testing.T) {
	out := []byte("Sending 1237 read requests, 1048576 bytes each, 16 in parallel (starting at offset 0, step size 1048576)\nRun completed in 0.983 seconds.\n")
	m := benchDone.FindSubmatch(out)
	if m == nil || string(m[1]) != "0.983" {
		t.Fatalf("benchDone on %q: %q", out, m)
	}
}

// The summary and the plots take medians per network, workload and mode,
// and ratios to stock pre-copy of the same network and workload.
func TestSummaryAndPlots(t *testing.T) {
	o := options{profiles: []string{"fast-storage"}, workloads: []string{"pagecache-read", "idle"}, runs: 3}
	for _, name := range []string{"stock", "nasmig"} {
		m, _ := modeByName(name)
		o.modes = append(o.modes, m)
	}
	var rows []row
	add := func(w, m string, total, bytes int64) {
		var fetched int64
		if m == "nasmig" {
			fetched = 2 << 20
		}
		rows = append(rows, row{Profile: "fast-storage", Workload: w, Mode: m, TotalTimeMs: total, TransferredBytes: bytes, RAMMatch: true,
			FetchBytes: fetched,
			Timeline:   []sample{{Ms: 0}, {Ms: 100, LinkBytes: bytes / 2, FetchBytes: 1 << 20}, {Ms: 200, LinkBytes: bytes, FetchBytes: 2 << 20}}})
	}
	for _, total := range []int64{1000, 1200, 9000} { // median 1200
		add("pagecache-read", "stock", total, 1000<<20)
	}
	for _, total := range []int64{300, 600, 400} { // median 400
		add("pagecache-read", "nasmig", total, 100<<20)
	}
	add("idle", "stock", 500, 50<<20)
	rows = append(rows, row{Profile: "fast-storage", Workload: "idle", Mode: "nasmig", TotalTimeMs: 1, outcome: outcome{Error: "boom"}})

	table := summaryTable(o, rows)
	for _, want := range []string{
		"| fast-storage | pagecache-read | stock | 3 of 3 | 1200 | 1.00x |",
		"| fast-storage | pagecache-read | nasmig | 3 of 3 | 400 | 0.33x |",
		"| fast-storage | idle | nasmig | 0 of 3 | 0 | 0.00x |",
	} {
		if !strings.Contains(table, want) {
			t.Errorf("summary lacks %q:\n%s", want, table)
		}
	}
	bars := barChart("t", "ms", o, rows, func(r row) int64 { return r.TotalTimeMs }, 1)
	if strings.Count(bars, "<rect x=") != 3 || !strings.Contains(bars, "400.0 ms") || strings.Contains(bars, "idle / nasmig") {
		t.Errorf("bar chart: want 3 bars (the failed cell left out), 400 ms among them:\n%s", bars)
	}
	tl := timelineChart(o, rows, "fast-storage", "pagecache-read")
	if strings.Count(tl, "<polyline") != 3 { // stock link, nasmig link and fetched
		t.Errorf("timeline: want 3 lines:\n%s", tl)
	}
}

// The guest's slowdown comes from the workload's own counts in its answer
// to "status"; a workload without one is not measured.
func TestWorkCount(t *testing.T) {
	for _, c := range []struct {
		workload, text string
		want           int64
		ok             bool
	}{
		{"memory-hot", "pass=3 cursor=100 written-pages=1636 cached-mib=20 dirty-kib=0 uptime-s=12.00", 1636, true},
		{"mixed", "reads=40 writes=2 problems=0 cached-mib=900", 42, true},
		{"reader", "reads=7 cached-mib=900", 7, true},
		{"pagecache-read", "files=100 cached-mib=1200", 0, false},
		{"memory-hot", "not ready; uptime-s=1.00", 0, false},
	} {
		got, ok := workCount(c.workload, c.text)
		if got != c.want || ok != c.ok {
			t.Errorf("workCount(%s, %q) = %d, %v; want %d, %v", c.workload, c.text, got, ok, c.want, c.ok)
		}
	}
	if !hasWorkCount("mixed") || hasWorkCount("idle") || hasWorkCount("mmap-write") {
		t.Error("hasWorkCount: want mixed only of mixed, idle, mmap-write")
	}
}

func TestSwitchMs(t *testing.T) {
	pre := []sample{{Ms: 0}, {Ms: 100}, {Ms: 200}}
	post := []sample{{Ms: 0}, {Ms: 100}, {Ms: 200, Postcopy: true}, {Ms: 300, Postcopy: true}}
	for _, c := range []struct {
		name     string
		timeline []sample
		total    int64
		want     int64
	}{
		{"pre-copy: the end", pre, 250, 250},
		{"postcopy: its first sample", post, 900, 200},
		{"never past the end", post, 150, 150},
		{"no timeline", nil, 400, 400},
	} {
		if got := switchMs(c.timeline, c.total); got != c.want {
			t.Errorf("%s: switchMs = %d, want %d", c.name, got, c.want)
		}
	}
}

// The build line says what it could not find instead of guessing.
func TestBuildLineUnknown(t *testing.T) {
	dir := t.TempDir()
	got := buildLine(harness.Env{Out: dir})
	if !strings.HasPrefix(got, "build: unknown; libnasmig.so unknown; ") {
		t.Fatalf("buildLine with no binaries: %q", got)
	}
	lib := filepath.Join(dir, "libnasmig.so")
	if err := os.WriteFile(lib, []byte("not a library"), 0o644); err != nil {
		t.Fatal(err)
	}
	// sha256("not a library"), its first 16 hex digits.
	if got := buildLine(harness.Env{Out: dir}); !strings.Contains(got, "libnasmig.so sha256 f6bb034ecdd65239;") {
		t.Fatalf("buildLine with a library: %q", got)
	}
}
