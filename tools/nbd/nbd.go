// Package nbd is a minimal NBD client, shared by nasmig-inspect (verify
// reads referenced blocks from an export) and the test harness (a second
// client that changes a disk under a running guest).
package nbd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"
)

// The protocol (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md):
// fixed newstyle handshake, NBD_OPT_GO with a fallback to NBD_OPT_EXPORT_NAME,
// simple replies only, one request in flight.
//
// Handshake (server first):
//
//	server: "NBDMAGIC" "IHAVEOPT" u16 handshake-flags
//	client: u32 client-flags
//	client: "IHAVEOPT" u32 option u32 length data...         (NBD_OPT_GO)
//	server: u64 0x3e889045565a9 u32 option u32 type u32 length data...  (repeated until ACK)
//
// Transmission, all big-endian:
//
//	request: u32 0x25609513 u16 flags u16 type u64 cookie u64 offset u32 length [data]
//	reply:   u32 0x67446698 u32 error u64 cookie [data]
const (
	nbdMagic          = 0x4e42444d41474943 // "NBDMAGIC"
	nbdOptMagic       = 0x49484156454f5054 // "IHAVEOPT"
	nbdOptReplyMagic  = 0x0003e889045565a9
	nbdRequestMagic   = 0x25609513
	nbdSimpleReplyMag = 0x67446698

	nbdFlagFixedNewstyle = 1 << 0 // handshake flags (server) and client flags
	nbdFlagNoZeroes      = 1 << 1

	nbdOptExportName = 1
	nbdOptGo         = 7

	nbdRepAck       = 1
	nbdRepInfo      = 3
	nbdRepFlagError = 1 << 31
	nbdRepErrUnsup  = 1 | nbdRepFlagError

	nbdInfoExport = 0

	nbdTransFlagReadOnly  = 1 << 1
	nbdTransFlagSendFlush = 1 << 2

	nbdCmdRead  = 0
	nbdCmdWrite = 1
	nbdCmdDisc  = 2
	nbdCmdFlush = 3

	// MaxChunk bounds one request. QEMU's server accepts 32 MiB; 1 MiB
	// keeps the buffer small and is still far from latency-bound.
	MaxChunk = 1 << 20
	// nbdMaxOptReply bounds what the client believes about the length of an
	// option reply: a peer is not trusted to size our allocations.
	nbdMaxOptReply = 64 << 10
)

// Client is one connection to an NBD export. It is not safe for
// concurrent use.
type Client struct {
	conn   net.Conn
	export string
	size   int64
	flags  uint16 // transmission flags of the export
	cookie uint64

	// Timeout bounds each request (default 60 s).
	Timeout time.Duration
}

// Dial connects to network/addr ("unix" and a socket path, or "tcp" and
// host:port) and opens export. ctx bounds the connection and the handshake.
func Dial(ctx context.Context, network, addr, export string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("nbd connect %s: %w", addr, err)
	}
	return Handshake(ctx, conn, export)
}

// Handshake opens export on a connection the caller dialed (in another
// network namespace, say); the client owns conn from here on, and closes it
// on failure.
func Handshake(ctx context.Context, conn net.Conn, export string) (*Client, error) {
	c := &Client{conn: conn, export: export, Timeout: 60 * time.Second}
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	// Cancellation, not only the deadline, must interrupt a blocked read.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	err := c.handshake()
	if !stop() { // ctx ended: the deadline was forced into the past
		err = errors.Join(err, ctx.Err())
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("nbd handshake with %s, export %q: %w", conn.RemoteAddr(), export, err)
	}
	_ = conn.SetDeadline(time.Time{})
	return c, nil
}

func (c *Client) handshake() error {
	var greeting struct {
		Magic    uint64
		OptMagic uint64
		Flags    uint16
	}
	if err := binary.Read(c.conn, binary.BigEndian, &greeting); err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	if greeting.Magic != nbdMagic {
		return fmt.Errorf("bad magic %#x", greeting.Magic)
	}
	if greeting.OptMagic != nbdOptMagic {
		return fmt.Errorf("server does not speak newstyle (magic %#x)", greeting.OptMagic)
	}
	if greeting.Flags&nbdFlagFixedNewstyle == 0 {
		return errors.New("server does not speak fixed newstyle")
	}
	clientFlags := uint32(nbdFlagFixedNewstyle)
	noZeroes := greeting.Flags&nbdFlagNoZeroes != 0
	if noZeroes {
		clientFlags |= nbdFlagNoZeroes
	}
	if err := binary.Write(c.conn, binary.BigEndian, clientFlags); err != nil {
		return fmt.Errorf("send client flags: %w", err)
	}
	err := c.optGo()
	if errors.Is(err, errOptUnsupported) {
		return c.optExportName(noZeroes)
	}
	return err
}

