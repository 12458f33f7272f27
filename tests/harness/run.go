package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// maxSocketPath keeps unix socket paths under the kernel's 108-byte limit
// with room for the longest file name the harness uses.
const maxSocketPath = 100

// Run owns one test's run folder: the VMs and storage daemons it started,
// their logs, the RAM diff and the big scratch files (image copies, RAM
// dumps). At the end, a failed run keeps everything and prints where; a
// successful run deletes the scratch files, and the whole folder when it
// was a temporary one.
type Run struct {
	Dir string // logs, dumps, image copies

	socketDir     string // Dir, or a short folder when Dir is too deep for socket paths
	tempDir       bool   // Dir was made under os.TempDir (not NASMIG_KEEP): removed on success
	ownsSocketDir bool
	out           io.Writer // where the kept folder is announced
	started       time.Time
	log           *os.File

	mu       sync.Mutex // guards the fields below and writes to log
	cleanups []namedCleanup
	scratch  []string
	closed   bool
}

type namedCleanup struct {
	name string
	fn   func() error
}

var unsafeNameChars = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

// NewRun creates a run folder for a test called name: under keepRoot
// (NASMIG_KEEP) when set, otherwise in the system's temp folder. out
// receives the folder's path if the run fails (nil: os.Stderr).
func NewRun(name, keepRoot string, out io.Writer) (*Run, error) {
	if out == nil {
		out = os.Stderr
	}
	pattern := "nasmig-" + unsafeNameChars.ReplaceAllString(name, "_") + "-"
	parent := keepRoot
	if parent != "" {
		if err := os.MkdirAll(parent, 0o755); err != nil {
			return nil, fmt.Errorf("new run: %w", err)
		}
	}
	dir, err := os.MkdirTemp(parent, pattern)
	if err != nil {
		return nil, fmt.Errorf("new run: %w", err)
	}
	r := &Run{Dir: dir, tempDir: keepRoot == "", out: out, started: time.Now()}
	socketDir, cleanup, err := shortSocketDir(dir)
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("new run: %w", err)
	}
	r.socketDir = socketDir
	r.ownsSocketDir = socketDir != dir
	if r.ownsSocketDir {
		r.cleanups = append(r.cleanups, namedCleanup{"socket folder", func() error { cleanup(); return nil }})
	}
	if r.log, err = os.Create(filepath.Join(dir, "run.log")); err != nil {
		os.RemoveAll(dir)
		cleanup()
		return nil, fmt.Errorf("new run: %w", err)
	}
	r.Logf("run %s in %s (sockets in %s)", name, dir, socketDir)
	return r, nil
}

// shortSocketDir returns dir if socket paths in it stay short enough, or a
// new short temporary folder otherwise; cleanup removes the latter.
func shortSocketDir(dir string) (string, func(), error) {
	if len(filepath.Join(dir, "storage.nbd.migrate")) <= maxSocketPath {
		return dir, func() {}, nil
	}
	short, err := os.MkdirTemp("", "nm-")
	if err != nil {
		return "", nil, fmt.Errorf("socket folder: %w", err)
	}
	return short, func() { os.RemoveAll(short) }, nil
}

// NewTestRun creates a run for tb that closes itself when the test ends,
// keeping the folder if the test failed.
func NewTestRun(tb testing.TB, env Env) *Run {
	tb.Helper()
	r, err := NewRun(tb.Name(), env.Keep, testLogWriter{tb})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := r.Close(tb.Failed()); err != nil {
			tb.Errorf("close run: %v", err)
		}
	})
	return r
}

// testLogWriter sends the run's announcements to the test log, so that they
// appear next to the failure that caused them.
type testLogWriter struct{ tb testing.TB }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.tb.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// Path names a file in the run folder.
func (r *Run) Path(name string) string { return filepath.Join(r.Dir, name) }

// SocketPath names a unix socket of the run.
func (r *Run) SocketPath(name string) string { return filepath.Join(r.socketDir, name) }

// Logf appends a timestamped line to the run's run.log.
func (r *Run) Logf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.log == nil {
		return
	}
	fmt.Fprintf(r.log, "[%9.3f] %s\n", time.Since(r.started).Seconds(), fmt.Sprintf(format, args...))
}

// AddCleanup registers fn to run at Close; cleanups run in reverse order of
// registration (VMs stop before the storage they use).
func (r *Run) AddCleanup(name string, fn func() error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cleanups = append(r.cleanups, namedCleanup{name, fn})
}

