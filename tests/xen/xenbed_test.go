// Package xen boots the Xen test bed (tests/xen/mkxenbed.sh) under QEMU
// and runs jobs in its dom0.  `./build.sh test-xen` builds the bed and
// runs these tests; without NASMIG_XENBED they are skipped, saying so.
package xen

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// bed is a built test bed and the QEMU that boots it.
type bed struct {
	dir  string // mkxenbed.sh's OUTDIR
	qemu string // qemu-system-x86_64 (ours: TCG is all it needs here)
}

func newBed(t *testing.T) bed {
	t.Helper()
	dir := os.Getenv("NASMIG_XENBED")
	out := os.Getenv("NASMIG_OUT")
	if dir == "" || out == "" {
		t.Skip("SKIPPED: the Xen test bed is not built (NASMIG_XENBED, NASMIG_OUT unset): run ./build.sh test-xen")
	}
	b := bed{dir: dir, qemu: filepath.Join(out, "qemu-system-x86_64")}
	for _, f := range []string{"xen", "vmlinuz", "initrd.img", "dom0.img"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatalf("test bed incomplete: %v", err)
		}
	}
	return b
}

// jobResult is what one boot of the bed printed and its job's exit status.
type jobResult struct {
	serial string
	exit   int
	took   time.Duration
	jobImg string // the job's disk after the run (ext4; read it with debugfs)
}

// jobSpec is what a boot of the bed runs: files for the job disk (name ->
// content; run.sh is the job; names may have one directory level), files
// copied there from the host (name -> host path), the job disk's size,
// and further disks for dom0 (/dev/vdc, ...; read-only images are given
// with snapshot=on, so the host's file never changes).
type jobSpec struct {
	files   map[string][]byte
	copies  map[string]string
	diskMiB int
	drives  []string
}

// run boots Xen with dom0 on a snapshot of the bed's root, the job on a
// second disk, and returns once dom0 reported the job's exit status and
// powered off.
func (b bed) run(t *testing.T, ctx context.Context, job map[string][]byte) jobResult {
	return b.runSpec(t, ctx, jobSpec{files: job})
}

func (b bed) runSpec(t *testing.T, ctx context.Context, spec jobSpec) jobResult {
	t.Helper()
	work := t.TempDir()
	jobDir := filepath.Join(work, "job")
	if err := os.MkdirAll(jobDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range spec.files {
		mode := os.FileMode(0o644)
		if strings.HasSuffix(name, ".sh") {
			mode = 0o755
		}
		writeJobFile(t, filepath.Join(jobDir, name), data, mode)
	}
	for name, src := range spec.copies {
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		writeJobFile(t, filepath.Join(jobDir, name), data, 0o755)
	}
	if spec.diskMiB == 0 {
		spec.diskMiB = 256
	}
	jobImg := filepath.Join(work, "job.img")
	if out, err := exec.CommandContext(ctx, "truncate", "-s", fmt.Sprintf("%dM", spec.diskMiB), jobImg).CombinedOutput(); err != nil {
		t.Fatalf("truncate: %v: %s", err, out)
	}
	if out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-L", "job", "-d", jobDir, jobImg).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 job: %v: %s", err, out)
	}
	serial := filepath.Join(work, "serial.log")
	xenArgs := "dom0_mem=1536M,max:1536M dom0_max_vcpus=2 console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all noreboot"
	dom0 := filepath.Join(b.dir, "vmlinuz") + " root=/dev/vda rw init=/init.sh console=hvc0 quiet"
	var fw []string
	for _, d := range strings.Split(os.Getenv("NASMIG_QEMU_DATADIRS")+":/usr/share/seabios", ":") {
		if d != "" {
			fw = append(fw, "-L", d)
		}
	}
	// Without XSAVE: with it, Xen under TCG corrupts guests' vector
	// registers now and then (a PV guest's sha256 of the files it read
	// came out wrong, differently on every run, with blkback as with
	// qdisk; with -xsave every file verifies).
	cpu := "max,-xsave"
	if c := os.Getenv("NASMIG_XEN_CPU"); c != "" {
		cpu = c
	}
	args := append(fw, "-accel", "tcg", "-cpu", cpu, "-m", "4096", "-smp", "2",
		"-kernel", filepath.Join(b.dir, "xen"), "-append", xenArgs,
		"-initrd", dom0+","+filepath.Join(b.dir, "initrd.img"),
		"-drive", "file="+filepath.Join(b.dir, "dom0.img")+",if=virtio,format=raw,snapshot=on",
		"-drive", "file="+jobImg+",if=virtio,format=raw",
		"-serial", "file:"+serial, "-display", "none", "-no-reboot", "-nodefaults")
	for _, d := range spec.drives {
		args = append(args, "-drive", "file="+d+",if=virtio,format=raw,snapshot=on")
	}
	cmd := exec.CommandContext(ctx, b.qemu, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	// dom0's poweroff halts Xen (noreboot), which leaves QEMU running: the
	// job's exit line on the serial console ends the boot.
	exitLine := regexp.MustCompile(`nasmig-xenbed: job exit (\d+)`)
	var err error
	r := jobResult{exit: -1}
wait:
	for {
		select {
		case err = <-done:
			break wait
		case <-time.After(time.Second):
			if log, _ := os.ReadFile(serial); exitLine.Match(log) {
				cmd.Process.Kill()
				<-done
				break wait
			}
		}
	}
	log, _ := os.ReadFile(serial)
	r.serial, r.took, r.jobImg = string(log), time.Since(start), jobImg
	if m := exitLine.FindStringSubmatch(r.serial); m != nil {
		r.exit, _ = strconv.Atoi(m[1])
	}
	if r.exit < 0 {
		t.Fatalf("Xen host: %v (after %s)\n%s\nserial (tail):\n%s", err, r.took.Round(time.Second), stderr.String(), tail(r.serial, 60))
	}
	return r
}

func writeJobFile(t *testing.T, path string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// TestXenHostBoots: the hypervisor boots under TCG with shadow paging,
// dom0's toolstack answers, and a job's output and exit status come back.
func TestXenHostBoots(t *testing.T) {
	b := newBed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r := b.run(t, ctx, map[string][]byte{"run.sh": []byte(`#!/bin/sh
set -e
xl info | grep -E '^(xen_version|virt_caps|total_memory|free_memory)'
xl list
`)})
	t.Logf("Xen host ran its job in %s, exit %d", r.took.Round(time.Second), r.exit)
	if r.exit != 0 {
		t.Fatalf("job exit %d\n%s", r.exit, tail(r.serial, 60))
	}
	caps := regexp.MustCompile(`virt_caps\s*:\s*(.*)`).FindStringSubmatch(r.serial)
	if caps == nil || !strings.Contains(caps[1], "shadow") {
		t.Fatalf("xl info shows no shadow paging: %q\n%s", caps, tail(r.serial, 40))
	}
	if !regexp.MustCompile(`(?m)^Domain-0\s+0\s`).MatchString(r.serial) {
		t.Fatalf("xl list does not show Domain-0\n%s", tail(r.serial, 40))
	}
	fmt.Println(strings.TrimSpace(caps[0]))
}
