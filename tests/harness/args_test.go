package harness

import (
	"slices"
	"strings"
	"testing"
)

func testPaths() VMPaths { return NewVMPaths("/run", "/sock", "src") }

func baseVMConfig() VMConfig {
	return VMConfig{
		Name:     "src",
		Binary:   "/out/qemu-system-x86_64",
		DataDirs: []string{"/usr/share/seabios", "/out/pc-bios"},
		Accel:    AccelTCG,
		MemMiB:   1024,
		Kernel:   "/guest/vmlinuz",
		Initrd:   "/guest/initrd.img",
		Append:   GuestCmdline("idle", 0, true),
	}
}

func TestVMArgsBase(t *testing.T) {
	args, err := baseVMConfig().Args(testPaths())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"-name", "src", "-M", "q35", "-nodefaults", "-no-user-config", "-display", "none", "-smp", "1",
		"-accel", "tcg", "-m", "1024",
		"-L", "/usr/share/seabios", "-L", "/out/pc-bios",
		"-kernel", "/guest/vmlinuz", "-initrd", "/guest/initrd.img",
		"-append", "console=ttyS0 quiet panic=-1 nasmig.workload=idle nasmig.mib=0 nasmig.heartbeat=1",
		"-chardev", "socket,id=qmp0,path=/sock/src.qmp,server=on,wait=off",
		"-mon", "chardev=qmp0,mode=control",
		"-chardev", "socket,id=ser0,path=/sock/src.serial,server=on,wait=off",
		"-serial", "chardev:ser0",
		"-S",
	}
	if !slices.Equal(args, want) {
		t.Errorf("args:\n got %q\nwant %q", args, want)
	}
}

// containsSeq reports whether seq appears in args as consecutive elements.
func containsSeq(args, seq []string) bool {
	for i := 0; i+len(seq) <= len(args); i++ {
		if slices.Equal(args[i:i+len(seq)], seq) {
			return true
		}
	}
	return false
}

func TestVMArgsDiskBuses(t *testing.T) {
	uri := NBDUnixURI("disk0", "/sock/storage.nbd")
	drive := []string{"-drive", "file=nbd+unix:///disk0?socket=/sock/storage.nbd,format=raw,if=none,id=d0,node-name=disk0,cache.direct=on"}
	for _, tc := range []struct {
		bus     string
		devices []string
	}{
		{BusVirtio, []string{"-device", "virtio-blk-pci,drive=d0,id=vdisk0"}},
		{BusAHCI, []string{"-device", "ahci,id=ahci0", "-device", "ide-hd,drive=d0,id=vdisk0,bus=ahci0.0"}},
		{BusVirtioSCSI, []string{"-device", "virtio-scsi-pci,id=scsi0", "-device", "scsi-hd,drive=d0,id=vdisk0,bus=scsi0.0"}},
	} {
		cfg := baseVMConfig()
		cfg.Disk = &DiskConfig{URI: uri, Format: FormatRaw, Bus: tc.bus, CacheDirect: true}
		args, err := cfg.Args(testPaths())
		if err != nil {
			t.Fatalf("bus %s: %v", tc.bus, err)
		}
		if !containsSeq(args, append(append([]string(nil), drive...), tc.devices...)) {
			t.Errorf("bus %s: args lack %q %q:\n%q", tc.bus, drive, tc.devices, args)
		}
	}
}

func TestVMArgsPluginIncomingExtra(t *testing.T) {
	cfg := baseVMConfig()
	cfg.Name = "dst"
	cfg.Plugin = "/out/libnasmig.so"
	cfg.PluginArgs = []string{"enable=on", "log=debug", "logfile=/run/dst,plugin.log"}
	cfg.Incoming = true
	cfg.ExtraArgs = []string{"-global", "foo.bar=1"}
	cfg.Disk = &DiskConfig{URI: "/images/a,b.qcow2", Format: FormatQcow2, Bus: BusVirtio}
	args, err := cfg.Args(NewVMPaths("/run", "/sock", "dst"))
	if err != nil {
		t.Fatal(err)
	}
	// The plugin arguments are passed through as given: a comma inside a
	// value is the caller's to escape, as in QEMU's own syntax.
	if !containsSeq(args, []string{"-plugin", "/out/libnasmig.so,enable=on,log=debug,logfile=/run/dst,plugin.log"}) {
		t.Errorf("plugin args wrong: %q", args)
	}
	if !containsSeq(args, []string{"-drive", "file=/images/a,,b.qcow2,format=qcow2,if=none,id=d0,node-name=disk0"}) {
		t.Errorf("drive with comma in path not escaped, or cache.direct set: %q", args)
	}
	if !containsSeq(args, []string{"-S", "-incoming", "defer", "-global", "foo.bar=1"}) {
		t.Errorf("incoming/extra args wrong: %q", args)
	}
}

func TestVMConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*VMConfig)
		want   string
	}{
		{"bad name", func(c *VMConfig) { c.Name = "a/b" }, "vm name"},
		{"no binary", func(c *VMConfig) { c.Binary = "" }, "no QEMU binary"},
		{"bad accel", func(c *VMConfig) { c.Accel = "hvf" }, "accelerator"},
		{"no memory", func(c *VMConfig) { c.MemMiB = 0 }, "memory"},
		{"no kernel", func(c *VMConfig) { c.Kernel = "" }, "no kernel"},
		{"plugin arg", func(c *VMConfig) { c.Plugin = "/p.so"; c.PluginArgs = []string{"enable"} }, "key=value"},
		{"args without plugin", func(c *VMConfig) { c.PluginArgs = []string{"enable=on"} }, "without a plugin"},
		{"bad bus", func(c *VMConfig) { c.Disk = &DiskConfig{URI: "x", Format: FormatRaw, Bus: "ide"} }, "disk bus"},
		{"bad format", func(c *VMConfig) { c.Disk = &DiskConfig{URI: "x", Format: "vmdk", Bus: BusVirtio} }, "disk format"},
		{"no uri", func(c *VMConfig) { c.Disk = &DiskConfig{Format: FormatRaw, Bus: BusVirtio} }, "without a URI"},
	} {
		cfg := baseVMConfig()
		tc.mutate(&cfg)
		_, err := cfg.Args(testPaths())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.want)
		}
	}
}

func TestStorageArgs(t *testing.T) {
	paths := NewStoragePaths("/run", "/sock", "storage")
	raw := StorageConfig{Binary: "/out/qemu-storage-daemon", Image: "/run/data.raw", Format: FormatRaw, CacheDirect: true}
	args, err := raw.Args(paths)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"--blockdev", "driver=file,node-name=file0,filename=/run/data.raw,cache.direct=on",
		"--nbd-server", "addr.type=unix,addr.path=/sock/storage.nbd",
		"--export", "type=nbd,id=exp0,node-name=file0,name=disk0,writable=on",
	}
	if !slices.Equal(args, want) {
		t.Errorf("raw file-node export:\n got %q\nwant %q", args, want)
	}

	qcow2 := StorageConfig{Binary: "/out/qemu-storage-daemon", Image: "/run/data.qcow2", Format: FormatQcow2, ExportFormatNode: true, ReadOnly: true, ExportName: "data"}
	args, err = qcow2.Args(paths)
	if err != nil {
		t.Fatal(err)
	}
	want = []string{
		"--blockdev", "driver=file,node-name=file0,filename=/run/data.qcow2",
		"--blockdev", "driver=qcow2,node-name=fmt0,file=file0",
		"--nbd-server", "addr.type=unix,addr.path=/sock/storage.nbd",
		"--export", "type=nbd,id=exp0,node-name=fmt0,name=data,writable=off",
	}
	if !slices.Equal(args, want) {
		t.Errorf("qcow2 format-node export:\n got %q\nwant %q", args, want)
	}

	s := &StorageDaemon{Config: qcow2.withDefaults(), Paths: paths}
	if s.ClientFormat() != FormatRaw {
		t.Errorf("format-node export: clients must open raw, got %s", s.ClientFormat())
	}
	s.Config.ExportFormatNode = false
	if s.ClientFormat() != FormatQcow2 {
		t.Errorf("file-node export of qcow2: clients must open qcow2, got %s", s.ClientFormat())
	}

	if _, err := (StorageConfig{Binary: "b", Image: "i", Format: "vdi"}).Args(paths); err == nil {
		t.Error("bad format accepted")
	}
}

func TestNBDUnixURI(t *testing.T) {
	if got, want := NBDUnixURI("disk0", "/tmp/run/storage.nbd"), "nbd+unix:///disk0?socket=/tmp/run/storage.nbd"; got != want {
		t.Errorf("URI = %q, want %q", got, want)
	}
	if got := NBDUnixURI("disk0", "/tmp/a b&c"); got != "nbd+unix:///disk0?socket=/tmp/a%20b%26c" {
		t.Errorf("URI with special characters = %q", got)
	}
}

func TestShellQuote(t *testing.T) {
	got := shellQuote([]string{"qemu", "-append", "console=ttyS0 quiet", "it's", ""})
	want := `qemu -append 'console=ttyS0 quiet' 'it'\''s' ''`
	if got != want {
		t.Errorf("shellQuote = %s, want %s", got, want)
	}
}
