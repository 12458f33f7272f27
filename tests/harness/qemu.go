package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Accelerators the harness knows.
const (
	AccelKVM = "kvm"
	AccelTCG = "tcg"
)

// Disk formats.
const (
	FormatRaw   = "raw"
	FormatQcow2 = "qcow2"
)

// Disk buses: how the data disk is attached to the guest.
const (
	BusVirtio     = "virtio"      // virtio-blk-pci
	BusAHCI       = "ahci"        // ide-hd on an AHCI controller
	BusVirtioSCSI = "virtio-scsi" // scsi-hd on virtio-scsi-pci
)

// DiskConfig is the guest's data disk.
type DiskConfig struct {
	URI         string // an NBD URI (StorageDaemon.URI) or a plain file path
	Format      string // FormatRaw or FormatQcow2: the format QEMU opens URI with
	Bus         string // BusVirtio, BusAHCI or BusVirtioSCSI
	CacheDirect bool   // cache.direct=on: no host page cache between guest and storage
	IOThread    bool   // the disk's controller runs in an iothread (virtio-blk, virtio-scsi)
}

// VMConfig describes one QEMU process.
type VMConfig struct {
	Name     string   // short name ("src", "dst"): used for file names in the run folder
	Binary   string   // qemu-system-x86_64
	DataDirs []string // each becomes -L (firmware, option ROMs), in order
	Accel    string   // AccelKVM or AccelTCG
	MemMiB   int      // guest RAM
	// MemSlots and MaxMemMiB make room for pc-dimm devices (-m
	// size,slots=N,maxmem=M); zero: none.
	MemSlots   int
	MaxMemMiB  int
	Kernel     string // -kernel
	Initrd     string // -initrd
	Append     string // -append: the kernel command line
	Disk       *DiskConfig
	Plugin     string   // path to libnasmig.so; empty: no plugin
	PluginArgs []string // "key=value", appended to -plugin as ",key=value"
	Incoming   bool     // destination: -incoming defer, stays paused after migration
	ExtraArgs  []string // appended last, verbatim
	Env        []string // added to QEMU's environment ("KEY=value")
	NetNS      string   // network namespace to run in (Network); empty: this one
}

// VMPaths are the files of one QEMU process. Sockets may live apart from the
// logs because a unix socket path must stay under 108 bytes.
type VMPaths struct {
	QMPSocket    string
	SerialSocket string
	QEMULog      string // QEMU's stdout and stderr
	SerialLog    string // the guest's console, one line per line with host times
	QMPLog       string // transcript of the QMP traffic
	CmdLine      string // the command line, shell-quoted, to rerun by hand
}

// NewVMPaths names the files of VM name: logs in dir, sockets in socketDir.
func NewVMPaths(dir, socketDir, name string) VMPaths {
	return VMPaths{
		QMPSocket:    filepath.Join(socketDir, name+".qmp"),
		SerialSocket: filepath.Join(socketDir, name+".serial"),
		QEMULog:      filepath.Join(dir, name+".qemu.log"),
		SerialLog:    filepath.Join(dir, name+".serial.log"),
		QMPLog:       filepath.Join(dir, name+".qmp.log"),
		CmdLine:      filepath.Join(dir, name+".cmdline"),
	}
}

var vmNamePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

