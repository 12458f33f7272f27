package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func dialFake(t *testing.T, f *fakeQMP) *QMPClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	client, err := DialQMP(ctx, f.path, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return client
}

func TestQMPHandshakeAndReturn(t *testing.T) {
	f := newFakeQMP(t, func(req fakeRequest) fakeReply {
		return fakeReply{ret: map[string]any{"status": "running", "running": true}}
	})
	var transcript syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	client, err := DialQMP(ctx, f.path, &transcript)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	var status struct {
		Status  string `json:"status"`
		Running bool   `json:"running"`
	}
	if err := client.ExecuteInto(ctx, "query-status", nil, &status); err != nil {
		t.Fatal(err)
	}
	if status.Status != "running" || !status.Running {
		t.Errorf("query-status = %+v, want running", status)
	}
	if got := f.commands(); len(got) != 2 || got[0] != "qmp_capabilities" || got[1] != "query-status" {
		t.Errorf("server saw %v, want [qmp_capabilities query-status]", got)
	}
	for _, want := range []string{`<- {"QMP"`, `-> {"execute":"qmp_capabilities"`, `-> {"execute":"query-status"`} {
		if !strings.Contains(transcript.String(), want) {
			t.Errorf("transcript lacks %q:\n%s", want, transcript.String())
		}
	}
}

func TestQMPArgumentsAreSent(t *testing.T) {
	f := newFakeQMP(t, func(req fakeRequest) fakeReply { return fakeReply{} })
	client := dialFake(t, f)
	ctx := context.Background()
	if _, err := client.Execute(ctx, "pmemsave", map[string]any{"val": 0, "size": 4096, "filename": "/x"}); err != nil {
		t.Fatal(err)
	}
	req, _ := f.request("pmemsave")
	var args map[string]any
	if err := json.Unmarshal(req.Arguments, &args); err != nil {
		t.Fatal(err)
	}
	if args["size"] != float64(4096) || args["filename"] != "/x" {
		t.Errorf("arguments = %v", args)
	}
	if _, err := client.Execute(ctx, "cont", nil); err != nil {
		t.Fatal(err)
	}
	if req, _ := f.request("cont"); req.Arguments != nil {
		t.Errorf("nil args sent as %s, want no arguments member", req.Arguments)
	}
}

func TestQMPErrorIsTyped(t *testing.T) {
	f := newFakeQMP(t, func(req fakeRequest) fakeReply {
		return fakeReply{err: &qmpErrorBody{Class: "CommandNotFound", Desc: "The command nope has not been found"}}
	})
	client := dialFake(t, f)
	_, err := client.Execute(context.Background(), "nope", nil)
	var qerr *QMPError
	if !errors.As(err, &qerr) {
		t.Fatalf("error %v (%T) is not a *QMPError", err, err)
	}
	if qerr.Class != "CommandNotFound" || qerr.Command != "nope" || !strings.Contains(qerr.Desc, "not been found") {
		t.Errorf("QMPError = %+v", qerr)
	}
}

func TestQMPEventsBeforeAndAfterWait(t *testing.T) {
	f := newFakeQMP(t, func(req fakeRequest) fakeReply {
		switch req.Execute {
		case "stop":
			return fakeReply{events: []string{"STOP"}}
		case "two-resumes":
			return fakeReply{events: []string{"RESUME", "RESUME"}}
		}
		return fakeReply{}
	})
	client := dialFake(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	// The event arrives before the answer, so before anyone waits for it.
	if _, err := client.Execute(ctx, "stop", nil); err != nil {
		t.Fatal(err)
	}
	ev, err := client.WaitEvent(ctx, "STOP")
	if err != nil {
		t.Fatal(err)
	}
	if ev.Name != "STOP" || ev.Timestamp.Unix() != 1700000000 || !bytes.Contains(ev.Data, []byte(`"STOP"`)) {
		t.Errorf("event = %+v", ev)
	}

	// Each event is handed out once: a second wait needs a second event.
	short, cancelShort := context.WithTimeout(ctx, 100*time.Millisecond)
	_, err = client.WaitEvent(short, "STOP")
	cancelShort()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("second WaitEvent(STOP) = %v, want deadline exceeded", err)
	}

	// A waiter blocked before the event arrives is woken by it.
	var wg sync.WaitGroup
	results := make(chan error, 2)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := client.WaitEvent(ctx, "RESUME")
			results <- err
		}()
	}
	time.Sleep(50 * time.Millisecond)
	if _, err := client.Execute(ctx, "two-resumes", nil); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(results)
	for err := range results {
		if err != nil {
			t.Errorf("WaitEvent(RESUME): %v", err)
		}
	}
	if n := len(client.Events()); n != 3 {
		t.Errorf("Events() has %d events, want 3", n)
	}
}

func TestQMPContextTimeout(t *testing.T) {
	f := newFakeQMP(t, func(req fakeRequest) fakeReply { return fakeReply{noReply: req.Execute == "slow"} })
	client := dialFake(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := client.Execute(ctx, "slow", nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Execute(slow) = %v, want deadline exceeded", err)
	}
	// The connection is still usable after a timed-out command.
	if _, err := client.Execute(context.Background(), "fast", nil); err != nil {
		t.Fatalf("Execute after a timeout: %v", err)
	}
}

func TestQMPConnectionLoss(t *testing.T) {
	f := newFakeQMP(t, func(req fakeRequest) fakeReply { return fakeReply{hangup: req.Execute == "quit"} })
	client := dialFake(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := client.Execute(ctx, "quit", nil); !errors.Is(err, ErrQMPClosed) {
		t.Errorf("Execute(quit) = %v, want ErrQMPClosed", err)
	}
	select {
	case <-client.Done():
	case <-ctx.Done():
		t.Fatal("Done not closed after hangup")
	}
	if _, err := client.Execute(ctx, "query-status", nil); !errors.Is(err, ErrQMPClosed) {
		t.Errorf("Execute after hangup = %v, want ErrQMPClosed", err)
	}
	if _, err := client.WaitEvent(ctx, "SHUTDOWN"); !errors.Is(err, ErrQMPClosed) {
		t.Errorf("WaitEvent after hangup = %v, want ErrQMPClosed", err)
	}
}

func TestQMPRejectsNonQMPPeer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "not-qmp.sock")
	listener, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close()
	go func() {
		conn, err := listener.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		conn.Write([]byte(`{"hello": "world"}` + "\n"))
		time.Sleep(time.Second)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := DialQMP(ctx, path, nil); err == nil || !strings.Contains(err.Error(), "greeting") {
		t.Fatalf("DialQMP to a non-QMP peer = %v, want a greeting error", err)
	}
}

// syncBuffer is a bytes.Buffer safe for the client's concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
