package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"nasmig/cshim"
	"nasmig/tests/harness"
)

// Every case runs the same guest size; one guest pair at a time, because the
// test host has two cores and a guest under TCG keeps one busy.
const (
	guestMemMiB = 1024
	guestMiB    = 300 // nasmig.mib: page cache the workload fills
	caseTimeout = 10 * time.Minute
)

// pluginMode says how a QEMU loads libnasmig.so.
type pluginMode int

const (
	noPlugin     pluginMode = iota // no -plugin: stock QEMU behaviour
	nasmigOn                       // -plugin libnasmig.so,log=info (auto=on: every migration that can use references does)
	nasmigOff                      // -plugin libnasmig.so,enable=off: must change nothing
	nasmigStrict                   // -plugin libnasmig.so,strict=on: a disk this side cannot read fails the migration
	nasmigASan                     // -plugin libnasmig-asan.so,log=info, in a QEMU built with ASan (NASMIG_QEMU_ASAN) or with the runtime preloaded
)

func (m pluginMode) String() string {
	switch m {
	case nasmigOn:
		return "nasmig on"
	case nasmigOff:
		return "nasmig enable=off"
	case nasmigStrict:
		return "nasmig strict=on"
	case nasmigASan:
		return "nasmig under AddressSanitizer"
	}
	return "no plugin"
}

func (m pluginMode) apply(cfg *harness.VMConfig, env harness.Env) {
	cfg.Plugin, cfg.PluginArgs = "", nil
	defer func() {
		if cfg.Plugin != "" {
			cfg.PluginArgs = append(cfg.PluginArgs, extraPluginArgs...)
		}
	}()
	switch m {
	case nasmigOn:
		cfg.Plugin, cfg.PluginArgs = env.PluginPath(), []string{"log=info"}
	case nasmigASan:
		cfg.Plugin, cfg.PluginArgs = env.ASanPluginPath(), []string{"log=info"}
		// Any report aborts QEMU, which fails the case.
		cfg.Env = append(cfg.Env, "ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1:detect_stack_use_after_return=0")
		if env.QEMUASan != "" {
			// QEMU instrumented too: its glue (RAMBlock and disk
			// handles, the read hooks) is checked with the library.
			cfg.Binary = env.QEMUASan
		} else {
			// QEMU itself is not instrumented: the runtime must come first.
			cfg.Env = append(cfg.Env, "LD_PRELOAD="+asanRuntime)
		}
	case nasmigOff:
		cfg.Plugin, cfg.PluginArgs = env.PluginPath(), []string{"enable=off", "log=info"}
	case nasmigStrict:
		cfg.Plugin, cfg.PluginArgs = env.PluginPath(), []string{"strict=on", "log=info"}
	}
}

// extraPluginArgs are appended to the plugin arguments of the case that
// set them (one case runs at a time; runCase clears them).
var extraPluginArgs []string

// e2eCase is one row of the table.
type e2eCase struct {
	name     string
	workload string
	format   string // image format (default raw)
	bus      string // default virtio-blk
	src, dst pluginMode
	opts     harness.MigrateOpts // capabilities and parameters, set on both sides
	// settle: heartbeats to wait for after "ready" before migrating.
	settle int
	// flow runs the migration and its checks; nil: migrateAndCheck.
	flow func(t *testing.T, ctx context.Context, p *pair)
	// check adds the case's assertions on the counters of a completed
	// migration, after the RAM comparison.
	check func(t *testing.T, o outcome)
	// debugSocket: the source's library serves its map on srcDebugSocket.
	debugSocket bool
	// needsQEMUASan: run only with a QEMU built with AddressSanitizer
	// (./build.sh test-full); skipped, saying so, otherwise.
	needsQEMUASan bool
	// fullOnly: why the case runs in ./build.sh test-full only (it varies
	// a case ./build.sh test runs; NASMIG_E2E_FULL=1 runs it).
	fullOnly string
	// dimm: the source boots with a pc-dimm whose memory the guest onlines
	// as movable (page cache goes there first); the destination has a
	// free slot and no DIMM (the flow unplugs it before migrating).
	dimm bool
	// dstOwnDisk gives the destination a disk of its own (another NBD
	// server on a copy of the image): not the source's shared disk.
	dstOwnDisk bool
	// fileDisk: both QEMUs open the image file itself (cache.direct=on),
	// a shared file system's layout, instead of an NBD export.
	fileDisk bool
	// overlay (with fileDisk): the guest's disk is a qcow2 overlay on the
	// raw image as its backing file (the OpenStack / Proxmox layout); new
	// clusters grow the overlay file while the guest writes.
	overlay bool
	// iothread: the disk's controller runs in an iothread.
	iothread bool
	// sharedMemory: guest RAM is a shared memfd backend (share=on), as
	// with vhost-user devices, on both sides.
	sharedMemory bool
	// exclude: both sides load the library with exclude= each of these
	// ("$IMAGE" stands for the case's image file).
	exclude []string
	// slowStorage: the shared NBD storage is throttled to this many bytes
	// per second for reads, from just before the migration until it ended.
	slowStorage int64
	// stallStorage (fillAfterGuestRunsFlow): the storage server stops
	// this long (SIGSTOP) as soon as the destination's guest runs.
	stallStorage time.Duration
	// pluginArgs are added to the library's arguments on both sides
	// ("$RUN" stands for the case's run folder).
	pluginArgs []string
	// hotplug: a second SCSI controller for hot-plugged disks and a
	// CD-ROM (an ISO read through the host page cache) on both sides.
	hotplug bool
	// uefi: the guest boots through OVMF (Debian's ovmf: read-only
	// OVMF_CODE in pflash unit 0, a per-VM copy of OVMF_VARS in unit 1).
	uefi bool
	// srcFault, dstFault: the NASMIG_FAULT spec (faults the library and
	// the glue inject on purpose, nasmig.h) of the first source and of the
	// first destination; empty: none.
	srcFault, dstFault string
	// network: a harness.NetProfiles name. Source, destination and
	// storage run in network namespaces of their own joined by shaped
	// links; the migration goes over TCP and the disk is NBD over TCP, as
	// between the hosts of a data center.
	network string
}

