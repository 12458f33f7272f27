package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"nasmig/cshim"
	"nasmig/plugin/content"
	"nasmig/tools/nasmig-xl/xenstream"
	"nasmig/tools/nasmig-xl/xlwire"
)

const banner = "xl migration receiver ready, send binary domain data.\n"

// bed is a shared disk with a content index over it, as a device model
// with content-index=on serves it.
type bed struct {
	dir, img, sockDir string
	blocks            [][]byte // the disk's blocks when they were indexed
}

func newBed(t *testing.T, nblocks int, advertisedPath func(string) string) *bed {
	t.Helper()
	b := &bed{dir: t.TempDir()}
	b.img = filepath.Join(b.dir, "disk.img")
	b.sockDir = filepath.Join(b.dir, "content")
	rng := rand.New(rand.NewSource(7))
	var disk []byte
	for i := 0; i < nblocks; i++ {
		blk := make([]byte, xlwire.PageSize)
		rng.Read(blk)
		b.blocks = append(b.blocks, blk)
		disk = append(disk, blk...)
	}
	if err := os.WriteFile(b.img, disk, 0o600); err != nil {
		t.Fatal(err)
	}
	var seed [32]byte
	rng.Read(seed[:])
	cshim.SetKey(cshim.ExpandKey(seed))
	x := content.NewIndex()
	for i, blk := range b.blocks {
		x.Add(content.Loc{Disk: 2, Block: uint64(i)}, cshim.HashPage(blk)[0])
	}
	var st syscall.Stat_t
	if err := syscall.Stat(b.img, &st); err != nil {
		t.Fatal(err)
	}
	h := content.Hello{KeySeed: seed, PID: 1, XenDom: 3, Blocks: uint64(nblocks),
		Disks: []content.Disk{{Index: 2, Size: uint64(len(disk)), Dev: uint64(st.Dev), Ino: st.Ino, Path: advertisedPath(b.img)}}}
	l, err := content.Listen(filepath.Join(b.sockDir, "1.sock"))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		content.Serve(l, x, func() content.Hello { return h }, func(error) {}) // may report after the test: not t.Log
	}()
	t.Cleanup(func() { l.Close(); wg.Wait() })
	return b
}

// stream builds a PV guest's stream whose pages are the disk's blocks
// 0..ndisk-1 as indexed, random pages, and invalid entries.
func (b *bed) stream(ndisk int) []byte {
	blocks := make([]int, ndisk)
	for i := range blocks {
		blocks[i] = i
	}
	return b.streamOf(blocks)
}

// streamOf is stream with the disk's blocks at these indexes.
func (b *bed) streamOf(blocks []int) []byte {
	ndisk := len(blocks)
	rng := rand.New(rand.NewSource(8))
	var s xenstream.Builder
	s.XLHeader([]byte(fmt.Sprintf(`{"c_info":{"name":"g"},"disks":[{"pdev_path":%q,"vdev":"xvda","backend":"qdisk"}]}`, b.img)))
	s.LibxlHeader()
	s.Record(xenstream.LibxlLibxcContext, nil)
	s.LibxcHeaders(1)
	next := 0
	for r := 0; next < ndisk || r < 3; r++ {
		var pfns []uint64
		var data []byte
		for i := 0; i < 300; i++ {
			pfn := uint64(r*1000 + i)
			switch {
			case i%50 == 7:
				pfns = append(pfns, xenstream.PfnTypeXtab<<xenstream.PfnTypeShift|pfn)
				continue
			case i%50 == 9:
				data = append(data, make([]byte, xlwire.PageSize)...)
			case i%2 == 0 && next < ndisk:
				data = append(data, b.blocks[blocks[next]]...)
				next++
			default:
				page := make([]byte, xlwire.PageSize)
				rng.Read(page)
				data = append(data, page...)
			}
			pfns = append(pfns, pfn)
		}
		s.PageData(pfns, data)
	}
	s.Record(xenstream.LibxcEnd, nil)
	s.Record(xenstream.LibxlEmulatorXS, []byte("some xenstore data"))
	s.Record(xenstream.LibxlEnd, nil)
	s.Bytes = append(s.Bytes, "domain is yours, you are cleared to unpause"...)
	return s.Bytes
}

