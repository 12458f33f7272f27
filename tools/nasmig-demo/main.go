// Command nasmig-demo shows what nasmig saves: it migrates the same guest,
// which has filled its page cache from the shared disk, twice between two
// QEMUs on this host, once with nasmig off (libnasmig.so loaded with
// enable=off, i.e. stock QEMU behaviour) and once with nasmig on, and prints
// the figures side by side. Every figure comes from QEMU's query-migrate,
// except "page cache filled" (the guest's ready line) and "RAM match" (the
// harness's byte-for-byte comparison of both guests' RAM).
//
// It reads the test bed's environment (docs/testbed-contract.md):
// NASMIG_OUT, NASMIG_GUEST, NASMIG_QEMU_DATADIRS, NASMIG_ACCEL, NASMIG_KEEP.
//
//	nasmig-demo [-mem MiB] [-mib MiB] [-max-bandwidth bytes/s] [-verify] [-json]
//	            [-modes stock,nasmig,...] [-profiles unix,fast-storage,...] [-workloads pagecache-read,...]
//	            [-disk synthetic|real] [-runs N] [-oracle] [-warm-memory] [-fetch-bench] [-out DIR]
//
// With -modes, -profiles, -workloads and -runs it is the migration
// benchmark (./build.sh bench-migration): every stock QEMU mode and nasmig,
// N runs each, on an emulated data-center network (three network
// namespaces: source, destination and storage host, each link shaped with
// tc), medians and ratios to stock pre-copy on the same network and
// workload measured in the same run, written as Markdown, CSV and SVG
// plots to -out.  -fetch-bench measures the destination's fetch alone
// (fetchbench.go).
package main

import (
	"cmp"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"nasmig/tests/harness"
)

// mode is one way to migrate: plugin arguments, capabilities, parameters.
type mode struct {
	Name       string
	PluginArgs []string // libnasmig.so's arguments on both sides
	Caps       map[string]bool
	Params     map[string]any
	ExtraArgs  []string // QEMU arguments on both sides (devices)
	// Postcopy: switch to postcopy this long after the migration started.
	Postcopy time.Duration
}

// modes are the ways -modes can name; stock ones load the library with
// enable=off, which is stock QEMU behaviour.
var modes = []mode{
	{Name: "stock", PluginArgs: []string{"enable=off"}},
	// The source waits for the destination's end of the load (its SHUT
	// message) before it counts the migration complete, as nasmig's does.
	{Name: "stock-return-path", PluginArgs: []string{"enable=off"}, Caps: map[string]bool{"return-path": true}},
	{Name: "multifd-zstd", PluginArgs: []string{"enable=off"}, Caps: map[string]bool{"multifd": true}, Params: multifdZstd},
	{Name: "xbzrle", PluginArgs: []string{"enable=off"}, Caps: map[string]bool{"xbzrle": true}},
	{Name: "postcopy", PluginArgs: []string{"enable=off"}, Caps: map[string]bool{"postcopy-ram": true}, Postcopy: 2 * time.Second},
	{Name: "free-page-hint", PluginArgs: []string{"enable=off"}, ExtraArgs: freePageHint},
	{Name: "nasmig", PluginArgs: []string{"log=info"}},
	{Name: "nasmig-no-hand-back", PluginArgs: []string{"log=info", "hand-back=off"}},
	{Name: "nasmig-multifd-zstd", PluginArgs: []string{"log=info"}, Caps: map[string]bool{"multifd": true}, Params: multifdZstd},
	{Name: "nasmig-free-page-hint", PluginArgs: []string{"log=info"}, ExtraArgs: freePageHint},
	// References the fetch has not filled when the first pass is out are
	// filled after the switch to postcopy, while the guest runs there.
	{Name: "nasmig-fill-after", PluginArgs: []string{"log=info", "fill-after-switchover=on"}, Caps: map[string]bool{"postcopy-ram": true}},
}

// multifdZstd: four channels, as operators set it, compressed at zstd's
// default level for multifd (1).
var multifdZstd = map[string]any{"multifd-channels": 4, "multifd-compression": "zstd"}

// freePageHint: a virtio-balloon that reports free guest pages during the
// first pass, which the source then skips (needs an iothread).
var freePageHint = []string{"-object", "iothread,id=fph", "-device", "virtio-balloon-pci,id=balloon0,free-page-hint=on,iothread=fph"}

func modeByName(name string) (mode, bool) {
	for _, m := range modes {
		if m.Name == name {
			return m, true
		}
	}
	return mode{}, false
}

// memoryHotMiB is the memory-hot guest's hot set: rewritten flat out (some
// 2 GB/s under TCG), it fits in QEMU's default 300 ms downtime at 1 Gbit/s,
// so pre-copy converges on every profile.
const memoryHotMiB = 24

// unixProfile is no network: unix sockets on this host, unshaped.
const unixProfile = "unix"

