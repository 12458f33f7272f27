package content

import (
	"bytes"
	"errors"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
)

func TestIndexAddReplaceDrop(t *testing.T) {
	x := NewIndex()
	a := Loc{Disk: 1, Block: 10}
	x.Add(a, 0xaa)
	if l, ok := x.Lookup(0xaa); !ok || l != a {
		t.Fatalf("lookup after add: %v %v", l, ok)
	}
	// The block gets new content: the old hash must not find it any more.
	x.Add(a, 0xbb)
	if _, ok := x.Lookup(0xaa); ok {
		t.Fatal("old content of a rewritten block still found")
	}
	// Two blocks with the same content: dropping one keeps the other only
	// if the index pointed at it; never points at the dropped one.
	b := Loc{Disk: 1, Block: 11}
	x.Add(b, 0xbb)
	x.Drop(1, 11, 1)
	if l, ok := x.Lookup(0xbb); ok && l == b {
		t.Fatal("dropped block still found")
	}
	x.Add(Loc{Disk: 2, Block: 11}, 0xcc) // other disk, same block number
	x.Drop(1, 0, 100)
	if _, ok := x.Lookup(0xcc); !ok {
		t.Fatal("drop on disk 1 removed disk 2's block")
	}
	if blocks, _ := x.Len(); blocks != 1 {
		t.Fatalf("%d blocks left, want 1", blocks)
	}
	// A discard larger than the index walks the index instead.
	for i := uint64(0); i < 50; i++ {
		x.Add(Loc{Disk: 3, Block: 1<<40 + i}, 0x1000+i)
	}
	x.Drop(3, 1<<40+10, 1<<50)
	if blocks, _ := x.Len(); blocks != 11 {
		t.Fatalf("%d blocks left after the large drop, want 11", blocks)
	}
	if _, ok := x.Lookup(0x1000 + 9); !ok {
		t.Fatal("block before the dropped range lost")
	}
	x.DropDisk(3)
	if blocks, _ := x.Len(); blocks != 1 {
		t.Fatalf("%d blocks left after DropDisk, want 1", blocks)
	}
}

func serveIndex(t *testing.T, x *Index, h Hello) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sub", "c.sock")
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	// Connection goroutines may report after the test ended: count, never t.Log.
	var errs atomic.Int64
	go func() { defer wg.Done(); Serve(l, x, func() Hello { return h }, func(error) { errs.Add(1) }) }()
	t.Cleanup(func() { l.Close(); wg.Wait() })
	return path
}

func TestSocketLookup(t *testing.T) {
	x := NewIndex()
	const n = MaxLookup*2 + 17 // more than one request
	hashes := make([]uint64, n)
	for i := range hashes {
		hashes[i] = uint64(i)*0x9e3779b97f4a7c15 + 1
		if i%3 != 0 {
			x.Add(Loc{Disk: uint8(i % 5), Block: uint64(i) << 20}, hashes[i])
		}
	}
	h := Hello{PID: 42, XenDom: 7, Blocks: 1 << 33, Disks: []Disk{{Index: 0, Size: 1 << 30, Dev: 3, Ino: 9, Path: "/srv/a.img"}, {Index: 4, Size: 4096, Path: "nbd://x"}}}
	h.KeySeed[0], h.KeySeed[31] = 1, 2
	c, err := Dial(serveIndex(t, x, h))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Hello.PID != 42 || c.Hello.XenDom != 7 || c.Hello.Blocks != 1<<33 || c.Hello.KeySeed != h.KeySeed || len(c.Hello.Disks) != 2 || c.Hello.Disks[0] != h.Disks[0] || c.Hello.Disks[1] != h.Disks[1] {
		t.Fatalf("hello %+v, want %+v", c.Hello, h)
	}
	locs := make([]Loc, n)
	found := make([]bool, n)
	if err := c.Lookup(hashes, locs, found); err != nil {
		t.Fatal(err)
	}
	for i := range hashes {
		want := Loc{Disk: uint8(i % 5), Block: uint64(i) << 20}
		if found[i] != (i%3 != 0) || found[i] && locs[i] != want {
			t.Fatalf("hash %d: found %v at %v, want %v at %v", i, found[i], locs[i], i%3 != 0, want)
		}
	}
}

func TestSocketRefusesBadRequests(t *testing.T) {
	path := serveIndex(t, NewIndex(), Hello{})
	for _, req := range [][]byte{
		{'X', 0, 0, 0, 1, 0, 0, 0},
		{'L', 0, 0, 0, 0, 0, 0, 0},       // zero hashes
		{'L', 0, 0, 0, 0x01, 0x10, 0, 0}, // 4097 hashes
	} {
		c, err := Dial(path)
		if err != nil {
			t.Fatal(err)
		}
		c.c.Write(req)
		var b [8]byte
		if n, err := c.r.Read(b[:]); err == nil {
			t.Fatalf("request % x answered with %d bytes", req, n)
		}
		c.Close()
	}
	if _, err := Listen(path); err == nil {
		t.Fatal("a second listener took a live socket")
	}
}

func TestReadHelloRejects(t *testing.T) {
	good := appendHello(nil, Hello{Disks: []Disk{{Path: "/a"}}})
	if _, err := ReadHello(bytes.NewReader(good)); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{
		"magic":     append([]byte("NSMY"), good[4:]...),
		"version":   append(append([]byte{}, good[:4]...), append([]byte{2, 0}, good[6:]...)...),
		"truncated": good[:len(good)-1],
	} {
		if _, err := ReadHello(bytes.NewReader(b)); !errors.Is(err, ErrProto) {
			t.Errorf("%s: %v, want ErrProto", name, err)
		}
	}
}

func FuzzReadHello(f *testing.F) {
	f.Add(appendHello(nil, Hello{XenDom: -1, Disks: []Disk{{Index: 1, Size: 2, Path: "/srv/x.img"}}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ReadHello(bytes.NewReader(b))
		if err != nil {
			return
		}
		again, err := ReadHello(bytes.NewReader(appendHello(nil, h)))
		if err != nil || again.PID != h.PID || len(again.Disks) != len(h.Disks) {
			t.Fatalf("re-encoded hello differs: %v", err)
		}
	})
}
