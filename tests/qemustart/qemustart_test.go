// Package qemustart checks that the patched QEMU starts, and that its
// -plugin loader accepts libnasmig.so under TCG and KVM and refuses a bad
// path, a bad argument and a library of another ABI version with a clear
// message and a non-zero exit.
package qemustart

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func outDir(t *testing.T) string {
	d := os.Getenv("NASMIG_OUT")
	if d == "" {
		t.Skip("NASMIG_OUT is not set: run through ./build.sh test (skipping the QEMU start tests)")
	}
	return d
}

// runQEMU starts QEMU with a QMP monitor on stdin that quits at once.
func runQEMU(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(outDir(t), "qemu-system-x86_64"), args...)
	cmd.Stdin = strings.NewReader(`{"execute":"qmp_capabilities"}` + "\n" +
		`{"execute":"query-migrate-capabilities"}` + "\n" + `{"execute":"quit"}` + "\n")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func base(accel string) []string {
	return []string{"-accel", accel, "-machine", "none", "-display", "none", "-nodefaults", "-qmp", "stdio"}
}

func TestVersion(t *testing.T) {
	out, err := exec.Command(filepath.Join(outDir(t), "qemu-system-x86_64"), "-version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "10.0.13") {
		t.Fatalf("qemu -version: %v\n%s", err, out)
	}
}

func TestStartsAndExits(t *testing.T) {
	if out, err := runQEMU(t, base("tcg")...); err != nil {
		t.Fatalf("plain start: %v\n%s", err, out)
	}
}

// capabilities returns the query-migrate-capabilities answer of a QEMU
// started with args (the QMP line that lists them).
func capabilities(t *testing.T, args ...string) string {
	t.Helper()
	out, err := runQEMU(t, args...)
	if err != nil {
		t.Fatalf("start %v: %v\n%s", args, err, out)
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, `"capability": "x-disk-refs"`) {
			return line
		}
	}
	t.Fatalf("no capability list (with x-disk-refs) in:\n%s", out)
	return ""
}

// Loaded with defaults, the library must leave every capability as stock
// QEMU has it: it judges each migration when it starts instead, so that no
// capability combination QEMU accepts is refused.
func TestPluginLoadsAndLeavesCapabilitiesAlone(t *testing.T) {
	lib := filepath.Join(outDir(t), "libnasmig.so")
	accels := []string{"tcg"}
	if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err == nil {
		f.Close()
		accels = append(accels, "kvm")
	} else {
		t.Logf("no usable /dev/kvm (%v): the KVM load check is skipped", err)
	}
	for _, accel := range accels {
		stock := capabilities(t, base(accel)...)
		for _, args := range []string{lib, lib + ",auto=off"} {
			if got := capabilities(t, append(base(accel), "-plugin", args)...); got != stock {
				t.Errorf("%s: -plugin %s changed the capabilities:\n got %s\nwant %s", accel, args, got, stock)
			}
		}
		t.Logf("%s: libnasmig.so loaded (auto=on and off), capabilities as without it", accel)
	}
	// Postcopy and references used to exclude each other: with the library
	// loaded, setting postcopy-ram (what virsh migrate --postcopy does) and
	// x-disk-refs together must be accepted.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(outDir(t), "qemu-system-x86_64"), append(base("tcg"), "-plugin", lib)...)
	cmd.Stdin = strings.NewReader(`{"execute":"qmp_capabilities"}` + "\n" +
		`{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"postcopy-ram","state":true},{"capability":"x-disk-refs","state":true}]}}` + "\n" +
		`{"execute":"quit"}` + "\n")
	out, err := cmd.CombinedOutput()
	if err != nil || strings.Contains(string(out), `"error"`) {
		t.Fatalf("postcopy-ram with x-disk-refs refused: %v\n%s", err, out)
	}
}

func expectFailure(t *testing.T, want string, args ...string) {
	t.Helper()
	out, err := runQEMU(t, append(base("tcg"), args...)...)
	if err == nil {
		t.Fatalf("QEMU started, want a failure mentioning %q:\n%s", want, out)
	}
	if !strings.Contains(out, want) {
		t.Fatalf("error does not mention %q:\n%s", want, out)
	}
}

func TestBadPath(t *testing.T) {
	expectFailure(t, "Could not load plugin", "-plugin", "/nonexistent/libnasmig.so")
}

func TestBadArgument(t *testing.T) {
	expectFailure(t, "bad plugin argument", "-plugin", filepath.Join(outDir(t), "libnasmig.so")+",frobnicate=1")
	expectFailure(t, "want on or off", "-plugin", filepath.Join(outDir(t), "libnasmig.so")+",enable=maybe")
}

