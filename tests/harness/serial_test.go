package harness

import (
	"bufio"
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// newPipeConsole returns a console whose guest end is the returned conn.
func newPipeConsole(t *testing.T) (*SerialConsole, net.Conn, *syncBuffer) {
	t.Helper()
	hostEnd, guestEnd := net.Pipe()
	var log syncBuffer
	console := NewSerialConsole(hostEnd, &log)
	t.Cleanup(func() {
		guestEnd.Close()
		console.Close()
	})
	return console, guestEnd, &log
}

func TestSerialWaitLineSeesEarlierAndLaterLines(t *testing.T) {
	console, guest, log := newPipeConsole(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	if _, err := guest.Write([]byte("[    0.1] kernel noise\r\n\x00nasmig: boot\r\nnasmig: heartbeat n=1\r\n")); err != nil {
		t.Fatal(err)
	}
	line, err := console.WaitLine(ctx, LineBoot)
	if err != nil {
		t.Fatal(err)
	}
	if line.Text != "nasmig: boot" || line.Index != 1 {
		t.Errorf("boot line = %+v, want index 1 without NUL and CR", line)
	}

	mark := console.Mark()
	go guest.Write([]byte("nasmig: heartbeat n=2\r\nnasmig: ready workload=idle cached-mib=0\r\n"))
	line, err = console.WaitLineAfter(ctx, mark, LineReady, LineFail)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(line.Text, LineReady) || line.Index != 4 {
		t.Errorf("ready line = %+v", line)
	}
	if n, ok := console.Heartbeat(); !ok || n != 2 {
		t.Errorf("Heartbeat() = %d, %v; want 2, true", n, ok)
	}
	// A line before the mark does not satisfy a wait after it.
	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancelShort()
	if _, err := console.WaitLineAfter(short, console.Mark(), LineBoot); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitLineAfter(mark, boot) = %v, want deadline exceeded", err)
	}
	if !strings.Contains(log.String(), "] nasmig: boot\n") {
		t.Errorf("serial log lacks the boot line:\n%s", log.String())
	}
}

func TestSerialWriteLineReachesGuest(t *testing.T) {
	console, guest, _ := newPipeConsole(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	received := make(chan string, 1)
	go func() {
		text, _ := bufio.NewReader(guest).ReadString('\n')
		received <- text
	}()
	if err := console.WriteLine(ctx, "verify"); err != nil {
		t.Fatal(err)
	}
	if got := <-received; got != "verify\n" {
		t.Errorf("guest received %q, want %q", got, "verify\n")
	}
}

// OVMF leaves terminal control sequences in front of the kernel's first line.
func TestSerialStripsTerminalControls(t *testing.T) {
	console, guest, _ := newPipeConsole(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	go guest.Write([]byte("\x1b[2J\x1b[01;01H\x1b[=3h\x1b[2J\x1b[01;01Hnasmig: boot\r\n"))
	line, err := console.WaitLine(ctx, LineBoot)
	if err != nil {
		t.Fatal(err)
	}
	if line.Text != "nasmig: boot" {
		t.Errorf("boot line = %q, want the control sequences stripped", line.Text)
	}
}

func TestSerialCloseEndsWaits(t *testing.T) {
	console, guest, _ := newPipeConsole(t)
	guest.Write([]byte("nasmig: boot\r\npartial line without newline"))
	guest.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := console.WaitLine(ctx, LineReady); !errors.Is(err, ErrSerialClosed) {
		t.Errorf("WaitLine after close = %v, want ErrSerialClosed", err)
	}
	lines := console.Lines()
	if len(lines) != 2 || lines[1].Text != "partial line without newline" {
		t.Errorf("lines = %+v, want the partial last line kept", lines)
	}
}

func TestParseHeartbeat(t *testing.T) {
	for _, tc := range []struct {
		text string
		n    int64
		ok   bool
	}{
		{"nasmig: heartbeat n=17", 17, true},
		{"nasmig: heartbeat n=18 extra=1", 18, true},
		{"nasmig: heartbeat n=", 0, false},
		{"nasmig: heartbeat n=x", 0, false},
		{"rtbeat n=19", 0, false},
		{"nasmig: ready", 0, false},
	} {
		n, ok := ParseHeartbeat(tc.text)
		if n != tc.n || ok != tc.ok {
			t.Errorf("ParseHeartbeat(%q) = %d, %v; want %d, %v", tc.text, n, ok, tc.n, tc.ok)
		}
	}
}

func TestVMVerify(t *testing.T) {
	for _, tc := range []struct {
		answer  string
		checked int64
		wantErr error
	}{
		{"nasmig: PASS checked=42", 42, nil},
		{"nasmig: FAIL sha256 mismatch /a/b", 0, ErrVerifyFailed},
	} {
		console, guest, _ := newPipeConsole(t)
		vm := &VM{Config: VMConfig{Name: "dst"}, Serial: console, exited: make(chan struct{})}
		go func() {
			reader := bufio.NewReader(guest)
			if text, _ := reader.ReadString('\n'); text == "verify\n" {
				guest.Write([]byte("nasmig: heartbeat n=5\r\n" + tc.answer + "\r\n"))
			}
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		checked, err := vm.Verify(ctx)
		cancel()
		if !errors.Is(err, tc.wantErr) || checked != tc.checked {
			t.Errorf("Verify with answer %q = %d, %v; want %d, %v", tc.answer, checked, err, tc.checked, tc.wantErr)
		}
	}
}