// migrate runs both halves in this process, joined by pipes; the receiving
// half's command stands for xl migrate-receive: it prints xl's banner and
// keeps the stream it gets in received.
func migrate(t *testing.T, b *bed, in []byte) (int, sendStats, int, recvStats, []byte, string) {
	t.Helper()
	received := filepath.Join(b.dir, "received")
	o := options{contentDir: b.sockDir, logLevel: "debug"}
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel)
	sr, rw := io.Pipe() // sending half -> receiving half
	rr, sw := io.Pipe() // receiving half -> sending half
	var rcode int
	var rst recvStats
	done := make(chan struct{})
	go func() {
		defer close(done)
		rcode, rst = runReceiver(o, []string{"sh", "-c", `printf '%s' "$1"; exec cat > "$2"`, "sh", banner, received}, sr, sw, log.With().Str("half", "receive").Logger())
		sw.Close()
	}()
	var xlSide bytes.Buffer
	scode, sst := runSender(o, func() error { <-done; return nil }, rw, rr, bytes.NewReader(in), &xlSide, log.With().Str("half", "send").Logger())
	got, err := os.ReadFile(received)
	if err != nil {
		t.Fatal(err)
	}
	return scode, sst, rcode, rst, got, xlSide.String()
}

func TestMigrateReferencesVerifiedByteIdentical(t *testing.T) {
	b := newBed(t, 600, func(p string) string { return p })
	in := b.stream(500)
	// Block 5 changes behind the index's back, blocks 6 and 7 too; their
	// pages (the old contents) must come from the sending half.
	f, err := os.OpenFile(b.img, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(bytes.Repeat([]byte{0xee}, 3*xlwire.PageSize), 5*xlwire.PageSize)
	f.Close()

	scode, sst, rcode, rst, got, xl := migrate(t, b, in)
	if scode != 0 || rcode != 0 {
		t.Fatalf("exit codes: sender %d, receiver %d", scode, rcode)
	}
	if !bytes.Equal(got, in) {
		t.Fatalf("xl migrate-receive got %d bytes, not the %d the source wrote", len(got), len(in))
	}
	if xl != banner {
		t.Fatalf("xl's side got %q, want the banner", xl)
	}
	if sst.refs != 500 || rst.refs != 500 || rst.verified != 497 || rst.mismatched != 3 || sst.filled != 3 || sst.zero == 0 {
		t.Fatalf("sender %+v, receiver %+v: want 500 references, 497 verified, 3 sent in full after the check", sst, rst)
	}
	if sst.linkBytes > int64(len(in))-400*xlwire.PageSize {
		t.Fatalf("%d bytes on the link for a stream of %d with 500 references", sst.linkBytes, len(in))
	}
	t.Logf("stream %d bytes, link %d bytes, %d reads", len(in), sst.linkBytes, rst.reads)
}

// Blocks far apart are read apart: a read spans no gap wider than
// maxReadGap, so scattered references (a guest that wrote random blocks)
// are not paid for with the blocks between them.
func TestReceiverReadsNoWideGaps(t *testing.T) {
	b := newBed(t, 4000, func(p string) string { return p })
	// Groups of five referenced blocks: three adjacent, a gap of exactly
	// maxReadGap, two adjacent; the next group maxReadGap+1 further.
	group := []int{0, 1, 2, 3 + maxReadGap, 4 + maxReadGap}
	stride := 2*maxReadGap + 6
	var blocks []int
	for g := 0; len(blocks) < 300; g++ {
		for _, o := range group {
			blocks = append(blocks, g*stride+o)
		}
	}
	in := b.streamOf(blocks)
	scode, _, rcode, rst, got, _ := migrate(t, b, in)
	if scode != 0 || rcode != 0 || !bytes.Equal(got, in) {
		t.Fatalf("exit codes %d/%d, stream identical %v", scode, rcode, bytes.Equal(got, in))
	}
	if rst.verified != 300 {
		t.Fatalf("receiver %+v: want 300 verified", rst)
	}
	// The gap within a group is read, the one between groups is not.
	maxBytes := int64(300/5) * (maxReadGap + 5) * xlwire.PageSize
	if rst.readBytes > maxBytes {
		t.Fatalf("read %d bytes for 300 references, want at most %d", rst.readBytes, maxBytes)
	}
	t.Logf("%d reads, %d bytes for 300 referenced blocks", rst.reads, rst.readBytes)
}

func TestMigrateWithoutReadableDiskSendsInFull(t *testing.T) {
	b := newBed(t, 100, func(p string) string { return p + ".not-here" })
	in := b.stream(80)
	scode, sst, rcode, rst, got, _ := migrate(t, b, in)
	if scode != 0 || rcode != 0 || !bytes.Equal(got, in) {
		t.Fatalf("exit codes %d %d, stream identical %v", scode, rcode, bytes.Equal(got, in))
	}
	if sst.refs != 0 || rst.refs != 0 {
		t.Fatalf("%d references to a disk the receiver cannot read", sst.refs)
	}
}

func TestMigrateNoIndexPassesThrough(t *testing.T) {
	b := newBed(t, 10, func(p string) string { return p })
	os.RemoveAll(b.sockDir)
	in := b.stream(10)
	scode, sst, rcode, _, got, _ := migrate(t, b, in)
	if scode != 0 || rcode != 0 || !bytes.Equal(got, in) || sst.refs != 0 {
		t.Fatalf("exit codes %d %d, identical %v, refs %d", scode, rcode, bytes.Equal(got, in), sst.refs)
	}
}

// A reference that does not verify, from a sending half that is gone:
// the receiving half must not hand the record on, and must fail.
func TestReceiverNeverHandsOnAnUnverifiedPage(t *testing.T) {
	b := newBed(t, 4, func(p string) string { return p })
	var s xenstream.Builder
	s.PageData([]uint64{1, 2}, append(bytes.Repeat([]byte{1}, xlwire.PageSize), b.blocks[0]...))
	head := s.Bytes[:8+8+16]
	var frames []byte
	frames = append(frames, xlwire.AppendHeader(nil, xlwire.TData, 5)...)
	frames = append(frames, "hello"...)
	frames = xlwire.AppendHello(frames, xlwire.Hello{Disks: []xlwire.Disk{{ID: 2, Size: 4 * xlwire.PageSize, Path: b.img}}})
	var pw xlwire.PagesWriter
	pw.Begin(1, head)
	pw.Page(bytes.Repeat([]byte{1}, xlwire.PageSize))
	pw.Ref(xlwire.Ref{Disk: 2, Block: 0, Hash: [2]uint64{1, 2}}) // wrong hash
	frames = append(frames, pw.Bytes()...)
	received := filepath.Join(b.dir, "received")
	var back bytes.Buffer
	log := zerolog.New(zerolog.NewTestWriter(t))
	code, st := runReceiver(options{}, []string{"sh", "-c", `exec cat > "$1"`, "sh", received}, bytes.NewReader(frames), &back, log)
	got, _ := os.ReadFile(received)
	if code == 0 || st.mismatched != 1 || !strings.HasPrefix("hello", string(got)) {
		t.Fatalf("exit %d, %d mismatched, xl got %q: want failure, 1 mismatch, at most the bytes before the record", code, st.mismatched, got)
	}
	if !strings.Contains(back.String(), "\x03\x00\x00\x00") { // a Need went back
		t.Fatalf("no Need frame sent back")
	}
}

// signalWriter collects what xl's side gets and says when want arrived.
type signalWriter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	want string
	seen chan struct{}
}

