package harness

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ProbeConfig says how to find out which accelerator the tests use.
type ProbeConfig struct {
	// VM is the guest to boot: Binary, DataDirs, Kernel, Initrd and Append
	// are used; Name, Accel, Disk and Incoming are overridden.
	VM VMConfig
	// Forced is NASMIG_ACCEL: when set, it is the answer and nothing boots.
	Forced string
	// CacheDir holds the cached answer and the last probe's logs; empty:
	// no cache, logs in a temporary folder that is removed.
	CacheDir string
	// Timeout bounds the KVM boot (default 25 s): a guest that cannot run
	// under this host's KVM may crawl instead of failing.
	Timeout time.Duration
	// Log receives the one line that says which accelerator and why
	// (default os.Stderr).
	Log io.Writer
}

// AccelChoice is the probe's answer.
type AccelChoice struct {
	Accel  string `json:"accel"`
	Reason string `json:"reason"`
	Key    string `json:"key"`  // identifies host, QEMU and guest kernel the answer holds for
	When   string `json:"when"` // when the probe ran
	Cached bool   `json:"-"`
}

const probeCacheFile = "accel-probe.json"

// ProbeAccel decides between KVM and TCG: NASMIG_ACCEL (cfg.Forced) if set;
// otherwise a cached answer for the same host, QEMU binary path and guest
// kernel; otherwise it boots the guest under KVM and waits for the init's
// first line, "nasmig: boot". KVM is chosen only if that line arrives; any
// failure of the KVM attempt (QEMU refuses, KVM internal error, timeout)
// means TCG, with the failure as the reason, once the guest has shown that
// it boots under TCG. Only such conclusive answers are cached.
func ProbeAccel(ctx context.Context, cfg ProbeConfig) (AccelChoice, error) {
	log := cfg.Log
	if log == nil {
		log = os.Stderr
	}
	if cfg.Forced != "" {
		if cfg.Forced != AccelKVM && cfg.Forced != AccelTCG {
			return AccelChoice{}, fmt.Errorf("NASMIG_ACCEL=%q: want %q or %q", cfg.Forced, AccelKVM, AccelTCG)
		}
		choice := AccelChoice{Accel: cfg.Forced, Reason: "forced by NASMIG_ACCEL"}
		fmt.Fprintf(log, "nasmig harness: accelerator %s (%s)\n", choice.Accel, choice.Reason)
		return choice, nil
	}
	for _, path := range []string{cfg.VM.Binary, cfg.VM.Kernel} {
		if _, err := os.Stat(path); err != nil {
			return AccelChoice{}, fmt.Errorf("probe accelerator: %w", err)
		}
	}
	key, err := probeKey(cfg.VM)
	if err != nil {
		return AccelChoice{}, fmt.Errorf("probe accelerator: %w", err)
	}
	cachePath := ""
	if cfg.CacheDir != "" {
		cachePath = filepath.Join(cfg.CacheDir, probeCacheFile)
		if choice, ok := readProbeCache(cachePath, key); ok {
			fmt.Fprintf(log, "nasmig harness: accelerator %s (%s; probed %s, cached in %s)\n", choice.Accel, choice.Reason, choice.When, cachePath)
			return choice, nil
		}
	}

	choice, err := bootProbe(ctx, cfg)
	if err != nil {
		return AccelChoice{}, err
	}
	choice.Key = key
	choice.When = time.Now().Format(time.RFC3339)
	fmt.Fprintf(log, "nasmig harness: accelerator %s (%s)\n", choice.Accel, choice.Reason)
	if cachePath != "" {
		if err := writeProbeCache(cachePath, choice); err != nil {
			return choice, err
		}
	}
	return choice, nil
}

