package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"time"
)

// MigrateOpts says how to migrate.
type MigrateOpts struct {
	// Caps are migration capabilities set on both sides, e.g.
	// {"x-disk-refs": true, "return-path": true}. Absent: QEMU's default.
	Caps map[string]bool
	// Params are migration parameters set on both sides, passed verbatim
	// to migrate-set-parameters, e.g. {"max-bandwidth": 125 << 20,
	// "multifd-channels": 2}.
	Params map[string]any
	// URI is the migration channel; default a unix socket next to the
	// destination's sockets.
	URI string
	// DestURI, when set, is the destination's side of the channel (for
	// exec: pairs, where each side runs its own command); default URI.
	DestURI string
	// Timeout bounds the whole migration (default 10 minutes); ctx may end
	// it earlier.
	Timeout time.Duration
	// PollInterval is how often query-migrate is polled (default 100 ms).
	PollInterval time.Duration
	// StartPostcopyAfter, when set (with capability postcopy-ram), switches
	// the migration to postcopy this long after it started.
	StartPostcopyAfter time.Duration
}

// MigrationStats is query-migrate's "ram" object.
type MigrationStats struct {
	Transferred    int64   `json:"transferred"`
	Remaining      int64   `json:"remaining"`
	Total          int64   `json:"total"`
	Duplicate      int64   `json:"duplicate"`
	Normal         int64   `json:"normal"`
	NormalBytes    int64   `json:"normal-bytes"`
	DirtySyncCount int64   `json:"dirty-sync-count"`
	PageSize       int64   `json:"page-size"`
	MultifdBytes   int64   `json:"multifd-bytes"`
	PrecopyBytes   int64   `json:"precopy-bytes"`
	DowntimeBytes  int64   `json:"downtime-bytes"`
	PostcopyBytes  int64   `json:"postcopy-bytes"`
	Mbps           float64 `json:"mbps"`
}

// XBZRLEStats is query-migrate's "xbzrle-cache" object (with capability xbzrle).
type XBZRLEStats struct {
	CacheSize int64 `json:"cache-size"`
	Bytes     int64 `json:"bytes"`
	Pages     int64 `json:"pages"`
	CacheMiss int64 `json:"cache-miss"`
	Overflow  int64 `json:"overflow"`
}

// DiskRefStats is the "disk-refs" object nasmig adds to query-migrate (see
// docs/testbed-contract.md). Stock QEMU has none. Both sides answer with the
// same object: the source fills the source counters, the destination the
// destination counters (struct nasmig_stats in cshim/nasmig.h).
type DiskRefStats struct {
	// Source.
	MappedPages   int64 `json:"mapped-pages"`    // guest pages the map covers now
	RefPages      int64 `json:"ref-pages"`       // pages sent as references
	RefBytesSaved int64 `json:"ref-bytes-saved"` // page bytes not sent because of them
	RefMisses     int64 `json:"ref-misses"`      // mapped pages whose content changed at send
	RingDrops     int64 `json:"ring-drops"`      // tracking records dropped (ring full)
	Invalidations int64 `json:"invalidations"`   // mappings dropped by disk writes
	// Destination.
	FetchedPages   int64 `json:"fetched-pages"`   // pages filled from shared storage
	FetchReads     int64 `json:"fetch-reads"`     // coalesced storage reads
	FetchBytes     int64 `json:"fetch-bytes"`     // bytes read from shared storage
	VerifyFailures int64 `json:"verify-failures"` // blocks whose hash did not match
	Fallbacks      int64 `json:"fallbacks"`       // pages re-read after the source's final flush
	FetchTimeMs    int64 `json:"fetch-time-ms"`   // first reference to last fill
	PendingPages   int64 `json:"pending-pages"`   // fills not finished yet
	SentFull       int64 `json:"sent-full"`       // mapped pages sent in full because the destination asked (source)
	HandedBack     int64 `json:"handed-back"`     // references the fetch handed back to the link (destination)
	// Postcopy with x-disk-refs-after-switchover (destination): references
	// filled after the switch, and those whose page came from the source.
	FilledAfterSwitchover     int64 `json:"filled-after-switchover"`
	FromSourceAfterSwitchover int64 `json:"from-source-after-switchover"`
	// Faults on pages still waiting for their reference: served by the
	// fill, or by the source's page; time from fault to place.
	FaultsFromStorage    int64 `json:"faults-from-storage"`
	FaultsFromSource     int64 `json:"faults-from-source"`
	FaultLatencyMedianUs int64 `json:"fault-latency-median-us"`
	FaultLatencyP99Us    int64 `json:"fault-latency-p99-us"`
	FaultLatencyMaxUs    int64 `json:"fault-latency-max-us"`
	// Source: ms from the start until the switch to postcopy (0: none).
	SwitchoverMs int64 `json:"switchover-ms"`
}