var errOptUnsupported = errors.New("option not supported by the server")

func (c *Client) sendOption(option uint32, data []byte) error {
	header := make([]byte, 16, 16+len(data))
	binary.BigEndian.PutUint64(header[0:], nbdOptMagic)
	binary.BigEndian.PutUint32(header[8:], option)
	binary.BigEndian.PutUint32(header[12:], uint32(len(data)))
	if _, err := c.conn.Write(append(header, data...)); err != nil {
		return fmt.Errorf("send option %d: %w", option, err)
	}
	return nil
}

// optGo negotiates the export with NBD_OPT_GO, which reports errors with a
// message instead of closing the connection.
func (c *Client) optGo() error {
	data := make([]byte, 4+len(c.export)+2)
	binary.BigEndian.PutUint32(data, uint32(len(c.export)))
	copy(data[4:], c.export)
	// The trailing u16 0: no explicit info requests; NBD_INFO_EXPORT is sent anyway.
	if err := c.sendOption(nbdOptGo, data); err != nil {
		return err
	}
	haveExportInfo := false
	for {
		var header struct {
			Magic  uint64
			Option uint32
			Type   uint32
			Length uint32
		}
		if err := binary.Read(c.conn, binary.BigEndian, &header); err != nil {
			return fmt.Errorf("read option reply: %w", err)
		}
		if header.Magic != nbdOptReplyMagic {
			return fmt.Errorf("bad option reply magic %#x", header.Magic)
		}
		if header.Length > nbdMaxOptReply {
			return fmt.Errorf("option reply of %d bytes exceeds %d", header.Length, nbdMaxOptReply)
		}
		payload := make([]byte, header.Length)
		if _, err := io.ReadFull(c.conn, payload); err != nil {
			return fmt.Errorf("read option reply payload: %w", err)
		}
		switch {
		case header.Type == nbdRepErrUnsup:
			return errOptUnsupported
		case header.Type&nbdRepFlagError != 0:
			return fmt.Errorf("server refused export (reply type %#x): %s", header.Type, payload)
		case header.Type == nbdRepInfo:
			if len(payload) >= 12 && binary.BigEndian.Uint16(payload) == nbdInfoExport {
				c.size = int64(binary.BigEndian.Uint64(payload[2:]))
				c.flags = binary.BigEndian.Uint16(payload[10:])
				haveExportInfo = true
			}
		case header.Type == nbdRepAck:
			if !haveExportInfo {
				return errors.New("server acknowledged NBD_OPT_GO without export information")
			}
			return nil
		}
		// Other informational replies are allowed and carry nothing we use.
	}
}

// optExportName is the old way to pick an export: the server answers with
// the export's size and flags, or closes the connection.
func (c *Client) optExportName(noZeroes bool) error {
	if err := c.sendOption(nbdOptExportName, []byte(c.export)); err != nil {
		return err
	}
	var reply struct {
		Size  uint64
		Flags uint16
	}
	if err := binary.Read(c.conn, binary.BigEndian, &reply); err != nil {
		return fmt.Errorf("read NBD_OPT_EXPORT_NAME reply (unknown export?): %w", err)
	}
	if !noZeroes {
		if _, err := io.CopyN(io.Discard, c.conn, 124); err != nil {
			return fmt.Errorf("read NBD_OPT_EXPORT_NAME padding: %w", err)
		}
	}
	c.size = int64(reply.Size)
	c.flags = reply.Flags
	return nil
}

// Size is the export's size in bytes.
func (c *Client) Size() int64 { return c.size }

// ReadOnly says whether the server refuses writes to this export.
func (c *Client) ReadOnly() bool { return c.flags&nbdTransFlagReadOnly != 0 }

