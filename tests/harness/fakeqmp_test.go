package harness

import (
	"bufio"
	"encoding/json"
	"net"
	"path/filepath"
	"sync"
	"testing"
)

// fakeReply is what the fake QMP server does for one command.
type fakeReply struct {
	ret     any           // the "return" value; nil means {}
	err     *qmpErrorBody // an error answer instead
	events  []string      // event names sent before the answer
	noReply bool          // never answer (to test timeouts)
	hangup  bool          // close the connection instead of answering
}

type fakeRequest struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments"`
	ID        json.RawMessage `json:"id"`
}

// fakeQMP is a unix-socket server that speaks enough QMP for the client:
// greeting, then one answer per command chosen by handle.
type fakeQMP struct {
	t        *testing.T
	path     string
	listener net.Listener
	greeting string
	handle   func(req fakeRequest) fakeReply

	mu       sync.Mutex
	requests []fakeRequest
	conn     net.Conn
	done     chan struct{}
}

func newFakeQMP(t *testing.T, handle func(req fakeRequest) fakeReply) *fakeQMP {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qmp.sock")
	listener, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeQMP{
		t: t, path: path, listener: listener, handle: handle, done: make(chan struct{}),
		greeting: `{"QMP": {"version": {"qemu": {"micro": 13, "minor": 0, "major": 10}, "package": ""}, "capabilities": ["oob"]}}`,
	}
	go f.serve()
	t.Cleanup(f.close)
	return f
}

func (f *fakeQMP) close() {
	f.listener.Close()
	f.mu.Lock()
	if f.conn != nil {
		f.conn.Close()
	}
	f.mu.Unlock()
	<-f.done
}

func (f *fakeQMP) serve() {
	defer close(f.done)
	conn, err := f.listener.Accept()
	if err != nil {
		return
	}
	f.mu.Lock()
	f.conn = conn
	f.mu.Unlock()
	defer conn.Close()
	writer := bufio.NewWriter(conn)
	send := func(line string) bool {
		writer.WriteString(line + "\r\n")
		return writer.Flush() == nil
	}
	if !send(f.greeting) {
		return
	}
	decoder := json.NewDecoder(conn)
	for {
		var req fakeRequest
		if err := decoder.Decode(&req); err != nil {
			return
		}
		f.mu.Lock()
		f.requests = append(f.requests, req)
		f.mu.Unlock()
		reply := fakeReply{}
		if req.Execute != "qmp_capabilities" && f.handle != nil {
			reply = f.handle(req)
		}
		for _, name := range reply.events {
			ev, _ := json.Marshal(map[string]any{
				"event": name, "data": map[string]any{"name": name},
				"timestamp": map[string]any{"seconds": 1700000000, "microseconds": 5},
			})
			if !send(string(ev)) {
				return
			}
		}
		switch {
		case reply.hangup:
			return
		case reply.noReply:
			continue
		}
		answer := map[string]any{"id": req.ID}
		if reply.err != nil {
			answer["error"] = reply.err
		} else if reply.ret != nil {
			answer["return"] = reply.ret
		} else {
			answer["return"] = map[string]any{}
		}
		line, _ := json.Marshal(answer)
		if !send(string(line)) {
			return
		}
	}
}

// commands returns the names of the commands received, in order.
func (f *fakeQMP) commands() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	names := make([]string, len(f.requests))
	for i, req := range f.requests {
		names[i] = req.Execute
	}
	return names
}

// request returns the first request named cmd.
func (f *fakeQMP) request(cmd string) (fakeRequest, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, req := range f.requests {
		if req.Execute == cmd {
			return req, true
		}
	}
	return fakeRequest{}, false
}
