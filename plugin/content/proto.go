package content

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"
)

// The content socket's protocol (little-endian).  On connect the library
// sends a Hello; the client then sends lookups, each answered in order,
// until it closes the connection:
//
//	Hello:   "NSMX" | u16 version | u16 0 | 32 B key seed | u32 pid |
//	         i32 xen domid (-1: none) | u64 blocks indexed | u16 n | n disks
//	disk:    u8 index | u64 size | u64 dev | u64 ino | u16 len | path
//	lookup:  'L' | 3 B 0 | u32 n (1..MaxLookup) | n u64 content hashes
//	answer:  n u64: 0 (not indexed) or FoundBit | disk<<56 | block
//
// The key seed is the index's hash key (cshim.ExpandKey of it, hashed with
// cshim.HashPage: the first word is the content hash).  It leaves the
// process only through this socket, which is its owner's alone (0600 in a
// 0700 directory): it lets a reader compute content hashes, nothing more.
const (
	Magic        = "NSMX"
	Version      = 1
	MaxLookup    = 4096
	MaxDisks     = 127
	maxPath      = 4096
	FoundBit     = uint64(1) << 63
	opLookup     = 'L'
	helloTimeout = 5 * time.Second
)

// Disk is one disk of the index, as its QEMU opened it.
type Disk struct {
	Index uint8
	Size  uint64
	Dev   uint64 // st_dev and st_ino of Path when the client connected
	Ino   uint64 // (0, 0: not a local file)
	Path  string
}

// Hello is what a client learns on connecting.
type Hello struct {
	KeySeed [32]byte
	PID     uint32
	XenDom  int32
	Blocks  uint64 // blocks in the index when the client connected
	Disks   []Disk
}

// ErrProto is wrapped by every error about malformed protocol data.
var ErrProto = errors.New("content socket protocol")

func appendHello(b []byte, h Hello) []byte {
	b = append(b, Magic...)
	b = binary.LittleEndian.AppendUint16(b, Version)
	b = binary.LittleEndian.AppendUint16(b, 0)
	b = append(b, h.KeySeed[:]...)
	b = binary.LittleEndian.AppendUint32(b, h.PID)
	b = binary.LittleEndian.AppendUint32(b, uint32(h.XenDom))
	b = binary.LittleEndian.AppendUint64(b, h.Blocks)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(h.Disks)))
	for _, d := range h.Disks {
		b = append(b, d.Index)
		b = binary.LittleEndian.AppendUint64(b, d.Size)
		b = binary.LittleEndian.AppendUint64(b, d.Dev)
		b = binary.LittleEndian.AppendUint64(b, d.Ino)
		b = binary.LittleEndian.AppendUint16(b, uint16(len(d.Path)))
		b = append(b, d.Path...)
	}
	return b
}

// ReadHello decodes a Hello from r.
func ReadHello(r io.Reader) (Hello, error) {
	var h Hello
	var fixed [4 + 2 + 2 + 32 + 4 + 4 + 8 + 2]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return h, fmt.Errorf("%w: hello: %v", ErrProto, err)
	}
	if string(fixed[:4]) != Magic {
		return h, fmt.Errorf("%w: hello magic %q, want %q", ErrProto, fixed[:4], Magic)
	}
	if v := binary.LittleEndian.Uint16(fixed[4:]); v != Version {
		return h, fmt.Errorf("%w: version %d, this build speaks %d", ErrProto, v, Version)
	}
	copy(h.KeySeed[:], fixed[8:40])
	h.PID = binary.LittleEndian.Uint32(fixed[40:])
	h.XenDom = int32(binary.LittleEndian.Uint32(fixed[44:]))
	h.Blocks = binary.LittleEndian.Uint64(fixed[48:])
	n := int(binary.LittleEndian.Uint16(fixed[56:]))
	if n > MaxDisks {
		return h, fmt.Errorf("%w: %d disks (at most %d)", ErrProto, n, MaxDisks)
	}
	for i := 0; i < n; i++ {
		var d [1 + 8 + 8 + 8 + 2]byte
		if _, err := io.ReadFull(r, d[:]); err != nil {
			return h, fmt.Errorf("%w: disk %d: %v", ErrProto, i, err)
		}
		l := int(binary.LittleEndian.Uint16(d[25:]))
		if l > maxPath {
			return h, fmt.Errorf("%w: disk %d: path of %d bytes", ErrProto, i, l)
		}
		p := make([]byte, l)
		if _, err := io.ReadFull(r, p); err != nil {
			return h, fmt.Errorf("%w: disk %d path: %v", ErrProto, i, err)
		}
		h.Disks = append(h.Disks, Disk{Index: d[0], Size: binary.LittleEndian.Uint64(d[1:]),
			Dev: binary.LittleEndian.Uint64(d[9:]), Ino: binary.LittleEndian.Uint64(d[17:]), Path: string(p)})
	}
	return h, nil
}

// Serve answers every connection on l with hello() and then lookups in x,
// until l is closed.  logf reports connection errors.
func Serve(l net.Listener, x *Index, hello func() Hello, logf func(error)) {
	for {
		c, err := l.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				logf(err)
			}
			return
		}
		go func() {
			if err := serveConn(c, x, hello()); err != nil && !errors.Is(err, io.EOF) {
				logf(err)
			}
		}()
	}
}