// Validate reports the first thing that would keep the configuration from
// producing a working command line.
func (c VMConfig) Validate() error {
	switch {
	case !vmNamePattern.MatchString(c.Name):
		return fmt.Errorf("vm name %q: want letters, digits, '.', '_' or '-'", c.Name)
	case c.Binary == "":
		return fmt.Errorf("vm %s: no QEMU binary", c.Name)
	case c.Accel != AccelKVM && c.Accel != AccelTCG:
		return fmt.Errorf("vm %s: accelerator %q: want %q or %q", c.Name, c.Accel, AccelKVM, AccelTCG)
	case c.MemMiB <= 0:
		return fmt.Errorf("vm %s: memory %d MiB: want > 0", c.Name, c.MemMiB)
	case c.Kernel == "":
		return fmt.Errorf("vm %s: no kernel", c.Name)
	}
	for _, arg := range c.PluginArgs {
		if !strings.Contains(arg, "=") {
			return fmt.Errorf("vm %s: plugin argument %q: want key=value", c.Name, arg)
		}
	}
	if len(c.PluginArgs) > 0 && c.Plugin == "" {
		return fmt.Errorf("vm %s: plugin arguments without a plugin", c.Name)
	}
	if d := c.Disk; d != nil {
		if d.URI == "" {
			return fmt.Errorf("vm %s: disk without a URI", c.Name)
		}
		if d.Format != FormatRaw && d.Format != FormatQcow2 {
			return fmt.Errorf("vm %s: disk format %q: want %q or %q", c.Name, d.Format, FormatRaw, FormatQcow2)
		}
		if _, err := diskDeviceArgs(d.Bus, d.IOThread); err != nil {
			return fmt.Errorf("vm %s: %w", c.Name, err)
		}
	}
	return nil
}

// escapeOpt doubles commas: QEMU's option syntax reads ",," as a literal comma
// inside a value, and a path or URI may contain one.
func escapeOpt(value string) string { return strings.ReplaceAll(value, ",", ",,") }

// The names the guest disk goes by, each of a kind an operator may pass to
// the library's exclude=: the drive id, the id of the device that attaches
// it, and the node name of its top (format) node.
const (
	DiskDriveID  = "d0"
	DiskDeviceID = "vdisk0"
	DiskNodeName = "disk0"
)

// diskDeviceArgs returns the -device arguments that attach drive d0.
func diskDeviceArgs(bus string, iothread bool) ([]string, error) {
	var io []string
	var onIO string
	if iothread {
		io, onIO = []string{"-object", "iothread,id=io0"}, ",iothread=io0"
	}
	switch bus {
	case BusVirtio:
		return append(io, "-device", "virtio-blk-pci,drive=d0,id=vdisk0"+onIO), nil
	case BusAHCI:
		if iothread {
			return nil, fmt.Errorf("disk bus %q has no iothread", bus)
		}
		return []string{"-device", "ahci,id=ahci0", "-device", "ide-hd,drive=d0,id=vdisk0,bus=ahci0.0"}, nil
	case BusVirtioSCSI:
		return append(io, "-device", "virtio-scsi-pci,id=scsi0"+onIO, "-device", "scsi-hd,drive=d0,id=vdisk0,bus=scsi0.0"), nil
	default:
		return nil, fmt.Errorf("disk bus %q: want %q, %q or %q", bus, BusVirtio, BusAHCI, BusVirtioSCSI)
	}
}

// Args builds QEMU's arguments (without the binary).
//
// The VM always starts with -S, also when it is not a migration destination:
// StartVM attaches the serial console before it lets the vCPU run, because
// QEMU drops console output while no client is connected (wait=off), and the
// first line, "nasmig: boot", is the one the accelerator probe waits for.
func (c VMConfig) Args(p VMPaths) ([]string, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	args := []string{
		"-name", c.Name,
		"-M", "q35",
		"-nodefaults", "-no-user-config",
		"-display", "none",
		"-smp", "1",
		"-accel", c.Accel,
		"-m", strconv.Itoa(c.MemMiB),
	}
	if c.MemSlots > 0 {
		args[len(args)-1] = fmt.Sprintf("%d,slots=%d,maxmem=%dM", c.MemMiB, c.MemSlots, c.MaxMemMiB)
	}
	for _, dir := range c.DataDirs {
		args = append(args, "-L", dir)
	}
	args = append(args, "-kernel", c.Kernel)
	if c.Initrd != "" {
		args = append(args, "-initrd", c.Initrd)
	}
	if c.Append != "" {
		args = append(args, "-append", c.Append)
	}
	args = append(args,
		"-chardev", "socket,id=qmp0,path="+escapeOpt(p.QMPSocket)+",server=on,wait=off",
		"-mon", "chardev=qmp0,mode=control",
		"-chardev", "socket,id=ser0,path="+escapeOpt(p.SerialSocket)+",server=on,wait=off",
		"-serial", "chardev:ser0",
	)
	if d := c.Disk; d != nil {
		drive := "file=" + escapeOpt(d.URI) + ",format=" + d.Format + ",if=none,id=d0,node-name=disk0"
		if d.CacheDirect {
			drive += ",cache.direct=on"
		}
		devices, err := diskDeviceArgs(d.Bus, d.IOThread)
		if err != nil {
			return nil, err
		}
		args = append(args, "-drive", drive)
		args = append(args, devices...)
	}
	if c.Plugin != "" {
		plugin := escapeOpt(c.Plugin)
		for _, kv := range c.PluginArgs {
			plugin += "," + kv
		}
		args = append(args, "-plugin", plugin)
	}
	args = append(args, "-S")
	if c.Incoming {
		args = append(args, "-incoming", "defer")
	}
	return append(args, c.ExtraArgs...), nil
}

