// Package smoke boots the test guest under QEMU once per workload and disk
// bus, and checks the serial protocol of docs/testbed-contract.md: boot,
// ready, consecutive heartbeats, and a verify answered with PASS.
//
// It needs built artifacts and a QEMU, so it only runs when asked:
//
//	NASMIG_GUEST_SMOKE=1 NASMIG_GUEST=DIR NASMIG_QEMU=.../qemu-system-x86_64 \
//	NASMIG_QEMU_DATADIRS=/usr/share/seabios:... go test ./tests/guest/smoke -v [-run 'Boot/mixed']
//
// NASMIG_OUT/qemu-system-x86_64 is used when NASMIG_QEMU is not set;
// NASMIG_ACCEL picks the accelerator (default tcg). The disk is attached
// with snapshot=on, so the image is not modified.
package smoke

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

type bootCase struct {
	workload string
	mib      int
	bus      string // virtio, scsi, ahci
}

var cases = []bootCase{
	{"idle", 0, "virtio"},
	{"pagecache-read", 300, "virtio"},
	{"pagecache-write", 200, "virtio"},
	{"mixed", 0, "virtio"},
	{"mmap-write", 200, "virtio"},
	{"memory-hot", 256, "virtio"},
	{"pagecache-read", 100, "scsi"},
	{"pagecache-read", 100, "ahci"}, // SeaBIOS 1.16.2 adds ~32 s probing AHCI disks
}

func env(t *testing.T) (guest, qemu string, datadirs []string, accel string) {
	if os.Getenv("NASMIG_GUEST_SMOKE") != "1" {
		t.Skip("set NASMIG_GUEST_SMOKE=1 (and NASMIG_GUEST, NASMIG_QEMU) to boot the guest")
	}
	guest = os.Getenv("NASMIG_GUEST")
	qemu = os.Getenv("NASMIG_QEMU")
	if qemu == "" && os.Getenv("NASMIG_OUT") != "" {
		qemu = filepath.Join(os.Getenv("NASMIG_OUT"), "qemu-system-x86_64")
	}
	if guest == "" || qemu == "" {
		t.Fatal("NASMIG_GUEST and NASMIG_QEMU (or NASMIG_OUT) must be set")
	}
	for _, d := range strings.Split(os.Getenv("NASMIG_QEMU_DATADIRS"), ":") {
		if d != "" {
			datadirs = append(datadirs, d)
		}
	}
	accel = os.Getenv("NASMIG_ACCEL")
	if accel == "" {
		accel = "tcg"
	}
	return guest, qemu, datadirs, accel
}

func TestBoot(t *testing.T) {
	guest, qemu, datadirs, accel := env(t)
	for _, c := range cases {
		t.Run(c.workload+"/"+c.bus, func(t *testing.T) {
			boot(t, c, guest, qemu, datadirs, accel)
		})
	}
}

func qemuArgs(c bootCase, guest string, datadirs []string, accel string) []string {
	args := []string{"-accel", accel, "-m", "2048", "-smp", "1", "-M", "q35",
		"-nodefaults", "-no-user-config", "-display", "none"}
	for _, d := range datadirs {
		args = append(args, "-L", d)
	}
	args = append(args,
		"-kernel", filepath.Join(guest, "vmlinuz"),
		"-initrd", filepath.Join(guest, "initrd.img"),
		"-append", fmt.Sprintf("console=ttyS0 quiet panic=-1 nasmig.workload=%s nasmig.mib=%d", c.workload, c.mib),
		"-serial", "stdio")
	drive := "file=" + filepath.Join(guest, "data.raw") + ",format=raw,cache=none,snapshot=on"
	switch c.bus {
	case "virtio":
		args = append(args, "-drive", drive+",if=virtio")
	case "scsi":
		args = append(args, "-device", "virtio-scsi-pci,id=scsi0",
			"-drive", "id=d0,if=none,"+drive, "-device", "scsi-hd,drive=d0,bus=scsi0.0")
	case "ahci":
		args = append(args, "-device", "ahci,id=ahci0",
			"-drive", "id=d0,if=none,"+drive, "-device", "ide-hd,drive=d0,bus=ahci0.0")
	}
	return args
}

type line struct {
	at   time.Duration
	text string
}

func boot(t *testing.T, c bootCase, guest, qemu string, datadirs []string, accel string) {
	cmd := exec.Command(qemu, qemuArgs(c, guest, datadirs, accel)...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	lines := make(chan line, 1024)
	var log strings.Builder
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- line{time.Since(start), strings.TrimRight(sc.Text(), "\r")}
		}
		close(lines)
	}()
	defer func() {
		if t.Failed() {
			t.Logf("serial and QEMU output:\n%s", log.String())
		}
	}()

	// wait returns the first line for which match is true.
	lastHB := int64(-1)
	wait := func(what string, timeout time.Duration, match func(string) bool) line {
		deadline := time.After(timeout)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("QEMU exited while waiting for %s", what)
				}
				fmt.Fprintf(&log, "%7.2f %s\n", l.at.Seconds(), l.text)
				if n, ok := strings.CutPrefix(l.text, "nasmig: heartbeat n="); ok {
					v, _ := strconv.ParseInt(n, 10, 64)
					if lastHB >= 0 && v != lastHB+1 {
						t.Errorf("heartbeat n=%d after n=%d", v, lastHB)
					}
					lastHB = v
				}
				if strings.HasPrefix(l.text, "nasmig: FAIL fatal") {
					t.Fatalf("guest: %s", l.text)
				}
				if match(l.text) {
					return l
				}
			case <-deadline:
				t.Fatalf("no %s after %v", what, timeout)
			}
		}
	}
	has := func(p string) func(string) bool { return func(s string) bool { return strings.HasPrefix(s, p) } }

	b := wait("boot line", 120*time.Second, has("nasmig: boot"))
	r := wait("ready line", 300*time.Second, has("nasmig: ready workload="+c.workload+" cached-mib="))
	hb := 0
	wait("heartbeats", 10*time.Second, func(s string) bool {
		if strings.HasPrefix(s, "nasmig: heartbeat n=") {
			hb++
		}
		return hb == 2
	})
	v0 := time.Since(start)
	if _, err := io.WriteString(stdin, "verify\n"); err != nil {
		t.Fatal(err)
	}
	res := wait("verify answer", 300*time.Second, func(s string) bool {
		return strings.HasPrefix(s, "nasmig: PASS checked=") || strings.HasPrefix(s, "nasmig: FAIL")
	})
	if !strings.HasPrefix(res.text, "nasmig: PASS") {
		t.Errorf("verify: %s", res.text)
	}
	t.Logf("boot %.1f s, ready %.1f s (%s), verify %.1f s: %s",
		b.at.Seconds(), r.at.Seconds(), strings.TrimPrefix(r.text, "nasmig: "), (res.at - v0).Seconds(), res.text)
}
