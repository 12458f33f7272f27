package migstream

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// A stream written by the real patched QEMU (NASMIG_OUT's, built by
// ./build.sh), of a small paused machine: firmware, option ROMs, zero pages
// and every device section of a q35 machine, with its vmdesc. The synthetic
// samples cover what a stream may hold; this one covers what QEMU writes.

var (
	realStreamOnce sync.Once
	realStream     []byte
	realStreamErr  error
)

// qemuStream saves a paused q35 machine with 64 MiB of RAM to a file and
// returns its bytes; it skips the test, saying why, without a built QEMU.
func qemuStream(tb testing.TB) []byte {
	tb.Helper()
	out := os.Getenv("NASMIG_OUT")
	qemu := filepath.Join(out, "qemu-system-x86_64")
	if _, err := os.Stat(qemu); out == "" || err != nil {
		tb.Skip("skipping: no QEMU in $NASMIG_OUT (./build.sh test sets it): real streams are not decoded")
	}
	realStreamOnce.Do(func() { realStream, realStreamErr = saveQEMUStream(qemu) })
	if realStreamErr != nil {
		tb.Fatal(realStreamErr)
	}
	return realStream
}

// qemuStreamSeed is the real stream as a fuzz seed, or nil (with a log
// line) without a built QEMU: the synthetic seeds still run.
func qemuStreamSeed(f *testing.F) []byte {
	out := os.Getenv("NASMIG_OUT")
	qemu := filepath.Join(out, "qemu-system-x86_64")
	if _, err := os.Stat(qemu); out == "" || err != nil {
		f.Log("no QEMU in $NASMIG_OUT: the fuzzer runs without a real stream among its seeds")
		return nil
	}
	realStreamOnce.Do(func() { realStream, realStreamErr = saveQEMUStream(qemu) })
	if realStreamErr != nil {
		f.Fatal(realStreamErr)
	}
	return realStream
}

