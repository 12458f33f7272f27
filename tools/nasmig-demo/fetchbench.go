package main

// The destination's fetch alone (-fetch-bench): the guest is saved to a
// file once (migrate file:, references in the stream), then a destination
// restores it (migrate-incoming file:), so its time is the fetch and fill
// of the referenced blocks over the storage link, with no migration link
// in the way.  Beside it, in the same run and namespace, a plain reader
// (qemu-img bench: 1 MiB reads, 16 in flight, as the fetcher issues them)
// reads the same amount from the same export, before and after; and the
// machine's cost of touching fresh memory is measured, since a fetch must
// fill guest RAM that has never been touched while a plain reader reuses
// one buffer.

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"nasmig/tests/harness"
)

// fetchRow is one save-and-restore's figures.
type fetchRow struct {
	Profile      string
	Run          int
	RefPages     int64
	FetchedPages int64
	FetchBytes   int64
	FetchReads   int64
	FetchTimeMs  int64 // disk-refs.fetch-time-ms: first reference to last fill
	RestoreMs    int64 // migrate-incoming until completed
	SaveBytes    int64 // the save file
	PlainMBps    []float64
	TouchMBps    float64
	RAMMatch     bool
	// CPU time while restoring (destination QEMU, storage daemon) and
	// while the plain reader read as much after it (qemu-img, daemon):
	// on a shared machine a steadier comparison than the rates.
	FetchCPU, FetchDaemonCPU, PlainCPU, PlainDaemonCPU time.Duration
	outcome
}

// cpuPerGiB is cpu per GiB of n bytes read, in seconds (0 without both).
func cpuPerGiB(cpu time.Duration, n int64) float64 {
	if cpu <= 0 || n <= 0 {
		return 0
	}
	return cpu.Seconds() / (float64(n) / (1 << 30))
}

func (r fetchRow) fetchMBps() float64 {
	if r.FetchTimeMs <= 0 {
		return 0
	}
	return float64(r.FetchBytes) / 1e6 / (float64(r.FetchTimeMs) / 1000)
}

// plainMBps is the better of the plain reader's runs: the fetch is held
// to the stricter comparison.
func (r fetchRow) plainMBps() float64 {
	if len(r.PlainMBps) == 0 {
		return 0
	}
	return slices.Max(r.PlainMBps)
}

func fetchBench(ctx context.Context, env harness.Env, accel string, o options, say io.Writer) ([]fetchRow, error) {
	step := func(format string, args ...any) { fmt.Fprintf(say, "==> "+format+"\n", args...) }
	var rows []fetchRow
	var failures []string
	total := len(o.profiles) * o.runs
	started := time.Now()
	for _, profile := range o.profiles {
		for run := 1; run <= o.runs; run++ {
			if ctx.Err() != nil {
				return rows, ctx.Err()
			}
			n := len(rows) + 1
			eta := "?"
			if n > 1 {
				eta = (time.Since(started) / time.Duration(n-1) * time.Duration(total-n+1)).Round(time.Second).String()
			}
			step("fetch benchmark %d of %d: %s, run %d of %d (elapsed %s, ETA %s)", n, total, profile, run, o.runs,
				time.Since(started).Round(time.Second), eta)
			r := fetchOnce(ctx, env, accel, o, profile, step)
			r.Run = run
			rows = append(rows, r)
			if r.Error != "" {
				failures = append(failures, profile+": "+r.Error)
			} else if !r.RAMMatch {
				failures = append(failures, profile+": guest RAM differs after the restore")
			}
		}
	}
	if len(failures) > 0 {
		return rows, fmt.Errorf("fetch benchmark: %s", strings.Join(failures, "; "))
	}
	return rows, nil
}

