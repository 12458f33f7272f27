// Command init is /init of the nasmig test guest's initramfs (see
// docs/testbed-contract.md): it prints "nasmig: boot", loads the storage and
// ext4 modules, mounts the data disk on /data, runs the workload named by
// nasmig.workload=, prints "nasmig: ready ..." at its steady state and a
// heartbeat every second, and answers "verify" on the serial console.
//
// It is PID 1 and never exits: on a fatal error it prints
// "nasmig: FAIL fatal: ..." and keeps answering commands.
package main

import (
	"bufio"
	"fmt"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"time"
)

// diskTimeout bounds the wait for the data disk to show up in /sys/block.
// Under TCG, AHCI and virtio-scsi probing take a few seconds.
const diskTimeout = 30 * time.Second

var cons *console

// guest is the state the command loop needs.
type guest struct {
	mu    sync.Mutex
	wl    workload
	ready chan struct{} // closed when the workload reached steady state
	fatal error         // set (under mu) when /init gave up
	self  *selfCheck
}

func main() {
	c, in := openConsole()
	cons = c
	g := &guest{ready: make(chan struct{})}
	defer func() {
		if p := recover(); p != nil {
			g.fail(fmt.Errorf("panic: %v\n%s", p, debug.Stack()))
		}
		sleepForever()
	}()
	g.boot(in)
}

func (g *guest) boot(in *os.File) {
	if err := mountBasics(); err != nil {
		g.fail(err)
		return
	}
	if err := quietInput(in); err != nil {
		infof("console: cannot turn off echo: %v", err)
	}
	cmdline, _ := os.ReadFile("/proc/cmdline")
	cfg, err := parseCmdline(string(cmdline))
	go g.commands(in)
	if err != nil {
		g.fail(err)
		return
	}
	if cfg.Heartbeat {
		go heartbeat()
	}
	for _, u := range cfg.Unknown {
		infof("ignoring unknown parameter %s", u)
	}
	g.self = newSelfCheck()

	t0 := time.Now()
	loaded, notes, err := loadModules()
	if err != nil {
		g.fail(fmt.Errorf("load modules: %w", err))
		return
	}
	for _, n := range notes {
		infof("%s", n)
	}
	tMods := time.Since(t0)

	t1 := time.Now()
	timeout := diskTimeout
	if !needsDisk(cfg.Workload) {
		timeout = 5 * time.Second
	}
	dev, err := findDisk(timeout)
	switch {
	case err != nil && needsDisk(cfg.Workload):
		g.fail(err)
		return
	case err != nil:
		infof("no data disk, not needed by %s", cfg.Workload)
	default:
		if err := mountData(dev); err != nil {
			g.fail(err)
			return
		}
	}
	tDisk := time.Since(t1)
	infof("modules=%d modules-ms=%d disk=%s disk-ms=%d uptime-s=%.2f", loaded, tMods.Milliseconds(), dev, tDisk.Milliseconds(), uptime())

	t2 := time.Now()
	wl := newWorkload(cfg)
	if err := wl.setup(); err != nil {
		g.fail(fmt.Errorf("%s setup: %w", cfg.Workload, err))
		return
	}
	g.mu.Lock()
	g.wl = wl
	g.mu.Unlock()
	infof("setup-ms=%d uptime-s=%.2f %s", time.Since(t2).Milliseconds(), uptime(), wl.status())
	cons.printf("ready workload=%s cached-mib=%d", cfg.Workload, max(meminfo("Cached"), 0)/1024)
	close(g.ready)
	g.goSafe(cfg.Workload, wl.run)
}

// fail reports a fatal error; /init then only serves commands.
func (g *guest) fail(err error) {
	g.mu.Lock()
	if g.fatal == nil {
		g.fatal = err
	}
	g.mu.Unlock()
	cons.printf("FAIL fatal: %s", oneLine(err.Error()))
}

// goSafe runs fn in a goroutine; a panic becomes a fatal error instead of
// killing PID 1 (which would panic the kernel).
func (g *guest) goSafe(name string, fn func()) {
	go func() {
		defer func() {
			if p := recover(); p != nil {
				g.fail(fmt.Errorf("panic in %s: %v\n%s", name, p, debug.Stack()))
			}
		}()
		fn()
	}()
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

func sleepForever() {
	for {
		time.Sleep(time.Hour)
	}
}

// heartbeat prints "nasmig: heartbeat n=N" every second, N = 1, 2, ...
func heartbeat() {
	t := time.NewTicker(time.Second)
	for n := uint64(1); ; n++ {
		<-t.C
		cons.printf("heartbeat n=%d", n)
	}
}

// commands reads command lines from the console: "verify" and "status".
func (g *guest) commands(in *os.File) {
	r := bufio.NewReader(in)
	for {
		line, err := r.ReadString('\n')
		if err != nil && line == "" {
			time.Sleep(100 * time.Millisecond) // EOF (^D) or a tty hangup: read again
			continue
		}
		switch cmd := strings.TrimSpace(line); cmd {
		case "":
		case "verify":
			g.verify()
		case "status":
			g.status()
		default:
			infof("unknown command %q (verify, status)", cmd)
		}
	}
}

func (g *guest) fatalErr() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.fatal
}

// verify waits for the steady state (or a fatal error) and prints the
// verify answer.
func (g *guest) verify() {
	for {
		if err := g.fatalErr(); err != nil {
			cons.printf("FAIL fatal: %s", oneLine(err.Error()))
			cons.printf("FAIL done failures=1 checked=0")
			return
		}
		select {
		case <-g.ready:
		case <-time.After(200 * time.Millisecond):
			continue
		}
		break
	}
	t0 := time.Now()
	r := &report{}
	func() {
		defer func() {
			if p := recover(); p != nil {
				r.failf("panic during verify: %v", p)
			}
		}()
		g.self.verify(r)
		g.mu.Lock()
		wl := g.wl
		g.mu.Unlock()
		wl.verify(r)
	}()
	if err := g.fatalErr(); err != nil {
		r.failf("fatal: %s", oneLine(err.Error()))
	}
	infof("verify-ms=%d", time.Since(t0).Milliseconds())
	for _, l := range r.lines() {
		cons.printf("%s", l)
	}
}

func (g *guest) status() {
	select {
	case <-g.ready:
	default:
		infof("status: not ready; uptime-s=%.2f", uptime())
		return
	}
	g.mu.Lock()
	wl := g.wl
	g.mu.Unlock()
	infof("status: %s cached-mib=%d dirty-kib=%d uptime-s=%.2f", wl.status(), max(meminfo("Cached"), 0)/1024, meminfo("Dirty"), uptime())
}
