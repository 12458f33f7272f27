// Package xlwire is the protocol between nasmig-xl's two halves (its one
// home): the sending half, in `xl migrate -s`'s place on the source, and
// the receiving half, which runs `xl migrate-receive` on the destination.
// Both directions carry frames:
//
//	frame: u8 type | u8 0 | u16 0 | u32 length | payload (little-endian)
//
// Sender to receiver:
//
//	Hello   u16 version | 32 B migration key seed | u16 n | n disks
//	        (disk: u8 id | u64 size | u16 len | path)
//	Data    bytes for xl migrate-receive's stdin, unchanged
//	Pages   u64 seq | u32 len | PAGE_DATA head (header, count, pfns) |
//	        per carried page: u8 0 + 4096 B page, u8 1 + Ref, or u8 2
//	        (a page of zeros)
//	Fill    u64 seq | u32 n | n × (u32 page index | 4096 B page)
//	Close   the source's stream ended
//	Abort   reason (text)
//
// Receiver to sender:
//
//	HelloAck u16 n | n × u8 disk ids it can read, with the size Hello gave
//	Data     bytes from xl migrate-receive's stdout, unchanged
//	Need     u64 seq | u32 n | n × u32 page index: references of batch
//	         seq that did not verify; the sender answers with Fill
//	Ack      u64 seq: batches up to seq are in xl migrate-receive's hands
//	Close    xl migrate-receive's stdout ended
//	Abort    reason (text)
//
// A Ref is u8 disk | u64 block | 16 B hash: the page's keyed hash
// (cshim.HashPageMig with the migration key of Hello).  The receiver hands
// a page on only if the block it reads has that hash, or the sender sent
// the page itself.
package xlwire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Frame types; the two directions share the numbers.
const (
	THello    = 1 // sender: Hello; receiver: HelloAck
	TData     = 2
	TPages    = 3 // sender: Pages; receiver: Need
	TFill     = 4 // sender: Fill; receiver: Ack
	TClose    = 5
	TAbort    = 6
	Version   = 1
	HeaderLen = 8
	// MaxFrame bounds a frame's payload: a PAGE_DATA record of 4096 pages
	// sent in full, with its head and tags.
	MaxFrame = 4096*(4096+1) + 64<<10
	RefSize  = 1 + 8 + 16
	PageSize = 4096
	tagPage  = 0
	tagRef   = 1
	tagZero  = 2
)

// ErrProto is wrapped by every error about malformed frames.
var ErrProto = errors.New("nasmig-xl protocol")

// Frame is one frame as read.  Payload is valid until the next read.
type Frame struct {
	Type    byte
	Payload []byte
}

// Reader reads frames.
type Reader struct {
	r   io.Reader
	buf []byte
}

// NewReader reads frames from r.
func NewReader(r io.Reader) *Reader { return &Reader{r: r} }

// Next reads a frame; io.EOF at a clean end between frames.
func (fr *Reader) Next() (Frame, error) {
	var h [HeaderLen]byte
	if _, err := io.ReadFull(fr.r, h[:]); err != nil {
		if err == io.EOF {
			return Frame{}, io.EOF
		}
		return Frame{}, fmt.Errorf("%w: frame header: %v", ErrProto, err)
	}
	n := binary.LittleEndian.Uint32(h[4:])
	if h[0] < THello || h[0] > TAbort || h[1]|h[2]|h[3] != 0 || n > MaxFrame {
		return Frame{}, fmt.Errorf("%w: bad frame header % x", ErrProto, h)
	}
	if cap(fr.buf) < int(n) {
		fr.buf = make([]byte, n)
	}
	p := fr.buf[:n]
	if _, err := io.ReadFull(fr.r, p); err != nil {
		return Frame{}, fmt.Errorf("%w: frame of %d bytes: %v", ErrProto, n, err)
	}
	return Frame{Type: h[0], Payload: p}, nil
}

// AppendHeader appends a frame header for a payload of n bytes.
func AppendHeader(b []byte, typ byte, n int) []byte {
	b = append(b, typ, 0, 0, 0)
	return binary.LittleEndian.AppendUint32(b, uint32(n))
}

// Disk is a disk the sender may reference.
type Disk struct {
	ID   uint8
	Size uint64
	Path string
}

// Hello is the sender's first frame.
type Hello struct {
	KeySeed [32]byte
	Disks   []Disk
}