// row is one migration's figures.
type row struct {
	Accel            string   `json:"accel"`
	Profile          string   `json:"profile"` // unixProfile or a harness.NetProfiles name
	Workload         string   `json:"workload"`
	Mode             string   `json:"mode"` // a name of modes
	Run              int      `json:"run"`
	GuestRAMMiB      int      `json:"guest_ram_mib"`
	RequestedMiB     int      `json:"requested_page_cache_mib"` // nasmig.mib
	PageCacheMiB     int      `json:"page_cache_mib"`           // cached-mib of the ready line
	Status           string   `json:"status"`                   // the source's final migration status
	TransferredBytes int64    `json:"transferred_bytes"`        // ram.transferred
	RefPages         int64    `json:"ref_pages"`                // disk-refs.ref-pages (source)
	FetchedPages     int64    `json:"fetched_pages"`            // disk-refs.fetched-pages (destination)
	FetchBytes       int64    `json:"fetch_bytes"`              // disk-refs.fetch-bytes (destination)
	FetchReads       int64    `json:"fetch_reads"`              // disk-refs.fetch-reads (destination)
	DirtySyncs       int64    `json:"dirty_syncs"`              // ram.dirty-sync-count (source)
	OraclePages      int64    `json:"oracle_pages,omitempty"`   // guest pages identical to a disk block at migration start
	Timeline         []sample `json:"timeline,omitempty"`       // link and fetched bytes every 100 ms
	SrcCPUms         int64    `json:"src_cpu_ms"`               // the source QEMU's CPU time during the migration
	DstCPUms         int64    `json:"dst_cpu_ms"`               // the destination QEMU's, from migrate-incoming to completed
	TotalTimeMs      int64    `json:"total_time_ms"`
	// SwitchMs: when the guest could run on the destination and the
	// source's link was done with its pages (the source's switchover-ms
	// when nasmig filled after the switch, else switchMs).
	SwitchMs int64 `json:"switch_ms"`
	// Faults on pages still waiting for their reference after the switch
	// (destination): served from storage, from the source, and the
	// latency from fault to page placed.
	FaultsFromStorage int64 `json:"faults_from_storage,omitempty"`
	FaultsFromSource  int64 `json:"faults_from_source,omitempty"`
	FaultMedianUs     int64 `json:"fault_latency_median_us,omitempty"`
	FaultP99Us        int64 `json:"fault_latency_p99_us,omitempty"`
	SetupTimeMs       int64 `json:"setup_time_ms"`
	// The workload's own rate while the migration ran on the source, and
	// in its first seconds on the destination, in thousandths of its rate
	// before the migration (0: not measured; guestrate.go).
	RateDuringPermille int64 `json:"rate_during_permille,omitempty"`
	RateAfterPermille  int64 `json:"rate_after_permille,omitempty"`
	DowntimeMs         int64 `json:"downtime_ms"`
	RAMMatch           bool  `json:"ram_match"`
	// RanAtSwitch (-run-at-switch): the destination's guest ran from the
	// switch to postcopy, so RAM was not compared; its file check passed.
	RanAtSwitch bool   `json:"ran_at_switch,omitempty"`
	RAMDiff     string `json:"ram_diff,omitempty"`
	Verify      string `json:"verify,omitempty"` // guest verify answer, with -verify
	outcome
}

// outcome is how a run ended: an error, and the run's folder when it was
// kept (a failed run, or NASMIG_KEEP).
type outcome struct {
	RunDir string `json:"run_dir,omitempty"`
	Error  string `json:"error,omitempty"`
}

// benchRun is one run's folder and the bookkeeping of its outcome.
type benchRun struct {
	*harness.Run
	out  *outcome
	step func(string, ...any)
	ok   bool // set when the run succeeded: its folder goes
}

func newBenchRun(env harness.Env, name string, out *outcome, step func(string, ...any)) (*benchRun, error) {
	run, err := harness.NewRun(name, env.Keep, prefixWriter{os.Stderr, "    "})
	if err != nil {
		out.Error = err.Error()
		return nil, err
	}
	out.RunDir = run.Dir
	return &benchRun{Run: run, out: out, step: step}, nil
}

func (b *benchRun) fail(err error) {
	b.out.Error = err.Error()
	b.step("FAILED: %v (logs kept in %s)", err, b.Dir)
}

// close ends the run's processes and removes its folder unless the run
// failed or NASMIG_KEEP asks to keep it.
func (b *benchRun) close(keep string) {
	if b.ok && keep == "" {
		b.out.RunDir = "" // removed with the run
	}
	if err := b.Close(!b.ok); err != nil && b.out.Error == "" {
		b.out.Error = err.Error()
	}
}

type options struct {
	memMiB       int
	mib          int
	maxBandwidth int64
	verify       bool
	runAtSwitch  bool // postcopy modes: the destination's guest runs from the switch
	json         bool
	modes        []mode
	profiles     []string
	runs         int
	out          string
	fetchBench   bool
	oracle       bool
	workloads    []string
	warmMemory   bool
	warmBytes    int64  // memory touched before each run (0: none)
	hostMemory   string // what was done about the machine's free page reporting
	build        string // buildLine: what was measured
	disk         string // the data disk image the guest reads
	diskKind     string // synthetic or real
	diskInfo     string // what the real disk holds, for the results
}