// OVMF images of Debian's ovmf package.
const (
	ovmfCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	ovmfVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// uefiArgs gives a VM OVMF as firmware, with its own copy of the variables
// store (shared by source and destination, as on shared storage).
func uefiArgs(ctx context.Context, p *pair) ([]string, error) {
	vars, err := p.run.CopyImage(ctx, ovmfVars, "OVMF_VARS.fd")
	if err != nil {
		return nil, err
	}
	return []string{
		"-drive", "if=pflash,format=raw,unit=0,readonly=on,file=" + ovmfCode,
		"-drive", "if=pflash,format=raw,unit=1,file=" + vars,
	}, nil
}

// outcome is what a completed migration's query-migrate said, on both sides.
type outcome struct {
	result *harness.MigrationResult
	src    harness.DiskRefStats // the source's disk-refs (zero when absent)
	dst    harness.DiskRefStats // the destination's disk-refs (zero when absent)
}

func outcomeOf(result *harness.MigrationResult) outcome {
	o := outcome{result: result}
	if result == nil {
		return o
	}
	if result.Source.DiskRefs != nil {
		o.src = *result.Source.DiskRefs
	}
	if result.Destination.DiskRefs != nil {
		o.dst = *result.Destination.DiskRefs
	}
	return o
}

// figures is one line of the summary printed at the end.
type figures struct {
	ran          bool // false: the case was filtered out (-run)
	name         string
	took         time.Duration
	result       string // "pass", "FAIL", and for case 9 the path taken
	status       string // the source's final migration status
	totalTimeMs  int64
	downtimeMs   int64
	transferred  int64
	refPages     int64
	fetchedPages int64
	note         string
}

func (f *figures) take(result *harness.MigrationResult) {
	if result == nil {
		return
	}
	o := outcomeOf(result)
	f.status = result.Source.Status
	f.totalTimeMs = result.Source.TotalTime
	f.downtimeMs = result.Source.Downtime
	if result.Source.RAM != nil {
		f.transferred = result.Source.RAM.Transferred
	}
	f.refPages = o.src.RefPages
	f.fetchedPages = o.dst.FetchedPages
}

func cases() []e2eCase {
	return append([]e2eCase{
		nasmigBothSides(e2eCase{
			name: "01-pagecache-read", workload: "pagecache-read", debugSocket: true,
			flow: func(t *testing.T, ctx context.Context, p *pair) {
				checkMap(t, ctx, p)
				migrateAndCheck(t, ctx, p)
			},
			check: func(t *testing.T, o outcome) {
				requireRefs(t, o)
				checkFetched(t, o)
				if o.dst.VerifyFailures != 0 {
					t.Errorf("destination verify-failures = %d, want 0", o.dst.VerifyFailures)
				}
			},
		}),
		{
			name: "02-plain-control-enable-off", workload: "pagecache-read", src: nasmigOff, dst: nasmigOff,
			check: func(t *testing.T, o outcome) {
				if o.src.RefPages != 0 || o.dst.FetchedPages != 0 {
					t.Errorf("nasmig enable=off: ref-pages %d, fetched-pages %d; want no disk references at all", o.src.RefPages, o.dst.FetchedPages)
				}
			},
		},
		nasmigBothSides(e2eCase{
			// mixed fsyncs its overwrites every 5 s: 6 heartbeats after
			// ready, at least one batch of writes to mapped blocks has
			// reached the disk before the migration starts, and more
			// reach it during the migration.
			name: "03-mixed-overwrites", workload: "mixed", settle: 6,
			check: func(t *testing.T, o outcome) {
				requireRefs(t, o)
				// The counters describe this migration only: the overwrites
				// show as pages that changed before they were sent
				// (ref-misses) or as mappings a write dropped
				// (invalidations); RAM identical is the assertion.
				if o.src.Invalidations+o.src.RefMisses == 0 {
					t.Errorf("source invalidations and ref-misses are 0: the guest overwrites mapped blocks of big/mixed.bin, want > 0")
				}
			},
		}),
		nasmigBothSides(e2eCase{
			name: "04-mmap-write", workload: "mmap-write",
			check: func(t *testing.T, o outcome) {
				requireRefs(t, o)
				// The stamped pages still map to their disk blocks (nothing
				// was written back): the source must notice at send time
				// that their content no longer matches (ref-misses) or have
				// dropped the mappings (invalidations). RAM identical, checked
				// before, is the decisive assertion.
				switch {
				case o.src.RefMisses > 0:
					t.Logf("changed pages detected at send: ref-misses %d", o.src.RefMisses)
				case o.src.Invalidations > 0:
					t.Logf("changed pages resent after %d invalidations (ref-misses 0)", o.src.Invalidations)
				default:
					t.Errorf("ref-misses = 0 and invalidations = 0 with pages changed through a shared mapping: nothing shows the changed pages were resent in full")
				}
			},
		}),
		nasmigBothSides(e2eCase{
			name: "05-multifd-2-channels", fullOnly: "29 and 31 (multifd on slow storage, over TCP)", workload: "pagecache-read",
			opts: harness.MigrateOpts{
				Caps:   map[string]bool{"multifd": true},
				Params: map[string]any{"multifd-channels": 2},
			},
			check: func(t *testing.T, o outcome) {
				requireRefsAndFetched(t, o)
				if ram := o.result.Source.RAM; ram == nil || ram.MultifdBytes == 0 {
					t.Errorf("multifd-bytes = 0: the pages did not travel over multifd channels")
				}
			},
		}),
		nasmigBothSides(e2eCase{
			name: "06-qcow2", workload: "pagecache-read", format: harness.FormatQcow2,
			check: requireRefsAndFetched,
		}),
		nasmigBothSides(e2eCase{
			name: "07-ahci", workload: "pagecache-read", bus: harness.BusAHCI,
			check: requireRefsAndFetched,
		}),
		nasmigBothSides(e2eCase{
			name: "08-virtio-scsi", fullOnly: "25 without the iothread", workload: "pagecache-read", bus: harness.BusVirtioSCSI,
			check: requireRefsAndFetched,
		}),
		nasmigBothSides(e2eCase{
			name: "09-stale-reference", workload: "pagecache-read",
			opts: harness.MigrateOpts{
				Params: map[string]any{"max-bandwidth": 20_000_000},
				// At 20 MB/s the ~100 MiB that are not references take
				// about 5 s: two minutes means something hangs.
				Timeout: 2 * time.Minute,
			},
			flow: staleReferenceFlow,
		}),
		{
			name: "10-capability-mismatch", workload: "pagecache-read", src: nasmigOn, dst: noPlugin,
			opts: harness.MigrateOpts{Timeout: 2 * time.Minute},
			flow: capabilityMismatchFlow,
		},
		nasmigBothSides(e2eCase{
			// XBZRLE diffs pages against its cache; a page sent as a
			// reference must leave the cache holding exactly what the
			// destination reads, or a later delta corrupts it.  mixed
			// keeps rewriting pages so that XBZRLE deltas follow.
			name: "11-xbzrle-mixed", workload: "mixed", settle: 3,
			opts: harness.MigrateOpts{
				Caps:   map[string]bool{"xbzrle": true},
				Params: map[string]any{"max-bandwidth": 60_000_000},
			},
			check: func(t *testing.T, o outcome) {
				// Blocks overwritten after their reference was sent fail
				// verification on the destination and are superseded by
				// the page's resend; RAM identical (checked before) is the
				// assertion.  Whether XBZRLE encoded deltas this time
				// depends on the rounds; say which.
				requireRefs(t, o)
				var x struct {
					XBZRLE struct {
						Pages int64 `json:"pages"`
					} `json:"xbzrle-cache"`
				}
				json.Unmarshal(o.result.Source.Raw, &x)
				t.Logf("xbzrle pages encoded: %d; destination verify-failures %d (superseded by resends), fallbacks %d",
					x.XBZRLE.Pages, o.dst.VerifyFailures, o.dst.Fallbacks)
			},
		}),
		nasmigBothSides(e2eCase{
			// The destination cannot read the source's disk: the pages
			// come in full instead, and the migration completes.
			name: "12-destination-lacks-disk", workload: "pagecache-read", dstOwnDisk: true,
			check: func(t *testing.T, o outcome) {
				if o.dst.FetchedPages != 0 {
					t.Errorf("destination fetched %d pages from a disk it does not have", o.dst.FetchedPages)
				}
				t.Logf("references sent before the source heard: %d; recovered in full: %d", o.src.RefPages, o.dst.Fallbacks)
				if o.dst.Fallbacks < o.src.RefPages {
					t.Errorf("fallbacks %d < references sent %d: some referenced page was not recovered", o.dst.Fallbacks, o.src.RefPages)
				}
			},
		}),
		{
			name: "12b-destination-lacks-disk-strict", fullOnly: "12 with strict=on on the destination", workload: "pagecache-read", dstOwnDisk: true,
			src: nasmigOn, dst: nasmigStrict,
			opts: harness.MigrateOpts{Timeout: 2 * time.Minute},
			flow: destinationLacksDiskFlow,
		},
		nasmigBothSides(e2eCase{
			name: "13-save-restore-file", workload: "pagecache-read", flow: saveRestoreFlow,
			check: requireRefsAndFetched,
		}),
		{
			name: "14-save-restore-file-stock", fullOnly: "13's stock control", workload: "pagecache-read", flow: saveRestoreFlow,
		},
		nasmigBothSides(e2eCase{
			// A guest that keeps stamping mapped file pages while it is
			// saved: XBZRLE deltas and references to qcow2 clusters in
			// one stream, decoded and verified by nasmig-inspect.
			name: "13b-save-qcow2-xbzrle-mmap-write", workload: "mmap-write", settle: 3, format: harness.FormatQcow2, flow: saveRestoreFlow,
			// A low downtime limit makes QEMU iterate until rounds are
			// short: pages the guest keeps writing (its own kernel's and
			// the stamped ones) come round again, and XBZRLE encodes them.
			opts:  harness.MigrateOpts{Caps: map[string]bool{"xbzrle": true}, Params: map[string]any{"max-bandwidth": 32 << 20, "downtime-limit": 20}},
			check: func(t *testing.T, o outcome) { requireRefs(t, o) },
		}),
		nasmigBothSides(e2eCase{
			// mapped-ram with multifd: nasmig steps aside (pages at fixed
			// file offsets); the stream still decodes. A guest that read
			// nothing: the oracle finds next to no page of it on the disk.
			name: "13c-save-mapped-ram-multifd-idle", workload: "idle", flow: saveRestoreFlow,
			opts: harness.MigrateOpts{Caps: map[string]bool{"mapped-ram": true, "multifd": true}, Params: map[string]any{"multifd-channels": 2}},
		}),
		nasmigBothSides(e2eCase{
			// Internal snapshots store the VM state inside the qcow2 file,
			// which must grow: a file, not a fixed-size NBD export.
			name: "15-snapshots-qcow2", workload: "pagecache-read", format: harness.FormatQcow2, fileDisk: true,
			flow: snapshotsFlow,
		}),
		nasmigBothSides(e2eCase{
			name: "15b-cpr-reboot", workload: "pagecache-read", flow: cprRebootFlow,
			check: func(t *testing.T, o outcome) {
				if o.src.RefPages != 0 {
					t.Errorf("a cpr-reboot save sent %d disk references: nasmig must step aside", o.src.RefPages)
				}
			},
		}),
		nasmigBothSides(e2eCase{
			name: "15c-background-snapshot", workload: "pagecache-read", flow: backgroundSnapshotFlow,
		}),
		// Postcopy (what virsh migrate --postcopy does, then
		// migrate-postcopy at once): references in the pre-copy phase,
		// the switch once the destination's fetch caught up with the
		// first pass.  mixed keeps dirtying pages, and downtime-limit 1
		// keeps the migration from completing as pre-copy, so postcopy
		// really starts.
		nasmigBothSides(e2eCase{
			name: "16-postcopy", workload: "mixed", settle: 3, flow: postcopyFlow,
			opts: harness.MigrateOpts{
				Caps:   map[string]bool{"postcopy-ram": true},
				Params: map[string]any{"max-bandwidth": 60_000_000, "downtime-limit": 1},
			},
			check: func(t *testing.T, o outcome) {
				requireRefs(t, o)
				// mixed rewrites files: a block whose page went as a
				// reference may be written back on the source before the
				// destination reads it.  That reference fails verification
				// and its page comes from the source (RAM is compared
				// anyway); a clean-clone run saw 32 of 65,015.  Many would
				// mean the fetch lagged far behind the first pass.
				if o.dst.FetchedPages == 0 || o.dst.VerifyFailures*100 > o.src.RefPages {
					t.Errorf("destination fetched-pages %d, verify-failures %d of %d references: want > 0 and under 1%%", o.dst.FetchedPages, o.dst.VerifyFailures, o.src.RefPages)
				}
			},
		}),
		// Postcopy while every storage read fails: each reference's page
		// is asked from the source, which sends it whole (before the
		// switch, or in postcopy); none may be missing when the
		// destination's guest runs.
		nasmigBothSides(e2eCase{
			name: "16b-postcopy-dest-read-error", workload: "mixed", settle: 3, flow: postcopyFlow,
			dstFault: "dest-read-error:*",
			opts: harness.MigrateOpts{
				Caps:   map[string]bool{"postcopy-ram": true},
				Params: map[string]any{"max-bandwidth": 60_000_000, "downtime-limit": 1},
			},
			check: func(t *testing.T, o outcome) {
				requireRefs(t, o)
				if o.dst.FetchedPages != 0 || o.dst.Fallbacks == 0 {
					t.Errorf("every read failed, yet fetched-pages %d, fallbacks %d: want 0 and > 0", o.dst.FetchedPages, o.dst.Fallbacks)
				}
			},
		}),
		// x-disk-refs-after-switchover: the storage is slow (30 MB/s), so
		// the fetch is far behind when the first pass is out; the source
		// switches to postcopy by itself, the destination fills the rest
		// while postcopy runs, and the source completes once all are
		// filled.  The destination stays paused: RAM compared.
		nasmigBothSides(e2eCase{
			name: "16c-fill-after-switchover", workload: "pagecache-read", slowStorage: 30_000_000,
			opts: harness.MigrateOpts{Caps: map[string]bool{"postcopy-ram": true, "x-disk-refs-after-switchover": true}},
			flow: slowStorageFlow,
			check: func(t *testing.T, o outcome) {
				requireFilledAfter(t, o)
				if o.dst.FromSourceAfterSwitchover != 0 {
					t.Errorf("%d references came from the source after the switch, with the destination paused: want 0", o.dst.FromSourceAfterSwitchover)
				}
			},
		}),
		// The same, the destination's guest resumed as soon as postcopy
		// runs and reading all its files at once: pages it touches before
		// their fill come from the source, the guest's own verification
		// of every file must pass meanwhile.
		nasmigBothSides(e2eCase{
			name: "16d-fill-after-switchover-guest-runs", workload: "pagecache-read", slowStorage: 30_000_000,
			pluginArgs: []string{"fill-after-switchover=on"},
			opts:       harness.MigrateOpts{Caps: map[string]bool{"postcopy-ram": true}},
			flow:       fillAfterGuestRunsFlow,
			check:      requireFilledAfter,
		}),
		// The same, one block in every storage read corrupt (a flipped
		// byte): what fails after the switch is asked from the source
		// through postcopy's page request (RAM compared: no page may be
		// missing or wrong).
		nasmigBothSides(e2eCase{
			name: "16e-fill-after-switchover-reads-corrupt", workload: "pagecache-read", slowStorage: 30_000_000,
			dstFault: "dest-read-corrupt:*",
			opts:     harness.MigrateOpts{Caps: map[string]bool{"postcopy-ram": true, "x-disk-refs-after-switchover": true}},
			flow:     slowStorageFlow,
			check: func(t *testing.T, o outcome) {
				requireRefs(t, o)
				if o.dst.VerifyFailures == 0 || o.dst.FromSourceAfterSwitchover == 0 || o.dst.PendingPages != 0 {
					t.Errorf("verify-failures %d, from-source-after-switchover %d, pending %d: want > 0, > 0, 0",
						o.dst.VerifyFailures, o.dst.FromSourceAfterSwitchover, o.dst.PendingPages)
				}
			},
		}),
		// The same with a guest that keeps overwriting its cached files
		// while it migrates: many pages change after their reference
		// went, and the switch's discard must cancel those references
		// (RAM compared).
		nasmigBothSides(e2eCase{
			name: "16f-fill-after-switchover-mixed", workload: "mixed", settle: 3, slowStorage: 30_000_000,
			opts:  harness.MigrateOpts{Caps: map[string]bool{"postcopy-ram": true, "x-disk-refs-after-switchover": true}},
			flow:  slowStorageFlow,
			check: requirePostcopyFill,
		}),
		// The storage server stalls for 3 s (SIGSTOP) just as the
		// destination's guest starts to run and to read all its files:
		// pages it touches before their fill are asked from the source
		// after the fault fallback (50 ms), the fills wait, and then go
		// on; the guest's verification must pass.
		nasmigBothSides(e2eCase{
			name: "16g-fill-after-switchover-storage-stall", fullOnly: "16c with storage that stalls", workload: "pagecache-read", slowStorage: 30_000_000,
			stallStorage: 3 * time.Second,
			opts:         harness.MigrateOpts{Caps: map[string]bool{"postcopy-ram": true, "x-disk-refs-after-switchover": true}},
			flow:         fillAfterGuestRunsFlow,
			check: func(t *testing.T, o outcome) {
				requireFilledAfter(t, o)
				if o.dst.FaultsFromSource == 0 {
					t.Errorf("no fault served by the source while the storage stalled (from storage %d)", o.dst.FaultsFromStorage)
				}
			},
		}),
		// Filling after the switchover with a guest that changes pages of
		// a file through a shared mapping (mapped blocks, new content not
		// written back): those pages must go whole, never as references
		// (RAM compared, the destination paused).
		nasmigBothSides(e2eCase{
			name: "16h-fill-after-switchover-mmap-write", fullOnly: "16c-16g with an mmap-write guest", workload: "mmap-write", slowStorage: 30_000_000,
			opts:  harness.MigrateOpts{Caps: map[string]bool{"postcopy-ram": true, "x-disk-refs-after-switchover": true}},
			flow:  slowStorageFlow,
			check: requirePostcopyFill,
		}),
		// The same with guest RAM on a shared memfd (share=on, as
		// vhost-user devices need): discards punch holes in the shared
		// file, userfaultfd places pages in it (RAM compared).
		nasmigBothSides(e2eCase{
			name: "16i-fill-after-switchover-shared-memory", fullOnly: "16c with shared guest memory", workload: "pagecache-read", slowStorage: 30_000_000,
			sharedMemory: true,
			opts:         harness.MigrateOpts{Caps: map[string]bool{"postcopy-ram": true, "x-disk-refs-after-switchover": true}},
			flow:         slowStorageFlow,
			check:        requireFilledAfter,
		}),
		// Blocks the guest had read are overwritten behind QEMU's back
		// (a second NBD client) once references to them went: with the
		// storage slow, most are read after the switch, fail
		// verification and are asked from the source; RAM identical.
		nasmigBothSides(e2eCase{
			name: "16j-fill-after-switchover-stale-reference", workload: "pagecache-read", slowStorage: 30_000_000,
			opts: harness.MigrateOpts{Caps: map[string]bool{"postcopy-ram": true, "x-disk-refs-after-switchover": true},
				Timeout: 3 * time.Minute},
			flow: func(t *testing.T, ctx context.Context, p *pair) {
				if err := p.storage.SetReadLimit(ctx, p.c.slowStorage); err != nil {
					t.Fatal(err)
				}
				staleReferenceFlow(t, ctx, p)
			},
		}),
		// 16e with the source's return path ending at the first page
		// request after the switch (the source refuses it, as it refused
		// a request that overtook the one naming its RAM block, which
		// hung CI's 16j): no count and no request arrive any more.  The
		// migration must pause as postcopy does for a broken channel (not
		// hang, not complete with references unfilled, not fail and
		// restart the source), and postcopy recovery must then complete
		// it with identical RAM.
		nasmigBothSides(e2eCase{
			name: "16k-fill-after-switchover-return-path-lost", workload: "pagecache-read", slowStorage: 30_000_000,
			srcFault: "rp-page-request-fails", dstFault: "dest-read-corrupt:*",
			opts: harness.MigrateOpts{Caps: map[string]bool{"postcopy-ram": true, "x-disk-refs-after-switchover": true},
				Timeout: 3 * time.Minute},
			flow: returnPathLostFlow,
		}),
		nasmigBothSides(e2eCase{
			name: "17-exec-no-return-path", workload: "pagecache-read", flow: execFlow,
		}),
		nasmigBothSides(e2eCase{
			name: "18-cancel-then-retry", workload: "pagecache-read", flow: retryFlow(false),
			opts: harness.MigrateOpts{Params: map[string]any{"max-bandwidth": 20_000_000}},
		}),
		nasmigBothSides(e2eCase{
			name: "19-destination-killed-then-retry", workload: "pagecache-read", flow: retryFlow(true),
			opts: harness.MigrateOpts{Params: map[string]any{"max-bandwidth": 20_000_000}},
		}),
		nasmigBothSides(e2eCase{
			name: "20-three-hop-chain", workload: "pagecache-read", flow: chainFlow,
		}),
		nasmigBothSides(e2eCase{
			name: "22-tls", workload: "pagecache-read", flow: tlsFlow,
		}),
		nasmigBothSides(e2eCase{
			// Every read of pagecache-read comes from the raw base under an
			// empty overlay: excluding the base by filename leaves nothing
			// to reference, and a name that matches no disk is reported.
			name: "26-exclude-by-filename", workload: "pagecache-read", fileDisk: true, overlay: true,
			exclude: []string{"$IMAGE", "no-such-disk"},
			check:   requireNoRefs,
			flow:    excludeFlow("no-such-disk"),
		}),
		nasmigBothSides(e2eCase{
			// The names a -drive / -device user knows: the drive id, the
			// device id and the node name of the disk's top node all reach
			// the NBD node below them.
			name: "26b-exclude-by-drive-id", fullOnly: "26 matched by drive id", workload: "pagecache-read",
			exclude: []string{harness.DiskDriveID}, check: requireNoRefs, flow: excludeFlow(""),
		}),
		nasmigBothSides(e2eCase{
			name: "26c-exclude-by-device-id", fullOnly: "26 matched by device id", workload: "pagecache-read",
			exclude: []string{harness.DiskDeviceID}, check: requireNoRefs, flow: excludeFlow(""),
		}),
		nasmigBothSides(e2eCase{
			name: "26d-exclude-by-node-name", fullOnly: "26 matched by node name", workload: "pagecache-read",
			exclude: []string{harness.DiskNodeName}, check: requireNoRefs, flow: excludeFlow(""),
		}),
		nasmigBothSides(e2eCase{
			// The guest overwrites its files while the destination's reads
			// crawl: blocks change after their reference went out, and are
			// re-read at multifd's flushes before the page's resend
			// arrives.  Every failed block is asked from the source.
			name: "29-multifd-mixed-slow-storage", workload: "mixed", settle: 3, slowStorage: 40_000_000,
			opts: harness.MigrateOpts{
				Caps:   map[string]bool{"multifd": true},
				Params: map[string]any{"multifd-channels": 2},
			},
			flow: slowStorageFlow,
		}),
		nasmigBothSides(e2eCase{
			// The storage (30 MB/s) is far slower than the link (a unix
			// socket): the fetch hands the references it would read last
			// back to the source, which sends those pages in full during
			// the hold; both ends share the work.
			name: "33-hand-back-slow-storage", workload: "pagecache-read", slowStorage: 30_000_000,
			flow: slowStorageFlow,
			check: func(t *testing.T, o outcome) {
				if o.dst.HandedBack == 0 || o.src.SentFull == 0 {
					t.Errorf("nothing handed back: handed-back %d, sent-full %d", o.dst.HandedBack, o.src.SentFull)
				}
				if o.dst.FetchedPages >= o.src.RefPages || o.dst.FetchedPages+o.dst.HandedBack+guestChanged(o) < o.src.RefPages {
					t.Errorf("fetched %d + handed back %d of %d references (the guest changed %d mapped pages): want fewer fetched, none missing",
						o.dst.FetchedPages, o.dst.HandedBack, o.src.RefPages, guestChanged(o))
				}
				t.Logf("hand-back: %d of %d references handed back, %d sent in full, %d fetched",
					o.dst.HandedBack, o.src.RefPages, o.src.SentFull, o.dst.FetchedPages)
			},
		}),
		nasmigBothSides(e2eCase{
			// The same with hand-back=off: every reference is read.
			name: "33b-hand-back-off", workload: "pagecache-read", slowStorage: 30_000_000,
			pluginArgs: []string{"hand-back=off"},
			flow:       slowStorageFlow,
			check: func(t *testing.T, o outcome) {
				if o.dst.HandedBack != 0 || o.src.SentFull != 0 || o.dst.FetchedPages > o.src.RefPages ||
					o.dst.FetchedPages+guestChanged(o) < o.src.RefPages {
					t.Errorf("hand-back=off: handed back %d, sent in full %d, fetched %d of %d (the guest changed %d mapped pages)",
						o.dst.HandedBack, o.src.SentFull, o.dst.FetchedPages, o.src.RefPages, guestChanged(o))
				}
			},
		}),
		nasmigBothSides(e2eCase{
			name: "29b-xbzrle-mixed-slow-storage", fullOnly: "29 with XBZRLE instead of multifd", workload: "mixed", settle: 3, slowStorage: 40_000_000,
			opts: harness.MigrateOpts{
				Caps:   map[string]bool{"xbzrle": true},
				Params: map[string]any{"max-bandwidth": 60_000_000},
			},
			flow: slowStorageFlow,
		}),
		nasmigBothSides(e2eCase{
			// Hosts of a data center: source, destination and storage in
			// namespaces of their own, a 1 Gbit/s migration link over TCP
			// with multifd, the disk on NBD over TCP at 10 Gbit/s.
			name: "31-tcp-network-multifd", workload: "pagecache-read", network: "fast-storage",
			opts: harness.MigrateOpts{
				Caps:   map[string]bool{"multifd": true},
				Params: map[string]any{"multifd-channels": 2, "max-bandwidth": 0},
			},
			check: requireRefsAndFetched,
		}),
		{
			// The library's C hot paths under AddressSanitizer on both
			// sides, through the flow that frees the most: a guest that
			// overwrites its files, disks hot-plugged and removed.
			name: "30-asan-hotplug-mixed", workload: "mixed", settle: 3, hotplug: true,
			src: nasmigASan, dst: nasmigASan, flow: asanFlow(hotplugFlow),
		},
		nasmigBothSides(e2eCase{
			// The page cache partly in a pc-dimm, which is unplugged and
			// its backend deleted before the migration.
			name: "28b-pc-dimm-unplugged", workload: "pagecache-read", dimm: true, debugSocket: true,
			flow: dimmFlow,
		}),
		{
			// The pc-dimm case with QEMU and the library both under
			// AddressSanitizer: a handle that reached the freed RAMBlock
			// would be reported.
			name: "28c-asan-qemu-pc-dimm-unplugged", workload: "pagecache-read", dimm: true, debugSocket: true,
			src: nasmigASan, dst: nasmigASan, flow: asanFlow(dimmFlow), needsQEMUASan: true,
		},
		nasmigBothSides(e2eCase{
			// A disk hot-plugged, read and unplugged, then another file
			// hot-plugged under the same node name; a CD-ROM attached.
			name: "28-hotplug-unplug-cdrom", workload: "pagecache-read", hotplug: true,
			flow: hotplugFlow,
		}),
		nasmigBothSides(e2eCase{
			// Two readers keep reading the disk (O_DIRECT into their own
			// buffers, and buffered) through the whole migration: every
			// read re-maps pages, and the switchover hold must still end.
			name: "27-continuous-reader", workload: "reader", settle: 3,
			flow: continuousReaderFlow,
		}),
		{
			// The same guest migrated by stock QEMU: the time to compare
			// with (the summary prints both).
			name: "27b-continuous-reader-stock", fullOnly: "27's stock control", workload: "reader", settle: 3,
		},
		nasmigBothSides(e2eCase{
			// The firmware is read from its pflash image through the block
			// layer into guest RAM; it is not shared storage and must
			// never make the destination refuse.
			name: "23-uefi-ovmf", workload: "pagecache-read", uefi: true,
			check: requireRefsAndFetched,
		}),
		nasmigBothSides(e2eCase{
			name: "24-virtio-blk-iothread", workload: "pagecache-read", iothread: true,
			check: requireRefsAndFetched,
		}),
		nasmigBothSides(e2eCase{
			name: "25-virtio-scsi-iothread", workload: "pagecache-read", bus: harness.BusVirtioSCSI, iothread: true,
			check: requireRefsAndFetched,
		}),
		nasmigBothSides(e2eCase{
			// The Xen path on this test bed: the library indexes what the
			// guest read by content; nasmig-xl sends a libxc stream of
			// the guest's RAM through that index (contentIndexFlow).
			name: "40-content-index-xen-stream", workload: "pagecache-read", fileDisk: true, flow: contentIndexFlow,
			pluginArgs: []string{"content-index=$RUN/content"},
		}),
		nasmigBothSides(e2eCase{
			// The same with a guest that wrote its page cache (new files,
			// fsynced): the index learns blocks from completed writes too.
			name: "40b-content-index-written-blocks", workload: "pagecache-write", fileDisk: true, flow: contentIndexFlow,
			pluginArgs: []string{"content-index=$RUN/content"},
		}),
		nasmigBothSides(e2eCase{
			// The guest keeps writing (new clusters grow the overlay file)
			// before and during the migration.
			name: "21-qcow2-overlay-on-shared-files", workload: "mixed", settle: 3, fileDisk: true, overlay: true,
			opts:  harness.MigrateOpts{Params: map[string]any{"max-bandwidth": 60_000_000}},
			check: requireRefs,
		}),
	}, faultCases()...)
}

func nasmigBothSides(c e2eCase) e2eCase { c.src, c.dst = nasmigOn, nasmigOn; return c }

// requirePostcopyFill: the migration went through postcopy with references
// left to fill, filled them all, and none failed verification.
func requirePostcopyFill(t *testing.T, o outcome) {
	t.Helper()
	requireRefs(t, o)
	if o.dst.FilledAfterSwitchover == 0 || o.dst.VerifyFailures != 0 || o.dst.PendingPages != 0 {
		t.Errorf("filled-after-switchover %d, verify-failures %d, pending %d: want > 0, 0, 0", o.dst.FilledAfterSwitchover, o.dst.VerifyFailures, o.dst.PendingPages)
	}
	if ram := o.result.Source.RAM; ram == nil || ram.PostcopyBytes == 0 && !slices.Contains(o.result.Source.StatusPath, "postcopy-active") {
		t.Errorf("the migration never entered postcopy (status path %v)", o.result.Source.StatusPath)
	}
	t.Logf("after the switch (%d ms into the migration): %d filled from storage, %d from the source; %d of %d fetched in all",
		o.src.SwitchoverMs, o.dst.FilledAfterSwitchover, o.dst.FromSourceAfterSwitchover, o.dst.FetchedPages, o.src.RefPages)
	t.Logf("faults on waiting pages: %d served from storage, %d from the source; latency median %d us, p99 %d us, max %d us",
		o.dst.FaultsFromStorage, o.dst.FaultsFromSource, o.dst.FaultLatencyMedianUs, o.dst.FaultLatencyP99Us, o.dst.FaultLatencyMaxUs)
	if o.src.SwitchoverMs == 0 || o.src.SwitchoverMs > o.result.Source.TotalTime {
		t.Errorf("source switchover-ms %d of total %d ms: want the time of the switch to postcopy", o.src.SwitchoverMs, o.result.Source.TotalTime)
	}
}

// requireFilledAfter adds to requirePostcopyFill that every reference was
// filled or its page sent whole.
func requireFilledAfter(t *testing.T, o outcome) {
	t.Helper()
	requirePostcopyFill(t, o)
	// Handed back before the switch, those came whole (before it, or in
	// postcopy after the switch's discard cancelled their references).
	if got := o.dst.FetchedPages + o.dst.FromSourceAfterSwitchover + o.dst.HandedBack + guestChanged(o); got < o.src.RefPages {
		t.Errorf("fetched %d + from the source %d + handed back %d (+ %d the guest changed) of %d references: some never filled",
			o.dst.FetchedPages, o.dst.FromSourceAfterSwitchover, o.dst.HandedBack, guestChanged(o), o.src.RefPages)
	}
}

// guestChanged counts the mapped pages the guest changed during the
// migration (a write to their block, or new content at send): a reference
// sent before such a change is superseded by the page in full and never
// fetched, so exact fetch counts allow that many missing.
func guestChanged(o outcome) int64 { return o.src.Invalidations + o.src.RefMisses }

// destinationLacksDiskFlow: the destination cannot reach the source's shared
// disk (its drive is another server's export) and runs with strict=on.  The
// setup must fail with a message naming the disk, in the destination's log
// and in the source's error-desc, and the source must keep running.
func destinationLacksDiskFlow(t *testing.T, ctx context.Context, p *pair) {
	result, err := p.migrate(t, ctx)
	if err == nil {
		t.Fatalf("migration to a destination without the shared disk completed (source status %s)", result.Status())
	}
	p.fig.result = "failed as expected"
	var reasons []string
	for _, line := range strings.Split(p.dst.LogTail(50), "\n") {
		if strings.Contains(line, "not usable here") {
			reasons = append(reasons, line)
		}
	}
	if result != nil && !strings.Contains(result.Source.ErrorDesc, "not usable here") {
		t.Errorf("the source's error-desc does not carry the destination's reason: %q", result.Source.ErrorDesc)
	}
	if len(reasons) == 0 {
		t.Errorf("the destination's log does not say which shared disk it lacks:\n%s", p.dst.LogTail(20))
	} else {
		t.Logf("destination refused: %s", reasons[0])
		p.fig.note = truncate(reasons[0], 80)
	}
	expectSourceAlive(t, ctx, p)
}

func requireNoRefs(t *testing.T, o outcome) {
	t.Helper()
	if o.src.RefPages != 0 {
		t.Errorf("%d references to an excluded disk", o.src.RefPages)
	}
}

// excludeFlow migrates and checks the source's log: exclude= names that
// match no disk are reported (unmatched), and no others.
func excludeFlow(unmatched string) func(t *testing.T, ctx context.Context, p *pair) {
	return func(t *testing.T, ctx context.Context, p *pair) {
		migrateAndCheck(t, ctx, p)
		log := p.src.LogTail(400)
		for _, name := range p.c.exclude {
			name = strings.ReplaceAll(name, "$IMAGE", p.image)
			reported := strings.Contains(log, `"exclude":"`+name+`","disks"`)
			if reported != (name == unmatched) {
				t.Errorf("exclude=%s: reported as matching no disk: %v, want %v:\n%s", name, reported, name == unmatched, p.src.LogTail(20))
			}
		}
	}
}

// continuousReaderFlow: the guest's readers re-map pages all through the
// migration, and the switchover hold must still end.  The destination's
// figures at its verification gate (downtime) are logged: references
// still to fetch there, and how long it waited.
func continuousReaderFlow(t *testing.T, ctx context.Context, p *pair) {
	o := migrateAndCompare(t, ctx, p)
	requireRefs(t, o)
	t.Logf("continuous reader: %d references, %d fetched, %d superseded or recovered (fallbacks %d), ref-misses %d",
		o.src.RefPages, o.dst.FetchedPages, o.src.RefPages-o.dst.FetchedPages, o.dst.Fallbacks, o.src.RefMisses)
	ev := libraryEvent(t, p.dst, "incoming migration ended", 10*time.Second)
	t.Logf("destination at the verification gate: %v references still to fetch, waited %v s; %v references after the fetch first caught up",
		ev["fetch_pending_at_gate"], ev["verification_gate_wait"], ev["refs_after_caught_up"])
	resumeAndVerify(t, ctx, p)
}

func requireRefs(t *testing.T, o outcome) {
	t.Helper()
	if o.src.RefPages <= 0 {
		t.Errorf("source ref-pages = %d, want > 0 (disk-refs %+v)", o.src.RefPages, o.src)
	}
}

func requireRefsAndFetched(t *testing.T, o outcome) {
	t.Helper()
	requireRefs(t, o)
	checkFetched(t, o)
	if o.dst.VerifyFailures != 0 {
		t.Errorf("destination verify-failures = %d, want 0", o.dst.VerifyFailures)
	}
}

// checkFetched: every reference is fetched or, handed back by a fetch
// that fell behind the link, sent in full, except one superseded by a
// later record for the same page (the guest changed the page and the source
// sent it again before the destination had read the block): a few in a
// thousand at most for these guests.  RAM compared byte for byte is what
// proves the pages right.
func checkFetched(t *testing.T, o outcome) {
	t.Helper()
	covered := o.dst.FetchedPages + o.src.SentFull
	if o.dst.FetchedPages > o.src.RefPages || covered*1000 < o.src.RefPages*999 {
		t.Errorf("destination fetched %d pages and the source sent %d in full of %d references: want all but a few superseded",
			o.dst.FetchedPages, o.src.SentFull, o.src.RefPages)
	} else if o.dst.FetchedPages != o.src.RefPages {
		t.Logf("%d of %d references superseded by a later record for the same page", o.src.RefPages-o.dst.FetchedPages, o.src.RefPages)
	}
}

// TestMigrations runs the table, one case at a time, and prints a summary.
func TestMigrations(t *testing.T) {
	env := harness.EnvFromOS()
	if reason := env.SkipReason(); reason != "" {
		t.Skip("skipping: " + reason)
	}
	if err := env.Check(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	probe := env.ProbeConfig()
	probe.Log = logWriter{t}
	accel, err := harness.ProbeAccel(ctx, probe)
	if err != nil {
		t.Fatal(err)
	}

	var summary []*figures
	t.Cleanup(func() { printSummary(t, accel.Accel, summary) })
	for _, c := range cases() {
		f := &figures{name: c.name}
		summary = append(summary, f)
		t.Run(c.name, func(t *testing.T) {
			started := time.Now()
			f.ran = true
			defer func() {
				f.took = time.Since(started)
				if t.Failed() {
					f.result = "FAIL"
				} else if t.Skipped() {
					f.result = "SKIPPED (see its log)"
				} else if f.result == "" {
					f.result = "pass"
				}
				t.Logf("case %s took %.1f s: status %s, total-time %d ms, downtime %d ms, transferred %s, ref-pages %d, fetched-pages %d %s",
					c.name, f.took.Seconds(), f.status, f.totalTimeMs, f.downtimeMs, mib(f.transferred), f.refPages, f.fetchedPages, f.note)
			}()
			runCase(t, env, accel.Accel, c, f)
		})
	}
}

func printSummary(t *testing.T, accel string, summary []*figures) {
	var b strings.Builder
	fmt.Fprintf(&b, "summary (accelerator %s, guest %d MiB, nasmig.mib %d; figures from the source's query-migrate, fetched-pages from the destination's):\n", accel, guestMemMiB, guestMiB)
	fmt.Fprintf(&b, "%-30s %8s %-22s %-10s %10s %9s %12s %10s %10s  %s\n",
		"case", "took", "result", "status", "total-time", "downtime", "transferred", "ref-pages", "fetched", "note")
	for _, f := range summary {
		if !f.ran {
			continue
		}
		fmt.Fprintf(&b, "%-30s %7.1fs %-22s %-10s %8dms %7dms %12s %10d %10d  %s\n",
			f.name, f.took.Seconds(), f.result, f.status, f.totalTimeMs, f.downtimeMs, mib(f.transferred), f.refPages, f.fetchedPages, f.note)
	}
	t.Log(b.String())
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// logWriter sends the accelerator probe's line to the test log.
type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// pair is a case's running test bed: storage, source and destination.
type pair struct {
	c       e2eCase
	env     harness.Env
	run     *harness.Run
	image   string // the private image copy
	storage *harness.StorageDaemon
	network *harness.Network // with e2eCase.network
	src     *harness.VM
	dst     *harness.VM
	dstCfg  harness.VMConfig // how dst was started, for further destinations
	ready   harness.SerialLine
	fig     *figures
}

func runCase(t *testing.T, env harness.Env, accel string, c e2eCase, f *figures) {
	ctx, cancel := context.WithTimeout(context.Background(), caseTimeout)
	defer cancel()
	if c.format == "" {
		c.format = harness.FormatRaw
	}
	if c.bus == "" {
		c.bus = harness.BusVirtio
	}
	if c.opts.Timeout == 0 {
		c.opts.Timeout = 3 * time.Minute // these migrations take seconds
	}
	if c.needsQEMUASan && env.QEMUASan == "" {
		t.Skip("skipping: needs a QEMU built with AddressSanitizer (NASMIG_QEMU_ASAN); ./build.sh test-full builds one and runs this case")
	}
	if c.fullOnly != "" && os.Getenv("NASMIG_E2E_FULL") != "1" {
		t.Skipf("SKIPPED in ./build.sh test (CI's time budget): %s; ./build.sh test-full runs it (NASMIG_E2E_FULL=1)", c.fullOnly)
	}
	extraPluginArgs = nil
	p := &pair{c: c, env: env, run: harness.NewTestRun(t, env), fig: f}
	p.run.Logf("case %s: workload %s, %s on %s, source %s, destination %s", c.name, c.workload, c.format, c.bus, c.src, c.dst)

	var err error
	if p.image, err = p.run.CopyImage(ctx, env.DataImage(c.format), "data."+c.format); err != nil {
		t.Fatal(err)
	}
	srcCfg := env.VMConfig("src", accel, guestMemMiB, harness.GuestCmdline(c.workload, guestMiB, true))
	switch {
	case c.fileDisk:
		disk := &harness.DiskConfig{URI: p.image, Format: c.format, Bus: c.bus, CacheDirect: true}
		if c.overlay {
			overlay := p.run.Path("overlay.qcow2")
			out, err := exec.CommandContext(ctx, env.QEMUImgBinary(), "create", "-q", "-f", "qcow2",
				"-b", p.image, "-F", c.format, overlay).CombinedOutput()
			if err != nil {
				t.Fatalf("qemu-img create overlay: %v: %s", err, out)
			}
			p.run.Scratch(overlay)
			disk.URI, disk.Format = overlay, harness.FormatQcow2
		}
		srcCfg.Disk = disk
	default:
		// The file node is exported: for qcow2 the QEMUs run the qcow2
		// driver over NBD, and references name offsets in the qcow2 file.
		storageCfg := harness.StorageConfig{
			Binary: env.StorageDaemonBinary(), Image: p.image, Format: c.format, CacheDirect: true,
			Throttle: c.slowStorage > 0,
		}
		if c.network != "" {
			prof, ok := harness.NetProfileByName(c.network)
			if !ok {
				t.Fatalf("case %s: no network profile %q", c.name, c.network)
			}
			if p.network, err = harness.NewNetwork(ctx, fmt.Sprintf("nasmige%d", os.Getpid()), prof); err != nil {
				t.Fatal(err)
			}
			p.run.AddCleanup("network", p.network.Close)
			storageCfg.NetNS, storageCfg.Listen = p.network.Storage, p.network.StorageAddr+":10809"
			srcCfg.NetNS = p.network.Src
			p.c.opts.URI = "tcp:" + p.network.MigrationAddr + ":4444"
		}
		if p.storage, err = p.run.StartStorage(ctx, storageCfg); err != nil {
			t.Fatal(err)
		}
		srcCfg.Disk = p.storage.Disk(c.bus)
	}
	srcCfg.Disk.IOThread = c.iothread
	if c.uefi {
		if _, err := os.Stat(ovmfCode); err != nil {
			t.Fatalf("UEFI case: %v (Debian's ovmf package, installed by build.sh)", err)
		}
		args, err := uefiArgs(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		srcCfg.ExtraArgs = append(srcCfg.ExtraArgs, args...)
	}
	for _, name := range c.exclude {
		extraPluginArgs = append(extraPluginArgs, "exclude="+strings.ReplaceAll(name, "$IMAGE", p.image))
	}
	for _, a := range c.pluginArgs {
		extraPluginArgs = append(extraPluginArgs, strings.ReplaceAll(a, "$RUN", p.run.Dir))
	}
	if c.hotplug {
		args, err := hotplugArgs(p)
		if err != nil {
			t.Fatal(err)
		}
		srcCfg.ExtraArgs = append(srcCfg.ExtraArgs, args...)
	}
	if c.sharedMemory {
		srcCfg.ExtraArgs = append(srcCfg.ExtraArgs,
			"-object", fmt.Sprintf("memory-backend-memfd,id=guest-ram,size=%dM,share=on", guestMemMiB),
			"-machine", "memory-backend=guest-ram")
	}
	if c.dimm {
		srcCfg.MemSlots, srcCfg.MaxMemMiB = 2, guestMemMiB+2*dimmMiB
		srcCfg.Append += " memhp_default_state=online_movable"
	}
	c.src.apply(&srcCfg, env)
	// What the source alone gets: apply gives the destination its own
	// plugin arguments, and dstCfg starts from srcCfg.
	startCfg := srcCfg
	if c.debugSocket && srcCfg.Plugin != "" {
		startCfg.PluginArgs = append(slices.Clone(srcCfg.PluginArgs), "debug-socket="+p.run.SocketPath(srcDebugSocket))
	}
	if c.dimm {
		startCfg.ExtraArgs = append(slices.Clone(srcCfg.ExtraArgs), dimmArgs()...)
	}
	if c.srcFault != "" {
		startCfg.Env = append(slices.Clone(srcCfg.Env), cshim.FaultEnv+"="+c.srcFault)
	}
	if p.src, err = p.run.StartVM(ctx, startCfg); err != nil {
		t.Fatal(err)
	}
	// SeaBIOS spends ~32 s probing an AHCI disk before the kernel starts.
	bootCtx, cancelBoot := context.WithTimeout(ctx, 2*time.Minute)
	_, err = p.src.WaitLine(bootCtx, harness.LineBoot)
	cancelBoot()
	if err != nil {
		t.Fatalf("guest did not boot: %v", err)
	}
	readyCtx, cancelReady := context.WithTimeout(ctx, 3*time.Minute)
	p.ready, err = p.src.WaitLineAfter(readyCtx, 0, harness.LineReady, harness.LineFail)
	cancelReady()
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasPrefix(p.ready.Text, harness.LineFail) {
		t.Fatalf("guest gave up before ready: %s", p.ready.Text)
	}
	t.Logf("source ready after %.1f s: %s", p.ready.At.Seconds(), p.ready.Text)
	// Migrate a guest that is visibly alive, after the case's settle time.
	mark := p.ready.Index
	for i := 0; i < max(c.settle, 1); i++ {
		beatCtx, cancelBeat := context.WithTimeout(ctx, 30*time.Second)
		line, err := p.src.WaitLineAfter(beatCtx, mark, harness.LineHeartbeat)
		cancelBeat()
		if err != nil {
			t.Fatal(err)
		}
		mark = line.Index + 1
	}

	dstCfg := srcCfg
	dstCfg.Name = "dst"
	dstCfg.Incoming = true
	if p.network != nil {
		dstCfg.NetNS = p.network.Dst
	}
	if c.dstOwnDisk {
		other, err := p.run.CopyImage(ctx, env.DataImage(c.format), "other."+c.format)
		if err != nil {
			t.Fatal(err)
		}
		otherStorage, err := p.run.StartStorage(ctx, harness.StorageConfig{
			Name: "other-storage", Binary: env.StorageDaemonBinary(), Image: other, Format: c.format, CacheDirect: true,
		})
		if err != nil {
			t.Fatal(err)
		}
		dstCfg.Disk = otherStorage.Disk(c.bus)
	}
	c.dst.apply(&dstCfg, env)
	p.dstCfg = dstCfg
	if c.dstFault != "" {
		// Only this destination: a retry's starts from p.dstCfg.
		dstCfg.Env = append(slices.Clone(dstCfg.Env), cshim.FaultEnv+"="+c.dstFault)
	}
	if p.dst, err = p.run.StartVM(ctx, dstCfg); err != nil {
		t.Fatal(err)
	}

	flow := c.flow
	if flow == nil {
		flow = migrateAndCheck
	}
	flow(t, ctx, p)
}

// newDestination starts another incoming QEMU like the case's first
// destination (without its faults), named name, as p.dst.
func (p *pair) newDestination(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	cfg := p.dstCfg
	cfg.Name = name
	vm, err := p.run.StartVM(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	p.dst = vm
}

// migrate runs the migration, keeps both sides' final query-migrate in
// migration.json and takes the figures.
func (p *pair) migrate(t *testing.T, ctx context.Context) (*harness.MigrationResult, error) {
	t.Helper()
	result, err := harness.Migrate(ctx, p.src, p.dst, p.c.opts)
	p.finish(t, result)
	return result, err
}

func (p *pair) finish(t *testing.T, result *harness.MigrationResult) {
	t.Helper()
	if result == nil {
		return
	}
	if err := p.run.SaveJSON("migration.json", result); err != nil {
		t.Error(err)
	}
	p.fig.take(result)
	o := outcomeOf(result)
	t.Logf("source: %s, status path %v, total %d ms, downtime %d ms, setup %d ms; disk-refs %+v",
		result.Source.Status, result.Source.StatusPath, result.Source.TotalTime, result.Source.Downtime, result.Source.SetupTime, o.src)
	if ram := result.Source.RAM; ram != nil {
		t.Logf("source ram: transferred %s, normal %d pages, duplicate %d pages, multifd %s, dirty-sync-count %d",
			mib(ram.Transferred), ram.Normal, ram.Duplicate, mib(ram.MultifdBytes), ram.DirtySyncCount)
	}
	t.Logf("destination: %s, status path %v; disk-refs %+v", result.Destination.Status, result.Destination.StatusPath, o.dst)
	for _, side := range []harness.MigrationInfo{result.Source, result.Destination} {
		if side.ErrorDesc != "" {
			t.Logf("%s error-desc: %s", side.VMName, side.ErrorDesc)
		}
	}
}

// migrateAndCheck is the normal flow: migrate, both sides paused, RAM
// identical, the case's counters, then the destination runs on: heartbeat
// and verify.
func migrateAndCheck(t *testing.T, ctx context.Context, p *pair) {
	o := migrateAndCompare(t, ctx, p)
	if p.c.check != nil {
		p.c.check(t, o)
	}
	resumeAndVerify(t, ctx, p)
}

// migrateAndCompare migrates; both sides must end paused with identical
// RAM.  Each after function runs once the migration ended, before the checks.
func migrateAndCompare(t *testing.T, ctx context.Context, p *pair, after ...func()) outcome {
	t.Helper()
	result, err := p.migrate(t, ctx)
	for _, f := range after {
		f()
	}
	if err != nil {
		t.Fatal(err)
	}
	expectStatus(t, ctx, p.src, "postmigrate")
	expectStatus(t, ctx, p.dst, "paused")
	compareRAM(t, ctx, p)
	return outcomeOf(result)
}

func expectStatus(t *testing.T, ctx context.Context, vm *harness.VM, want string) {
	t.Helper()
	status, err := vm.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if status != want {
		t.Fatalf("vm %s is %q, want %q", vm.Config.Name, status, want)
	}
}

func compareRAM(t *testing.T, ctx context.Context, p *pair) {
	t.Helper()
	diff, err := p.run.CompareRAM(ctx, p.src, p.dst)
	if err != nil {
		t.Fatal(err)
	}
	if !diff.Equal() {
		t.Fatalf("guest RAM differs between source and destination (ramdiff.txt in %s):\n%s", p.run.Dir, diff)
	}
	t.Logf("%s", diff)
}

// resumeAndVerify lets the destination run: its heartbeat must continue past
// the source's last one and the guest must verify its data.
func resumeAndVerify(t *testing.T, ctx context.Context, p *pair) {
	t.Helper()
	lastSourceBeat, ok := p.src.Heartbeat()
	if !ok {
		t.Fatal("source printed no heartbeat")
	}
	mark := p.dst.Serial.Mark()
	if err := p.dst.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	beats := waitBeats(t, ctx, p.dst, mark, 2)
	if beats[0] <= lastSourceBeat || beats[1] <= beats[0] {
		t.Fatalf("heartbeats: source's last %d, destination's %v: want increasing past the source's", lastSourceBeat, beats)
	}
	t.Logf("heartbeat: source's last n=%d, destination n=%v", lastSourceBeat, beats)
	verifyCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	checked, err := p.dst.Verify(verifyCtx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("verify: PASS, checked=%d", checked)
}

// waitBeats returns the next n heartbeat counts vm prints after mark.
func waitBeats(t *testing.T, ctx context.Context, vm *harness.VM, mark, n int) []int64 {
	t.Helper()
	var beats []int64
	for len(beats) < n {
		beatCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		line, err := vm.WaitLineAfter(beatCtx, mark, harness.LineHeartbeat)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		mark = line.Index + 1
		if beat, ok := harness.ParseHeartbeat(line.Text); ok {
			beats = append(beats, beat)
		}
	}
	return beats
}

// expectSourceAlive asserts that the source runs after a failed migration:
// query-status "running" and a heartbeat that still increases.
func expectSourceAlive(t *testing.T, ctx context.Context, p *pair) {
	t.Helper()
	expectStatus(t, ctx, p.src, "running")
	last, _ := p.src.Heartbeat()
	beats := waitBeats(t, ctx, p.src, p.src.Serial.Mark(), 2)
	if beats[0] <= last || beats[1] <= beats[0] {
		t.Fatalf("source heartbeats after the failed migration: last before %d, then %v: want increasing", last, beats)
	}
	t.Logf("source still running: query-status running, heartbeat %d -> %v", last, beats)
}

// staleReferenceFlow changes blocks the guest has in its page cache behind
// QEMU's back, through a second NBD client, while a slow migration sends
// references to them. The destination must not end up with the new disk
// content in RAM: either the migration completes with identical RAM after
// the destination noticed (fallbacks or verify failures), or it fails and
// the source keeps running.
func staleReferenceFlow(t *testing.T, ctx context.Context, p *pair) {
	extents, err := readFileExtents(ctx, p.image, "/files", 128<<20)
	if err != nil {
		t.Fatalf("find the disk blocks the guest read: %v", err)
	}
	var total int64
	for _, e := range extents {
		total += e.length
	}
	t.Logf("will overwrite %d extents of the first files under /files (%s, disk offsets %#x..%#x), which pagecache-read reads first",
		len(extents), mib(total), extents[0].offset, extents[len(extents)-1].offset+extents[len(extents)-1].length)

	type migrated struct {
		result *harness.MigrationResult
		err    error
	}
	done := make(chan migrated, 1)
	go func() {
		result, err := harness.Migrate(ctx, p.src, p.dst, p.c.opts)
		done <- migrated{result, err}
	}()

	// Overwrite once the source has sent references, so that some are
	// stale by the time the destination reads them.
	var sawRefs int64
	var m *migrated
	poll := time.NewTicker(50 * time.Millisecond)
	defer poll.Stop()
	for sawRefs == 0 && m == nil {
		select {
		case r := <-done:
			m = &r
		case <-poll.C:
			info, err := harness.QueryMigrate(ctx, p.src)
			if err != nil {
				t.Fatal(err)
			}
			if info.DiskRefs != nil && info.DiskRefs.RefPages > 0 {
				sawRefs = info.DiskRefs.RefPages
				t.Logf("source has sent %d references (status %s, transferred %s): overwriting", sawRefs, info.Status,
					func() string {
						if info.RAM == nil {
							return "?"
						}
						return mib(info.RAM.Transferred)
					}())
			}
		}
	}
	if m != nil {
		p.finish(t, m.result)
		t.Fatalf("the migration ended before the source sent any reference: %v", m.err)
	}
	started := time.Now()
	if err := overwrite(ctx, p.storage, extents); err != nil {
		t.Fatal(err)
	}
	t.Logf("overwrote %s through a second NBD client in %.1f s", mib(total), time.Since(started).Seconds())
	if info, err := harness.QueryMigrate(ctx, p.src); err == nil && info.DiskRefs != nil {
		t.Logf("after the overwrite: source status %s, ref-pages %d", info.Status, info.DiskRefs.RefPages)
	}

	r := <-done
	p.finish(t, r.result)
	o := outcomeOf(r.result)
	switch {
	case r.err == nil:
		p.fig.result = "(a) completed"
		t.Logf("path (a): migration completed; destination fallbacks %d, verify-failures %d", o.dst.Fallbacks, o.dst.VerifyFailures)
		expectStatus(t, ctx, p.src, "postmigrate")
		expectStatus(t, ctx, p.dst, "paused")
		compareRAM(t, ctx, p)
		if o.dst.Fallbacks == 0 && o.dst.VerifyFailures == 0 {
			t.Errorf("migration completed with identical RAM but the destination reports no fallback and no verify failure: the overwrite hit no reference in flight, the case proved nothing")
		}
		resumeAndVerify(t, ctx, p)
	case errors.Is(r.err, harness.ErrMigrationFailed) && r.result != nil && r.result.Source.Status == "failed":
		p.fig.result = "(b) failed, src runs"
		p.fig.note = fmt.Sprintf("dst verify-failures %d, fallbacks %d", o.dst.VerifyFailures, o.dst.Fallbacks)
		t.Logf("path (b): migration failed: %v", r.err)
		t.Logf("destination: verify-failures %d, fallbacks %d, fetched-pages %d", o.dst.VerifyFailures, o.dst.Fallbacks, o.dst.FetchedPages)
		expectSourceAlive(t, ctx, p)
	default:
		// Say what state the guest is left in (with the source
		// "completed", i.e. postmigrate, and the destination failed, it
		// runs nowhere), and dump the stacks of a QEMU that no longer
		// answers QMP.
		srcStatus := quickStatus(ctx, t, p, p.src)
		dstStatus := quickStatus(ctx, t, p, p.dst)
		// The side that still answers holds the other half of a hang.
		for _, vm := range []*harness.VM{p.src, p.dst} {
			path := p.run.Path(vm.Config.Name + ".stacks.txt")
			if _, err := os.Stat(path); err == nil {
				continue
			}
			if stacks, err := dumpStacks(ctx, vm, path); err == nil {
				t.Logf("vm %s answers; its thread stacks in %s", vm.Config.Name, stacks)
			}
		}
		srcMig, dstMig := "?", "?"
		if r.result != nil {
			srcMig, dstMig = r.result.Source.Status, r.result.Destination.Status
		}
		p.fig.result = "neither (a) nor (b)"
		p.fig.note = fmt.Sprintf("src %s/%s, dst %s/%s, dst verify-failures %d", srcMig, srcStatus, dstMig, dstStatus, o.dst.VerifyFailures)
		t.Logf("source QEMU's log, last lines:\n%s", p.src.LogTail(25))
		t.Logf("destination QEMU's log, last lines:\n%s", p.dst.LogTail(25))
		t.Fatalf("neither outcome: migration source status %q with query-status %q, destination status %q with query-status %q "+
			"(destination verify-failures %d, fallbacks %d): want (a) completed on both sides with identical RAM, or (b) "+
			"failed on the source with the source running; error: %v",
			srcMig, srcStatus, dstMig, dstStatus, o.dst.VerifyFailures, o.dst.Fallbacks, r.err)
	}
}

// returnPathLostFlow: case 16k.  Both sides must reach postcopy-paused
// (the source saying why), then migrate-recover on the destination and
// migrate resume=true on the source over a new socket must complete the
// migration, the RAM identical and the guest running on there.
func returnPathLostFlow(t *testing.T, ctx context.Context, p *pair) {
	if err := p.storage.SetReadLimit(ctx, p.c.slowStorage); err != nil {
		t.Fatal(err)
	}
	startMigration(t, ctx, p, "migrate.sock")
	pauseCtx, cancel := context.WithTimeout(ctx, 90*time.Second)
	seen := waitSourceStatus(t, pauseCtx, p, "postcopy-paused")
	cancel()
	info, err := harness.QueryMigrate(ctx, p.src)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("source paused after %v: %s", seen, info.ErrorDesc)
	if !strings.Contains(p.src.LogTail(200), "the return path ended") {
		t.Errorf("the source's log does not say the return path ended:\n%s", p.src.LogTail(20))
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		d, err := harness.QueryMigrate(ctx, p.dst)
		if err != nil {
			t.Fatal(err)
		}
		if d.Status == "postcopy-paused" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("destination %s (%s), 30 s after the source paused: want postcopy-paused", d.Status, d.ErrorDesc)
		}
	}
	if err := p.storage.SetReadLimit(ctx, 0); err != nil {
		t.Error(err)
	}
	uri := p.socketURI("recover.sock")
	if _, err := p.dst.QMP.Execute(ctx, "migrate-recover", map[string]any{"uri": uri}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.src.QMP.Execute(ctx, "migrate", map[string]any{"uri": uri, "resume": true}); err != nil {
		t.Fatal(err)
	}
	result := waitBothEnd(t, ctx, p, uri, seen)
	if result.Source.Status != "completed" || result.Destination.Status != "completed" {
		t.Fatalf("after the recovery: source %s (%s), destination %s (%s)",
			result.Source.Status, result.Source.ErrorDesc, result.Destination.Status, result.Destination.ErrorDesc)
	}
	requireFaultFired(t, p.src, "outgoing migration ended", "rp-page-request-fails")
	expectStatus(t, ctx, p.src, "postmigrate")
	expectStatus(t, ctx, p.dst, "paused")
	compareRAM(t, ctx, p)
	o := outcomeOf(result)
	if o.dst.PendingPages != 0 {
		t.Errorf("destination pending-pages %d: want 0", o.dst.PendingPages)
	}
	t.Logf("destination: %d verify failures, %d filled and %d from the source after the switch",
		o.dst.VerifyFailures, o.dst.FilledAfterSwitchover, o.dst.FromSourceAfterSwitchover)
	resumeAndVerify(t, ctx, p)
}

// quickStatus asks vm's run state with a 5 s limit. A QEMU that does not
// answer has a blocked main loop: its thread stacks go to NAME.stacks.txt
// in the run folder (gdb, when installed), and the answer says so.
func quickStatus(ctx context.Context, t *testing.T, p *pair, vm *harness.VM) string {
	t.Helper()
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	status, err := vm.Status(qctx)
	if err == nil {
		return status
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		return "error: " + err.Error()
	}
	answer := "no answer to QMP in 5 s"
	if stacks, dumpErr := dumpStacks(ctx, vm, p.run.Path(vm.Config.Name+".stacks.txt")); dumpErr != nil {
		t.Logf("vm %s hangs; no stack dump: %v", vm.Config.Name, dumpErr)
	} else {
		answer += " (thread stacks in " + stacks + ")"
		t.Logf("vm %s hangs: thread stacks in %s", vm.Config.Name, stacks)
	}
	return answer
}

// dumpStacks writes every thread's backtrace of vm's QEMU to path with gdb.
func dumpStacks(ctx context.Context, vm *harness.VM, path string) (string, error) {
	gdb, err := exec.LookPath("gdb")
	if err != nil {
		return "", err
	}
	if vm.PID() == 0 {
		return "", errors.New("no process")
	}
	dctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(dctx, gdb, "-p", strconv.Itoa(vm.PID()), "-batch", "-nx",
		"-ex", "set pagination off", "-ex", "thread apply all bt").CombinedOutput()
	if writeErr := os.WriteFile(path, out, 0o644); writeErr != nil {
		return "", writeErr
	}
	if err != nil {
		return path, fmt.Errorf("gdb: %w (output in %s)", err, path)
	}
	return path, nil
}

// capabilityMismatchFlow: the source offers disk references, the
// destination has no plugin. The migration must fail, saying why, and the
// source must keep running.
func capabilityMismatchFlow(t *testing.T, ctx context.Context, p *pair) {
	result, err := p.migrate(t, ctx)
	if err == nil {
		t.Fatalf("migration to a destination without nasmig completed (source status %s)", result.Status())
	}
	msg := err.Error()
	if result != nil {
		msg += " | " + result.Source.ErrorDesc + " | " + result.Destination.ErrorDesc
		if result.Source.Status != "failed" {
			t.Errorf("source migration status %q, want failed", result.Source.Status)
		}
		for _, status := range result.Source.StatusPath {
			if status == "device" || status == "completed" {
				t.Errorf("source reached %q (status path %v): want a failure at setup", status, result.Source.StatusPath)
			}
		}
	}
	t.Logf("migration failed as it should: %v", err)
	p.fig.result = "failed as expected"
	// The reason must reach the operator: in the errors QMP reports, or
	// at least in a QEMU's log (QEMU reports a mismatch found in the
	// stream's configuration section only there; query-migrate then says
	// "load of migration failed: Invalid argument").
	switch {
	case namesDiskRefs(msg):
		p.fig.note = "QMP error: " + truncate(msg, 80)
		t.Logf("the QMP-visible error names the cause: %s", msg)
	default:
		var found []string
		for _, vm := range []*harness.VM{p.src, p.dst} {
			for _, line := range strings.Split(vm.LogTail(50), "\n") {
				if namesDiskRefs(line) && !strings.Contains(line, `"component":"nasmig"`) {
					found = append(found, vm.Config.Name+": "+line)
				}
			}
		}
		if len(found) == 0 {
			t.Errorf("neither the migration errors nor the QEMU logs name x-disk-refs or nasmig: %s", msg)
			break
		}
		p.fig.note = "only in QEMU log: " + truncate(found[0], 70)
		t.Logf("query-migrate's errors do not name the cause (%s); the QEMU log does: %s", msg, strings.Join(found, "; "))
	}
	expectSourceAlive(t, ctx, p)
}

// namesDiskRefs: s names the capability or nasmig as a word (not as part
// of a run folder's path, "nasmig-TestMigrations...").
func namesDiskRefs(s string) bool { return diskRefsWord.MatchString(s) }

var diskRefsWord = regexp.MustCompile(`(?i)x-disk-refs|libnasmig|(^|[^-/\w])nasmig([^-\w]|$)`)

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// extent is a byte range of the disk image.
type extent struct{ offset, length int64 }

var extentLine = regexp.MustCompile(`^\s*\d+/\s*\d+\s+\d+/\s*\d+\s+\d+\s*-\s*\d+\s+(\d+)\s*-\s*(\d+)\s+(\d+)`)

// readFileExtents returns the disk extents of the first files (by name) in
// dir of the ext4 image, up to at least want bytes, read with debugfs
// (e2fsprogs). pagecache-read reads dir's files in this order first.
func readFileExtents(ctx context.Context, image, dir string, want int64) ([]extent, error) {
	blockSize, err := ext4BlockSize(ctx, image)
	if err != nil {
		return nil, err
	}
	listing, err := debugfs(ctx, image, "ls -p "+dir)
	if err != nil {
		return nil, err
	}
	// ls -p: /inode/mode/uid/gid/name/size/
	var names []string
	for _, line := range strings.Split(listing, "\n") {
		fields := strings.Split(strings.TrimSpace(line), "/")
		if len(fields) >= 7 && strings.HasSuffix(fields[5], ".bin") {
			names = append(names, fields[5])
		}
	}
	sort.Strings(names)
	var extents []extent
	var total int64
	for _, name := range names {
		if total >= want {
			break
		}
		out, err := debugfs(ctx, image, "ex "+dir+"/"+name)
		if err != nil {
			return nil, err
		}
		for _, line := range strings.Split(out, "\n") {
			m := extentLine.FindStringSubmatch(line)
			if m == nil {
				continue
			}
			start, _ := strconv.ParseInt(m[1], 10, 64)
			length, _ := strconv.ParseInt(m[3], 10, 64)
			extents = append(extents, extent{offset: start * blockSize, length: length * blockSize})
			total += length * blockSize
		}
	}
	if total == 0 {
		return nil, fmt.Errorf("no extents found for the files in %s of %s", dir, image)
	}
	return extents, nil
}

func ext4BlockSize(ctx context.Context, image string) (int64, error) {
	out, err := debugfs(ctx, image, "stats")
	if err != nil {
		return 0, err
	}
	m := regexp.MustCompile(`(?m)^Block size:\s+(\d+)`).FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("debugfs stats of %s: no block size", image)
	}
	return strconv.ParseInt(m[1], 10, 64)
}

// debugfs runs one read-only debugfs request on image.
func debugfs(ctx context.Context, image, request string) (string, error) {
	path, err := exec.LookPath("debugfs")
	if err != nil {
		// Often in /usr/sbin, which a user's PATH may lack.
		if p, sbinErr := exec.LookPath("/usr/sbin/debugfs"); sbinErr == nil {
			path, err = p, nil
		}
	}
	if err != nil {
		return "", fmt.Errorf("debugfs (e2fsprogs) is needed to find the image's file extents: %w", err)
	}
	out, err := exec.CommandContext(ctx, path, "-c", "-R", request, image).Output()
	if err != nil {
		return "", fmt.Errorf("debugfs -R %q %s: %w", request, image, err)
	}
	return string(out), nil
}

// overwrite fills the extents with a pattern no file of the data disk holds,
// through one NBD connection of its own, and flushes.
func overwrite(ctx context.Context, storage *harness.StorageDaemon, extents []extent) error {
	client, err := storage.Dial(ctx)
	if err != nil {
		return err
	}
	chunk := make([]byte, 1<<20)
	for _, e := range extents {
		for off := e.offset; off < e.offset+e.length; off += int64(len(chunk)) {
			n := min(int64(len(chunk)), e.offset+e.length-off)
			for i := int64(0); i < n; i += 8 {
				v := uint64(off+i) ^ 0x5354414c45524546 // "STALEREF"
				for j := int64(0); j < 8; j++ {
					chunk[i+j] = byte(v >> (8 * j))
				}
			}
			if _, err := client.WriteAt(chunk[:n], off); err != nil {
				client.Close()
				return err
			}
		}
	}
	if err := client.Flush(); err != nil {
		client.Close()
		return err
	}
	return client.Close()
}