// MigrationInfo is one side's query-migrate answer. Fields QEMU left out are
// zero (nil for the objects); Raw keeps the answer as sent.
type MigrationInfo struct {
	Status     string          `json:"status"`
	TotalTime  int64           `json:"total-time"` // ms
	Downtime   int64           `json:"downtime"`   // ms
	SetupTime  int64           `json:"setup-time"` // ms
	RAM        *MigrationStats `json:"ram"`
	DiskRefs   *DiskRefStats   `json:"disk-refs"`
	XBZRLE     *XBZRLEStats    `json:"xbzrle-cache"`
	ErrorDesc  string          `json:"error-desc"`
	Raw        json.RawMessage `json:"raw"`        // the answer as QEMU sent it
	QueriedAt  time.Time       `json:"queried-at"` // when the harness asked
	VMName     string          `json:"vm"`
	StatusPath []string        `json:"status-path"` // every distinct status polling saw, in order
}

// MigrationResult holds the final query-migrate of both sides. It carries
// no timing of its own: every figure is QEMU's.
type MigrationResult struct {
	URI         string        `json:"uri"`
	Source      MigrationInfo `json:"source"`
	Destination MigrationInfo `json:"destination"`
}

// Status is the source's final status.
func (r *MigrationResult) Status() string { return r.Source.Status }

// ErrMigrationFailed is returned (wrapped, with QEMU's error-desc) when a
// migration ends in any status but "completed".
var ErrMigrationFailed = errors.New("migration failed")

