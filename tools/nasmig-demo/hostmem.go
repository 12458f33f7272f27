package main

// This machine is itself a virtual machine whose kernel hands freed memory
// back to its hypervisor (free page reporting, the page_reporting module),
// so a page touched for the first time after that costs a fault in the
// hypervisor: measured 1.3-1.8 s per GiB here against 0.1 s once warm.  A
// migration destination fills gigabytes of fresh guest RAM, so this alone
// decided the fetch's rate (53% of the destination's CPU went to zeroing
// new pages in one profile), and how much of it was warm depended on how
// long ago something else had freed memory: noise of 2x between runs.
// A KVM host's memory is physical and has no such cost.  So for the
// benchmark's duration reporting is deferred (pages must stay free 300 s
// before they are reported) and, before each run, as much memory as the
// run will need is touched once; the old settings come back at the end.
// The results say so, and -warm-memory=false measures without it.

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

const pageReportingParams = "/sys/module/page_reporting/parameters"

// deferPageReporting defers free page reporting when this kernel has it;
// restore puts the old settings back.  what says what was done ("" when
// the machine has no free page reporting).
func deferPageReporting() (what string, restore func(), err error) {
	settings := map[string]string{
		"min_free_ms":     "300000",
		"max_waiting_mib": strconv.FormatInt(memTotalMiB(), 10),
	}
	old := map[string]string{}
	restore = func() {
		for name, v := range old {
			os.WriteFile(filepath.Join(pageReportingParams, name), []byte(v), 0o644)
		}
	}
	for name, v := range settings {
		path := filepath.Join(pageReportingParams, name)
		cur, err := os.ReadFile(path)
		if os.IsNotExist(err) {
			continue
		} else if err != nil {
			restore()
			return "", func() {}, err
		}
		if err := os.WriteFile(path, []byte(v), 0o644); err != nil {
			restore()
			return "", func() {}, fmt.Errorf("defer free page reporting: %s=%s: %w", name, v, err)
		}
		old[name] = strings.TrimSpace(string(cur))
	}
	if len(old) == 0 {
		return "", func() {}, nil
	}
	return fmt.Sprintf("free page reporting deferred (min_free_ms %s -> 300000, max_waiting_mib %s -> %s) and memory touched "+
		"before each run, as on a host with physical memory", old["min_free_ms"], old["max_waiting_mib"], settings["max_waiting_mib"]), restore, nil
}

func memTotalMiB() int64 {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 1 << 14
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb >> 10
		}
	}
	return 1 << 14
}

// warmMemory touches n bytes of fresh memory on every CPU and frees it, so
// that the allocations right after find pages the hypervisor backs
// already; it returns how long that took.
func warmMemory(n int64) time.Duration {
	t0 := time.Now()
	workers := max(1, min(4, runtime.NumCPU()))
	per := n / int64(workers) &^ (2<<20 - 1)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			touchFresh(per)
		}()
	}
	wg.Wait()
	return time.Since(t0)
}

// touchFresh maps n bytes of fresh anonymous memory (huge pages advised, as
// QEMU does for guest RAM), writes one byte per 4 KiB page, frees it, and
// returns how long the writes took (0 when the mapping failed).
func touchFresh(n int64) time.Duration {
	mem, err := unix.Mmap(-1, 0, int(n), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return 0
	}
	defer unix.Munmap(mem)
	unix.Madvise(mem, unix.MADV_HUGEPAGE)
	t0 := time.Now()
	for i := 0; i < len(mem); i += 4096 {
		mem[i] = 1
	}
	return time.Since(t0)
}