// VM is a running QEMU process with its QMP connection and serial console.
type VM struct {
	Config VMConfig
	Paths  VMPaths
	QMP    *QMPClient
	Serial *SerialConsole

	cmd       *exec.Cmd
	qemuLog   *os.File
	serialLog *os.File
	qmpLog    *os.File
	exited    chan struct{} // closed when the process has been reaped
	waitErr   error         // the process's exit status; read after exited

	closeOnce sync.Once
	closeErr  error
}

// StartVM launches QEMU, connects QMP and the serial console and, unless the
// VM is a migration destination, lets the guest run. ctx bounds the start
// only; the VM lives until Quit, Kill or Close.
func StartVM(ctx context.Context, cfg VMConfig, paths VMPaths) (*VM, error) {
	args, err := cfg.Args(paths)
	if err != nil {
		return nil, err
	}
	for _, sock := range []string{paths.QMPSocket, paths.SerialSocket} {
		if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("vm %s: remove stale socket: %w", cfg.Name, err)
		}
	}
	if err := os.WriteFile(paths.CmdLine, []byte(shellQuote(NetNSCommand(cfg.NetNS, cfg.Binary, args...).Args)+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("vm %s: %w", cfg.Name, err)
	}
	vm := &VM{Config: cfg, Paths: paths, exited: make(chan struct{})}
	if vm.qemuLog, err = os.Create(paths.QEMULog); err != nil {
		return nil, fmt.Errorf("vm %s: %w", cfg.Name, err)
	}
	if vm.serialLog, err = os.Create(paths.SerialLog); err != nil {
		vm.closeFiles()
		return nil, fmt.Errorf("vm %s: %w", cfg.Name, err)
	}
	if vm.qmpLog, err = os.Create(paths.QMPLog); err != nil {
		vm.closeFiles()
		return nil, fmt.Errorf("vm %s: %w", cfg.Name, err)
	}

	vm.cmd = NetNSCommand(cfg.NetNS, cfg.Binary, args...)
	if len(cfg.Env) > 0 {
		vm.cmd.Env = append(os.Environ(), cfg.Env...)
	}
	vm.cmd.Stdout = vm.qemuLog
	vm.cmd.Stderr = vm.qemuLog
	// A test binary killed by a timeout must not leave guests running.
	vm.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := vm.cmd.Start(); err != nil {
		vm.closeFiles()
		return nil, fmt.Errorf("vm %s: start %s: %w", cfg.Name, cfg.Binary, err)
	}
	go func() {
		vm.waitErr = vm.cmd.Wait()
		close(vm.exited)
	}()

	if err := vm.connect(ctx); err != nil {
		vm.Kill()
		return nil, fmt.Errorf("vm %s: %w%s", cfg.Name, err, vm.logTailForError())
	}
	return vm, nil
}

