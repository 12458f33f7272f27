package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

const completedWithDiskRefs = `{
  "status": "completed", "total-time": 10250, "downtime": 41, "setup-time": 3,
  "ram": {"transferred": 1376600000, "remaining": 0, "total": 2148000000, "duplicate": 190000,
          "normal": 336000, "normal-bytes": 1376256000, "dirty-sync-count": 3, "page-size": 4096, "mbps": 1000.5},
  "disk-refs": {"ref-pages": 307000, "ref-bytes-saved": 1257000000, "fetched-pages": 0, "fetch-reads": 0,
                "verify-failures": 0, "fallbacks": 2, "fetch-time-ms": 0}
}`

// allDiskRefs carries every counter of the disk-refs object, each with a
// distinct value, as the patched QEMU sends it.
const allDiskRefs = `{"status": "completed", "disk-refs": {
  "mapped-pages": 1, "ref-pages": 2, "ref-bytes-saved": 3, "ref-misses": 4, "ring-drops": 5,
  "invalidations": 6, "fetched-pages": 7, "fetch-reads": 8, "fetch-bytes": 9,
  "verify-failures": 10, "fallbacks": 11, "fetch-time-ms": 12, "pending-pages": 13,
  "sent-full": 14, "handed-back": 15, "filled-after-switchover": 16,
  "from-source-after-switchover": 17, "faults-from-storage": 18, "faults-from-source": 19,
  "fault-latency-median-us": 20, "fault-latency-p99-us": 21, "fault-latency-max-us": 22,
  "switchover-ms": 23}}`

func TestParseMigrationInfoAllDiskRefCounters(t *testing.T) {
	info, err := ParseMigrationInfo(json.RawMessage(allDiskRefs))
	if err != nil {
		t.Fatal(err)
	}
	want := DiskRefStats{
		MappedPages: 1, RefPages: 2, RefBytesSaved: 3, RefMisses: 4, RingDrops: 5,
		Invalidations: 6, FetchedPages: 7, FetchReads: 8, FetchBytes: 9,
		VerifyFailures: 10, Fallbacks: 11, FetchTimeMs: 12, PendingPages: 13,
		SentFull: 14, HandedBack: 15, FilledAfterSwitchover: 16, FromSourceAfterSwitchover: 17,
		FaultsFromStorage: 18, FaultsFromSource: 19, FaultLatencyMedianUs: 20, FaultLatencyP99Us: 21,
		FaultLatencyMaxUs: 22, SwitchoverMs: 23,
	}
	if info.DiskRefs == nil || *info.DiskRefs != want {
		t.Errorf("disk-refs = %+v, want %+v", info.DiskRefs, want)
	}
	// Every name QEMU sends must land in a field: a decode with unknown
	// fields refused proves no name is misspelt.
	var raw struct {
		DiskRefs json.RawMessage `json:"disk-refs"`
	}
	if err := json.Unmarshal(json.RawMessage(allDiskRefs), &raw); err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw.DiskRefs))
	dec.DisallowUnknownFields()
	var strict DiskRefStats
	if err := dec.Decode(&strict); err != nil {
		t.Errorf("disk-refs has a name DiskRefStats does not know: %v", err)
	}
}

func TestParseMigrationInfo(t *testing.T) {
	info, err := ParseMigrationInfo(json.RawMessage(completedWithDiskRefs))
	if err != nil {
		t.Fatal(err)
	}
	if info.Status != "completed" || info.TotalTime != 10250 || info.Downtime != 41 || info.SetupTime != 3 {
		t.Errorf("times = %+v", info)
	}
	if info.RAM == nil || info.RAM.Transferred != 1376600000 || info.RAM.Duplicate != 190000 || info.RAM.Normal != 336000 || info.RAM.NormalBytes != 1376256000 {
		t.Errorf("ram = %+v", info.RAM)
	}
	if info.DiskRefs == nil || info.DiskRefs.RefPages != 307000 || info.DiskRefs.RefBytesSaved != 1257000000 || info.DiskRefs.Fallbacks != 2 {
		t.Errorf("disk-refs = %+v", info.DiskRefs)
	}

	// Stock QEMU: no disk-refs; a destination: no ram either.
	stock, err := ParseMigrationInfo(json.RawMessage(`{"status": "completed"}`))
	if err != nil {
		t.Fatal(err)
	}
	if stock.DiskRefs != nil || stock.RAM != nil {
		t.Errorf("absent objects decoded as present: %+v", stock)
	}
	if _, err := ParseMigrationInfo(json.RawMessage(`[1]`)); err == nil {
		t.Error("non-object query-migrate accepted")
	}
}

// fakeVM is a VM whose QMP connection ends at a fake server.
func fakeVM(t *testing.T, name string, incoming bool, handle func(fakeRequest) fakeReply) (*VM, *fakeQMP) {
	t.Helper()
	f := newFakeQMP(t, handle)
	vm := &VM{
		Config: VMConfig{Name: name, Incoming: incoming, MemMiB: 512},
		Paths:  NewVMPaths(filepath.Dir(f.path), filepath.Dir(f.path), name),
		QMP:    dialFake(t, f),
		exited: make(chan struct{}),
	}
	return vm, f
}