func saveQEMUStream(qemu string) ([]byte, error) {
	dir, err := os.MkdirTemp("", "nasmig-realstream-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "vm.mig")
	args := []string{"-machine", "q35", "-accel", "tcg", "-m", "64", "-nodefaults", "-display", "none", "-S", "-qmp", "stdio"}
	for _, d := range strings.Split(os.Getenv("NASMIG_QEMU_DATADIRS"), ":") {
		if d != "" {
			args = append(args, "-L", d)
		}
	}
	cmd := exec.Command(qemu, args...)
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	defer cmd.Process.Kill()
	dec := json.NewDecoder(bufio.NewReader(stdout))
	execute := func(command string, args map[string]any) (json.RawMessage, error) {
		msg := map[string]any{"execute": command}
		if args != nil {
			msg["arguments"] = args
		}
		req, _ := json.Marshal(msg)
		if _, err := in.Write(append(req, '\n')); err != nil {
			return nil, fmt.Errorf("qmp %s: %w (%s)", command, err, stderr.String())
		}
		for {
			var msg struct {
				Return json.RawMessage `json:"return"`
				Error  *struct{ Desc string }
				Event  string
			}
			if err := dec.Decode(&msg); err != nil {
				return nil, fmt.Errorf("qmp %s: %w (%s)", command, err, stderr.String())
			}
			switch {
			case msg.Error != nil:
				return nil, fmt.Errorf("qmp %s: %s", command, msg.Error.Desc)
			case msg.Return != nil:
				return msg.Return, nil
			}
		}
	}
	var greeting map[string]any
	if err := dec.Decode(&greeting); err != nil {
		return nil, fmt.Errorf("qmp greeting: %w (%s)", err, stderr.String())
	}
	if _, err := execute("qmp_capabilities", nil); err != nil {
		return nil, err
	}
	if _, err := execute("migrate", map[string]any{"uri": "file:" + path}); err != nil {
		return nil, err
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		raw, err := execute("query-migrate", nil)
		if err != nil {
			return nil, err
		}
		var st struct{ Status, ErrorDesc string }
		json.Unmarshal(raw, &st)
		if st.Status == "completed" {
			break
		}
		if st.Status == "failed" || time.Now().After(deadline) {
			return nil, fmt.Errorf("save to %s: status %s %s", path, st.Status, st.ErrorDesc)
		}
	}
	execute("quit", nil)
	return os.ReadFile(path)
}

// TestRealQEMUStream decodes the real stream to its end, then hundreds of
// truncated and corrupted copies: an error names a byte offset inside the
// input, and a truncation says so; never a panic.
func TestRealQEMUStream(t *testing.T) {
	data := qemuStream(t)
	rep, err := Decode(bytes.NewReader(data), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.RAMComplete || rep.EOFOffset < 0 || rep.VMDescOffset < 0 || rep.TotalBytes != int64(len(data)) || rep.Stopped != "" {
		t.Fatalf("real stream of %d bytes: RAM complete %v, EOF at %d, vmdesc at %d, %d bytes decoded, stopped %q",
			len(data), rep.RAMComplete, rep.EOFOffset, rep.VMDescOffset, rep.TotalBytes, rep.Stopped)
	}
	var ramPages uint64
	for _, b := range rep.RAMBlocks {
		ramPages += b.Size / 4096
	}
	sent := rep.Totals.Normal.Pages + rep.Totals.Zero.Pages
	if rep.Configuration == nil || !strings.HasPrefix(rep.Configuration.Machine, "pc-q35") || sent < ramPages || rep.Totals.Refs.Pages != 0 {
		t.Errorf("real stream: configuration %+v, %d pages sent of %d in %d blocks, %d references", rep.Configuration, sent, ramPages, len(rep.RAMBlocks), rep.Totals.Refs.Pages)
	}
	t.Logf("real stream: %d bytes, %d sections, %d RAM blocks, %d normal and %d zero pages, device state from %d",
		len(data), len(rep.Sections), len(rep.RAMBlocks), rep.Totals.Normal.Pages, rep.Totals.Zero.Pages, rep.DeviceStateOffset)

	check := func(what string, in []byte) {
		rep, err := Decode(bytes.NewReader(in), Options{})
		if rep == nil {
			t.Fatalf("%s: nil report", what)
		}
		var fe *FormatError
		if err != nil && (!errors.As(err, &fe) || fe.Offset < 0 || fe.Offset > int64(len(in))) {
			t.Fatalf("%s: error %v (want a FormatError inside the %d bytes)", what, err, len(in))
		}
		// A cut stream is never reported whole.
		if len(in) < len(data) && bytes.Equal(in, data[:len(in)]) && err == nil && rep.Stopped == "" && rep.EOFOffset >= 0 {
			t.Errorf("%s: decoded as a whole stream", what)
		}
	}
	const n = 200
	for i := 1; i <= n; i++ {
		cut := len(data) * i / (n + 1)
		check(fmt.Sprintf("cut at %d", cut), data[:cut])
		flipped := bytes.Clone(data)
		flipped[cut] ^= 0x41
		check(fmt.Sprintf("byte %d flipped", cut), flipped)
	}
	// Around every section boundary, where the headers are.
	for _, s := range rep.Sections {
		for _, d := range []int64{-1, 0, 1, 5} {
			if off := s.Offset + d; off > 0 && off < int64(len(data)) {
				check(fmt.Sprintf("cut at %d (section %s)", off, s.Name), data[:off])
				flipped := bytes.Clone(data)
				flipped[off] ^= 0xff
				check(fmt.Sprintf("byte %d flipped (section %s)", off, s.Name), flipped)
			}
		}
	}
	// Through a pipe (no seeking) the same bytes decode the same way.
	prep, err := Decode(io.MultiReader(bytes.NewReader(data)), Options{})
	if err != nil || prep.Totals != rep.Totals || len(prep.Sections) != len(rep.Sections) {
		t.Errorf("through a pipe: %v, totals %+v vs %+v", err, prep.Totals, rep.Totals)
	}
}