func main() {
	var o options
	flag.IntVar(&o.memMiB, "mem", 2048, "guest RAM in MiB")
	flag.IntVar(&o.mib, "mib", 1200, "page cache the guest fills from the shared disk, MiB (nasmig.mib; capped at the data on the disk)")
	flag.Int64Var(&o.maxBandwidth, "max-bandwidth", 0, "migration max-bandwidth in bytes/s (0: unlimited)")
	flag.BoolVar(&o.verify, "verify", false, "after each migration, let the guest check its files on the destination (slow under TCG: ~34 MiB/s)")
	flag.BoolVar(&o.runAtSwitch, "run-at-switch", false, "modes with postcopy-ram: resume the destination's guest as soon as the source "+
		"switches to postcopy and measure its work rate there while pages still arrive (its RAM then differs from the source's, so "+
		"the guest verifies its files instead of a RAM comparison)")
	flag.BoolVar(&o.json, "json", false, "print the results as JSON on stdout (progress goes to stderr)")
	modeList := flag.String("modes", "stock,nasmig", "comma-separated modes: "+modeNames())
	workloadList := flag.String("workloads", "pagecache-read", "comma-separated guest workloads: pagecache-read, pagecache-write, "+
		"mixed, mmap-write, memory-hot (24 MiB rewritten flat out), idle, reader (a guest that keeps reading its disk), "+
		"compile (gcc building Lua over and over, chrooted into the disk of real files: needs -disk real)")
	profileList := flag.String("profiles", unixProfile, "comma-separated networks: "+profileNames())
	flag.IntVar(&o.runs, "runs", 1, "migrations per mode (figures are medians)")
	flag.StringVar(&o.out, "out", "", "folder for results.md and results.csv, or fetch.md and fetch.csv (none: print only)")
	flag.StringVar(&o.diskKind, "disk", "synthetic", "data disk: synthetic (random files, the e2e tests' disk) or real "+
		"(the files of Debian packages, tests/guest/mkrealdisk.sh: real.raw beside the guest)")
	flag.BoolVar(&o.warmMemory, "warm-memory", false, "on a machine that returns freed memory to its hypervisor (free page "+
		"reporting), defer that for the run and touch memory before each migration, as on a host with physical memory")
	flag.BoolVar(&o.oracle, "oracle", false, "after each migration with nasmig on, dump the paused source's RAM and count the pages "+
		"byte-identical to a block of the disk (nasmig-inspect oracle): coverage = references / those pages")
	flag.BoolVar(&o.fetchBench, "fetch-bench", false, "instead of migrations: the destination's fetch alone on each profile "+
		"(a save restored over the storage link) beside a plain reader of the same export")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: nasmig-demo [flags]\n\n"+
			"Migrates a guest whose page cache holds nasmig.mib MiB of the shared disk twice,\n"+
			"with nasmig off (enable=off) and on, and compares the figures query-migrate reports.\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	if o.memMiB <= 0 || o.mib <= 0 || o.maxBandwidth < 0 || o.runs <= 0 {
		fmt.Fprintln(os.Stderr, "nasmig-demo: -mem, -mib and -runs must be > 0, -max-bandwidth >= 0")
		os.Exit(2)
	}
	if o.diskKind != "synthetic" && o.diskKind != "real" {
		fmt.Fprintln(os.Stderr, "nasmig-demo: -disk is synthetic or real")
		os.Exit(2)
	}
	for _, name := range strings.Split(*modeList, ",") {
		m, ok := modeByName(strings.TrimSpace(name))
		if !ok {
			fmt.Fprintf(os.Stderr, "nasmig-demo: unknown mode %q (known: %s)\n", name, modeNames())
			os.Exit(2)
		}
		o.modes = append(o.modes, m)
	}
	for _, name := range strings.Split(*workloadList, ",") {
		name = strings.TrimSpace(name)
		if name == "compile" && o.diskKind != "real" {
			fmt.Fprintln(os.Stderr, "nasmig-demo: the compile workload needs the toolchain on the disk of real files: -disk real")
			os.Exit(2)
		}
		o.workloads = append(o.workloads, name)
	}
	for _, name := range strings.Split(*profileList, ",") {
		name = strings.TrimSpace(name)
		if _, ok := harness.NetProfileByName(name); !ok && name != unixProfile {
			fmt.Fprintf(os.Stderr, "nasmig-demo: unknown profile %q (known: %s)\n", name, profileNames())
			os.Exit(2)
		}
		o.profiles = append(o.profiles, name)
	}
	say := io.Writer(os.Stdout)
	if o.json {
		say = os.Stderr
	}
	rows, fetchRows, err := demo(&o, say)
	if o.fetchBench {
		if len(fetchRows) > 0 {
			fmt.Fprint(os.Stdout, "\n"+fetchSummary(o, fetchRows))
		}
		if o.out != "" && len(fetchRows) > 0 {
			if werr := writeFetchResults(o, fetchRows); werr != nil {
				fmt.Fprintln(os.Stderr, "nasmig-demo:", werr)
				os.Exit(1)
			}
		}
	} else if o.json {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if encErr := enc.Encode(rows); encErr != nil {
			fmt.Fprintln(os.Stderr, "nasmig-demo:", encErr)
			os.Exit(1)
		}
	} else if len(rows) > 0 && o.runs == 1 && len(o.modes) == 2 && len(o.profiles) == 1 && len(o.workloads) == 1 {
		printTable(os.Stdout, rows)
	} else if len(rows) > 0 {
		printSummary(os.Stdout, o, rows)
	}
	if o.out != "" && len(rows) > 0 {
		if werr := writeResults(o, rows); werr != nil {
			fmt.Fprintln(os.Stderr, "nasmig-demo:", werr)
			os.Exit(1)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "nasmig-demo:", err)
		os.Exit(1)
	}
}

// demo runs the migrations; what it learns about the machine and the disk
// goes into o for the results.
func demo(o *options, say io.Writer) ([]row, []fetchRow, error) {
	step := func(format string, args ...any) { fmt.Fprintf(say, "==> "+format+"\n", args...) }
	env := harness.EnvFromOS()
	if reason := env.SkipReason(); reason != "" {
		return nil, nil, errors.New(reason)
	}
	if err := env.Check(); err != nil {
		return nil, nil, err
	}
	if _, err := os.Stat(env.PluginPath()); err != nil {
		return nil, nil, fmt.Errorf("libnasmig.so: %w", err)
	}
	// Ctrl-C ends the run through ctx, so that every deferred cleanup
	// (QEMUs, storage daemon, network namespaces) still runs.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	step("choosing the accelerator (KVM if the guest boots under it, else TCG)")
	probe := env.ProbeConfig()
	probe.Log = prefixWriter{say, "    "}
	accel, err := harness.ProbeAccel(ctx, probe)
	if err != nil {
		return nil, nil, err
	}

	o.disk = env.DataImage(harness.FormatRaw)
	if o.diskKind == "real" {
		o.disk = filepath.Join(env.Guest, "real.raw")
		info, err := os.ReadFile(filepath.Join(env.Guest, "real.info"))
		if err != nil {
			return nil, nil, fmt.Errorf("the real-files disk is not built (tests/guest/mkrealdisk.sh %s): %w", env.Guest, err)
		}
		o.diskInfo = realDiskInfo(string(info))
		step("data disk of real files: %s", o.diskInfo)
	}
	if dataMiB, err := diskDataMiB(ctx, o.disk); err != nil {
		step("cannot tell how much data the disk holds (%v); the guest reads up to %d MiB of what exists", err, o.mib)
	} else if o.mib > dataMiB {
		step("the data disk holds %d MiB of files: page cache capped at %d MiB (asked for %d)", dataMiB, dataMiB, o.mib)
		o.mib = dataMiB
	} else {
		step("the data disk holds %d MiB of files; the guest will read %d MiB of them", dataMiB, o.mib)
	}
	o.build = buildLine(env)
	step("%s", o.build)
	bandwidth := "unlimited"
	if o.maxBandwidth > 0 {
		bandwidth = fmt.Sprintf("%d bytes/s (%.1f MiB/s)", o.maxBandwidth, float64(o.maxBandwidth)/(1<<20))
	}
	step("guest: %d MiB RAM, workloads %s, nasmig.mib=%d; migration max-bandwidth %s; accelerator %s",
		o.memMiB, strings.Join(o.workloads, ","), o.mib, bandwidth, accel.Accel)

	if o.warmMemory {
		what, restore, err := deferPageReporting()
		if err != nil {
			return nil, nil, err
		}
		defer restore()
		if what != "" {
			o.hostMemory = what
			// Both QEMUs' RAM, the page cache of the image's copy, the RAM
			// dumps and files of the comparison, with room to spare.
			o.warmBytes = min(int64(o.memMiB)<<22+4<<30, (memTotalMiB()-4096)<<20)
			step("host memory: %s", what)
		}
	}
	if slices.ContainsFunc(o.profiles, func(p string) bool { return p != unixProfile }) {
		if err := removeStaleNetworks(ctx); err != nil {
			return nil, nil, err
		}
	}
	if o.fetchBench {
		fetchRows, err := fetchBench(ctx, env, accel.Accel, *o, say)
		return nil, fetchRows, err
	}
	var rows []row
	var failures []string
	total := len(o.profiles) * len(o.workloads) * len(o.modes) * o.runs
	started := time.Now()
	for _, profile := range o.profiles {
		for _, workload := range o.workloads {
			for run := 1; run <= o.runs; run++ {
				for _, m := range o.modes {
					if ctx.Err() != nil {
						return rows, nil, ctx.Err()
					}
					n := len(rows) + 1
					eta := "?"
					if n > 1 {
						eta = (time.Since(started) / time.Duration(n-1) * time.Duration(total-n+1)).Round(time.Second).String()
					}
					step("migration %d of %d: %s, %s on %s, run %d of %d (elapsed %s, ETA %s)", n, total, m.Name, workload, profile,
						run, o.runs, time.Since(started).Round(time.Second), eta)
					r := migrateOnce(ctx, env, accel.Accel, *o, profile, workload, m, step)
					r.Run, r.Accel = run, accel.Accel
					rows = append(rows, r)
					cell := profile + "/" + workload + "/" + m.Name
					if r.Error != "" {
						failures = append(failures, cell+": "+r.Error)
					} else if !r.RAMMatch && !r.RanAtSwitch {
						failures = append(failures, cell+": guest RAM differs after migration")
					}
				}
			}
		}
	}
	if len(failures) > 0 {
		return rows, nil, errors.New(strings.Join(failures, "; "))
	}
	return rows, nil, nil
}

