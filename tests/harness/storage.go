package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"nasmig/tools/nbd"
)

// StorageConfig describes the shared storage: one qemu-storage-daemon that
// exports one image over NBD on a unix socket, reached by both QEMUs.
type StorageConfig struct {
	Name   string // for file names in the run folder; default "storage"
	Binary string // qemu-storage-daemon
	Image  string // the image file; give each test a private copy (CopyImage)
	Format string // FormatRaw or FormatQcow2: the image's format

	// ExportFormatNode exports the format node, so NBD clients see the
	// guest-visible bytes and open the export as raw. When false the file
	// node is exported and each QEMU opens the image format itself over NBD
	// (for qcow2: the qcow2 driver runs in the QEMU processes, as it would on
	// a plain shared file).
	ExportFormatNode bool

	CacheDirect bool   // cache.direct=on on the file node: reads reach the disk, not the host page cache
	ExportName  string // default "disk0"
	ReadOnly    bool   // export read-only; default writable

	// Throttle puts a throttle filter (group tg0, unlimited at start)
	// under the export and opens a QMP monitor, so that a test can make
	// the storage slow while it runs (SetReadLimit).
	Throttle bool

	// NetNS runs the daemon in a network namespace (Network.Storage) and
	// Listen is its NBD server's TCP address there (host:port); both empty:
	// a unix socket in the run's socket folder.
	NetNS  string
	Listen string
}

// StoragePaths are the files of one storage daemon.
type StoragePaths struct {
	Socket  string // the NBD server's unix socket
	QMP     string // its QMP monitor (with Throttle)
	Log     string
	CmdLine string
}

// NewStoragePaths names the files of storage daemon name: the log in dir,
// the socket in socketDir.
func NewStoragePaths(dir, socketDir, name string) StoragePaths {
	return StoragePaths{
		Socket:  filepath.Join(socketDir, name+".nbd"),
		QMP:     filepath.Join(socketDir, name+".qmp"),
		Log:     filepath.Join(dir, name+".log"),
		CmdLine: filepath.Join(dir, name+".cmdline"),
	}
}

func (c StorageConfig) withDefaults() StorageConfig {
	if c.Name == "" {
		c.Name = "storage"
	}
	if c.ExportName == "" {
		c.ExportName = "disk0"
	}
	return c
}

// Args builds qemu-storage-daemon's arguments (without the binary).
func (c StorageConfig) Args(p StoragePaths) ([]string, error) {
	c = c.withDefaults()
	switch {
	case c.Binary == "":
		return nil, errors.New("storage: no qemu-storage-daemon binary")
	case c.Image == "":
		return nil, errors.New("storage: no image")
	case c.Format != FormatRaw && c.Format != FormatQcow2:
		return nil, fmt.Errorf("storage: image format %q: want %q or %q", c.Format, FormatRaw, FormatQcow2)
	case p.Socket == "":
		return nil, errors.New("storage: no socket path")
	}
	file := "driver=file,node-name=file0,filename=" + escapeOpt(c.Image)
	if c.CacheDirect {
		file += ",cache.direct=on"
	}
	args := []string{"--blockdev", file}
	exportNode := "file0"
	// The format node is opened only when it is exported: a qcow2 node
	// opened here while clients write the file underneath would hold stale
	// metadata, and could write it back on exit.
	if c.ExportFormatNode {
		args = append(args, "--blockdev", "driver="+c.Format+",node-name=fmt0,file=file0")
		exportNode = "fmt0"
	}
	if c.Throttle {
		args = append(args,
			"--object", "throttle-group,id=tg0",
			"--blockdev", "driver=throttle,node-name=thr0,throttle-group=tg0,file="+exportNode,
			"--chardev", "socket,id=qmp0,path="+escapeOpt(p.QMP)+",server=on,wait=off",
			"--monitor", "chardev=qmp0",
		)
		exportNode = "thr0"
	}
	writable := "on"
	if c.ReadOnly {
		writable = "off"
	}
	server := "addr.type=unix,addr.path=" + escapeOpt(p.Socket)
	if c.Listen != "" {
		host, port, err := net.SplitHostPort(c.Listen)
		if err != nil {
			return nil, fmt.Errorf("storage: listen address: %w", err)
		}
		server = "addr.type=inet,addr.host=" + escapeOpt(host) + ",addr.port=" + escapeOpt(port)
	}
	args = append(args,
		"--nbd-server", server,
		"--export", "type=nbd,id=exp0,node-name="+exportNode+",name="+escapeOpt(c.ExportName)+",writable="+writable,
	)
	return args, nil
}