func (vm *VM) connect(ctx context.Context) error {
	serialConn, err := dialUnixWhenReady(ctx, vm.Paths.SerialSocket, vm.exited)
	if err != nil {
		return fmt.Errorf("serial console: %w", err)
	}
	vm.Serial = NewSerialConsole(serialConn, vm.serialLog)
	qmpConn, err := dialUnixWhenReady(ctx, vm.Paths.QMPSocket, vm.exited)
	if err != nil {
		return fmt.Errorf("qmp: %w", err)
	}
	if vm.QMP, err = NewQMPClient(ctx, qmpConn, vm.qmpLog); err != nil {
		return err
	}
	if !vm.Config.Incoming {
		if _, err := vm.QMP.Execute(ctx, "cont", nil); err != nil {
			return err
		}
	}
	return nil
}

// dialUnixWhenReady connects to a unix socket that a just-started process
// will create, retrying until it accepts, the process exits or ctx ends.
func dialUnixWhenReady(ctx context.Context, path string, exited <-chan struct{}) (net.Conn, error) {
	return dialWhenReady(ctx, "", "unix", path, exited)
}

// dialWhenReady is dialUnixWhenReady for any network, from namespace ns
// (empty: this one); a TCP listener not up yet refuses too.
func dialWhenReady(ctx context.Context, ns, network, path string, exited <-chan struct{}) (net.Conn, error) {
	for {
		conn, err := dialInNetNS(ctx, ns, network, path)
		if err == nil {
			return conn, nil
		}
		// Between bind and listen the socket file exists but refuses.
		if !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("connect %s: %w", path, err)
		}
		select {
		case <-exited:
			return nil, fmt.Errorf("connect %s: process exited before it listened", path)
		case <-ctx.Done():
			return nil, fmt.Errorf("connect %s: %w", path, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// shellQuote joins args so that a shell reads them back unchanged.
func shellQuote(args []string) string {
	quoted := make([]string, len(args))
	for i, arg := range args {
		if arg != "" && strings.IndexFunc(arg, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:,+@%", r))
		}) < 0 {
			quoted[i] = arg
			continue
		}
		quoted[i] = "'" + strings.ReplaceAll(arg, "'", `'\''`) + "'"
	}
	return strings.Join(quoted, " ")
}

// logTailForError returns the end of QEMU's log as an error suffix, so that a
// failure to start says why without opening the run folder.
func (vm *VM) logTailForError() string {
	tail := vm.LogTail(10)
	if tail == "" {
		return ""
	}
	return "\nqemu log (" + vm.Paths.QEMULog + "):\n" + tail
}

// LogTail returns the last n lines of QEMU's stdout/stderr.
func (vm *VM) LogTail(n int) string {
	return fileTail(vm.Paths.QEMULog, n)
}

func fileTail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.TrimSpace(strings.Join(lines, "\n"))
}

// WaitLine waits for a serial line starting with prefix (see
// SerialConsole.WaitLine); it fails early if QEMU exits.
func (vm *VM) WaitLine(ctx context.Context, prefix string) (SerialLine, error) {
	return vm.WaitLineAfter(ctx, 0, prefix)
}

// WaitLineAfter waits for a serial line with index >= mark starting with any
// of prefixes. If QEMU exits first the wait ends (the console closes) and
// the error carries the exit status and the end of QEMU's log.
func (vm *VM) WaitLineAfter(ctx context.Context, mark int, prefixes ...string) (SerialLine, error) {
	line, err := vm.Serial.WaitLineAfter(ctx, mark, prefixes...)
	if err != nil {
		select {
		case <-vm.exited:
			return line, fmt.Errorf("vm %s: %w; qemu exited (%v)%s", vm.Config.Name, err, vm.waitErr, vm.logTailForError())
		default:
			return line, fmt.Errorf("vm %s: %w", vm.Config.Name, err)
		}
	}
	return line, nil
}

// Heartbeat returns the last heartbeat count the guest printed.
func (vm *VM) Heartbeat() (n int64, ok bool) { return vm.Serial.Heartbeat() }

// Status returns QEMU's run state ("running", "paused", "postmigrate", ...).
func (vm *VM) Status(ctx context.Context) (string, error) {
	var status struct {
		Status string `json:"status"`
	}
	if err := vm.QMP.ExecuteInto(ctx, "query-status", nil, &status); err != nil {
		return "", fmt.Errorf("vm %s: %w", vm.Config.Name, err)
	}
	return status.Status, nil
}

// Cont resumes the guest.
func (vm *VM) Cont(ctx context.Context) error {
	if _, err := vm.QMP.Execute(ctx, "cont", nil); err != nil {
		return fmt.Errorf("vm %s: %w", vm.Config.Name, err)
	}
	return nil
}

// ErrVerifyFailed is returned by Verify when the guest answers FAIL.
var ErrVerifyFailed = errors.New("guest verification failed")

// Verify asks the guest to check its files (the "verify" command of the
// serial protocol) and returns how many it checked.
func (vm *VM) Verify(ctx context.Context) (checked int64, err error) {
	mark := vm.Serial.Mark()
	if err := vm.Serial.WriteLine(ctx, "verify"); err != nil {
		return 0, fmt.Errorf("vm %s: %w", vm.Config.Name, err)
	}
	line, err := vm.WaitLineAfter(ctx, mark, LinePass, LineFail)
	if err != nil {
		return 0, err
	}
	if strings.HasPrefix(line.Text, LineFail) {
		return 0, fmt.Errorf("vm %s: %w: %s", vm.Config.Name, ErrVerifyFailed, line.Text)
	}
	fields := strings.Fields(strings.TrimPrefix(line.Text, LinePass))
	for _, field := range fields {
		if value, ok := strings.CutPrefix(field, "checked="); ok {
			if checked, err = strconv.ParseInt(value, 10, 64); err == nil {
				return checked, nil
			}
		}
	}
	return 0, fmt.Errorf("vm %s: malformed answer to verify: %q", vm.Config.Name, line.Text)
}

// PID is the QEMU process's id (for a debugger or a stack dump of a hung
// QEMU); 0 before it started.
func (vm *VM) PID() int {
	if vm.cmd == nil || vm.cmd.Process == nil {
		return 0
	}
	return vm.cmd.Process.Pid
}

// Exited is closed once the QEMU process has ended.
func (vm *VM) Exited() <-chan struct{} { return vm.exited }

// ExitErr is the process's exit status; meaningful once Exited is closed.
func (vm *VM) ExitErr() error {
	select {
	case <-vm.exited:
		return vm.waitErr
	default:
		return nil
	}
}

// Kill ends QEMU at once (SIGKILL) and releases the VM's connections.
func (vm *VM) Kill() error {
	return vm.close(func() error {
		if err := vm.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
			return fmt.Errorf("vm %s: kill: %w", vm.Config.Name, err)
		}
		<-vm.exited
		return nil
	})
}

