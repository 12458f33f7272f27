// Package config parses libnasmig.so's plugin arguments
// (`-plugin libnasmig.so,key=value,...`).
package config

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// Config is what the plugin's arguments select.
type Config struct {
	Enabled     bool          // enable=on|off: track and offer references at all
	Auto        bool          // auto=on|off: every migration that can use references does (off: only with capability x-disk-refs)
	LogLevel    zerolog.Level // log=error|warn|info|debug
	LogFile     string        // logfile=PATH (default: QEMU's stderr)
	DebugSocket string        // debug-socket=PATH: serve the live map to nasmig-inspect
	Exclude     []string      // exclude=NAME, repeatable: a drive id, device id, node name or filename never referenced
	Strict      bool          // strict=on: a disk the destination cannot read fails the migration
	RingSlots   uint32        // ring=N: tracking ring size, a power of two
	// HoldMax (hold-max=DURATION, 0: no bound): how long the source holds
	// the switchover for the destination's fetch before it stops sending
	// references and lets the migration complete.
	HoldMax time.Duration
	// HandBack (hand-back=on|off, destination): while its fetch is behind
	// the migration link, the destination hands the references it would
	// read last back to the source, which sends those pages in full (more
	// bytes on the link, less time).  off: every reference is read.
	HandBack bool
	// FillAfter (fill-after-switchover=on|off, source): a migration with
	// postcopy-ram switches to postcopy once its first pass is out, and
	// the destination fills the references left then while its guest runs
	// (as capability x-disk-refs-after-switchover asks for one migration).
	FillAfter bool
	// FaultFallback (fault-fallback=DURATION, destination, filling after
	// the switchover): a page the guest touches before its fill is read
	// from storage ahead of the rest; if that has not placed it within
	// this long (a slow or stalled storage, or a read that waits for the
	// very thread that faulted), the source is asked for the page.
	FaultFallback time.Duration
	// FillAfterMax (fill-after-max=DURATION, destination, 0: no bound):
	// how long the source waits after the switchover for this side's
	// fills; then every page still waiting is asked from the source, so
	// the migration completes without the storage.
	FillAfterMax time.Duration
	// ContentDir (content-index=on|off|DIR, "" off): completed reads feed
	// the content index instead of the page-to-block map, served on the
	// owner-only socket DIR/PID.sock (on: DefaultContentDir).  For Xen
	// device models, whose guest RAM travels in libxenguest's stream
	// (nasmig-xl asks the index); QEMU's own migrations then send no
	// references.
	ContentDir string
}

// DefaultContentDir is where content sockets live (nasmig-xl looks there).
const DefaultContentDir = "/run/nasmig/content"

// DefaultFaultFallback: a 4 KiB read behind the fetch's reads in flight
// (4 MiB at most after the switch) takes about 35 ms on a 1 Gbit/s storage
// link; past 50 ms the source, which holds the page, is the faster way.
const DefaultFaultFallback = 50 * time.Millisecond

// DefaultFillAfterMax bounds the source's wait after the switchover, as
// DefaultHoldMax bounds the hold.
const DefaultFillAfterMax = 60 * time.Second

// DefaultHoldMax bounds the switchover hold unless hold-max= says
// otherwise: long enough for the fetch of a large page cache from storage
// at a few hundred MB/s, short enough that a stalled storage server cannot
// keep a migration from completing.
const DefaultHoldMax = 60 * time.Second

// ErrBadArgument is wrapped by every parse error.
var ErrBadArgument = errors.New("bad plugin argument")

// Default is the configuration of a plugin loaded without arguments.
func Default() Config {
	return Config{Enabled: true, Auto: true, LogLevel: zerolog.WarnLevel, RingSlots: 1 << 16, HoldMax: DefaultHoldMax, HandBack: true,
		FaultFallback: DefaultFaultFallback, FillAfterMax: DefaultFillAfterMax}
}

// Parse reads "key=value" arguments.
func Parse(args []string) (Config, error) {
	c := Default()
	for _, arg := range args {
		key, val, ok := strings.Cut(arg, "=")
		if !ok || key == "" {
			return c, fmt.Errorf("%w %q: want key=value", ErrBadArgument, arg)
		}
		var err error
		switch key {
		case "enable":
			c.Enabled, err = onOff(val)
		case "auto":
			c.Auto, err = onOff(val)
		case "strict":
			c.Strict, err = onOff(val)
		case "log":
			c.LogLevel, err = level(val)
		case "logfile":
			c.LogFile, err = nonEmpty(val)
		case "debug-socket":
			c.DebugSocket, err = nonEmpty(val)
		case "exclude":
			// One name per key, taken whole: filenames and NBD URIs
			// contain ':' (repeat the key for several disks).
			if val == "" {
				return c, fmt.Errorf("%w %q: empty disk name", ErrBadArgument, arg)
			}
			c.Exclude = append(c.Exclude, val)
		case "hold-max":
			c.HoldMax, err = time.ParseDuration(val)
			if err == nil && c.HoldMax < 0 {
				err = errors.New("must not be negative")
			}
		case "fault-fallback":
			c.FaultFallback, err = time.ParseDuration(val)
			if err == nil && c.FaultFallback <= 0 {
				err = errors.New("must be positive")
			}
		case "fill-after-max":
			c.FillAfterMax, err = time.ParseDuration(val)
			if err == nil && c.FillAfterMax < 0 {
				err = errors.New("must not be negative")
			}
		case "hand-back":
			c.HandBack, err = onOff(val)
		case "fill-after-switchover":
			c.FillAfter, err = onOff(val)
		case "content-index":
			c.ContentDir = val
			if on, perr := onOff(val); perr == nil {
				c.ContentDir = ""
				if on {
					c.ContentDir = DefaultContentDir
				}
			} else if !strings.HasPrefix(val, "/") {
				err = errors.New("want on, off or an absolute directory")
			}
		case "ring":
			var n uint64
			n, err = strconv.ParseUint(val, 10, 32)
			if err == nil && (n < 64 || n > 1<<24 || n&(n-1) != 0) {
				err = errors.New("must be a power of two between 64 and 16777216")
			}
			c.RingSlots = uint32(n)
		default:
			return c, fmt.Errorf("%w %q: unknown key (known: enable, auto, strict, log, logfile, debug-socket, exclude, hold-max, hand-back, fill-after-switchover, fault-fallback, fill-after-max, content-index, ring)", ErrBadArgument, key)
		}
		if err != nil {
			return c, fmt.Errorf("%w %q: %v", ErrBadArgument, arg, err)
		}
	}
	return c, nil
}

func onOff(v string) (bool, error) {
	switch v {
	case "on", "yes", "true", "1":
		return true, nil
	case "off", "no", "false", "0":
		return false, nil
	}
	return false, errors.New("want on or off")
}

func level(v string) (zerolog.Level, error) {
	switch v {
	case "error":
		return zerolog.ErrorLevel, nil
	case "warn":
		return zerolog.WarnLevel, nil
	case "info":
		return zerolog.InfoLevel, nil
	case "debug":
		return zerolog.DebugLevel, nil
	}
	return zerolog.NoLevel, errors.New("want error, warn, info or debug")
}

func nonEmpty(v string) (string, error) {
	if v == "" {
		return "", errors.New("empty value")
	}
	return v, nil
}