// request sends one command and reads its simple reply; for a read, the
// reply's data lands in readInto.
func (c *Client) request(cmd uint16, offset uint64, length uint32, writeData, readInto []byte) error {
	c.cookie++
	packet := make([]byte, 28, 28+len(writeData))
	binary.BigEndian.PutUint32(packet[0:], nbdRequestMagic)
	binary.BigEndian.PutUint16(packet[4:], 0) // command flags
	binary.BigEndian.PutUint16(packet[6:], cmd)
	binary.BigEndian.PutUint64(packet[8:], c.cookie)
	binary.BigEndian.PutUint64(packet[16:], offset)
	binary.BigEndian.PutUint32(packet[24:], length)
	packet = append(packet, writeData...)

	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	_ = c.conn.SetDeadline(time.Now().Add(timeout))
	defer c.conn.SetDeadline(time.Time{})
	if _, err := c.conn.Write(packet); err != nil {
		return fmt.Errorf("send request: %w", err)
	}
	if cmd == nbdCmdDisc {
		return nil // no reply: the server closes the connection
	}
	var reply [16]byte
	if _, err := io.ReadFull(c.conn, reply[:]); err != nil {
		return fmt.Errorf("read reply: %w", err)
	}
	if magic := binary.BigEndian.Uint32(reply[0:]); magic != nbdSimpleReplyMag {
		return fmt.Errorf("bad reply magic %#x (structured replies were not negotiated)", magic)
	}
	if cookie := binary.BigEndian.Uint64(reply[8:]); cookie != c.cookie {
		return fmt.Errorf("reply cookie %d, want %d", cookie, c.cookie)
	}
	if code := binary.BigEndian.Uint32(reply[4:]); code != 0 {
		return fmt.Errorf("server error: %w", syscall.Errno(code))
	}
	if readInto != nil {
		if _, err := io.ReadFull(c.conn, readInto); err != nil {
			return fmt.Errorf("read data: %w", err)
		}
	}
	return nil
}

func (c *Client) checkRange(op string, n int, off int64) error {
	if off < 0 || off+int64(n) > c.size {
		return fmt.Errorf("nbd %s of %d bytes at %d: outside the export (%d bytes)", op, n, off, c.size)
	}
	return nil
}

// ReadAt reads len(p) bytes at off (io.ReaderAt).
func (c *Client) ReadAt(p []byte, off int64) (int, error) {
	if err := c.checkRange("read", len(p), off); err != nil {
		return 0, err
	}
	done := 0
	for done < len(p) {
		chunk := min(len(p)-done, MaxChunk)
		if err := c.request(nbdCmdRead, uint64(off)+uint64(done), uint32(chunk), nil, p[done:done+chunk]); err != nil {
			return done, fmt.Errorf("nbd read of %d bytes at %d: %w", chunk, off+int64(done), err)
		}
		done += chunk
	}
	return done, nil
}

// WriteAt writes p at off (io.WriterAt). The data is durable only after Flush.
func (c *Client) WriteAt(p []byte, off int64) (int, error) {
	if c.ReadOnly() {
		return 0, fmt.Errorf("nbd write to export %q: export is read-only", c.export)
	}
	if err := c.checkRange("write", len(p), off); err != nil {
		return 0, err
	}
	done := 0
	for done < len(p) {
		chunk := min(len(p)-done, MaxChunk)
		if err := c.request(nbdCmdWrite, uint64(off)+uint64(done), uint32(chunk), p[done:done+chunk], nil); err != nil {
			return done, fmt.Errorf("nbd write of %d bytes at %d: %w", chunk, off+int64(done), err)
		}
		done += chunk
	}
	return done, nil
}

// Flush asks the server to make completed writes durable. Servers that do
// not advertise flush make every write durable already.
func (c *Client) Flush() error {
	if c.flags&nbdTransFlagSendFlush == 0 {
		return nil
	}
	if err := c.request(nbdCmdFlush, 0, 0, nil, nil); err != nil {
		return fmt.Errorf("nbd flush: %w", err)
	}
	return nil
}

// Close ends the session politely (NBD_CMD_DISC) and closes the connection.
func (c *Client) Close() error {
	discErr := c.request(nbdCmdDisc, 0, 0, nil, nil)
	closeErr := c.conn.Close()
	if err := errors.Join(discErr, closeErr); err != nil {
		return fmt.Errorf("nbd close: %w", err)
	}
	return nil
}
