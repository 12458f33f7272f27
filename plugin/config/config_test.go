package config

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func TestDefaults(t *testing.T) {
	want := Config{Enabled: true, Auto: true, LogLevel: zerolog.WarnLevel, RingSlots: 1 << 16, HoldMax: time.Minute, HandBack: true,
		FaultFallback: 50 * time.Millisecond, FillAfterMax: time.Minute}
	if got := Default(); !reflect.DeepEqual(got, want) {
		t.Fatalf("Default() = %+v, want %+v", got, want)
	}
	for _, args := range [][]string{nil, {}} {
		got, err := Parse(args)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("Parse(%q) = %+v, %v; want the defaults", args, got, err)
		}
	}
}

func TestParseKeys(t *testing.T) {
	cases := []struct {
		name string
		args []string
		edit func(*Config)
	}{
		{"enable=off", []string{"enable=off"}, func(c *Config) { c.Enabled = false }},
		{"enable=on", []string{"enable=on"}, func(c *Config) {}},
		{"enable=no", []string{"enable=no"}, func(c *Config) { c.Enabled = false }},
		{"enable=false", []string{"enable=false"}, func(c *Config) { c.Enabled = false }},
		{"enable=0", []string{"enable=0"}, func(c *Config) { c.Enabled = false }},
		{"enable=yes", []string{"enable=off", "enable=yes"}, func(c *Config) {}},
		{"enable=true", []string{"enable=off", "enable=true"}, func(c *Config) {}},
		{"enable=1", []string{"enable=off", "enable=1"}, func(c *Config) {}},
		{"auto=off", []string{"auto=off"}, func(c *Config) { c.Auto = false }},
		{"auto=on", []string{"auto=off", "auto=on"}, func(c *Config) {}},
		{"log=error", []string{"log=error"}, func(c *Config) { c.LogLevel = zerolog.ErrorLevel }},
		{"log=warn", []string{"log=debug", "log=warn"}, func(c *Config) {}},
		{"log=info", []string{"log=info"}, func(c *Config) { c.LogLevel = zerolog.InfoLevel }},
		{"log=debug", []string{"log=debug"}, func(c *Config) { c.LogLevel = zerolog.DebugLevel }},
		{"logfile", []string{"logfile=/tmp/nasmig.log"}, func(c *Config) { c.LogFile = "/tmp/nasmig.log" }},
		{"logfile with =", []string{"logfile=/tmp/a=b"}, func(c *Config) { c.LogFile = "/tmp/a=b" }},
		{"debug-socket", []string{"debug-socket=/run/nasmig.sock"}, func(c *Config) { c.DebugSocket = "/run/nasmig.sock" }},
		{"exclude one", []string{"exclude=drive0"}, func(c *Config) { c.Exclude = []string{"drive0"} }},
		{"exclude many", []string{"exclude=drive0", "exclude=/images/a.raw", "exclude=nbd+unix:///disk0?socket=/run/n.sock"}, func(c *Config) {
			c.Exclude = []string{"drive0", "/images/a.raw", "nbd+unix:///disk0?socket=/run/n.sock"}
		}},
		{"exclude takes a name whole", []string{"exclude=a:b", "exclude=c"}, func(c *Config) { c.Exclude = []string{"a:b", "c"} }},
		{"ring min", []string{"ring=64"}, func(c *Config) { c.RingSlots = 64 }},
		{"ring max", []string{"ring=16777216"}, func(c *Config) { c.RingSlots = 1 << 24 }},
		{"ring 4096", []string{"ring=4096"}, func(c *Config) { c.RingSlots = 4096 }},
		{"hold-max 5s", []string{"hold-max=5s"}, func(c *Config) { c.HoldMax = 5 * time.Second }},
		{"hold-max unbounded", []string{"hold-max=0"}, func(c *Config) { c.HoldMax = 0 }},
		{"fault-fallback 5ms", []string{"fault-fallback=5ms"}, func(c *Config) { c.FaultFallback = 5 * time.Millisecond }},
		{"fill-after-max unbounded", []string{"fill-after-max=0"}, func(c *Config) { c.FillAfterMax = 0 }},
		{"hand-back off", []string{"hand-back=off"}, func(c *Config) { c.HandBack = false }},
		{"fill after switchover", []string{"fill-after-switchover=on"}, func(c *Config) { c.FillAfter = true }},
		{"content index on", []string{"content-index=on"}, func(c *Config) { c.ContentDir = DefaultContentDir }},
		{"content index dir", []string{"content-index=/run/x"}, func(c *Config) { c.ContentDir = "/run/x" }},
		{"content index off", []string{"content-index=on", "content-index=off"}, func(c *Config) {}},
		{"all keys", []string{"enable=on", "auto=off", "log=info", "logfile=/l", "debug-socket=/s", "exclude=x", "ring=1024"},
			func(c *Config) {
				c.Auto, c.LogLevel, c.LogFile, c.DebugSocket, c.Exclude, c.RingSlots = false, zerolog.InfoLevel, "/l", "/s", []string{"x"}, 1024
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			want := Default()
			tc.edit(&want)
			got, err := Parse(tc.args)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.args, err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("Parse(%q) = %+v, want %+v", tc.args, got, want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	cases := []struct {
		args    []string
		mention string // the message must name the culprit
	}{
		{[]string{"enable"}, "enable"},
		{[]string{"=on"}, "=on"},
		{[]string{""}, "key=value"},
		{[]string{"enable="}, "on or off"},
		{[]string{"enable=On"}, "on or off"},
		{[]string{"enable=2"}, "on or off"},
		{[]string{"auto=maybe"}, "auto=maybe"},
		{[]string{"log=trace"}, "log=trace"},
		{[]string{"log=WARN"}, "error, warn, info or debug"},
		{[]string{"log="}, "log="},
		{[]string{"logfile="}, "empty value"},
		{[]string{"debug-socket="}, "empty value"},
		{[]string{"exclude="}, "empty disk name"},
		{[]string{"ring="}, "ring="},
		{[]string{"ring=abc"}, "ring=abc"},
		{[]string{"ring=-64"}, "ring=-64"},
		{[]string{"ring=0"}, "power of two"},
		{[]string{"ring=32"}, "power of two"},
		{[]string{"ring=100"}, "power of two"},
		{[]string{"ring=33554432"}, "power of two"},
		{[]string{"ring=4294967296"}, "ring=4294967296"},
		{[]string{"ring=0x100"}, "ring=0x100"},
		{[]string{"ring= 64"}, "ring= 64"},
		{[]string{"hold-max=5"}, "missing unit"},
		{[]string{"hold-max=-1s"}, "must not be negative"},
		{[]string{"fault-fallback=0s"}, "must be positive"},
		{[]string{"fill-after-max=-1s"}, "must not be negative"},
		{[]string{"content-index=rel/dir"}, "absolute directory"},
		{[]string{"unknown=1"}, "unknown key"},
		{[]string{"Enable=on"}, "unknown key"},
		{[]string{" enable=on"}, "unknown key"},
		{[]string{"enable=on", "bogus=1"}, "bogus"},
		{[]string{"ring=64", "ring=65"}, "ring=65"},
	}
	for _, tc := range cases {
		_, err := Parse(tc.args)
		if err == nil {
			t.Errorf("Parse(%q) accepted", tc.args)
			continue
		}
		if !errors.Is(err, ErrBadArgument) {
			t.Errorf("Parse(%q): %v does not wrap ErrBadArgument", tc.args, err)
		}
		if !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("Parse(%q): %q does not mention %q", tc.args, err, tc.mention)
		}
	}
	// The unknown-key message lists the keys that exist.
	_, err := Parse([]string{"nope=1"})
	for _, k := range []string{"enable", "auto", "log", "logfile", "debug-socket", "exclude", "ring"} {
		if !strings.Contains(err.Error(), k) {
			t.Errorf("unknown-key message %q does not list %q", err, k)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"", "enable=on", "auto=off", "log=debug", "logfile=/x", "debug-socket=/y",
		"exclude=a:b", "ring=1024", "ring=100", "=", "enable", "exclude=:", "ring=18446744073709551616", "log=info\x00"} {
		f.Add(s, "ring=64")
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		c, err := Parse([]string{a, b})
		if err != nil {
			if !errors.Is(err, ErrBadArgument) {
				t.Fatalf("Parse(%q, %q): %v does not wrap ErrBadArgument", a, b, err)
			}
			return
		}
		if c.RingSlots < 64 || c.RingSlots > 1<<24 || c.RingSlots&(c.RingSlots-1) != 0 {
			t.Fatalf("Parse(%q, %q) accepted ring of %d slots", a, b, c.RingSlots)
		}
		for _, n := range c.Exclude {
			if n == "" {
				t.Fatalf("Parse(%q, %q) accepted an empty exclude name", a, b)
			}
		}
		switch c.LogLevel {
		case zerolog.ErrorLevel, zerolog.WarnLevel, zerolog.InfoLevel, zerolog.DebugLevel:
		default:
			t.Fatalf("Parse(%q, %q) gave log level %v", a, b, c.LogLevel)
		}
	})
}