// migrateOnce boots the guest on shared storage, migrates it and compares
// RAM. Errors end up in the row.
func migrateOnce(ctx context.Context, env harness.Env, accel string, o options, profile, workload string, m mode,
	step func(string, ...any)) (r row) {
	r = row{Profile: profile, Workload: workload, Mode: m.Name, GuestRAMMiB: o.memMiB, RequestedMiB: o.mib}
	pluginArgs := m.PluginArgs
	run, err := newBenchRun(env, "demo-"+m.Name, &r.outcome, step)
	if err != nil {
		return r
	}
	defer run.close(env.Keep)
	fail := func(err error) row { run.fail(err); return r }
	ctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()

	g, err := startGuest(ctx, env, accel, o, profile, workload, pluginArgs, m.ExtraArgs, run.Run, step)
	if err != nil {
		return fail(err)
	}
	src, network := g.src, g.network
	r.PageCacheMiB = g.pageCacheMiB
	step("starting the destination QEMU (same plugin arguments, -incoming defer, paused)")
	dst, err := run.StartVM(ctx, g.destinationConfig())
	if err != nil {
		return fail(err)
	}

	uri := ""
	if network != nil {
		uri = "tcp:" + network.MigrationAddr + ":4444"
		step("migrating over TCP on the migration link, %s (max-bandwidth %d; 0 = unlimited)", uri, o.maxBandwidth)
	} else {
		step("migrating over a unix socket (max-bandwidth %d; 0 = unlimited)", o.maxBandwidth)
	}
	params := map[string]any{"max-bandwidth": o.maxBandwidth}
	for k, v := range m.Params {
		params[k] = v
	}
	var rateBefore float64
	stopWork := func() float64 { return 0 }
	if hasWorkCount(workload) {
		if rateBefore, err = rateOver(ctx, src, workload, rateWindow); err != nil {
			return fail(err)
		}
		step("the guest's %s rate before the migration: %.0f/s", workload, rateBefore)
		stopWork = sampleWork(ctx, src, workload)
	}
	runAtSwitch := o.runAtSwitch && m.Caps["postcopy-ram"]
	var atSwitch chan switchRun
	if runAtSwitch {
		atSwitch = make(chan switchRun, 1)
		go func() { atSwitch <- resumeAtSwitch(ctx, src, dst, workload) }()
	}
	srcCPU, dstCPU := cpuTime(src.PID()), cpuTime(dst.PID())
	stopSampling := sampleTimeline(ctx, src, dst, &r.Timeline)
	result, err := harness.Migrate(ctx, src, dst, harness.MigrateOpts{
		Caps:               m.Caps,
		Params:             params,
		URI:                uri,
		Timeout:            20 * time.Minute,
		StartPostcopyAfter: m.Postcopy,
	})
	stopSampling()
	r.RateDuringPermille = permille(stopWork(), rateBefore)
	r.SrcCPUms = (cpuTime(src.PID()) - srcCPU).Milliseconds()
	r.DstCPUms = (cpuTime(dst.PID()) - dstCPU).Milliseconds()
	if result != nil {
		if saveErr := run.SaveJSON("migration.json", result); saveErr != nil {
			step("warning: %v", saveErr)
		}
		r.Status = result.Source.Status
		r.TotalTimeMs = result.Source.TotalTime
		r.DowntimeMs = result.Source.Downtime
		r.SetupTimeMs = result.Source.SetupTime
		r.SwitchMs = switchMs(r.Timeline, r.TotalTimeMs)
		if result.Source.RAM != nil {
			r.TransferredBytes = result.Source.RAM.Transferred
			r.DirtySyncs = result.Source.RAM.DirtySyncCount
		}
		if d := result.Source.DiskRefs; d != nil {
			r.RefPages = d.RefPages
			if d.SwitchoverMs > 0 {
				r.SwitchMs = d.SwitchoverMs
			}
		}
		if d := result.Destination.DiskRefs; d != nil {
			r.FetchedPages = d.FetchedPages
			r.FetchBytes, r.FetchReads = d.FetchBytes, d.FetchReads
			r.FaultsFromStorage, r.FaultsFromSource = d.FaultsFromStorage, d.FaultsFromSource
			r.FaultMedianUs, r.FaultP99Us = d.FaultLatencyMedianUs, d.FaultLatencyP99Us
		}
	}
	if err != nil {
		return fail(err)
	}
	step("migration %s in %d ms (downtime %d ms): %s on the link, %d pages sent as disk references, %d fetched by the destination",
		r.Status, r.TotalTimeMs, r.DowntimeMs, humanBytes(r.TransferredBytes), r.RefPages, r.FetchedPages)

	if runAtSwitch {
		res := <-atSwitch
		if res.err != nil {
			return fail(res.err)
		}
		step("the destination's guest ran from %d ms (the switch); its %s rate there while pages arrived: %.0f/s",
			res.resumedMs, workload, res.rate)
		if rateBefore > 0 {
			r.RateAfterPermille = permille(res.rate, rateBefore)
		}
		step("RAM not compared: the destination's guest ran during postcopy; it verifies its files instead")
		verifyCtx, cancelVerify := context.WithTimeout(ctx, 15*time.Minute)
		checked, err := dst.Verify(verifyCtx)
		cancelVerify()
		if err != nil {
			r.Verify = "FAIL"
			return fail(fmt.Errorf("the guest's verification after running during postcopy: %w", err))
		}
		r.Verify = fmt.Sprintf("PASS (%d files)", checked)
		r.RanAtSwitch = true
		step("verify: %s", r.Verify)
		run.ok = true
		return r
	}

	step("comparing the RAM of source and destination byte for byte (%d MiB each)", o.memMiB)
	diff, err := run.CompareRAM(ctx, src, dst)
	if err != nil {
		return fail(err)
	}
	r.RAMMatch = diff.Equal()
	if !r.RAMMatch {
		r.RAMDiff = diff.String()
		step("RAM DIFFERS: %s", diff)
		return r // failed stays true: the run folder is kept
	}
	step("%s", diff)

	if o.oracle && !slices.Contains(m.PluginArgs, "enable=off") {
		// On the paused source, after the timings (the dump must not change
		// what memory the migration found): for a guest whose page cache
		// sits still, what it held when the migration started.
		n, err := oraclePages(ctx, env, run.Run, src, g.image)
		if err != nil {
			return fail(err)
		}
		r.OraclePages = n
		step("oracle: %d guest pages (%s) are byte-identical to a 4 KiB block of the disk; coverage %d references / %d = %.1f%%",
			n, humanBytes(n*4096), r.RefPages, n, 100*float64(r.RefPages)/float64(max(n, 1)))
	}

	step("resuming the guest on the destination")
	lastBeat, _ := src.Heartbeat()
	mark := dst.Serial.Mark()
	if err := dst.Cont(ctx); err != nil {
		return fail(err)
	}
	beatCtx, cancelBeat := context.WithTimeout(ctx, 30*time.Second)
	line, err := dst.WaitLineAfter(beatCtx, mark, harness.LineHeartbeat)
	cancelBeat()
	if err != nil {
		return fail(err)
	}
	step("guest alive on the destination: heartbeat went from n=%d (source) to %q", lastBeat, strings.TrimPrefix(line.Text, "nasmig: "))
	if rateBefore > 0 {
		after, err := rateOver(ctx, dst, workload, rateWindow)
		if err != nil {
			return fail(err)
		}
		r.RateAfterPermille = permille(after, rateBefore)
		step("the guest's %s rate: %.2fx of the rate before while migrating, %.2fx in its first seconds on the destination",
			workload, float64(r.RateDuringPermille)/1000, float64(r.RateAfterPermille)/1000)
	}
	if o.verify {
		step("asking the guest to verify every file it read (sha256 against the manifest)")
		verifyCtx, cancelVerify := context.WithTimeout(ctx, 15*time.Minute)
		checked, err := dst.Verify(verifyCtx)
		cancelVerify()
		if err != nil {
			r.Verify = "FAIL"
			return fail(err)
		}
		r.Verify = fmt.Sprintf("PASS (%d files)", checked)
		step("verify: %s", r.Verify)
	}
	statusCtx, cancelStatus := context.WithTimeout(ctx, 30*time.Second)
	if status, _, err := guestStatus(statusCtx, dst); err == nil {
		step("guest status on the destination: %s", status)
	}
	cancelStatus()
	run.ok = true
	return r
}