// probeKey identifies what the answer depends on: the host kernel, its
// /dev/kvm and kvm modules, the QEMU binary's path, the firmware folders and
// the guest kernel's identity. It
// deliberately ignores the QEMU binary's contents: rebuilding QEMU with
// other nasmig patches does not change whether this host's KVM runs the
// guest, and the build folder is rebuilt often.
func probeKey(vm VMConfig) (string, error) {
	hash := sha256.New()
	release, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	fmt.Fprintf(hash, "host-kernel=%s\n", strings.TrimSpace(string(release)))
	if info, err := os.Stat("/dev/kvm"); err == nil {
		fmt.Fprintf(hash, "dev-kvm=%v\n", info.Mode())
	} else {
		fmt.Fprintf(hash, "dev-kvm=absent\n")
	}
	if modules, err := os.ReadFile("/proc/modules"); err == nil {
		for _, line := range strings.Split(string(modules), "\n") {
			if name, _, _ := strings.Cut(line, " "); strings.HasPrefix(name, "kvm") {
				fmt.Fprintf(hash, "module=%s\n", name)
			}
		}
	}
	fmt.Fprintf(hash, "qemu=%s datadirs=%q\n", vm.Binary, vm.DataDirs)
	info, err := os.Stat(vm.Kernel)
	if err != nil {
		return "", err
	}
	fmt.Fprintf(hash, "kernel=%s size=%d mtime=%d\n", vm.Kernel, info.Size(), info.ModTime().UnixNano())
	return hex.EncodeToString(hash.Sum(nil))[:16], nil
}

func readProbeCache(path, key string) (AccelChoice, bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		return AccelChoice{}, false
	}
	var choice AccelChoice
	if err := json.Unmarshal(data, &choice); err != nil || choice.Key != key {
		return AccelChoice{}, false
	}
	if choice.Accel != AccelKVM && choice.Accel != AccelTCG {
		return AccelChoice{}, false
	}
	choice.Cached = true
	return choice, true
}

func writeProbeCache(path string, choice AccelChoice) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("cache accelerator probe: %w", err)
	}
	data, err := json.MarshalIndent(choice, "", "  ")
	if err != nil {
		return fmt.Errorf("cache accelerator probe: %w", err)
	}
	// Write then rename: concurrent test binaries must never read half a file.
	tmp, err := os.CreateTemp(filepath.Dir(path), ".accel-probe-*")
	if err != nil {
		return fmt.Errorf("cache accelerator probe: %w", err)
	}
	_, writeErr := tmp.Write(append(data, '\n'))
	closeErr := tmp.Close()
	if err := errors.Join(writeErr, closeErr); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("cache accelerator probe: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("cache accelerator probe: %w", err)
	}
	return nil
}

// bootProbe boots the guest under KVM and reports whether init started.
// When KVM fails, the same guest must then boot under TCG: otherwise the
// failure says nothing about KVM (missing firmware, a broken initrd) and a
// cached "tcg" would hide the real problem.
func bootProbe(ctx context.Context, cfg ProbeConfig) (AccelChoice, error) {
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = 25 * time.Second
	}
	logDir := ""
	if cfg.CacheDir != "" {
		logDir = filepath.Join(cfg.CacheDir, "last-probe")
		if err := os.RemoveAll(logDir); err != nil {
			return AccelChoice{}, fmt.Errorf("probe accelerator: %w", err)
		}
		if err := os.MkdirAll(logDir, 0o755); err != nil {
			return AccelChoice{}, fmt.Errorf("probe accelerator: %w", err)
		}
	} else {
		dir, err := os.MkdirTemp("", "nasmig-probe-")
		if err != nil {
			return AccelChoice{}, fmt.Errorf("probe accelerator: %w", err)
		}
		defer os.RemoveAll(dir)
		logDir = dir
	}
	socketDir, cleanup, err := shortSocketDir(logDir)
	if err != nil {
		return AccelChoice{}, fmt.Errorf("probe accelerator: %w", err)
	}
	defer cleanup()

	var kvmFailure string
	if _, err := os.Stat("/dev/kvm"); err != nil {
		kvmFailure = "no /dev/kvm"
	} else {
		booted, why, err := bootOnce(ctx, cfg.VM, AccelKVM, timeout, logDir, socketDir)
		if err != nil {
			return AccelChoice{}, err
		}
		if booted {
			return AccelChoice{Accel: AccelKVM, Reason: why}, nil
		}
		kvmFailure = why
	}
	// Generous: TCG boots this guest in about 6 s, but the host may be busy.
	booted, why, err := bootOnce(ctx, cfg.VM, AccelTCG, 2*timeout, logDir, socketDir)
	if err != nil {
		return AccelChoice{}, err
	}
	if !booted {
		tcgLog := NewVMPaths(logDir, socketDir, "probe-"+AccelTCG).QEMULog
		return AccelChoice{}, fmt.Errorf("probe accelerator: the guest boots under neither KVM (%s) nor TCG (%s); logs in %s; end of the TCG attempt's QEMU log:\n%s",
			kvmFailure, why, logDir, fileTail(tcgLog, 5))
	}
	return AccelChoice{Accel: AccelTCG, Reason: kvmFailure + "; " + why}, nil
}