func fetchOnce(ctx context.Context, env harness.Env, accel string, o options, profile string, step func(string, ...any)) (r fetchRow) {
	r = fetchRow{Profile: profile}
	run, err := newBenchRun(env, "fetch-bench", &r.outcome, step)
	if err != nil {
		return r
	}
	defer run.close(env.Keep)
	fail := func(err error) fetchRow { run.fail(err); return r }
	ctx, cancel := context.WithTimeout(ctx, 20*time.Minute)
	defer cancel()

	g, err := startGuest(ctx, env, accel, o, profile, "pagecache-read", []string{"log=info"}, nil, run.Run, step)
	if err != nil {
		return fail(err)
	}
	state := run.Path("state.bin")
	run.Scratch(state)
	step("saving the guest to %s (migrate file:, references in the stream)", state)
	if _, err := g.src.QMP.Execute(ctx, "migrate", map[string]any{"uri": "file:" + state}); err != nil {
		return fail(err)
	}
	saved, err := harness.WaitMigration(ctx, g.src, 0)
	if err != nil {
		return fail(err)
	}
	if saved.Status != "completed" {
		return fail(fmt.Errorf("save: status %s (%s)", saved.Status, saved.ErrorDesc))
	}
	if saved.DiskRefs != nil {
		r.RefPages = saved.DiskRefs.RefPages
	}
	if st, err := os.Stat(state); err == nil {
		r.SaveBytes = st.Size()
	}
	if r.RefPages == 0 {
		return fail(fmt.Errorf("the save holds no references: nothing to fetch"))
	}
	readBytes := r.RefPages * 4096

	ns := ""
	if g.network != nil {
		ns = g.network.Dst
	}
	plain := func() error {
		daemon0 := cpuTime(g.storage.PID())
		mbps, cpu, err := plainRead(ctx, env, ns, g.storage.URI(), readBytes)
		if err != nil {
			return err
		}
		r.PlainCPU, r.PlainDaemonCPU = cpu, cpuTime(g.storage.PID())-daemon0
		step("plain reader (qemu-img bench, 1 MiB reads, 16 in flight) from the destination host: %s in %.0f MB/s; CPU %.2f s, storage daemon %.2f s",
			humanBytes(readBytes), mbps, r.PlainCPU.Seconds(), r.PlainDaemonCPU.Seconds())
		r.PlainMBps = append(r.PlainMBps, mbps)
		return nil
	}
	if err := plain(); err != nil {
		return fail(err)
	}

	dst, err := run.StartVM(ctx, g.destinationConfig())
	if err != nil {
		return fail(err)
	}
	step("restoring on the destination (migrate-incoming file:): every reference read over the storage link and verified")
	t0 := time.Now()
	dstCPU0, daemon0 := cpuTime(dst.PID()), cpuTime(g.storage.PID())
	if _, err := dst.QMP.Execute(ctx, "migrate-incoming", map[string]any{"uri": "file:" + state, "exit-on-error": false}); err != nil {
		return fail(err)
	}
	restored, err := harness.WaitMigration(ctx, dst, 10*time.Millisecond)
	if err != nil {
		return fail(err)
	}
	r.RestoreMs = time.Since(t0).Milliseconds()
	r.FetchCPU, r.FetchDaemonCPU = cpuTime(dst.PID())-dstCPU0, cpuTime(g.storage.PID())-daemon0
	if restored.Status != "completed" {
		return fail(fmt.Errorf("restore: status %s (%s)", restored.Status, restored.ErrorDesc))
	}
	if d := restored.DiskRefs; d != nil {
		r.FetchedPages, r.FetchBytes, r.FetchReads, r.FetchTimeMs = d.FetchedPages, d.FetchBytes, d.FetchReads, d.FetchTimeMs
	}
	step("restored in %d ms: %d references fetched, %s in %d reads, fetch %d ms (%.0f MB/s); CPU: destination QEMU %.2f s, storage daemon %.2f s",
		r.RestoreMs, r.FetchedPages, humanBytes(r.FetchBytes), r.FetchReads, r.FetchTimeMs, r.fetchMBps(),
		r.FetchCPU.Seconds(), r.FetchDaemonCPU.Seconds())
	if err := plain(); err != nil {
		return fail(err)
	}
	r.TouchMBps = firstTouchMBps(readBytes)
	step("first touch of %s of fresh memory on this machine: %.0f MB/s", humanBytes(readBytes), r.TouchMBps)

	diff, err := run.CompareRAM(ctx, g.src, dst)
	if err != nil {
		return fail(err)
	}
	r.RAMMatch = diff.Equal()
	step("%s", diff)
	if !r.RAMMatch {
		r.Error = "RAM differs: " + diff.String()
		return r
	}
	run.ok = true
	return r
}