// guest is a source QEMU booted on shared storage (on the profile's
// network), its page cache filled, its heartbeat going.
type guest struct {
	image        string           // the data disk's private copy
	network      *harness.Network // nil: unix sockets
	storage      *harness.StorageDaemon
	src          *harness.VM
	srcCfg       harness.VMConfig
	pageCacheMiB int
}

// destinationConfig is the source's QEMU configuration for the
// destination: same plugin arguments, -incoming defer, on the
// destination host's namespace.
func (g *guest) destinationConfig() harness.VMConfig {
	cfg := g.srcCfg
	cfg.Name = "dst"
	cfg.Incoming = true
	if g.network != nil {
		cfg.NetNS = g.network.Dst
	}
	return cfg
}

// startGuest copies the data disk, sets up the network, serves the image
// over NBD and boots the source until its page cache is filled.
func startGuest(ctx context.Context, env harness.Env, accel string, o options, profile, workload string, pluginArgs, extraArgs []string,
	run *harness.Run, step func(string, ...any)) (*guest, error) {
	if o.warmBytes > 0 {
		step("touched %s of memory in %.1f s (see host memory)", humanBytes(o.warmBytes), warmMemory(o.warmBytes).Seconds())
	}
	step("copying the data disk (raw ext4) to a private image in %s", run.Dir)
	image, err := run.CopyImage(ctx, o.disk, "data.raw")
	if err != nil {
		return nil, err
	}
	storageCfg := harness.StorageConfig{
		Binary: env.StorageDaemonBinary(), Image: image, Format: harness.FormatRaw, CacheDirect: true,
	}
	var network *harness.Network
	if prof, ok := harness.NetProfileByName(profile); ok {
		network, err = harness.NewNetwork(ctx, fmt.Sprintf("%s%d", netnsPrefix, os.Getpid()), prof)
		if err != nil {
			return nil, err
		}
		run.AddCleanup("network "+profile, network.Close)
		step("network %s: migration link %s, storage links %s (namespaces %s, %s, %s; tc tbf on each sending device)",
			profile, bitRate(prof.MigrationBits), bitRate(prof.StorageBits), network.Src, network.Dst, network.Storage)
		storageCfg.NetNS, storageCfg.Listen = network.Storage, network.StorageAddr+":10809"
	}
	step("starting qemu-storage-daemon: the image's file node exported over NBD (cache.direct=on), shared by both QEMUs")
	storage, err := run.StartStorage(ctx, storageCfg)
	if err != nil {
		return nil, err
	}

	mib := o.mib
	switch workload {
	case "idle":
		mib = -1 // reads nothing
	case "memory-hot":
		mib = memoryHotMiB
	}
	cmdline := harness.GuestCmdline(workload, mib, true)
	if mib < 0 {
		cmdline = strings.Replace(cmdline, " nasmig.mib=-1", "", 1)
	}
	srcCfg := env.VMConfig("src", accel, o.memMiB, cmdline)
	srcCfg.Disk = storage.Disk(harness.BusVirtio)
	srcCfg.Plugin, srcCfg.PluginArgs = env.PluginPath(), pluginArgs
	srcCfg.ExtraArgs = append(srcCfg.ExtraArgs, extraArgs...)
	if network != nil {
		srcCfg.NetNS = network.Src
	}
	step("starting the source QEMU with -plugin libnasmig.so,%s", strings.Join(pluginArgs, ","))
	src, err := run.StartVM(ctx, srcCfg)
	if err != nil {
		return nil, err
	}
	bootCtx, cancelBoot := context.WithTimeout(ctx, 2*time.Minute)
	_, err = src.WaitLine(bootCtx, harness.LineBoot)
	cancelBoot()
	if err != nil {
		return nil, fmt.Errorf("guest did not boot: %w", err)
	}
	step("guest booted; workload %s (nasmig.mib=%d) sets up", workload, mib)
	readyCtx, cancelReady := context.WithTimeout(ctx, 10*time.Minute)
	ready, err := src.WaitLineAfter(readyCtx, 0, harness.LineReady, harness.LineFail)
	cancelReady()
	if err != nil {
		return nil, err
	}
	if strings.HasPrefix(ready.Text, harness.LineFail) {
		return nil, fmt.Errorf("guest gave up: %s", ready.Text)
	}
	cached := readyCachedMiB(ready.Text)
	step("guest ready after %.1f s: page cache holds %d MiB", ready.At.Seconds(), cached)
	if _, err := src.WaitLineAfter(ctx, ready.Index, harness.LineHeartbeat); err != nil {
		return nil, err
	}
	return &guest{image: image, network: network, storage: storage, src: src, srcCfg: srcCfg, pageCacheMiB: cached}, nil
}