// Scratch marks big files that a successful run deletes.
func (r *Run) Scratch(paths ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.scratch = append(r.scratch, paths...)
}

// StartVM starts a VM whose files live in the run folder, stopped at Close.
func (r *Run) StartVM(ctx context.Context, cfg VMConfig) (*VM, error) {
	r.Logf("start vm %s (accel %s, %d MiB, incoming %v)", cfg.Name, cfg.Accel, cfg.MemMiB, cfg.Incoming)
	vm, err := StartVM(ctx, cfg, NewVMPaths(r.Dir, r.socketDir, cfg.Name))
	if err != nil {
		r.Logf("start vm %s: %v", cfg.Name, err)
		return nil, err
	}
	r.AddCleanup("vm "+cfg.Name, vm.Close)
	return vm, nil
}

// StartStorage starts a storage daemon whose files live in the run folder,
// stopped at Close.
func (r *Run) StartStorage(ctx context.Context, cfg StorageConfig) (*StorageDaemon, error) {
	cfg = cfg.withDefaults()
	r.Logf("start storage %s: %s (%s, export format node %v)", cfg.Name, cfg.Image, cfg.Format, cfg.ExportFormatNode)
	s, err := StartStorage(ctx, cfg, NewStoragePaths(r.Dir, r.socketDir, cfg.Name))
	if err != nil {
		r.Logf("start storage %s: %v", cfg.Name, err)
		return nil, err
	}
	r.AddCleanup("storage "+cfg.Name, s.Close)
	return s, nil
}

// CopyImage copies the cached image src into the run folder as name, as
// scratch.
func (r *Run) CopyImage(ctx context.Context, src, name string) (string, error) {
	dst := r.Path(name)
	started := time.Now()
	if err := CopyImage(ctx, src, dst); err != nil {
		return "", err
	}
	r.Scratch(dst)
	r.Logf("copied %s to %s in %.1f s", src, dst, time.Since(started).Seconds())
	return dst, nil
}

// CompareRAM dumps and compares the RAM of two paused VMs, writes the
// result to ramdiff.txt and marks the dumps as scratch.
func (r *Run) CompareRAM(ctx context.Context, src, dst *VM) (RAMDiff, error) {
	started := time.Now()
	diff, files, err := CompareGuestRAM(ctx, src, dst, r.Dir)
	r.Scratch(files...)
	if err != nil {
		r.Logf("compare ram: %v", err)
		return diff, err
	}
	r.Logf("compare ram: %s (%.1f s)", diff.String(), time.Since(started).Seconds())
	if err := os.WriteFile(r.Path("ramdiff.txt"), []byte(diff.String()+"\n"), 0o644); err != nil {
		return diff, fmt.Errorf("compare ram: %w", err)
	}
	return diff, nil
}

// SaveJSON writes v, indented, to name in the run folder.
func (r *Run) SaveJSON(name string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("save %s: %w", name, err)
	}
	if err := os.WriteFile(r.Path(name), append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("save %s: %w", name, err)
	}
	return nil
}

// Close stops everything the run started, newest first, then keeps the
// folder (failed) or deletes the scratch files and, for a temporary folder,
// the folder itself. It may be called more than once.
func (r *Run) Close(failed bool) error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	cleanups := r.cleanups
	r.cleanups = nil
	scratch := r.scratch
	r.mu.Unlock()

	var errs []error
	for i := len(cleanups) - 1; i >= 0; i-- {
		if err := cleanups[i].fn(); err != nil {
			errs = append(errs, fmt.Errorf("stop %s: %w", cleanups[i].name, err))
			r.Logf("stop %s: %v", cleanups[i].name, err)
		}
	}
	if failed {
		r.Logf("run failed; folder kept")
		r.closeLog()
		fmt.Fprintf(r.out, "nasmig harness: run failed, logs kept in %s\n", r.Dir)
		return errors.Join(errs...)
	}
	for _, path := range scratch {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove scratch file: %w", err))
		}
	}
	r.Logf("run passed; scratch files removed")
	r.closeLog()
	if r.tempDir {
		if err := os.RemoveAll(r.Dir); err != nil {
			errs = append(errs, fmt.Errorf("remove run folder: %w", err))
		}
	}
	return errors.Join(errs...)
}

func (r *Run) closeLog() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.log != nil {
		r.log.Close()
		r.log = nil
	}
}