var benchDone = regexp.MustCompile(`Run completed in ([0-9.]+) seconds`)

// plainRead reads n bytes (rounded up to MiB) of the export from namespace
// ns with qemu-img bench and returns MB/s and the reader's CPU time.
func plainRead(ctx context.Context, env harness.Env, ns, uri string, n int64) (float64, time.Duration, error) {
	count := (n + 1<<20 - 1) >> 20
	cmd := harness.NetNSCommand(ns, env.QEMUImgBinary(), "bench", "-f", "raw", "-c", strconv.FormatInt(count, 10),
		"-d", "16", "-s", "1M", uri)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		return 0, 0, ctx.Err()
	}
	if err != nil {
		return 0, 0, fmt.Errorf("qemu-img bench: %w: %s", err, out)
	}
	m := benchDone.FindSubmatch(out)
	if m == nil {
		return 0, 0, fmt.Errorf("qemu-img bench: no time in its output: %s", out)
	}
	secs, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil || secs <= 0 {
		return 0, 0, fmt.Errorf("qemu-img bench: bad time %q", m[1])
	}
	var cpu time.Duration
	if st := cmd.ProcessState; st != nil {
		cpu = st.UserTime() + st.SystemTime()
	}
	return float64(count<<20) / 1e6 / secs, cpu, nil
}

// firstTouchMBps is the rate of touching n bytes of fresh memory: what
// filling never-touched guest RAM costs here, apart from any copying.
func firstTouchMBps(n int64) float64 {
	d := touchFresh(n)
	if d <= 0 {
		return 0
	}
	return float64(n) / 1e6 / d.Seconds()
}

func fetchMedian(rows []fetchRow, profile string, figure func(fetchRow) float64) (float64, int) {
	return medianOf(rows, func(r fetchRow) bool { return r.Profile == profile && r.Error == "" && r.RAMMatch }, figure)
}

