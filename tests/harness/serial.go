package harness

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Serial-protocol prefixes from docs/testbed-contract.md.
const (
	LineBoot      = "nasmig: boot"
	LineReady     = "nasmig: ready"
	LineHeartbeat = "nasmig: heartbeat n="
	LinePass      = "nasmig: PASS"
	LineFail      = "nasmig: FAIL"
)

// SerialLine is one line the guest printed on its serial console.
type SerialLine struct {
	Index int           // position in the console's line list, from 0
	Text  string        // without the line ending
	At    time.Duration // when the harness received it, since the console was attached
}

// SerialConsole is the host end of a guest's serial port. Every line is
// kept in memory (a guest prints a few per second), written to a log file,
// and can be waited for. Keeping all lines, rather than handing them out
// through a channel, lets a waiter look at lines that arrived before it
// started waiting, so no line is ever lost between two waits.
type SerialConsole struct {
	conn     net.Conn
	log      io.Writer
	attached time.Time

	writeMu sync.Mutex // serialises writes to conn

	mu        sync.Mutex // also serialises writes to log
	lines     []SerialLine
	changed   chan struct{} // closed and replaced when lines grows or the console ends
	closedErr error

	readerDone chan struct{}
}

// ErrSerialClosed is returned by waits once the console connection is gone.
var ErrSerialClosed = errors.New("serial console closed")

// NewSerialConsole starts reading lines from conn; log (may be nil) receives
// each line with the time since attach.
func NewSerialConsole(conn net.Conn, log io.Writer) *SerialConsole {
	s := &SerialConsole{
		conn:       conn,
		log:        log,
		attached:   time.Now(),
		changed:    make(chan struct{}),
		readerDone: make(chan struct{}),
	}
	go s.readLoop()
	return s
}

func (s *SerialConsole) readLoop() {
	defer close(s.readerDone)
	reader := bufio.NewReaderSize(s.conn, 64<<10)
	for {
		text, err := reader.ReadString('\n')
		if text != "" {
			s.addLine(text)
		}
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				err = ErrSerialClosed
			} else {
				err = fmt.Errorf("%w: %w", ErrSerialClosed, err)
			}
			s.mu.Lock()
			s.closedErr = err
			close(s.changed)
			s.changed = make(chan struct{})
			s.mu.Unlock()
			return
		}
	}
}

// ansiControl matches terminal control sequences (CSI, with private
// parameters such as "[=3h").
var ansiControl = regexp.MustCompile(`\x1b\[[0-9;=?]*[A-Za-z]`)

func (s *SerialConsole) addLine(raw string) {
	// The guest's tty sends "\r\n"; a NUL or a stray "\r" may lead a line
	// when the UART was reset, and would break prefix matching.
	text := strings.TrimRight(raw, "\r\n")
	// Firmware (OVMF) clears the screen with terminal control sequences
	// that end up in front of the kernel's first line.
	text = ansiControl.ReplaceAllString(text, "")
	text = strings.TrimLeft(text, "\r\x00")
	at := time.Since(s.attached)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.log != nil {
		fmt.Fprintf(s.log, "[%9.3f] %s\n", at.Seconds(), text)
	}
	s.lines = append(s.lines, SerialLine{Index: len(s.lines), Text: text, At: at})
	close(s.changed)
	s.changed = make(chan struct{})
}

// Mark returns the index the next line will get: pass it to WaitLineAfter to
// wait only for lines printed after this moment.
func (s *SerialConsole) Mark() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.lines)
}

// Lines returns a copy of every line received so far.
func (s *SerialConsole) Lines() []SerialLine {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]SerialLine(nil), s.lines...)
}

// WaitLine returns the first line, since the console was attached, that
// starts with prefix, waiting for it if needed.
func (s *SerialConsole) WaitLine(ctx context.Context, prefix string) (SerialLine, error) {
	return s.WaitLineAfter(ctx, 0, prefix)
}

// WaitLineAfter returns the first line with index >= mark that starts with
// any of prefixes, waiting for it if needed.
func (s *SerialConsole) WaitLineAfter(ctx context.Context, mark int, prefixes ...string) (SerialLine, error) {
	next := mark
	for {
		s.mu.Lock()
		for ; next < len(s.lines); next++ {
			for _, prefix := range prefixes {
				if strings.HasPrefix(s.lines[next].Text, prefix) {
					line := s.lines[next]
					s.mu.Unlock()
					return line, nil
				}
			}
		}
		closedErr := s.closedErr
		changed := s.changed
		s.mu.Unlock()
		if closedErr != nil {
			return SerialLine{}, fmt.Errorf("wait for serial line %q: %w", prefixes, closedErr)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return SerialLine{}, fmt.Errorf("wait for serial line %q: %w (last line: %q)", prefixes, ctx.Err(), s.lastText())
		}
	}
}

func (s *SerialConsole) lastText() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.lines) == 0 {
		return ""
	}
	return s.lines[len(s.lines)-1].Text
}

// Heartbeat returns n of the last well-formed "nasmig: heartbeat n=N" line.
// ok is false when there is none yet.
func (s *SerialConsole) Heartbeat() (n int64, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(s.lines) - 1; i >= 0; i-- {
		if n, ok := ParseHeartbeat(s.lines[i].Text); ok {
			return n, true
		}
	}
	return 0, false
}

// ParseHeartbeat reads N from a "nasmig: heartbeat n=N" line.
func ParseHeartbeat(text string) (int64, bool) {
	rest, found := strings.CutPrefix(text, LineHeartbeat)
	if !found {
		return 0, false
	}
	// Only the leading digits: a line cut short by the switchover or with
	// trailing fields still names its count.
	end := 0
	for end < len(rest) && rest[end] >= '0' && rest[end] <= '9' {
		end++
	}
	n, err := strconv.ParseInt(rest[:end], 10, 64)
	if err != nil {
		return 0, false
	}
	return n, true
}

// WriteLine sends text followed by "\n" to the guest.
func (s *SerialConsole) WriteLine(ctx context.Context, text string) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if deadline, ok := ctx.Deadline(); ok {
		_ = s.conn.SetWriteDeadline(deadline)
		defer s.conn.SetWriteDeadline(time.Time{})
	}
	if _, err := io.WriteString(s.conn, text+"\n"); err != nil {
		return fmt.Errorf("write %q to serial console: %w", text, err)
	}
	if s.log != nil {
		s.mu.Lock()
		fmt.Fprintf(s.log, "[%9.3f] (host->guest) %s\n", time.Since(s.attached).Seconds(), text)
		s.mu.Unlock()
	}
	return nil
}

// Close ends the connection and waits for the reader to stop.
func (s *SerialConsole) Close() error {
	err := s.conn.Close()
	<-s.readerDone
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("close serial console: %w", err)
	}
	return nil
}