func (w *signalWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if w.seen != nil && strings.Contains(w.buf.String(), w.want) {
		close(w.seen)
		w.seen = nil
	}
	return len(p), nil
}

// After libxl's END, xl and xl migrate-receive talk: the receiver reports,
// and only then does the sender write its go-ahead.  Both halves must pass
// on what they have at once (a half that waits for a full buffer hangs the
// migration: seen on a real Xen host).
func TestMigrateDialogueAfterTheStream(t *testing.T) {
	b := newBed(t, 100, func(p string) string { return p })
	in := b.stream(60)
	goAhead := "domain is yours, you are cleared to unpause"
	if !bytes.HasSuffix(in, []byte(goAhead)) {
		t.Fatal("the test stream does not end with xl's go-ahead")
	}
	body := in[:len(in)-len(goAhead)]
	received := filepath.Join(b.dir, "received")
	o := options{contentDir: b.sockDir}
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	sr, rw := io.Pipe()
	rr, sw := io.Pipe()
	done := make(chan struct{})
	var rcode int
	go func() {
		defer close(done)
		script := `printf '%s' "$1"; head -c "$3" > "$2"; printf 'report\n'; cat >> "$2"`
		rcode, _ = runReceiver(o, []string{"sh", "-c", script, "sh", banner, received, fmt.Sprint(len(body))}, sr, sw, log)
		sw.Close()
	}()
	xlIn, xlOut := io.Pipe()
	xlSide := &signalWriter{want: "report\n", seen: make(chan struct{})}
	seen := xlSide.seen
	hung := false
	go func() {
		xlOut.Write(body)
		select {
		case <-seen:
			xlOut.Write([]byte(goAhead))
			xlOut.Close()
		case <-time.After(30 * time.Second):
			hung = true
			xlOut.CloseWithError(errors.New("no report from the receiving side within 30 s"))
		}
	}()
	scode, _ := runSender(o, func() error { <-done; return nil }, rw, rr, xlIn, xlSide, log)
	if hung {
		t.Fatal("the receiver's report never reached xl: a half waited for more of the stream")
	}
	got, _ := os.ReadFile(received)
	if scode != 0 || rcode != 0 || !bytes.Equal(got, in) {
		t.Fatalf("exit codes %d %d; xl migrate-receive got %d bytes of %d", scode, rcode, len(got), len(in))
	}
}