// oraclePages dumps the guest's RAM and counts the pages byte-identical
// to a 4 KiB block of the image (nasmig-inspect oracle): what references
// could cover at best.
func oraclePages(ctx context.Context, env harness.Env, run *harness.Run, vm *harness.VM, image string) (int64, error) {
	dump := run.Path("oracle.elf")
	run.Scratch(dump)
	defer os.Remove(dump)
	if _, err := vm.QMP.Execute(ctx, "dump-guest-memory", map[string]any{"paging": false, "protocol": "file:" + dump}); err != nil {
		return 0, fmt.Errorf("dump guest RAM for the oracle: %w", err)
	}
	out, err := exec.CommandContext(ctx, filepath.Join(env.Out, "nasmig-inspect"), "oracle", "--ram", dump, "--disk", image, "--json").Output()
	if err != nil {
		return 0, fmt.Errorf("nasmig-inspect oracle: %w", err)
	}
	var report struct {
		Identical int64 `json:"identical"`
	}
	if err := json.Unmarshal(out, &report); err != nil {
		return 0, fmt.Errorf("nasmig-inspect oracle: %w", err)
	}
	return report.Identical, nil
}

func (o options) diskDescription() string {
	if o.diskKind == "real" {
		return o.diskInfo
	}
	return "synthetic (random file content: no compressor gains on it)"
}

// realDiskInfo summarises real.info (mkrealdisk.sh): files, MiB and the
// zstd -1 ratio of their content.
func realDiskInfo(info string) string {
	kv := map[string]string{}
	for _, line := range strings.Split(info, "\n") {
		if k, v, ok := strings.Cut(line, " "); ok {
			kv[k] = v
		}
	}
	bytes, _ := strconv.ParseInt(kv["bytes"], 10, 64)
	return fmt.Sprintf("%s files of Debian packages, %d MiB, zstd -1 compresses them %sx", kv["files"], bytes>>20, kv["zstd1-ratio"])
}

// readyCachedMiB reads cached-mib=N from the ready line.
func readyCachedMiB(text string) int {
	for _, field := range strings.Fields(text) {
		if v, ok := strings.CutPrefix(field, "cached-mib="); ok {
			if n, err := strconv.Atoi(v); err == nil {
				return n
			}
		}
	}
	return 0
}

// diskDataMiB sums the sizes of the files on the ext4 data disk (debugfs,
// read-only), so that -mib can be capped at what the disk holds.
func diskDataMiB(ctx context.Context, image string) (int, error) {
	path, err := exec.LookPath("debugfs")
	if err != nil {
		if p, sbinErr := exec.LookPath("/usr/sbin/debugfs"); sbinErr == nil {
			path, err = p, nil
		}
	}
	if err != nil {
		return 0, err
	}
	var total int64
	var walk func(dir string, depth int) error
	walk = func(dir string, depth int) error {
		out, err := exec.CommandContext(ctx, path, "-c", "-R", "ls -p "+dir, image).Output()
		if err != nil {
			return fmt.Errorf("debugfs ls %s: %w", dir, err)
		}
		// ls -p: /inode/mode/uid/gid/name/size/
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Split(strings.TrimSpace(line), "/")
			if len(f) < 7 || f[5] == "." || f[5] == ".." || f[5] == "lost+found" {
				continue
			}
			switch {
			case strings.HasPrefix(f[2], "04") && depth < 4: // directory
				if err := walk(strings.TrimSuffix(dir, "/")+"/"+f[5], depth+1); err != nil {
					return err
				}
			case strings.HasPrefix(f[2], "10"): // regular file
				size, _ := strconv.ParseInt(f[6], 10, 64)
				total += size
			}
		}
		return nil
	}
	if err := walk("/", 0); err != nil {
		return 0, err
	}
	if total == 0 {
		return 0, errors.New("no files found")
	}
	return int(total >> 20), nil
}