// StorageDaemon is a running qemu-storage-daemon.
type StorageDaemon struct {
	Config StorageConfig
	Paths  StoragePaths

	cmd     *exec.Cmd
	log     *os.File
	exited  chan struct{}
	waitErr error
}

// StartStorage launches the daemon and returns once its export answers an
// NBD handshake, which proves the export, not only the socket, is ready.
func StartStorage(ctx context.Context, cfg StorageConfig, paths StoragePaths) (*StorageDaemon, error) {
	cfg = cfg.withDefaults()
	args, err := cfg.Args(paths)
	if err != nil {
		return nil, err
	}
	if err := os.Remove(paths.Socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("storage: remove stale socket: %w", err)
	}
	if err := os.WriteFile(paths.CmdLine, []byte(shellQuote(NetNSCommand(cfg.NetNS, cfg.Binary, args...).Args)+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	s := &StorageDaemon{Config: cfg, Paths: paths, exited: make(chan struct{})}
	if s.log, err = os.Create(paths.Log); err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	s.cmd = NetNSCommand(cfg.NetNS, cfg.Binary, args...)
	s.cmd.Stdout = s.log
	s.cmd.Stderr = s.log
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		s.log.Close()
		return nil, fmt.Errorf("storage: start %s: %w", cfg.Binary, err)
	}
	go func() {
		s.waitErr = s.cmd.Wait()
		close(s.exited)
	}()

	network, addr := "unix", paths.Socket
	if cfg.Listen != "" {
		network, addr = "tcp", cfg.Listen
	}
	conn, err := dialWhenReady(ctx, cfg.NetNS, network, addr, s.exited)
	if err == nil {
		conn.Close()
		var client *nbd.Client
		if client, err = s.Dial(ctx); err == nil {
			err = client.Close()
		}
	}
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("storage: %w%s", err, s.logTailForError())
	}
	return s, nil
}

func (s *StorageDaemon) logTailForError() string {
	tail := fileTail(s.Paths.Log, 10)
	if tail == "" {
		return ""
	}
	return "\nqemu-storage-daemon log (" + s.Paths.Log + "):\n" + tail
}

// SetReadLimit limits the export's reads to bytesPerSec (0: unlimited);
// only with Throttle.
func (s *StorageDaemon) SetReadLimit(ctx context.Context, bytesPerSec int64) error {
	if !s.Config.Throttle {
		return errors.New("storage: SetReadLimit without Throttle")
	}
	q, err := DialQMP(ctx, s.Paths.QMP, io.Discard)
	if err != nil {
		return fmt.Errorf("storage: %w", err)
	}
	defer q.Close()
	_, err = q.Execute(ctx, "qom-set", map[string]any{
		"path": "tg0", "property": "limits", "value": map[string]any{"bps-read": bytesPerSec},
	})
	if err != nil {
		return fmt.Errorf("storage: read limit %d B/s: %w", bytesPerSec, err)
	}
	return nil
}

