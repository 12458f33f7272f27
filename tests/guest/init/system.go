package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const (
	modulesDir = "/modules"
	dataDir    = "/data"
)

func mountDevtmpfs() error {
	os.MkdirAll("/dev", 0o755)
	err := unix.Mount("devtmpfs", "/dev", "devtmpfs", 0, "mode=0755")
	if errors.Is(err, unix.EBUSY) {
		return nil // already mounted (CONFIG_DEVTMPFS_MOUNT or our fallback)
	}
	return err
}

// mountBasics mounts proc, sysfs and devtmpfs.
func mountBasics() error {
	for _, m := range []struct{ src, dir, fstype string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
	} {
		os.MkdirAll(m.dir, 0o755)
		if err := unix.Mount(m.src, m.dir, m.fstype, unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s: %w", m.dir, err)
		}
	}
	if err := mountDevtmpfs(); err != nil {
		return fmt.Errorf("mount /dev: %w", err)
	}
	return nil
}

// loadModules loads /modules/NAME.ko in the order of /modules/order.
// A module that is already loaded is fine; other failures are returned as
// notes (the disk search that follows decides whether they mattered).
func loadModules() (loaded int, notes []string, err error) {
	data, err := os.ReadFile(filepath.Join(modulesDir, "order"))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil, nil // everything built in
	}
	if err != nil {
		return 0, nil, err
	}
	for _, name := range strings.Fields(string(data)) {
		f, err := os.Open(filepath.Join(modulesDir, name))
		if err != nil {
			notes = append(notes, fmt.Sprintf("module %s: %v", name, err))
			continue
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		switch {
		case err == nil:
			loaded++
		case errors.Is(err, unix.EEXIST):
		default:
			notes = append(notes, fmt.Sprintf("module %s: %v", name, err))
		}
	}
	return loaded, notes, nil
}

// diskRank orders candidate data disks: vda, sda, vdb, sdb, ...
// It returns ok=false for names that are not whole virtio, SCSI or Xen PV
// disks.
func diskRank(name string) (rank string, ok bool) {
	var kind, suffix string
	switch {
	case strings.HasPrefix(name, "vd"):
		kind, suffix = "0", name[2:]
	case strings.HasPrefix(name, "sd"):
		kind, suffix = "1", name[2:]
	case strings.HasPrefix(name, "xvd"): // a Xen PV disk (xen-blkfront)
		kind, suffix = "2", name[3:]
	default:
		return "", false
	}
	if suffix == "" {
		return "", false
	}
	for _, r := range suffix {
		if r < 'a' || r > 'z' {
			return "", false
		}
	}
	// Shorter suffixes first (sdz before sdaa), then by letters, then kind.
	return fmt.Sprintf("%02d%s%s", len(suffix), suffix, kind), true
}

// pickDisk returns the preferred data disk among /sys/block names that have
// a non-zero size, or "".
func pickDisk(names []string, size func(string) int64) string {
	type cand struct{ rank, name string }
	var cs []cand
	for _, n := range names {
		if r, ok := diskRank(n); ok && size(n) > 0 {
			cs = append(cs, cand{r, n})
		}
	}
	if len(cs) == 0 {
		return ""
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].rank < cs[j].rank })
	return cs[0].name
}

func sysBlockSize(name string) int64 {
	b, err := os.ReadFile("/sys/block/" + name + "/size")
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return n
}

// findDisk polls /sys/block until a data disk appears and its /dev node
// exists.
func findDisk(timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		var names []string
		if ents, err := os.ReadDir("/sys/block"); err == nil {
			for _, e := range ents {
				names = append(names, e.Name())
			}
		}
		if d := pickDisk(names, sysBlockSize); d != "" {
			if _, err := os.Stat("/dev/" + d); err == nil {
				return "/dev/" + d, nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no data disk (vd*/sd*/xvd*) after %v; /sys/block has %v", timeout, names)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func mountData(dev string) error {
	os.MkdirAll(dataDir, 0o755)
	// noatime: reading files must not write to the disk.
	if err := unix.Mount(dev, dataDir, "ext4", unix.MS_NOATIME, ""); err != nil {
		return fmt.Errorf("mount %s on %s as ext4: %w", dev, dataDir, err)
	}
	return nil
}

// meminfo returns a /proc/meminfo field in KiB, or -1.
func meminfo(field string) int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && k == field {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err == nil {
				return n
			}
		}
	}
	return -1
}

// uptime returns the seconds since the kernel started, from /proc/uptime.
func uptime() float64 {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return -1
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

func sysctl(name, value string) error {
	p := "/proc/sys/" + strings.ReplaceAll(name, ".", "/")
	return os.WriteFile(p, []byte(value), 0o644)
}