func fetchSummary(o options, rows []fetchRow) string {
	var b strings.Builder
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "%s on %s (%d CPUs); command: %s\n", time.Now().UTC().Format("2006-01-02 15:04 MST"), host,
		runtime.NumCPU(), strings.Join(os.Args, " "))
	fmt.Fprintf(&b, "the destination's fetch alone: a guest with %d MiB of page cache saved to a file, restored on the destination "+
		"host; medians of %d runs; RAM compared byte for byte after every restore\ndata disk: %s\n", o.mib, o.runs, o.diskDescription())
	if o.hostMemory != "" {
		fmt.Fprintf(&b, "host memory: %s\n", o.hostMemory)
	}
	if o.build != "" {
		fmt.Fprintln(&b, o.build)
	}
	b.WriteString("\n")
	b.WriteString("| network | runs ok | references | MiB fetched | mean read KiB | read amplification | fetch MB/s " +
		"| plain reader MB/s | fetch / plain | first touch MB/s | restore ms | CPU s per GiB: fetch (QEMU + daemon) | plain reader (qemu-img + daemon) |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, p := range o.profiles {
		med := func(f func(fetchRow) float64) float64 { v, _ := fetchMedian(rows, p, f); return v }
		fetch, n := fetchMedian(rows, p, fetchRow.fetchMBps)
		plain := med(fetchRow.plainMBps)
		ratio := "-"
		if plain > 0 {
			ratio = fmt.Sprintf("%.2f", fetch/plain)
		}
		meanRead := med(func(r fetchRow) float64 {
			if r.FetchReads == 0 {
				return 0
			}
			return float64(r.FetchBytes) / float64(r.FetchReads) / 1024
		})
		amp := med(func(r fetchRow) float64 {
			if r.FetchedPages == 0 {
				return 0
			}
			return float64(r.FetchBytes) / float64(r.FetchedPages*4096)
		})
		// The plain reader read RefPages*4096 bytes (rounded up to MiB).
		perGiB := func(a, b func(fetchRow) time.Duration, bytes func(fetchRow) int64) string {
			return fmt.Sprintf("%.2f + %.2f", med(func(r fetchRow) float64 { return cpuPerGiB(a(r), bytes(r)) }),
				med(func(r fetchRow) float64 { return cpuPerGiB(b(r), bytes(r)) }))
		}
		fetched := func(r fetchRow) int64 { return r.FetchBytes }
		plainBytes := func(r fetchRow) int64 { return r.RefPages * 4096 }
		fmt.Fprintf(&b, "| %s | %d of %d | %.0f | %.1f | %.0f | %.3f | %.0f | %.0f | %s | %.0f | %.0f | %s | %s |\n", p, n, o.runs,
			med(func(r fetchRow) float64 { return float64(r.RefPages) }),
			med(func(r fetchRow) float64 { return float64(r.FetchBytes) / (1 << 20) }), meanRead, amp, fetch, plain, ratio,
			med(func(r fetchRow) float64 { return r.TouchMBps }), med(func(r fetchRow) float64 { return float64(r.RestoreMs) }),
			perGiB(func(r fetchRow) time.Duration { return r.FetchCPU }, func(r fetchRow) time.Duration { return r.FetchDaemonCPU }, fetched),
			perGiB(func(r fetchRow) time.Duration { return r.PlainCPU }, func(r fetchRow) time.Duration { return r.PlainDaemonCPU }, plainBytes))
	}
	for _, r := range rows {
		if r.Error != "" {
			fmt.Fprintf(&b, "%s run %d: ERROR %s (logs in %s)\n", r.Profile, r.Run, r.Error, r.RunDir)
		}
	}
	return b.String()
}

func writeFetchResults(o options, rows []fetchRow) error {
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(o.out, "fetch.md"), []byte(fetchSummary(o, rows)), 0o644); err != nil {
		return err
	}
	header := []string{"profile", "run", "ref_pages", "fetched_pages", "fetch_bytes", "fetch_reads", "fetch_time_ms", "fetch_mbps",
		"plain_mbps", "first_touch_mbps", "restore_ms", "save_bytes", "fetch_cpu_ms", "fetch_daemon_cpu_ms", "plain_cpu_ms",
		"plain_daemon_cpu_ms", "ram_match", "error"}
	i64 := func(v int64) string { return strconv.FormatInt(v, 10) }
	f1 := func(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }
	return writeCSV(filepath.Join(o.out, "fetch.csv"), header, rows, func(r fetchRow) []string {
		var plain []string
		for _, p := range r.PlainMBps {
			plain = append(plain, f1(p))
		}
		return []string{r.Profile, strconv.Itoa(r.Run), i64(r.RefPages), i64(r.FetchedPages), i64(r.FetchBytes), i64(r.FetchReads),
			i64(r.FetchTimeMs), f1(r.fetchMBps()), strings.Join(plain, " "), f1(r.TouchMBps), i64(r.RestoreMs), i64(r.SaveBytes),
			i64(r.FetchCPU.Milliseconds()), i64(r.FetchDaemonCPU.Milliseconds()), i64(r.PlainCPU.Milliseconds()),
			i64(r.PlainDaemonCPU.Milliseconds()), strconv.FormatBool(r.RAMMatch), r.Error}
	})
}