// PID is the daemon's process id (for CPU accounting); 0 before it started.
func (s *StorageDaemon) PID() int {
	if s.cmd == nil || s.cmd.Process == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// Pause stops the daemon (SIGSTOP): every request to it waits, as with a
// storage server that stalls; Resume lets it go on.
func (s *StorageDaemon) Pause() error {
	return s.cmd.Process.Signal(syscall.SIGSTOP)
}

// Resume continues a paused daemon (SIGCONT).
func (s *StorageDaemon) Resume() error {
	return s.cmd.Process.Signal(syscall.SIGCONT)
}

// URI is what a QEMU passes as the drive's file: nbd+unix:///EXPORT?socket=PATH,
// or nbd://HOST:PORT/EXPORT for a TCP listener.
func (s *StorageDaemon) URI() string {
	if s.Config.Listen != "" {
		return "nbd://" + s.Config.Listen + "/" + uriEscape(s.Config.ExportName)
	}
	return NBDUnixURI(s.Config.ExportName, s.Paths.Socket)
}

// NBDUnixURI builds QEMU's URI for an NBD export on a unix socket.
func NBDUnixURI(export, socket string) string {
	return "nbd+unix:///" + uriEscape(export) + "?socket=" + uriEscape(socket)
}

// uriEscape percent-encodes every byte outside a conservative safe set.
// QEMU's URI parser decodes %XX but not "+", so url.QueryEscape would not
// do; and a usual path stays readable in logs and command lines.
func uriEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("/._-~", c) >= 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// ClientFormat is the format a QEMU must open the export with.
func (s *StorageDaemon) ClientFormat() string {
	if s.Config.ExportFormatNode {
		return FormatRaw
	}
	return s.Config.Format
}

// Disk returns the guest's disk configuration for this export on bus.
func (s *StorageDaemon) Disk(bus string) *DiskConfig {
	return &DiskConfig{URI: s.URI(), Format: s.ClientFormat(), Bus: bus, CacheDirect: true}
}

// Dial opens a new NBD connection to the export: a client beside the QEMUs.
func (s *StorageDaemon) Dial(ctx context.Context) (*nbd.Client, error) {
	if s.Config.Listen != "" {
		conn, err := dialInNetNS(ctx, s.Config.NetNS, "tcp", s.Config.Listen)
		if err != nil {
			return nil, fmt.Errorf("nbd connect %s: %w", s.Config.Listen, err)
		}
		return nbd.Handshake(ctx, conn, s.Config.ExportName)
	}
	return nbd.Dial(ctx, "unix", s.Paths.Socket, s.Config.ExportName)
}

// WriteAt writes data at off of the export through a connection of its own,
// and flushes it, as a third host writing to the shared disk would.
func (s *StorageDaemon) WriteAt(ctx context.Context, data []byte, off int64) error {
	client, err := s.Dial(ctx)
	if err != nil {
		return err
	}
	if _, err := client.WriteAt(data, off); err != nil {
		client.Close()
		return err
	}
	if err := client.Flush(); err != nil {
		client.Close()
		return err
	}
	return client.Close()
}

// ReadAt reads n bytes at off of the export through a connection of its own.
func (s *StorageDaemon) ReadAt(ctx context.Context, n int, off int64) ([]byte, error) {
	client, err := s.Dial(ctx)
	if err != nil {
		return nil, err
	}
	defer client.Close()
	buf := make([]byte, n)
	if _, err := client.ReadAt(buf, off); err != nil {
		return nil, err
	}
	return buf, nil
}

// Close stops the daemon (SIGTERM, which lets it flush and close the image;
// SIGKILL after ten seconds) and removes its socket, which it leaves behind.
func (s *StorageDaemon) Close() error {
	var err error
	select {
	case <-s.exited:
	default:
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(10 * time.Second):
			_ = s.cmd.Process.Signal(syscall.SIGKILL)
			<-s.exited
			err = errors.New("storage: qemu-storage-daemon ignored SIGTERM for 10 s, killed")
		}
	}
	s.log.Close()
	if removeErr := os.Remove(s.Paths.Socket); removeErr != nil && !errors.Is(removeErr, os.ErrNotExist) {
		err = errors.Join(err, fmt.Errorf("storage: %w", removeErr))
	}
	return err
}

// CopyImage makes a private copy of an image, sharing blocks with the
// original where the file system can (reflink) and keeping holes otherwise,
// so that a test never changes the cached artifact and the copy costs
// little.
func CopyImage(ctx context.Context, src, dst string) error {
	cmd := exec.CommandContext(ctx, "cp", "--reflink=auto", "--sparse=always", "--", src, dst)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("copy image %s to %s: %w: %s", src, dst, err, out)
	}
	return nil
}