// Migrate moves the guest of src to dst, which must have been started with
// Incoming. It returns the final query-migrate of both sides; on a failed
// migration it returns the result and an error wrapping ErrMigrationFailed.
func Migrate(ctx context.Context, src, dst *VM, opts MigrateOpts) (*MigrationResult, error) {
	if !dst.Config.Incoming {
		return nil, fmt.Errorf("migrate %s -> %s: destination was not started as incoming", src.Config.Name, dst.Config.Name)
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Minute
	}
	poll := opts.PollInterval
	if poll <= 0 {
		poll = 100 * time.Millisecond
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	uri := opts.URI
	if uri == "" {
		uri = "unix:" + siblingPath(dst.Paths.QMPSocket, dst.Config.Name+".migrate")
	}
	for _, vm := range []*VM{src, dst} {
		if err := configureMigration(ctx, vm, opts); err != nil {
			return nil, err
		}
	}
	// exit-on-error=false keeps a destination that fails to load alive, so
	// the harness can still read its query-migrate error and logs.
	destURI := opts.DestURI
	if destURI == "" {
		destURI = uri
	}
	if _, err := dst.QMP.Execute(ctx, "migrate-incoming", map[string]any{"uri": destURI, "exit-on-error": false}); err != nil {
		return nil, fmt.Errorf("vm %s: %w", dst.Config.Name, err)
	}
	if _, err := src.QMP.Execute(ctx, "migrate", map[string]any{"uri": uri}); err != nil {
		return nil, fmt.Errorf("vm %s: %w", src.Config.Name, err)
	}

	if opts.StartPostcopyAfter > 0 {
		select {
		case <-time.After(opts.StartPostcopyAfter):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if _, err := src.QMP.Execute(ctx, "migrate-start-postcopy", nil); err != nil {
			return nil, fmt.Errorf("vm %s: %w", src.Config.Name, err)
		}
	}
	result := &MigrationResult{URI: uri}
	var err error
	if result.Source, err = pollMigration(ctx, src, poll); err != nil {
		return result, err
	}
	// The destination finishes loading after the source reports completed;
	// its status is final only then.
	if result.Destination, err = pollMigration(ctx, dst, poll); err != nil {
		return result, err
	}
	if result.Source.Status != "completed" || result.Destination.Status != "completed" {
		return result, fmt.Errorf("%w: source %s (%s), destination %s (%s)", ErrMigrationFailed,
			result.Source.Status, result.Source.ErrorDesc, result.Destination.Status, result.Destination.ErrorDesc)
	}
	return result, nil
}

// Configure sets the capabilities and parameters of opts on vm (as Migrate
// does on both sides), for flows that drive a migration step by step.
func Configure(ctx context.Context, vm *VM, opts MigrateOpts) error {
	return configureMigration(ctx, vm, opts)
}

// WaitMigration polls vm's query-migrate every interval (default 100 ms)
// until its migration status is terminal, and returns the last answer.
func WaitMigration(ctx context.Context, vm *VM, interval time.Duration) (MigrationInfo, error) {
	if interval <= 0 {
		interval = 100 * time.Millisecond
	}
	return pollMigration(ctx, vm, interval)
}

// configureMigration sets capabilities and parameters on one side.
func configureMigration(ctx context.Context, vm *VM, opts MigrateOpts) error {
	if len(opts.Caps) > 0 {
		names := make([]string, 0, len(opts.Caps))
		for name := range opts.Caps {
			names = append(names, name)
		}
		sort.Strings(names) // a stable order makes QMP transcripts comparable
		caps := make([]map[string]any, 0, len(names))
		for _, name := range names {
			caps = append(caps, map[string]any{"capability": name, "state": opts.Caps[name]})
		}
		if _, err := vm.QMP.Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": caps}); err != nil {
			return fmt.Errorf("vm %s: %w", vm.Config.Name, err)
		}
	}
	if len(opts.Params) > 0 {
		if _, err := vm.QMP.Execute(ctx, "migrate-set-parameters", opts.Params); err != nil {
			return fmt.Errorf("vm %s: %w", vm.Config.Name, err)
		}
	}
	return nil
}

// terminalMigrationStatus: no migration moves on from these by itself.
func terminalMigrationStatus(status string) bool {
	switch status {
	case "completed", "failed", "cancelled":
		return true
	}
	return false
}

// pollMigration polls query-migrate on vm until its status is terminal.
func pollMigration(ctx context.Context, vm *VM, interval time.Duration) (MigrationInfo, error) {
	var seen []string
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		info, err := QueryMigrate(ctx, vm)
		if err != nil {
			return info, err
		}
		if len(seen) == 0 || seen[len(seen)-1] != info.Status {
			seen = append(seen, info.Status)
		}
		info.StatusPath = seen
		if terminalMigrationStatus(info.Status) {
			return info, nil
		}
		select {
		case <-ticker.C:
		case <-vm.Exited():
			return info, fmt.Errorf("vm %s: qemu exited during migration (%v), last status %q%s",
				vm.Config.Name, vm.ExitErr(), info.Status, vm.logTailForError())
		case <-ctx.Done():
			return info, fmt.Errorf("vm %s: migration not finished, last status %q: %w", vm.Config.Name, info.Status, ctx.Err())
		}
	}
}

// QueryMigrate returns vm's query-migrate answer.
func QueryMigrate(ctx context.Context, vm *VM) (MigrationInfo, error) {
	raw, err := vm.QMP.Execute(ctx, "query-migrate", nil)
	if err != nil {
		return MigrationInfo{}, fmt.Errorf("vm %s: %w", vm.Config.Name, err)
	}
	info, err := ParseMigrationInfo(raw)
	if err != nil {
		return info, fmt.Errorf("vm %s: %w", vm.Config.Name, err)
	}
	info.VMName = vm.Config.Name
	return info, nil
}

// ParseMigrationInfo decodes a query-migrate answer.
func ParseMigrationInfo(raw json.RawMessage) (MigrationInfo, error) {
	var info MigrationInfo
	if err := json.Unmarshal(raw, &info); err != nil {
		return info, fmt.Errorf("decode query-migrate %s: %w", raw, err)
	}
	info.Raw = append(json.RawMessage(nil), raw...)
	info.QueriedAt = time.Now()
	return info, nil
}

// siblingPath names a file in the same folder as path.
func siblingPath(path, name string) string {
	return filepath.Join(filepath.Dir(path), name)
}
