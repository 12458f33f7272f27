package main

import (
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// console writes protocol lines ("nasmig: ...") to the serial console, one
// write per line under a mutex so lines of different goroutines never mix.
type console struct {
	mu sync.Mutex
	w  *os.File
}

func (c *console) printf(format string, args ...any) {
	line := "nasmig: " + fmt.Sprintf(format, args...) + "\n"
	c.mu.Lock()
	defer c.mu.Unlock()
	c.w.WriteString(line)
}

// openConsole prints "nasmig: boot" as the first thing /init does and
// returns the console. The kernel normally hands /init the initramfs's
// /dev/console as fds 0-2; when it could not (no such node), devtmpfs is
// mounted first and /dev/console opened from there.
func openConsole() (*console, *os.File) {
	out := os.NewFile(1, "console")
	if _, err := out.WriteString("nasmig: boot\n"); err == nil {
		return &console{w: out}, os.NewFile(0, "console")
	}
	mountDevtmpfs()
	f, err := os.OpenFile("/dev/console", os.O_RDWR, 0)
	if err != nil {
		f, err = os.OpenFile("/dev/ttyS0", os.O_RDWR, 0)
	}
	if err != nil {
		// Nothing to print to: keep running, the harness will time out.
		return &console{w: os.Stderr}, os.Stdin
	}
	f.WriteString("nasmig: boot\n")
	return &console{w: f}, f
}

// quietInput turns off echo on the console so the host's "verify" does not
// come back as an extra line; line editing (ICANON) stays on.
func quietInput(f *os.File) error {
	fd := int(f.Fd())
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return err
	}
	t.Lflag &^= unix.ECHO | unix.ECHOE | unix.ECHOK | unix.ECHONL | unix.ECHOCTL
	t.Lflag |= unix.ICANON
	return unix.IoctlSetTermios(fd, unix.TCSETS, t)
}
