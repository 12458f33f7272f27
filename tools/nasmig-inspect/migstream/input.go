package migstream

import (
	"bufio"
	"errors"
	"fmt"
	"io"
)

// FormatError is a stream that does not decode: where, and what was
// expected there.
type FormatError struct {
	Offset    int64 // byte offset in the stream
	Msg       string
	Truncated bool // the stream ended early
}

func (e *FormatError) Error() string { return fmt.Sprintf("byte offset %d: %s", e.Offset, e.Msg) }

// seekable is a stream that can be read anywhere (a regular file): the
// vmdesc at its end and mapped-ram's bitmaps are read without buffering.
type seekable interface {
	io.ReaderAt
	io.Seeker
}

// input reads the stream front to back and knows its offset.
type input struct {
	raw  io.Reader
	br   *bufio.Reader
	seek seekable // nil for a pipe
	size int64    // when seekable
	off  int64
	buf  []byte
}

func newInput(r io.Reader) *input {
	in := &input{raw: r, br: bufio.NewReaderSize(r, 64<<10)}
	if s, ok := r.(seekable); ok {
		cur, err1 := s.Seek(0, io.SeekCurrent)
		end, err2 := s.Seek(0, io.SeekEnd)
		_, err3 := s.Seek(cur, io.SeekStart)
		if err1 == nil && err2 == nil && err3 == nil && cur == 0 {
			in.seek, in.size = s, end
		}
	}
	return in
}

func (in *input) errf(off int64, format string, a ...any) error {
	return &FormatError{Offset: off, Msg: fmt.Sprintf(format, a...)}
}

func (in *input) short(off int64, want, got int64, what string) error {
	return &FormatError{Offset: off, Truncated: true,
		Msg: fmt.Sprintf("expected %d bytes of %s, the stream ends after %d", want, what, got)}
}

// read returns the next n bytes in a scratch buffer valid until the next call.
func (in *input) read(n int, what string) ([]byte, error) {
	if cap(in.buf) < n {
		in.buf = make([]byte, n)
	}
	b := in.buf[:n]
	start := in.off
	got, err := io.ReadFull(in.br, b)
	in.off += int64(got)
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, in.short(start, int64(n), int64(got), what)
		}
		return nil, fmt.Errorf("reading %s at byte offset %d: %w", what, start, err)
	}
	return b, nil
}

func (in *input) u8(what string) (uint8, error) {
	b, err := in.read(1, what)
	if err != nil {
		return 0, err
	}
	return b[0], nil
}

func (in *input) be16(what string) (uint16, error) {
	b, err := in.read(2, what)
	if err != nil {
		return 0, err
	}
	return uint16(b[0])<<8 | uint16(b[1]), nil
}

func (in *input) be32(what string) (uint32, error) {
	b, err := in.read(4, what)
	if err != nil {
		return 0, err
	}
	return be32(b), nil
}

func (in *input) be64(what string) (uint64, error) {
	b, err := in.read(8, what)
	if err != nil {
		return 0, err
	}
	return uint64(be32(b))<<32 | uint64(be32(b[4:])), nil
}

func be32(b []byte) uint32 {
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// str reads a u8-length-prefixed string (QEMU's idstr encoding).
func (in *input) str(what string) (string, error) {
	n, err := in.u8(what + " length")
	if err != nil {
		return "", err
	}
	b, err := in.read(int(n), what)
	return string(b), err
}

// peek returns the next byte without consuming it; ok is false at the end.
func (in *input) peek() (byte, bool, error) {
	b, err := in.br.Peek(1)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return 0, false, nil
		}
		return 0, false, fmt.Errorf("reading at byte offset %d: %w", in.off, err)
	}
	return b[0], true, nil
}

// skip moves n bytes forward.
func (in *input) skip(n int64, what string) error {
	if n < 0 {
		return in.errf(in.off, "negative length %d of %s", n, what)
	}
	return in.skipTo(in.off+n, what)
}

// skipTo moves to an absolute offset: forward on a pipe, anywhere in a file.
func (in *input) skipTo(target int64, what string) error {
	if target < 0 {
		return in.errf(in.off, "offset of %s overflows", what)
	}
	if in.seek != nil && (target < in.off || target-in.off > 1<<20) {
		if target > in.size {
			return in.short(in.off, target-in.off, in.size-in.off, what)
		}
		if _, err := in.seek.Seek(target, io.SeekStart); err != nil {
			return fmt.Errorf("seeking to byte offset %d: %w", target, err)
		}
		in.br.Reset(in.raw)
		in.off = target
		return nil
	}
	if target < in.off {
		return in.errf(in.off, "%s lies behind, at byte offset %d: that needs a seekable file, not a pipe", what, target)
	}
	start := in.off
	for in.off < target {
		step := min(target-in.off, 1<<30)
		got, err := in.br.Discard(int(step))
		in.off += int64(got)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return in.short(start, target-start, in.off-start, what)
			}
			return fmt.Errorf("reading %s at byte offset %d: %w", what, in.off, err)
		}
	}
	return nil
}

// rest reads everything from here to the end (at most limit bytes) and
// continues from that copy: a pipe's tail, for its vmdesc.
func (in *input) rest(limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(in.br, limit+1))
	if err != nil {
		return nil, fmt.Errorf("reading the stream's tail at byte offset %d: %w", in.off, err)
	}
	if int64(len(b)) > limit {
		return nil, in.errf(in.off, "the device state and vmdesc after this offset exceed %d bytes; read the stream from a file instead of a pipe", limit)
	}
	in.raw = &bytesReader{b: b}
	in.br = bufio.NewReader(in.raw)
	return b, nil
}

// tail returns the last n bytes of a seekable stream and their offset.
func (in *input) tail(n int64) ([]byte, int64, error) {
	start := max(in.size-n, in.off)
	b := make([]byte, in.size-start)
	if _, err := in.seek.ReadAt(b, start); err != nil && !errors.Is(err, io.EOF) {
		return nil, 0, fmt.Errorf("reading the stream's tail at byte offset %d: %w", start, err)
	}
	return b, start, nil
}

// readAt reads n bytes at an absolute offset of a seekable stream.
func (in *input) readAt(off int64, n int, what string) ([]byte, error) {
	b := make([]byte, n)
	got, err := in.seek.ReadAt(b, off)
	if got < n {
		if err == nil || errors.Is(err, io.EOF) {
			return nil, in.short(off, int64(n), int64(got), what)
		}
		return nil, fmt.Errorf("reading %s at byte offset %d: %w", what, off, err)
	}
	return b, nil
}

type bytesReader struct{ b []byte }

func (r *bytesReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}
