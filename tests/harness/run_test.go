package harness

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRunSuccessUnderKeepRemovesScratchOnly(t *testing.T) {
	keep := t.TempDir()
	var out bytes.Buffer
	run, err := NewRun("TestX/sub case", keep, &out)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(filepath.Base(run.Dir), "nasmig-TestX_sub_case-") {
		t.Errorf("run folder %s not named after the test", run.Dir)
	}
	dump := run.Path("src.ram0")
	os.WriteFile(dump, []byte("big"), 0o644)
	run.Scratch(dump)
	os.WriteFile(run.Path("src.serial.log"), []byte("log"), 0o644)
	var order []string
	run.AddCleanup("first", func() error { order = append(order, "first"); return nil })
	run.AddCleanup("second", func() error { order = append(order, "second"); return errors.New("boom") })

	err = run.Close(false)
	if err == nil || !strings.Contains(err.Error(), "stop second: boom") {
		t.Errorf("Close = %v, want the cleanup's error", err)
	}
	if strings.Join(order, ",") != "second,first" {
		t.Errorf("cleanups ran in order %v, want newest first", order)
	}
	if _, err := os.Stat(dump); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("scratch file survived a successful run: %v", err)
	}
	for _, name := range []string{"src.serial.log", "run.log"} {
		if _, err := os.Stat(run.Path(name)); err != nil {
			t.Errorf("log %s under NASMIG_KEEP removed: %v", name, err)
		}
	}
	if out.Len() != 0 {
		t.Errorf("a successful run printed %q", out.String())
	}
	if err := run.Close(true); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

func TestRunFailureKeepsEverythingAndSaysWhere(t *testing.T) {
	var out bytes.Buffer
	run, err := NewRun("TestFail", "", &out)
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(run.Dir)
	dump := run.Path("dst.ram0")
	os.WriteFile(dump, []byte("big"), 0o644)
	run.Scratch(dump)
	if err := run.Close(true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dump); err != nil {
		t.Errorf("failed run lost its dump: %v", err)
	}
	if !strings.Contains(out.String(), run.Dir) {
		t.Errorf("failed run did not print its folder: %q", out.String())
	}
}

func TestRunSuccessInTempRemovesFolder(t *testing.T) {
	run, err := NewRun("TestTemp", "", &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if err := run.SaveJSON("result.json", map[string]int{"a": 1}); err != nil {
		t.Fatal(err)
	}
	if err := run.Close(false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(run.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary run folder survived success: %v", err)
	}
}

func TestRunLongFolderGetsShortSockets(t *testing.T) {
	deep := filepath.Join(t.TempDir(), strings.Repeat("d", 60), strings.Repeat("e", 60))
	run, err := NewRun("TestDeep", deep, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	socket := run.SocketPath("storage.nbd.migrate")
	if len(socket) > maxSocketPath || strings.HasPrefix(socket, run.Dir) {
		t.Errorf("socket path %s (%d bytes) not moved out of the deep run folder", socket, len(socket))
	}
	socketDir := filepath.Dir(socket)
	if err := run.Close(false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(socketDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("short socket folder survived: %v", err)
	}
}

func TestLoadEnv(t *testing.T) {
	vars := map[string]string{
		"NASMIG_OUT":           "/out",
		"NASMIG_GUEST":         "/guest",
		"NASMIG_QEMU_DATADIRS": "/usr/share/seabios::/out/pc-bios",
		"NASMIG_ACCEL":         "tcg",
	}
	env := LoadEnv(func(name string) string { return vars[name] })
	if env.SkipReason() != "" {
		t.Errorf("complete env: skip reason %q", env.SkipReason())
	}
	if strings.Join(env.DataDirs, "|") != "/usr/share/seabios|/out/pc-bios" {
		t.Errorf("data dirs = %q", env.DataDirs)
	}
	if env.QEMUBinary() != "/out/qemu-system-x86_64" || env.DataImage(FormatQcow2) != "/guest/data.qcow2" {
		t.Errorf("paths: %s %s", env.QEMUBinary(), env.DataImage(FormatQcow2))
	}
	cfg := env.VMConfig("src", AccelTCG, 512, "x")
	if cfg.Kernel != "/guest/vmlinuz" || cfg.Initrd != "/guest/initrd.img" || len(cfg.DataDirs) != 2 {
		t.Errorf("vm config = %+v", cfg)
	}
	if reason := LoadEnv(func(string) string { return "" }).SkipReason(); !strings.Contains(reason, "NASMIG_OUT and NASMIG_GUEST") {
		t.Errorf("empty env: skip reason %q", reason)
	}
}

func TestProbeAccelForced(t *testing.T) {
	var out bytes.Buffer
	choice, err := ProbeAccel(context.Background(), ProbeConfig{Forced: "tcg", Log: &out})
	if err != nil || choice.Accel != AccelTCG {
		t.Fatalf("forced tcg: %+v, %v", choice, err)
	}
	if !strings.Contains(out.String(), "accelerator tcg (forced by NASMIG_ACCEL)") {
		t.Errorf("forced choice printed %q", out.String())
	}
	if _, err := ProbeAccel(context.Background(), ProbeConfig{Forced: "hax", Log: &out}); err == nil {
		t.Error("unknown forced accelerator accepted")
	}
}

func TestProbeAccelUsesMatchingCacheOnly(t *testing.T) {
	dir := t.TempDir()
	binary := filepath.Join(dir, "qemu-system-x86_64")
	kernel := filepath.Join(dir, "vmlinuz")
	os.WriteFile(binary, []byte("#!/bin/false\n"), 0o755)
	os.WriteFile(kernel, []byte("kernel"), 0o644)
	cfg := ProbeConfig{
		VM:       VMConfig{Binary: binary, Kernel: kernel},
		CacheDir: filepath.Join(dir, "cache"),
		Log:      &bytes.Buffer{},
	}
	key, err := probeKey(cfg.VM)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeProbeCache(filepath.Join(cfg.CacheDir, probeCacheFile), AccelChoice{Accel: AccelKVM, Reason: "cached", Key: key, When: "then"}); err != nil {
		t.Fatal(err)
	}
	choice, err := ProbeAccel(context.Background(), cfg)
	if err != nil || choice.Accel != AccelKVM || !choice.Cached {
		t.Fatalf("cached probe: %+v, %v", choice, err)
	}

	// A different guest kernel invalidates the answer.
	os.WriteFile(kernel, []byte("another kernel"), 0o644)
	newKey, _ := probeKey(cfg.VM)
	if newKey == key {
		t.Fatal("probe key ignores the guest kernel")
	}
	if _, ok := readProbeCache(filepath.Join(cfg.CacheDir, probeCacheFile), newKey); ok {
		t.Error("stale cache entry accepted")
	}
}
