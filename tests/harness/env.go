package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Env is the test bed's environment as build.sh sets it (see
// docs/testbed-contract.md). EnvFromOS is the only place the package reads
// the process environment.
type Env struct {
	Out      string   // NASMIG_OUT: QEMU binaries, libnasmig.so, tools
	Guest    string   // NASMIG_GUEST: vmlinuz, initrd.img, data.raw, data.qcow2, manifest.sha256
	DataDirs []string // NASMIG_QEMU_DATADIRS, colon-separated: -L folders
	Accel    string   // NASMIG_ACCEL: forced accelerator, or empty to probe
	Keep     string   // NASMIG_KEEP: where runs keep their folders; empty: a temp folder
	// QEMUASan (NASMIG_QEMU_ASAN) is a qemu-system-x86_64 built with
	// --enable-asan (./build.sh test-full builds one); empty: none.
	QEMUASan string
}

// EnvFromOS reads the NASMIG_* variables.
func EnvFromOS() Env { return LoadEnv(os.Getenv) }

// LoadEnv reads the NASMIG_* variables through getenv.
func LoadEnv(getenv func(string) string) Env {
	env := Env{
		Out:   getenv("NASMIG_OUT"),
		Guest: getenv("NASMIG_GUEST"),
		Accel: getenv("NASMIG_ACCEL"),
		Keep:  getenv("NASMIG_KEEP"),

		QEMUASan: getenv("NASMIG_QEMU_ASAN"),
	}
	for _, dir := range strings.Split(getenv("NASMIG_QEMU_DATADIRS"), ":") {
		if dir != "" {
			env.DataDirs = append(env.DataDirs, dir)
		}
	}
	return env
}

// SkipReason says why end-to-end tests cannot run, or "" if they can.
func (e Env) SkipReason() string {
	var missing []string
	if e.Out == "" {
		missing = append(missing, "NASMIG_OUT")
	}
	if e.Guest == "" {
		missing = append(missing, "NASMIG_GUEST")
	}
	if len(missing) == 0 {
		return ""
	}
	return "end-to-end test needs " + strings.Join(missing, " and ") + " (set by build.sh; see docs/testbed-contract.md)"
}

// Check verifies that the files a plain migration needs exist: once the
// variables are set, a missing file is a broken test bed, not a reason to
// skip.
func (e Env) Check() error {
	for _, path := range []string{e.QEMUBinary(), e.StorageDaemonBinary(), e.Kernel(), e.Initrd(), e.DataImage(FormatRaw)} {
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("test bed incomplete: %w", err)
		}
	}
	return nil
}

func (e Env) QEMUBinary() string    { return filepath.Join(e.Out, "qemu-system-x86_64") }
func (e Env) QEMUImgBinary() string { return filepath.Join(e.Out, "qemu-img") }
func (e Env) PluginPath() string    { return filepath.Join(e.Out, "libnasmig.so") }

// ASanPluginPath is the library built with AddressSanitizer (go build
// -asan, its C compiled with -fsanitize=address), for a QEMU that preloads
// the ASan runtime.
func (e Env) ASanPluginPath() string { return filepath.Join(e.Out, "libnasmig-asan.so") }
func (e Env) Kernel() string         { return filepath.Join(e.Guest, "vmlinuz") }
func (e Env) Initrd() string         { return filepath.Join(e.Guest, "initrd.img") }

// StorageDaemonBinary is $NASMIG_OUT/qemu-storage-daemon; when NASMIG_OUT is
// a QEMU build folder instead, where the daemon stays in storage-daemon/,
// that one.
func (e Env) StorageDaemonBinary() string {
	path := filepath.Join(e.Out, "qemu-storage-daemon")
	if _, err := os.Stat(path); err != nil {
		inBuildTree := filepath.Join(e.Out, "storage-daemon", "qemu-storage-daemon")
		if _, err := os.Stat(inBuildTree); err == nil {
			return inBuildTree
		}
	}
	return path
}

// DataImage is the cached data disk in format (FormatRaw or FormatQcow2).
// Never hand it to a VM: copy it first (Run.CopyImage).
func (e Env) DataImage(format string) string { return filepath.Join(e.Guest, "data."+format) }

// CacheDir is where the harness keeps answers that outlive a run (the
// accelerator probe).
func (e Env) CacheDir() string {
	if dir, err := os.UserCacheDir(); err == nil {
		return filepath.Join(dir, "nasmig-harness")
	}
	return filepath.Join(os.TempDir(), "nasmig-harness-cache")
}

// GuestCmdline is the guest kernel command line for a workload.
func GuestCmdline(workload string, mib int, heartbeat bool) string {
	cmdline := fmt.Sprintf("console=ttyS0 quiet panic=-1 nasmig.workload=%s nasmig.mib=%d", workload, mib)
	if heartbeat {
		cmdline += " nasmig.heartbeat=1"
	}
	return cmdline
}

// VMConfig returns the configuration of a guest of this test bed: the built
// QEMU, the firmware folders, the guest kernel and initrd.
func (e Env) VMConfig(name, accel string, memMiB int, cmdline string) VMConfig {
	return VMConfig{
		Name:     name,
		Binary:   e.QEMUBinary(),
		DataDirs: append([]string(nil), e.DataDirs...),
		Accel:    accel,
		MemMiB:   memMiB,
		Kernel:   e.Kernel(),
		Initrd:   e.Initrd(),
		Append:   cmdline,
	}
}

// ProbeConfig returns the accelerator probe's configuration for this test bed.
func (e Env) ProbeConfig() ProbeConfig {
	return ProbeConfig{
		VM:       e.VMConfig("probe", AccelKVM, 512, GuestCmdline("idle", 0, false)),
		Forced:   e.Accel,
		CacheDir: e.CacheDir(),
	}
}
