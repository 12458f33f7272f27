package main

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"nasmig/plugin/debugproto"
)

func TestParseDebugRequest(t *testing.T) {
	for _, c := range []struct {
		line, want string
		bad        bool
	}{
		{"", debugproto.RequestReport, false},
		{"\n", debugproto.RequestReport, false},
		{"dump\n", debugproto.RequestDump, false},
		{"dump\r\n", debugproto.RequestDump, false},
		{"  dump  \n", debugproto.RequestDump, false},
		{"DUMP\n", "", true},
		{"dump all\n", "", true},
		{"GET / HTTP/1.1\r\n", "", true},
	} {
		got, err := parseDebugRequest([]byte(c.line))
		if c.bad {
			if !errors.Is(err, errDebugRequest) {
				t.Errorf("%q: error %v, want errDebugRequest", c.line, err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%q: %q, %v; want %q", c.line, got, err, c.want)
		}
	}
}

// The socket answers a client that sends nothing (the original protocol)
// and one that asks for a dump, each with the report first.
func TestServeDebug(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "dbg.sock")
	srv, err := serveDebug(sock, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	for _, req := range []string{"", "dump\n"} {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if req != "" {
			io.WriteString(c, req)
		}
		dec := json.NewDecoder(c)
		var rep debugproto.Report
		if err := dec.Decode(&rep); err != nil {
			t.Fatalf("request %q: report: %v", req, err)
		}
		if _, ok := rep.Stats["ring_drops"]; !ok {
			t.Errorf("request %q: report without counters: %+v", req, rep)
		}
		// No RAM block is registered in this test: no entries follow.
		var e debugproto.Entry
		if err := dec.Decode(&e); !errors.Is(err, io.EOF) {
			t.Errorf("request %q: after the report: %+v, %v", req, e, err)
		}
		c.Close()
	}
}

// A second library given the same path (a destination started on the same
// host with the same arguments) leaves the first one's socket alone; a
// stale socket file with nobody behind it is replaced.
func TestServeDebugSocketInUse(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "dbg.sock")
	first, err := serveDebug(sock, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	second, err := serveDebug(sock, zerolog.Nop())
	if err != nil || second != nil {
		t.Fatalf("second server on a live socket: %v, %v; want none, no error", second, err)
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("the first server lost its socket: %v", err)
	}
	c.Close()
	first.Close()
	// A socket file nobody listens on, as a killed QEMU leaves it.
	stale, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	third, err := serveDebug(sock, zerolog.Nop())
	if err != nil || third == nil {
		t.Fatalf("server on a stale socket file: %v, %v", third, err)
	}
	third.Close()
}