func printTable(w io.Writer, rows []row) {
	fmt.Fprintln(w)
	fmt.Fprintf(w, "%-34s", "")
	for _, r := range rows {
		fmt.Fprintf(w, "%18s", r.Mode)
	}
	fmt.Fprintln(w)
	line := func(label string, cell func(row) string) {
		fmt.Fprintf(w, "%-34s", label)
		for _, r := range rows {
			fmt.Fprintf(w, "%18s", cell(r))
		}
		fmt.Fprintln(w)
	}
	line("guest RAM", func(r row) string { return fmt.Sprintf("%d MiB", r.GuestRAMMiB) })
	line("page cache filled (ready line)", func(r row) string { return fmt.Sprintf("%d MiB", r.PageCacheMiB) })
	line("migration status", func(r row) string { return r.Status })
	line("bytes on the link (ram.transferred)", func(r row) string { return humanBytes(r.TransferredBytes) })
	line("pages sent as references", func(r row) string { return strconv.FormatInt(r.RefPages, 10) })
	line("pages fetched by the destination", func(r row) string { return strconv.FormatInt(r.FetchedPages, 10) })
	line("total time", func(r row) string { return fmt.Sprintf("%d ms", r.TotalTimeMs) })
	line("downtime", func(r row) string { return fmt.Sprintf("%d ms", r.DowntimeMs) })
	line("RAM match (byte for byte)", func(r row) string {
		switch {
		case r.Error != "" && !r.RAMMatch && r.RAMDiff == "":
			return "n/a"
		case r.RAMMatch:
			return "yes"
		case r.RanAtSwitch:
			return "not compared (ran at the switch)"
		}
		return "NO"
	})
	if rows[0].Verify != "" || (len(rows) > 1 && rows[1].Verify != "") {
		line("guest verify", func(r row) string { return r.Verify })
	}
	if len(rows) == 2 && rows[0].TransferredBytes > 0 && rows[1].TransferredBytes > 0 && rows[0].TotalTimeMs > 0 {
		fmt.Fprintf(w, "\nwith nasmig the link carried %.1f%% of the bytes (%s less) in %.1f%% of the time\n",
			100*float64(rows[1].TransferredBytes)/float64(rows[0].TransferredBytes),
			humanBytes(rows[0].TransferredBytes-rows[1].TransferredBytes),
			100*float64(rows[1].TotalTimeMs)/float64(rows[0].TotalTimeMs))
	}
	for _, r := range rows {
		if r.Error != "" {
			fmt.Fprintf(w, "%s: ERROR %s (logs in %s)\n", r.Mode, r.Error, r.RunDir)
		}
		if r.RAMDiff != "" {
			fmt.Fprintf(w, "%s: %s\n", r.Mode, r.RAMDiff)
		}
	}
}

// netnsPrefix names the benchmark's network namespaces (with its PID).
const netnsPrefix = "nasmigb"

// removeStaleNetworks deletes the namespaces a killed earlier benchmark
// left behind (one benchmark runs at a time on a machine).
func removeStaleNetworks(ctx context.Context) error {
	entries, err := os.ReadDir("/run/netns")
	if errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), netnsPrefix) {
			if out, err := exec.CommandContext(ctx, "ip", "netns", "delete", e.Name()).CombinedOutput(); err != nil {
				return fmt.Errorf("remove stale namespace %s: %w: %s", e.Name(), err, out)
			}
		}
	}
	return nil
}