// A library that answers with another ABI version must be refused by QEMU.
func TestWrongABIVersion(t *testing.T) {
	outDir(t)
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("gcc missing: cannot build the wrong-ABI library (skipped)")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "wrongabi.c")
	hdr, _ := filepath.Abs("../../cshim")
	os.WriteFile(src, []byte(`#include <stdint.h>
#include <string.h>
#include "nasmig.h"
int qemu_plugin_version = 4;
int qemu_plugin_install(uint64_t id, const void *i, int c, char **v) { return 0; }
int nasmig_register(const struct nasmig_host *h, struct nasmig_lib *l, const char **a, int n, char *e, size_t el) {
	memset(l, 0, sizeof(*l));
	l->abi_version = NASMIG_ABI_VERSION + 1;
	l->struct_size = sizeof(*l);
	return 0;
}
`), 0o644)
	so := filepath.Join(dir, "libwrongabi.so")
	if out, err := exec.Command("gcc", "-shared", "-fPIC", "-I", hdr, "-o", so, src).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	expectFailure(t, "does not match this QEMU's ABI", "-plugin", so)
}

// qmpAnswers sends each command to a QEMU started with args, one QEMU per
// command, and returns the answer lines (the command's answer only).
func qmpAnswer(t *testing.T, args []string, command string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(outDir(t), "qemu-system-x86_64"), args...)
	cmd.Stdin = strings.NewReader(`{"execute":"qmp_capabilities"}` + "\n" + command + "\n" + `{"execute":"quit"}` + "\n")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	// greeting, qmp_capabilities' return, the answer, quit's return, SHUTDOWN
	for i, l := range lines {
		if strings.Contains(l, `"QMP"`) || i == 1 {
			continue
		}
		return l
	}
	return ""
}

// Every capability alone, switched on with the library loaded, gets the
// answer it gets from QEMU without it: accepted where stock accepts, and
// refused with stock's own words where stock refuses (x-colo without the
// replication module, background-snapshot without the kernel's support).
func TestCapabilityAnswersAsStock(t *testing.T) {
	lib := filepath.Join(outDir(t), "libnasmig.so")
	stockCaps := capabilities(t, base("tcg")...)
	n := 0
	for _, field := range strings.Split(stockCaps, `"capability": "`)[1:] {
		name := field[:strings.Index(field, `"`)]
		if name == "x-disk-refs" || name == "x-disk-refs-after-switchover" {
			continue // nasmig's own: need the library, checked in TestNasmigCapabilities
		}
		set := `{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"` + name + `","state":true}]}}`
		stock := qmpAnswer(t, base("tcg"), set)
		with := qmpAnswer(t, append(base("tcg"), "-plugin", lib), set)
		if with != stock {
			t.Errorf("capability %s: with libnasmig.so %s\nwithout %s", name, with, stock)
		}
		n++
	}
	if n < 15 {
		t.Fatalf("only %d capabilities compared: the list did not parse (%s)", n, stockCaps)
	}
	t.Logf("%d capabilities: the same answer with and without libnasmig.so", n)
}

// nasmig's own capabilities: without the library each is refused naming
// it; with it, x-disk-refs is accepted alone, and
// x-disk-refs-after-switchover only next to postcopy-ram.
func TestNasmigCapabilities(t *testing.T) {
	lib := filepath.Join(outDir(t), "libnasmig.so")
	set := func(caps ...string) string {
		var list []string
		for _, c := range caps {
			list = append(list, `{"capability":"`+c+`","state":true}`)
		}
		return `{"execute":"migrate-set-capabilities","arguments":{"capabilities":[` + strings.Join(list, ",") + `]}}`
	}
	for _, c := range []struct {
		withLib bool
		caps    []string
		want    string // in the answer
	}{
		{false, []string{"x-disk-refs"}, "requires libnasmig.so"},
		{false, []string{"postcopy-ram", "x-disk-refs-after-switchover"}, "requires libnasmig.so"},
		{true, []string{"x-disk-refs"}, `"return"`},
		{true, []string{"x-disk-refs-after-switchover"}, "requires capability 'postcopy-ram'"},
		{true, []string{"postcopy-ram", "x-disk-refs-after-switchover"}, `"return"`},
	} {
		args := base("tcg")
		if c.withLib {
			args = append(args, "-plugin", lib)
		}
		if got := qmpAnswer(t, args, set(c.caps...)); !strings.Contains(got, c.want) {
			t.Errorf("library %v, capabilities %v: answer %s, want it to contain %s", c.withLib, c.caps, got, c.want)
		}
	}
}