// Quit asks QEMU to exit (QMP quit) and waits for it; if it has not exited
// when ctx ends, it is killed.
func (vm *VM) Quit(ctx context.Context) error {
	return vm.close(func() error {
		if vm.QMP != nil {
			// QEMU may exit before it answers: the error is no evidence.
			_, _ = vm.QMP.Execute(ctx, "quit", nil)
		}
		select {
		case <-vm.exited:
			return nil
		case <-ctx.Done():
			_ = vm.cmd.Process.Signal(syscall.SIGKILL)
			<-vm.exited
			return fmt.Errorf("vm %s: did not quit, killed: %w", vm.Config.Name, ctx.Err())
		}
	})
}

// Close quits QEMU, allowing it ten seconds, then kills it. It is what a Run
// calls at its end, and does nothing on a VM already stopped.
func (vm *VM) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return vm.Quit(ctx)
}

func (vm *VM) close(stop func() error) error {
	vm.closeOnce.Do(func() {
		select {
		case <-vm.exited:
		default:
			vm.closeErr = stop()
		}
		if vm.QMP != nil {
			vm.QMP.Close()
		}
		if vm.Serial != nil {
			vm.Serial.Close()
		}
		vm.closeFiles()
	})
	return vm.closeErr
}

func (vm *VM) closeFiles() {
	for _, f := range []*os.File{vm.qemuLog, vm.serialLog, vm.qmpLog} {
		if f != nil {
			f.Close()
		}
	}
}