func TestMigrateSequenceAndResult(t *testing.T) {
	var srcPolls atomic.Int32
	src, srcQMP := fakeVM(t, "src", false, func(req fakeRequest) fakeReply {
		if req.Execute == "query-migrate" {
			if srcPolls.Add(1) < 3 {
				return fakeReply{ret: json.RawMessage(`{"status": "active", "ram": {"transferred": 5}}`)}
			}
			return fakeReply{ret: json.RawMessage(completedWithDiskRefs)}
		}
		return fakeReply{}
	})
	var dstPolls atomic.Int32
	dst, dstQMP := fakeVM(t, "dst", true, func(req fakeRequest) fakeReply {
		if req.Execute == "query-migrate" {
			if dstPolls.Add(1) < 2 {
				return fakeReply{ret: json.RawMessage(`{"status": "active"}`)}
			}
			return fakeReply{ret: json.RawMessage(`{"status": "completed", "disk-refs": {"fetched-pages": 307000, "fetch-reads": 1200}}`)}
		}
		return fakeReply{}
	})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	result, err := Migrate(ctx, src, dst, MigrateOpts{
		Caps:         map[string]bool{"x-disk-refs": true, "return-path": true},
		Params:       map[string]any{"max-bandwidth": 125 << 20, "multifd-channels": 2},
		PollInterval: 10 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}

	wantURI := "unix:" + filepath.Join(filepath.Dir(dst.Paths.QMPSocket), "dst.migrate")
	if result.URI != wantURI {
		t.Errorf("URI = %q, want %q", result.URI, wantURI)
	}
	if got := srcQMP.commands(); !slices.Equal(got[:4], []string{"qmp_capabilities", "migrate-set-capabilities", "migrate-set-parameters", "migrate"}) {
		t.Errorf("source commands = %v", got)
	}
	if got := dstQMP.commands(); !slices.Equal(got[:4], []string{"qmp_capabilities", "migrate-set-capabilities", "migrate-set-parameters", "migrate-incoming"}) {
		t.Errorf("destination commands = %v", got)
	}
	for _, f := range []*fakeQMP{srcQMP, dstQMP} {
		req, _ := f.request("migrate-set-capabilities")
		if string(req.Arguments) != `{"capabilities":[{"capability":"return-path","state":true},{"capability":"x-disk-refs","state":true}]}` {
			t.Errorf("capabilities sent as %s", req.Arguments)
		}
		req, _ = f.request("migrate-set-parameters")
		if string(req.Arguments) != `{"max-bandwidth":131072000,"multifd-channels":2}` {
			t.Errorf("parameters sent as %s", req.Arguments)
		}
	}
	req, _ := dstQMP.request("migrate-incoming")
	var incoming map[string]any
	json.Unmarshal(req.Arguments, &incoming)
	if incoming["uri"] != wantURI || incoming["exit-on-error"] != false {
		t.Errorf("migrate-incoming arguments = %s", req.Arguments)
	}

	if result.Status() != "completed" || result.Source.TotalTime != 10250 || result.Source.DiskRefs == nil {
		t.Errorf("source result = %+v", result.Source)
	}
	if !slices.Equal(result.Source.StatusPath, []string{"active", "completed"}) {
		t.Errorf("source status path = %v", result.Source.StatusPath)
	}
	if d := result.Destination.DiskRefs; d == nil || d.FetchedPages != 307000 || d.FetchReads != 1200 {
		t.Errorf("destination disk-refs = %+v", d)
	}
}

func TestMigrateFailureCarriesErrorDesc(t *testing.T) {
	src, _ := fakeVM(t, "src", false, func(req fakeRequest) fakeReply {
		if req.Execute == "query-migrate" {
			return fakeReply{ret: json.RawMessage(`{"status": "failed", "error-desc": "Unable to write to socket: Broken pipe"}`)}
		}
		return fakeReply{}
	})
	dst, _ := fakeVM(t, "dst", true, func(req fakeRequest) fakeReply {
		if req.Execute == "query-migrate" {
			return fakeReply{ret: json.RawMessage(`{"status": "failed", "error-desc": "load of migration failed: Invalid argument"}`)}
		}
		return fakeReply{}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	result, err := Migrate(ctx, src, dst, MigrateOpts{URI: "unix:/nonexistent/m.sock", PollInterval: 10 * time.Millisecond})
	if !errors.Is(err, ErrMigrationFailed) {
		t.Fatalf("Migrate = %v, want ErrMigrationFailed", err)
	}
	if result == nil || result.Source.ErrorDesc == "" || result.Destination.ErrorDesc == "" {
		t.Errorf("result lacks the error descriptions: %+v", result)
	}
}

func TestMigrateTimeout(t *testing.T) {
	src, _ := fakeVM(t, "src", false, func(req fakeRequest) fakeReply {
		if req.Execute == "query-migrate" {
			return fakeReply{ret: json.RawMessage(`{"status": "active"}`)}
		}
		return fakeReply{}
	})
	dst, _ := fakeVM(t, "dst", true, func(req fakeRequest) fakeReply { return fakeReply{} })
	_, err := Migrate(context.Background(), src, dst, MigrateOpts{Timeout: 200 * time.Millisecond, PollInterval: 10 * time.Millisecond})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Migrate = %v, want deadline exceeded", err)
	}
}

func TestMigrateNeedsIncomingDestination(t *testing.T) {
	src := &VM{Config: VMConfig{Name: "src"}}
	dst := &VM{Config: VMConfig{Name: "dst"}}
	if _, err := Migrate(context.Background(), src, dst, MigrateOpts{}); err == nil {
		t.Error("migration to a non-incoming VM accepted")
	}
}