// AppendHello appends h as a whole frame.
func AppendHello(b []byte, h Hello) []byte {
	p := binary.LittleEndian.AppendUint16(nil, Version)
	p = append(p, h.KeySeed[:]...)
	p = binary.LittleEndian.AppendUint16(p, uint16(len(h.Disks)))
	for _, d := range h.Disks {
		p = append(p, d.ID)
		p = binary.LittleEndian.AppendUint64(p, d.Size)
		p = binary.LittleEndian.AppendUint16(p, uint16(len(d.Path)))
		p = append(p, d.Path...)
	}
	return append(AppendHeader(b, THello, len(p)), p...)
}

// cursor takes fields off a payload; the first short take sets err.
type cursor struct {
	b   []byte
	err error
}

func (c *cursor) take(n int) []byte {
	if c.err != nil || n < 0 || len(c.b) < n {
		if c.err == nil {
			c.err = fmt.Errorf("%w: payload too short", ErrProto)
		}
		return make([]byte, max(n, 0))
	}
	v := c.b[:n]
	c.b = c.b[n:]
	return v
}
func (c *cursor) u8() byte    { return c.take(1)[0] }
func (c *cursor) u16() uint16 { return binary.LittleEndian.Uint16(c.take(2)) }
func (c *cursor) u32() uint32 { return binary.LittleEndian.Uint32(c.take(4)) }
func (c *cursor) u64() uint64 { return binary.LittleEndian.Uint64(c.take(8)) }
func (c *cursor) done() error {
	if c.err == nil && len(c.b) != 0 {
		return fmt.Errorf("%w: %d bytes after the payload", ErrProto, len(c.b))
	}
	return c.err
}

// ParseHello decodes a Hello payload.
func ParseHello(p []byte) (Hello, error) {
	var h Hello
	c := &cursor{b: p}
	if v := c.u16(); c.err == nil && v != Version {
		return h, fmt.Errorf("%w: version %d, this build speaks %d", ErrProto, v, Version)
	}
	copy(h.KeySeed[:], c.take(32))
	n := int(c.u16())
	for i := 0; i < n && c.err == nil; i++ {
		d := Disk{ID: c.u8(), Size: c.u64()}
		d.Path = string(c.take(int(c.u16())))
		h.Disks = append(h.Disks, d)
	}
	return h, c.done()
}

// AppendHelloAck appends the receiver's answer: the disks it can read.
func AppendHelloAck(b []byte, ids []uint8) []byte {
	p := binary.LittleEndian.AppendUint16(nil, uint16(len(ids)))
	p = append(p, ids...)
	return append(AppendHeader(b, THello, len(p)), p...)
}

// ParseHelloAck decodes a HelloAck payload.
func ParseHelloAck(p []byte) ([]uint8, error) {
	c := &cursor{b: p}
	n := int(c.u16())
	ids := append([]uint8(nil), c.take(n)...)
	return ids, c.done()
}

// Ref is a page sent as a disk reference.
type Ref struct {
	Disk  uint8
	Block uint64
	Hash  [2]uint64
}

// PagesWriter builds a Pages frame.
type PagesWriter struct {
	b []byte
}

// Begin starts the frame of batch seq for a PAGE_DATA record's head.
func (w *PagesWriter) Begin(seq uint64, head []byte) {
	w.b = AppendHeader(w.b[:0], TPages, 0)
	w.b = binary.LittleEndian.AppendUint64(w.b, seq)
	w.b = binary.LittleEndian.AppendUint32(w.b, uint32(len(head)))
	w.b = append(w.b, head...)
}

// Page adds a page sent in full.
func (w *PagesWriter) Page(page []byte) {
	w.b = append(w.b, tagPage)
	w.b = append(w.b, page[:PageSize]...)
}

// Zero adds a page of zeros.
func (w *PagesWriter) Zero() { w.b = append(w.b, tagZero) }

// Ref adds a page sent as a reference.
func (w *PagesWriter) Ref(r Ref) {
	w.b = append(w.b, tagRef, r.Disk)
	w.b = binary.LittleEndian.AppendUint64(w.b, r.Block)
	w.b = binary.LittleEndian.AppendUint64(w.b, r.Hash[0])
	w.b = binary.LittleEndian.AppendUint64(w.b, r.Hash[1])
}

// Bytes finishes the frame and returns it (valid until the next Begin).
func (w *PagesWriter) Bytes() []byte {
	binary.LittleEndian.PutUint32(w.b[4:], uint32(len(w.b)-HeaderLen))
	return w.b
}