// bootOnce boots the guest under accel until init's first line. It returns
// booted=false with the reason when the guest does not get there; err is
// only for the probe itself failing (ctx ended, files unwritable).
func bootOnce(ctx context.Context, base VMConfig, accel string, timeout time.Duration, logDir, socketDir string) (booted bool, why string, err error) {
	vmCfg := base
	vmCfg.Name = "probe-" + accel
	vmCfg.Accel = accel
	vmCfg.Disk = nil // init's first line comes before it looks for a disk
	vmCfg.Incoming = false
	if vmCfg.MemMiB <= 0 {
		vmCfg.MemMiB = 512
	}
	probeCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	started := time.Now()
	vm, err := StartVM(probeCtx, vmCfg, NewVMPaths(logDir, socketDir, vmCfg.Name))
	if err != nil {
		if ctx.Err() != nil {
			return false, "", fmt.Errorf("probe accelerator: %w", ctx.Err())
		}
		return false, fmt.Sprintf("QEMU refused -accel %s: %s", accel, firstLine(err.Error(), "qemu log")), nil
	}
	defer vm.Kill()

	bootErr := make(chan error, 1)
	go func() {
		_, err := vm.WaitLine(probeCtx, LineBoot)
		bootErr <- err
	}()
	// A guest the host's KVM cannot run often stops with a KVM internal
	// error instead of exiting; polling the run state ends the probe then
	// rather than at the timeout.
	ticker := time.NewTicker(500 * time.Millisecond)
	defer ticker.Stop()
	for {
		select {
		case err := <-bootErr:
			if err == nil {
				return true, fmt.Sprintf("the guest booted under %s in %.1f s", accel, time.Since(started).Seconds()), nil
			}
			if ctx.Err() != nil {
				return false, "", fmt.Errorf("probe accelerator: %w", ctx.Err())
			}
			if errors.Is(err, context.DeadlineExceeded) {
				return false, fmt.Sprintf("under %s the guest did not print %q within %s (see %s)", accel, LineBoot, timeout, vm.Paths.QEMULog), nil
			}
			return false, fmt.Sprintf("the %s boot failed: %s", accel, firstLine(err.Error(), "")), nil
		case <-ticker.C:
			status, err := vm.Status(probeCtx)
			if err == nil && (status == "internal-error" || status == "guest-panicked" || status == "shutdown") {
				return false, fmt.Sprintf("under %s the guest stopped in state %q after %.1f s (see %s)",
					accel, status, time.Since(started).Seconds(), vm.Paths.QEMULog), nil
			}
		}
	}
}

// firstLine shortens a multi-line error for the one-line probe verdict;
// with marker set, the line after marker (the first QEMU log line) is
// appended as it usually says what went wrong.
func firstLine(text, marker string) string {
	lines := strings.Split(text, "\n")
	out := lines[0]
	if marker != "" {
		for i, line := range lines {
			if strings.Contains(line, marker) && i+1 < len(lines) {
				out += ": " + lines[i+1]
				break
			}
		}
	}
	return out
}