func serveConn(c net.Conn, x *Index, h Hello) error {
	defer c.Close()
	c.SetWriteDeadline(time.Now().Add(helloTimeout))
	if _, err := c.Write(appendHello(nil, h)); err != nil {
		return fmt.Errorf("content socket: hello: %w", err)
	}
	c.SetWriteDeadline(time.Time{})
	r := bufio.NewReaderSize(c, 64<<10)
	w := bufio.NewWriterSize(c, 64<<10)
	hashes := make([]uint64, MaxLookup)
	locs := make([]Loc, MaxLookup)
	found := make([]bool, MaxLookup)
	buf := make([]byte, 8*MaxLookup)
	for {
		n, err := readLookup(r, hashes, buf)
		if err != nil {
			return err
		}
		x.LookupBatch(hashes[:n], locs[:n], found[:n])
		out := buf[:0]
		for i := 0; i < n; i++ {
			var v uint64
			if found[i] {
				v = FoundBit | uint64(locs[i].Disk)<<56 | locs[i].Block
			}
			out = binary.LittleEndian.AppendUint64(out, v)
		}
		if _, err := w.Write(out); err != nil {
			return err
		}
		if r.Buffered() == 0 {
			if err := w.Flush(); err != nil {
				return err
			}
		}
	}
}

// readLookup reads one lookup request into hashes (len MaxLookup), using
// buf (8*MaxLookup bytes) as scratch.
func readLookup(r io.Reader, hashes []uint64, buf []byte) (int, error) {
	var hdr [8]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, fmt.Errorf("%w: short request header", ErrProto)
		}
		return 0, err
	}
	if hdr[0] != opLookup || hdr[1]|hdr[2]|hdr[3] != 0 {
		return 0, fmt.Errorf("%w: unknown request % x", ErrProto, hdr[:4])
	}
	n := int(binary.LittleEndian.Uint32(hdr[4:]))
	if n < 1 || n > MaxLookup {
		return 0, fmt.Errorf("%w: lookup of %d hashes (1..%d)", ErrProto, n, MaxLookup)
	}
	if _, err := io.ReadFull(r, buf[:8*n]); err != nil {
		return 0, fmt.Errorf("%w: lookup body: %v", ErrProto, err)
	}
	for i := 0; i < n; i++ {
		hashes[i] = binary.LittleEndian.Uint64(buf[8*i:])
	}
	return n, nil
}

// Client is one connection to a content socket.
type Client struct {
	c     net.Conn
	r     *bufio.Reader
	buf   []byte
	Hello Hello
}

// Dial connects to the content socket at path and reads its Hello.
func Dial(path string) (*Client, error) {
	c, err := net.DialTimeout("unix", path, helloTimeout)
	if err != nil {
		return nil, fmt.Errorf("content socket %s: %w", path, err)
	}
	c.SetReadDeadline(time.Now().Add(helloTimeout))
	r := bufio.NewReaderSize(c, 64<<10)
	h, err := ReadHello(r)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("content socket %s: %w", path, err)
	}
	c.SetReadDeadline(time.Time{})
	return &Client{c: c, r: r, buf: make([]byte, 8+8*MaxLookup), Hello: h}, nil
}

// Close ends the connection.
func (c *Client) Close() error { return c.c.Close() }

// Lookup asks for the blocks of hashes (any number; sent MaxLookup at a
// time) and fills locs and found (each at least as long as hashes).
func (c *Client) Lookup(hashes []uint64, locs []Loc, found []bool) error {
	for len(hashes) > 0 {
		n := min(len(hashes), MaxLookup)
		b := append(c.buf[:0], opLookup, 0, 0, 0)
		b = binary.LittleEndian.AppendUint32(b, uint32(n))
		for _, h := range hashes[:n] {
			b = binary.LittleEndian.AppendUint64(b, h)
		}
		if _, err := c.c.Write(b); err != nil {
			return fmt.Errorf("content lookup: %w", err)
		}
		ans := c.buf[:8*n]
		if _, err := io.ReadFull(c.r, ans); err != nil {
			return fmt.Errorf("content lookup answer: %w", err)
		}
		for i := 0; i < n; i++ {
			v := binary.LittleEndian.Uint64(ans[8*i:])
			found[i] = v&FoundBit != 0
			locs[i] = Loc{Disk: uint8(v>>56) & 0x7f, Block: v & (1<<56 - 1)}
		}
		hashes, locs, found = hashes[n:], locs[n:], found[n:]
	}
	return nil
}

// Listen creates the owner-only socket path (a new directory 0700),
// replacing a stale socket no live process answers on.
func Listen(path string) (net.Listener, error) {
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("content socket %s: in use by another process", path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("content socket: %w", err)
	}
	os.Remove(path)
	// Connecting needs write permission on the socket: with the usual
	// umask nobody else has it from the start; 0600 makes that explicit.
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("content socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("content socket: %w", err)
	}
	return l, nil
}