var zeroPage [PageSize]byte

// IsZero reports whether page is all zeros.
func IsZero(page []byte) bool {
	for i := 0; i+8 <= len(page); i += 8 {
		if binary.LittleEndian.Uint64(page[i:]) != 0 {
			return false
		}
	}
	return true
}

// Entry is one carried page of a Pages frame: its bytes, or a reference.
type Entry struct {
	Page  []byte // nil for a reference
	IsRef bool
	Ref   Ref
}

// ParsePages decodes a Pages payload into seq, the record head and one
// entry per carried page; count(head) tells how many entries to expect.
func ParsePages(p []byte, count func(head []byte) (int, error), entries []Entry) (uint64, []byte, []Entry, error) {
	c := &cursor{b: p}
	seq := c.u64()
	head := c.take(int(c.u32()))
	if c.err != nil {
		return 0, nil, nil, c.err
	}
	n, err := count(head)
	if err != nil {
		return 0, nil, nil, err
	}
	entries = entries[:0]
	for i := 0; i < n && c.err == nil; i++ {
		switch tag := c.u8(); tag {
		case tagPage:
			entries = append(entries, Entry{Page: c.take(PageSize)})
		case tagZero:
			entries = append(entries, Entry{Page: zeroPage[:]})
		case tagRef:
			r := Ref{Disk: c.u8(), Block: c.u64()}
			r.Hash[0], r.Hash[1] = c.u64(), c.u64()
			entries = append(entries, Entry{IsRef: true, Ref: r})
		default:
			if c.err == nil {
				c.err = fmt.Errorf("%w: page tag %d", ErrProto, tag)
			}
		}
	}
	return seq, head, entries, c.done()
}

// AppendNeed appends a Need frame (TPages from the receiver): the page
// indexes of batch seq whose references did not verify.
func AppendNeed(b []byte, seq uint64, idx []uint32) []byte {
	b = AppendHeader(b, TPages, 12+4*len(idx))
	b = binary.LittleEndian.AppendUint64(b, seq)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(idx)))
	for _, i := range idx {
		b = binary.LittleEndian.AppendUint32(b, i)
	}
	return b
}

// ParseNeed decodes a Need payload.
func ParseNeed(p []byte) (uint64, []uint32, error) {
	c := &cursor{b: p}
	seq := c.u64()
	n := int(c.u32())
	if n > len(p)/4 {
		return 0, nil, fmt.Errorf("%w: need of %d pages in %d bytes", ErrProto, n, len(p))
	}
	idx := make([]uint32, 0, n)
	for i := 0; i < n && c.err == nil; i++ {
		idx = append(idx, c.u32())
	}
	return seq, idx, c.done()
}

// AppendFill appends a Fill frame: the pages (PageSize each) of batch seq
// at the given indexes.
func AppendFill(b []byte, seq uint64, idx []uint32, pages [][]byte) []byte {
	b = AppendHeader(b, TFill, 12+len(idx)*(4+PageSize))
	b = binary.LittleEndian.AppendUint64(b, seq)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(idx)))
	for k, i := range idx {
		b = binary.LittleEndian.AppendUint32(b, i)
		b = append(b, pages[k][:PageSize]...)
	}
	return b
}

// ParseFill decodes a Fill payload; the pages alias p.
func ParseFill(p []byte) (uint64, []uint32, [][]byte, error) {
	c := &cursor{b: p}
	seq := c.u64()
	n := int(c.u32())
	if n > len(p)/(4+PageSize) {
		return 0, nil, nil, fmt.Errorf("%w: fill of %d pages in %d bytes", ErrProto, n, len(p))
	}
	idx := make([]uint32, 0, n)
	pages := make([][]byte, 0, n)
	for i := 0; i < n && c.err == nil; i++ {
		idx = append(idx, c.u32())
		pages = append(pages, c.take(PageSize))
	}
	return seq, idx, pages, c.done()
}

// AppendSeq appends a frame whose payload is one u64 (Ack).
func AppendSeq(b []byte, typ byte, seq uint64) []byte {
	b = AppendHeader(b, typ, 8)
	return binary.LittleEndian.AppendUint64(b, seq)
}

// ParseSeq decodes a one-u64 payload.
func ParseSeq(p []byte) (uint64, error) {
	c := &cursor{b: p}
	v := c.u64()
	return v, c.done()
}
