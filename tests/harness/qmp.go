// Package harness drives the nasmig end-to-end test bed: QEMU processes, the
// shared NBD storage, migrations between them and the bit-exact RAM check.
// docs/testbed-contract.md is the contract it implements; every value the
// tests report (migration times, counters) is read from QEMU, never computed
// here.
//
// Locks: no lock in the package is held while taking another one, except
// that a writer's lock may be held while taking its object's log lock:
// QMPClient.writeMu before QMPClient.transcriptMu, SerialConsole.writeMu
// before SerialConsole.mu.
package harness

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// QMPError is an error answer of QEMU to a command: QMP's "error" object.
type QMPError struct {
	Command string // the command that failed
	Class   string // QMP error class, e.g. "GenericError", "CommandNotFound"
	Desc    string // QEMU's human-readable description
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// ErrQMPClosed is returned by commands and waits once the QMP connection is
// gone (QEMU exited or Close was called).
var ErrQMPClosed = errors.New("qmp connection closed")

// QMPEvent is one asynchronous event sent by QEMU.
type QMPEvent struct {
	Name      string
	Data      json.RawMessage
	Timestamp time.Time // QEMU's own timestamp of the event
}

// qmpMessage is any message QEMU sends; which fields are set says what it is.
type qmpMessage struct {
	Greeting  json.RawMessage `json:"QMP"`
	Return    json.RawMessage `json:"return"`
	Error     *qmpErrorBody   `json:"error"`
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	ID        json.RawMessage `json:"id"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

type qmpErrorBody struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

type qmpReply struct {
	ret json.RawMessage
	err *qmpErrorBody
}

// QMPClient is a connection to one QEMU monitor in control mode. Commands may
// be issued from several goroutines; QEMU answers them in order and the
// client matches answers to commands by id.
type QMPClient struct {
	conn       net.Conn
	transcript io.Writer // optional copy of the traffic, for the run folder

	writeMu sync.Mutex // serialises writes to conn

	// transcriptMu is separate from writeMu so that the reader never waits
	// for a writer blocked on a full socket (that writer may be waiting for
	// the reader to drain QEMU's answers).
	transcriptMu sync.Mutex

	mu        sync.Mutex
	nextID    uint64
	pending   map[string]chan qmpReply // by command id
	events    []QMPEvent               // every event received, in order
	consumed  []bool                   // consumed[i]: events[i] was returned by WaitEvent
	changed   chan struct{}            // closed and replaced whenever events grows or the connection ends
	closedErr error                    // why the reader stopped; nil while connected

	readerDone chan struct{}
}

// DialQMP connects to the QMP unix socket at path, reads the greeting and
// leaves capabilities negotiation mode. ctx bounds the whole handshake. If
// transcript is not nil every message in both directions is copied to it.
func DialQMP(ctx context.Context, path string, transcript io.Writer) (*QMPClient, error) {
	var dialer net.Dialer
	conn, err := dialer.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("dial qmp %s: %w", path, err)
	}
	return NewQMPClient(ctx, conn, transcript)
}

// NewQMPClient speaks QMP on an established connection: it reads the
// greeting and leaves capabilities negotiation mode. It owns conn from now
// on, also when it fails.
func NewQMPClient(ctx context.Context, conn net.Conn, transcript io.Writer) (*QMPClient, error) {
	path := "qmp peer"
	if addr := conn.RemoteAddr(); addr != nil {
		path = addr.String()
	}
	c := &QMPClient{
		conn:       conn,
		transcript: transcript,
		pending:    make(map[string]chan qmpReply),
		changed:    make(chan struct{}),
		readerDone: make(chan struct{}),
	}
	// The greeting is read synchronously so that a peer that is not QMP
	// fails here, with the handshake's deadline, and not at the first command.
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetReadDeadline(deadline)
	}
	reader := bufio.NewReaderSize(conn, 64<<10)
	decoder := json.NewDecoder(reader)
	var rawGreeting json.RawMessage
	if err := decoder.Decode(&rawGreeting); err != nil {
		conn.Close()
		return nil, fmt.Errorf("read qmp greeting from %s: %w", path, err)
	}
	c.logTraffic("<-", rawGreeting)
	var greeting qmpMessage
	if err := json.Unmarshal(rawGreeting, &greeting); err != nil || greeting.Greeting == nil {
		conn.Close()
		return nil, fmt.Errorf("read qmp greeting from %s: first message is not a greeting: %s", path, rawGreeting)
	}
	_ = conn.SetReadDeadline(time.Time{})

	go c.readLoop(decoder)

	if _, err := c.Execute(ctx, "qmp_capabilities", nil); err != nil {
		c.Close()
		return nil, fmt.Errorf("qmp handshake on %s: %w", path, err)
	}
	return c, nil
}

func mustMarshal(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		return []byte(fmt.Sprintf("%q", fmt.Sprint(v)))
	}
	return b
}

func (c *QMPClient) logTraffic(direction string, msg []byte) {
	if c.transcript == nil {
		return
	}
	c.transcriptMu.Lock()
	defer c.transcriptMu.Unlock()
	fmt.Fprintf(c.transcript, "%s %s %s\n", time.Now().Format("15:04:05.000"), direction, msg)
}

// readLoop delivers answers to waiting commands and stores events until the
// connection ends.
func (c *QMPClient) readLoop(decoder *json.Decoder) {
	defer close(c.readerDone)
	for {
		var raw json.RawMessage
		if err := decoder.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				err = ErrQMPClosed
			} else {
				err = fmt.Errorf("%w: %w", ErrQMPClosed, err)
			}
			c.shutdown(err)
			return
		}
		c.logTraffic("<-", raw)
		var msg qmpMessage
		if err := json.Unmarshal(raw, &msg); err != nil {
			c.shutdown(fmt.Errorf("%w: undecodable message %s: %w", ErrQMPClosed, raw, err))
			return
		}
		switch {
		case msg.Event != "":
			c.addEvent(msg)
		case msg.Return != nil || msg.Error != nil:
			c.deliver(msg)
		}
		// Anything else (a second greeting?) carries nothing we wait for.
	}
}

func (c *QMPClient) addEvent(msg qmpMessage) {
	ev := QMPEvent{Name: msg.Event, Data: msg.Data}
	if msg.Timestamp != nil {
		ev.Timestamp = time.Unix(msg.Timestamp.Seconds, msg.Timestamp.Microseconds*1000)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.events = append(c.events, ev)
	c.consumed = append(c.consumed, false)
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *QMPClient) deliver(msg qmpMessage) {
	c.mu.Lock()
	defer c.mu.Unlock()
	id := string(msg.ID)
	ch, ok := c.pending[id]
	if !ok {
		return // the caller gave up (context ended); the answer is dropped
	}
	delete(c.pending, id)
	ch <- qmpReply{ret: msg.Return, err: msg.Error} // buffered: never blocks
}

func (c *QMPClient) shutdown(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closedErr != nil {
		return
	}
	c.closedErr = err
	for id, ch := range c.pending {
		close(ch)
		delete(c.pending, id)
	}
	close(c.changed)
	c.changed = make(chan struct{})
}

// Execute runs one QMP command and returns its "return" value. args may be
// nil or anything that marshals to a JSON object. A QEMU error answer is
// returned as *QMPError; ctx bounds the wait for the answer.
func (c *QMPClient) Execute(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	c.mu.Lock()
	if c.closedErr != nil {
		err := c.closedErr
		c.mu.Unlock()
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	c.nextID++
	idJSON := mustMarshal(fmt.Sprintf("h%d", c.nextID))
	id := string(idJSON)
	replyCh := make(chan qmpReply, 1)
	c.pending[id] = replyCh
	c.mu.Unlock()

	request := struct {
		Execute   string          `json:"execute"`
		Arguments any             `json:"arguments,omitempty"`
		ID        json.RawMessage `json:"id"`
	}{Execute: cmd, Arguments: args, ID: idJSON}
	line, err := json.Marshal(request)
	if err != nil {
		c.forget(id)
		return nil, fmt.Errorf("qmp %s: encode arguments: %w", cmd, err)
	}
	if err := c.send(ctx, line); err != nil {
		c.forget(id)
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}

	select {
	case reply, ok := <-replyCh:
		if !ok {
			c.mu.Lock()
			err := c.closedErr
			c.mu.Unlock()
			return nil, fmt.Errorf("qmp %s: %w", cmd, err)
		}
		if reply.err != nil {
			return nil, &QMPError{Command: cmd, Class: reply.err.Class, Desc: reply.err.Desc}
		}
		return reply.ret, nil
	case <-ctx.Done():
		c.forget(id)
		return nil, fmt.Errorf("qmp %s: waiting for the answer: %w", cmd, ctx.Err())
	}
}

func (c *QMPClient) forget(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.pending, id)
}

func (c *QMPClient) send(ctx context.Context, line []byte) error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	// An expired context must not start a write: a write cut short by its
	// deadline would leave half a command on the connection.
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	if deadline, ok := ctx.Deadline(); ok {
		_ = c.conn.SetWriteDeadline(deadline)
		defer c.conn.SetWriteDeadline(time.Time{})
	}
	if _, err := c.conn.Write(append(line, '\n')); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// The context's deadline, reached maybe a moment before ctx
			// itself reports it: callers test for the context's error.
			return fmt.Errorf("send: %w", context.DeadlineExceeded)
		}
		return fmt.Errorf("send: %w", err)
	}
	c.logTraffic("->", line)
	return nil
}

// ExecuteInto runs a command and decodes its return value into result.
func (c *QMPClient) ExecuteInto(ctx context.Context, cmd string, args any, result any) error {
	raw, err := c.Execute(ctx, cmd, args)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(raw, result); err != nil {
		return fmt.Errorf("qmp %s: decode return value %s: %w", cmd, raw, err)
	}
	return nil
}

// WaitEvent returns the oldest event called name that no earlier WaitEvent
// returned, waiting for one if needed. Events that arrived before the call
// count, so a caller cannot miss an event that raced ahead of it; each event
// is handed out once.
func (c *QMPClient) WaitEvent(ctx context.Context, name string) (QMPEvent, error) {
	for {
		c.mu.Lock()
		for i, ev := range c.events {
			if ev.Name == name && !c.consumed[i] {
				c.consumed[i] = true
				c.mu.Unlock()
				return ev, nil
			}
		}
		closedErr := c.closedErr
		changed := c.changed
		c.mu.Unlock()
		if closedErr != nil {
			return QMPEvent{}, fmt.Errorf("wait for qmp event %s: %w", name, closedErr)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return QMPEvent{}, fmt.Errorf("wait for qmp event %s: %w", name, ctx.Err())
		}
	}
}

// Events returns a copy of every event received so far, consumed or not.
func (c *QMPClient) Events() []QMPEvent {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]QMPEvent(nil), c.events...)
}

// Done is closed once the connection has ended (QEMU exited or Close).
func (c *QMPClient) Done() <-chan struct{} { return c.readerDone }

// Close ends the connection and waits for the reader to stop.
func (c *QMPClient) Close() error {
	err := c.conn.Close()
	<-c.readerDone
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("close qmp: %w", err)
	}
	return nil
}