// cpuTime is the user and system CPU time of process pid so far (0 when
// it cannot be read).
func cpuTime(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which may hold spaces: state is the
	// first, utime the 12th and stime the 13th; in clock ticks of 1/100 s
	// (USER_HZ on Linux).
	_, rest, ok := strings.Cut(string(data), ") ")
	f := strings.Fields(rest)
	if !ok || len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

func bitRate(bits int64) string {
	if bits >= 1e9 {
		return fmt.Sprintf("%g Gbit/s", float64(bits)/1e9)
	}
	return fmt.Sprintf("%g Mbit/s", float64(bits)/1e6)
}

func profileNames() string {
	names := []string{unixProfile}
	for _, p := range harness.NetProfiles {
		names = append(names, p.Name)
	}
	return strings.Join(names, ", ")
}

func modeNames() string {
	var names []string
	for _, m := range modes {
		names = append(names, m.Name)
	}
	return strings.Join(names, ", ")
}

// median of the figure over the runs of one mode on one network that
// completed with identical RAM.
func median(rows []row, profile, workload, mode string, figure func(row) int64) (int64, int) {
	return medianOf(rows, func(r row) bool {
		return r.Profile == profile && r.Workload == workload && r.Mode == mode && r.Error == "" && (r.RAMMatch || r.RanAtSwitch)
	}, figure)
}

// medianOf is the median of figure over the rows keep takes, and their
// number (the upper median of an even number).
func medianOf[R any, V cmp.Ordered](rows []R, keep func(R) bool, figure func(R) V) (V, int) {
	var v []V
	for _, r := range rows {
		if keep(r) {
			v = append(v, figure(r))
		}
	}
	if len(v) == 0 {
		var zero V
		return zero, 0
	}
	slices.Sort(v)
	return v[len(v)/2], len(v)
}

// summaryTable is the benchmark's Markdown table: medians per network and
// mode, and ratios to stock pre-copy on the same network in the same run.
func summaryTable(o options, rows []row) string {
	var b strings.Builder
	fmt.Fprintf(&b, "| network | workload | mode | runs ok | total ms | vs stock | guest runs there, ms | vs stock | downtime ms | MiB on the link | vs stock "+
		"| references | coverage | MiB fetched | mean read KiB | dirty syncs | source CPU s | dest. CPU s | setup ms | guest rate during, after "+
		"| faults storage/source, latency p50/p99 ms |\n")
	fmt.Fprintf(&b, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	ratio := func(v, base int64) string {
		if base == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2fx", float64(v)/float64(base))
	}
	for _, cell := range o.cells() {
		p, w := cell[0], cell[1]
		baseTime, _ := median(rows, p, w, "stock", func(r row) int64 { return r.TotalTimeMs })
		baseBytes, _ := median(rows, p, w, "stock", func(r row) int64 { return r.TransferredBytes })
		for _, m := range o.modes {
			med := func(figure func(row) int64) int64 { v, _ := median(rows, p, w, m.Name, figure); return v }
			t, n := median(rows, p, w, m.Name, func(r row) int64 { return r.TotalTimeMs })
			by := med(func(r row) int64 { return r.TransferredBytes })
			fetchBytes := med(func(r row) int64 { return r.FetchBytes })
			meanRead := "-"
			if reads := med(func(r row) int64 { return r.FetchReads }); reads > 0 {
				meanRead = fmt.Sprintf("%d", fetchBytes/reads>>10)
			}
			coverage := "-"
			if oracle := med(func(r row) int64 { return r.OraclePages }); oracle > 0 {
				coverage = fmt.Sprintf("%.1f%%", 100*float64(med(func(r row) int64 { return r.RefPages }))/float64(oracle))
			}
			guestRate := "-"
			if during := med(func(r row) int64 { return r.RateDuringPermille }); during > 0 {
				guestRate = fmt.Sprintf("%.2fx, %.2fx", float64(during)/1000, float64(med(func(r row) int64 { return r.RateAfterPermille }))/1000)
			}
			sw := med(func(r row) int64 { return r.SwitchMs })
			faults := "-"
			if st, so := med(func(r row) int64 { return r.FaultsFromStorage }), med(func(r row) int64 { return r.FaultsFromSource }); st+so > 0 {
				faults = fmt.Sprintf("%d/%d, %.1f/%.1f", st, so, float64(med(func(r row) int64 { return r.FaultMedianUs }))/1000,
					float64(med(func(r row) int64 { return r.FaultP99Us }))/1000)
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %d of %d | %d | %s | %d | %s | %d | %.1f | %s | %d | %s | %.1f | %s | %d | %.1f | %.1f | %d | %s | %s |\n",
				p, w, m.Name, n, o.runs, t, ratio(t, baseTime), sw, ratio(sw, baseTime), med(func(r row) int64 { return r.DowntimeMs }),
				float64(by)/(1<<20), ratio(by, baseBytes), med(func(r row) int64 { return r.RefPages }), coverage,
				float64(fetchBytes)/(1<<20), meanRead, med(func(r row) int64 { return r.DirtySyncs }),
				float64(med(func(r row) int64 { return r.SrcCPUms }))/1000, float64(med(func(r row) int64 { return r.DstCPUms }))/1000,
				med(func(r row) int64 { return r.SetupTimeMs }), guestRate, faults)
		}
	}
	return b.String()
}

// cells are the (network, workload) pairs in the order they ran.
func (o options) cells() [][2]string {
	var out [][2]string
	for _, p := range o.profiles {
		for _, w := range o.workloads {
			out = append(out, [2]string{p, w})
		}
	}
	return out
}

func printSummary(w io.Writer, o options, rows []row) {
	bw := "unlimited"
	if o.maxBandwidth > 0 {
		bw = fmt.Sprintf("%d bytes/s", o.maxBandwidth)
	}
	host, _ := os.Hostname()
	fmt.Fprintf(w, "\n%s on %s (%d CPUs), accelerator %s; command: %s\n", time.Now().UTC().Format("2006-01-02 15:04 MST"),
		host, runtime.NumCPU(), rows[0].Accel, strings.Join(os.Args, " "))
	checked := "RAM compared byte for byte after every run"
	if o.runAtSwitch {
		checked += " (-run-at-switch: in postcopy modes the destination's guest ran from the switch, its work rate there is the " +
			"\"after\" figure, and its file check replaced the RAM comparison)"
	}
	fmt.Fprintf(w, "medians of %d runs; guest %d MiB RAM, page cache %d MiB requested; max-bandwidth %s; %s\n",
		o.runs, o.memMiB, o.mib, bw, checked)
	fmt.Fprintf(w, "data disk: %s\n", o.diskDescription())
	if o.hostMemory != "" {
		fmt.Fprintf(w, "host memory: %s\n", o.hostMemory)
	}
	if o.build != "" {
		fmt.Fprintln(w, o.build)
	}
	for _, p := range o.profiles {
		if prof, ok := harness.NetProfileByName(p); ok {
			fmt.Fprintf(w, "network %s: migration link %s (TCP), storage links %s (NBD over TCP), tc tbf on each sending device\n",
				p, bitRate(prof.MigrationBits), bitRate(prof.StorageBits))
		} else {
			fmt.Fprintf(w, "network %s: unix sockets on this host, unshaped\n", p)
		}
	}
	fmt.Fprintln(w)
	fmt.Fprint(w, summaryTable(o, rows))
	for _, r := range rows {
		if r.Error != "" {
			fmt.Fprintf(w, "%s/%s/%s run %d: ERROR %s (logs in %s)\n", r.Profile, r.Workload, r.Mode, r.Run, r.Error, r.RunDir)
		}
	}
}

// writeResults writes results.md (the summary) and results.csv (every run).
func writeResults(o options, rows []row) error {
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	var md strings.Builder
	printSummary(&md, o, rows)
	plots, err := writePlots(o.out, o, rows)
	if err != nil {
		return err
	}
	slices.Sort(plots)
	fmt.Fprintf(&md, "\nplots: %s\n", strings.Join(plots, ", "))
	if err := os.WriteFile(filepath.Join(o.out, "results.md"), []byte(md.String()), 0o644); err != nil {
		return err
	}
	header := []string{"profile", "workload", "mode", "run", "status", "total_ms", "switch_ms", "downtime_ms", "transferred_bytes", "ref_pages",
		"fetched_pages", "fetch_bytes", "fetch_reads", "dirty_syncs", "src_cpu_ms", "dst_cpu_ms", "page_cache_mib", "oracle_pages",
		"setup_ms", "rate_during_permille", "rate_after_permille", "ram_match", "error"}
	i64 := func(v int64) string { return strconv.FormatInt(v, 10) }
	return writeCSV(filepath.Join(o.out, "results.csv"), header, rows, func(r row) []string {
		return []string{r.Profile, r.Workload, r.Mode, strconv.Itoa(r.Run), r.Status, i64(r.TotalTimeMs), i64(r.SwitchMs), i64(r.DowntimeMs),
			i64(r.TransferredBytes), i64(r.RefPages), i64(r.FetchedPages), i64(r.FetchBytes), i64(r.FetchReads),
			i64(r.DirtySyncs), i64(r.SrcCPUms), i64(r.DstCPUms), strconv.Itoa(r.PageCacheMiB), i64(r.OraclePages),
			i64(r.SetupTimeMs), i64(r.RateDuringPermille), i64(r.RateAfterPermille), strconv.FormatBool(r.RAMMatch), r.Error}
	})
}

// writeCSV writes a header and one record per row to path.
func writeCSV[R any](path string, header []string, rows []R, record func(R) []string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	w.Write(header)
	for _, r := range rows {
		w.Write(record(r))
	}
	w.Flush()
	if err := w.Error(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30 || n <= -(1<<30):
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20 || n <= -(1<<20):
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d B", n)
}

// prefixWriter indents the harness's own messages under the demo's steps.
type prefixWriter struct {
	w      io.Writer
	prefix string
}

func (p prefixWriter) Write(b []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		if _, err := fmt.Fprintln(p.w, p.prefix+line); err != nil {
			return 0, err
		}
	}
	return len(b), nil
}
