package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"nasmig/tests/harness"
)

// buildLine says what was measured, for the results files: QEMU's version
// line, the library's checksum (the same commit can be built with other
// patches or toolchains) and the checkout's commit when run from one.
func buildLine(env harness.Env) string {
	qemu := "unknown"
	if out, err := exec.Command(env.QEMUBinary(), "--version").Output(); err == nil {
		qemu, _, _ = strings.Cut(strings.TrimSpace(string(out)), "\n")
	}
	lib := "unknown"
	if f, err := os.Open(env.PluginPath()); err == nil {
		h := sha256.New()
		if _, err := io.Copy(h, f); err == nil {
			lib = "sha256 " + hex.EncodeToString(h.Sum(nil))[:16]
		}
		f.Close()
	}
	commit := "not a git checkout"
	if out, err := exec.Command("git", "describe", "--always", "--dirty").Output(); err == nil {
		commit = "checkout " + strings.TrimSpace(string(out))
	}
	return fmt.Sprintf("build: %s; libnasmig.so %s; %s", qemu, lib, commit)
}
