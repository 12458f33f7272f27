package main

import (
	"fmt"
	"strconv"
	"strings"
)

// Workload names, as on the kernel command line (nasmig.workload=NAME).
const (
	wlPagecacheRead  = "pagecache-read"
	wlPagecacheWrite = "pagecache-write"
	wlMixed          = "mixed"
	wlMmapWrite      = "mmap-write"
	wlMemoryHot      = "memory-hot"
	wlIdle           = "idle"
	wlReader         = "reader"
	wlCompile        = "compile"
)

var workloadNames = []string{wlPagecacheRead, wlPagecacheWrite, wlMixed, wlMmapWrite, wlMemoryHot, wlIdle, wlReader, wlCompile}

// config is what /init takes from the kernel command line.
type config struct {
	Workload  string // nasmig.workload=, default idle
	MiB       int    // nasmig.mib=, -1 when absent (each workload has a default)
	Heartbeat bool   // nasmig.heartbeat=0 turns the heartbeat off; default on
	Seed      uint64 // nasmig.seed=, mixed into the content the guest writes
	Unknown   []string
}

// parseCmdline parses /proc/cmdline. Parameters that do not start with
// "nasmig." are ignored; unknown nasmig.* keys are collected in Unknown.
func parseCmdline(s string) (config, error) {
	cfg := config{Workload: wlIdle, MiB: -1, Heartbeat: true, Seed: 1}
	for _, f := range splitCmdline(s) {
		k, v, _ := strings.Cut(f, "=")
		if !strings.HasPrefix(k, "nasmig.") {
			continue
		}
		switch k {
		case "nasmig.workload":
			if !validWorkload(v) {
				return cfg, fmt.Errorf("unknown workload %q (want one of %s)", v, strings.Join(workloadNames, ", "))
			}
			cfg.Workload = v
		case "nasmig.mib":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return cfg, fmt.Errorf("bad nasmig.mib=%q", v)
			}
			cfg.MiB = n
		case "nasmig.heartbeat":
			cfg.Heartbeat = v != "0" && v != "off"
		case "nasmig.seed":
			n, err := strconv.ParseUint(v, 0, 64)
			if err != nil {
				return cfg, fmt.Errorf("bad nasmig.seed=%q", v)
			}
			cfg.Seed = n
		default:
			cfg.Unknown = append(cfg.Unknown, f)
		}
	}
	return cfg, nil
}

// mibOr returns nasmig.mib, or def when it was not given.
func (c config) mibOr(def int) int {
	if c.MiB < 0 {
		return def
	}
	return c.MiB
}

func validWorkload(name string) bool {
	for _, w := range workloadNames {
		if w == name {
			return true
		}
	}
	return false
}

// splitCmdline splits a kernel command line into parameters like the kernel
// does: on spaces, except inside double quotes, which are removed.
func splitCmdline(s string) []string {
	var out []string
	var cur strings.Builder
	inQuote, have := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			have = true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n'):
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}
