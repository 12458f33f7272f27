// Package wire is the one definition of nasmig's migration-stream formats:
// the setup section and the disk-reference record.  QEMU, the library, the
// inspector and the tests all use it (QEMU through the constants of
// cshim/nasmig.h, which this package re-exports).
//
// Setup section ("nasmig" savevm section, version cshim.SectionVersion),
// big-endian:
//
//	+------+---------+-----------+-----------------+----------+-------+----------------+
//	| NSMG | u16 ver | u16 flags | 16 B migration  | 32 B key | u16 n | n disk entries |
//	|      |         |           | UUID            | seed     |       |                |
//	+------+---------+-----------+-----------------+----------+-------+----------------+
//	disk entry: u8 index | u64 size | u16 len | filename | u16 len | node name
//
// flags: cshim.SetupFlagHold (the source holds the switchover for the
// destination's approval); any other bit is refused.  The key seed is
// drawn for this one migration: it verifies this stream's references and
// nothing else (the tracking key of either side never leaves its process).
//
// Disk reference (after QEMU's page header with flag cshim.RAMSaveFlagRef):
//
//	u8 version | u8 disk index | be64 disk byte offset | 16 B page hash (two be64)
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/uuid"

	"nasmig/cshim"
)

// Magic opens the setup section.
const Magic = "NSMG"

// SetupVersion is the setup section's format version (the savevm section
// version QEMU checks is the same number).
const SetupVersion = cshim.SectionVersion

// MaxFilename caps a disk's filename and node name: QEMU's own limit
// (PATH_MAX, NUL included), the size of the library's name buffers.
const MaxFilename = cshim.MaxFilename - 1

// Sentinel errors, wrapped with detail.
var (
	ErrBadMagic   = errors.New("not a nasmig setup section (bad magic)")
	ErrVersion    = errors.New("unsupported nasmig setup version")
	ErrTruncated  = errors.New("nasmig record truncated")
	ErrTooLarge   = errors.New("nasmig record too large")
	ErrBadDisk    = errors.New("bad disk entry")
	ErrRefVersion = errors.New("unsupported disk reference version")
	ErrFlags      = errors.New("unsupported nasmig setup flags")
)

// Disk identifies one shared disk both sides can check.
type Disk struct {
	Index    uint8
	Size     uint64
	Filename string
	NodeName string
}

// KnownFlags are the setup flags this build understands.
const KnownFlags = cshim.SetupFlagHold | cshim.SetupFlagAfter

// Setup is the content of the setup section.
type Setup struct {
	Flags     uint16
	Migration uuid.UUID
	KeySeed   [32]byte
	Disks     []Disk
}

// EncodeSetup serialises s.
func EncodeSetup(s *Setup) ([]byte, error) {
	if len(s.Disks) > cshim.MaxDisks {
		return nil, fmt.Errorf("%w: %d disks, at most %d", ErrTooLarge, len(s.Disks), cshim.MaxDisks)
	}
	b := make([]byte, 0, 64+len(s.Disks)*64)
	b = append(b, Magic...)
	b = binary.BigEndian.AppendUint16(b, SetupVersion)
	if s.Flags&^KnownFlags != 0 {
		return nil, fmt.Errorf("%w: unknown flags %#x", ErrFlags, s.Flags&^KnownFlags)
	}
	b = binary.BigEndian.AppendUint16(b, s.Flags)
	b = append(b, s.Migration[:]...)
	b = append(b, s.KeySeed[:]...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(s.Disks)))
	for _, d := range s.Disks {
		if len(d.Filename) > MaxFilename || len(d.NodeName) > MaxFilename {
			return nil, fmt.Errorf("%w: disk %d name too long", ErrTooLarge, d.Index)
		}
		b = append(b, d.Index)
		b = binary.BigEndian.AppendUint64(b, d.Size)
		b = binary.BigEndian.AppendUint16(b, uint16(len(d.Filename)))
		b = append(b, d.Filename...)
		b = binary.BigEndian.AppendUint16(b, uint16(len(d.NodeName)))
		b = append(b, d.NodeName...)
	}
	if len(b) > cshim.SetupMaxBytes {
		return nil, fmt.Errorf("%w: %d bytes", ErrTooLarge, len(b))
	}
	return b, nil
}

type reader struct {
	b   []byte
	err error
}

func (r *reader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n > len(r.b) {
		r.err = ErrTruncated
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u16() uint16 {
	if v := r.take(2); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}

func (r *reader) u64() uint64 {
	if v := r.take(8); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

// DecodeSetup parses a setup section, rejecting anything malformed.
func DecodeSetup(b []byte) (*Setup, error) {
	if len(b) > cshim.SetupMaxBytes {
		return nil, fmt.Errorf("%w: %d bytes", ErrTooLarge, len(b))
	}
	r := &reader{b: b}
	if m := r.take(4); r.err == nil && string(m) != Magic {
		return nil, ErrBadMagic
	}
	if v := r.u16(); r.err == nil && v != SetupVersion {
		return nil, fmt.Errorf("%w %d (this build reads %d)", ErrVersion, v, SetupVersion)
	}
	s := &Setup{Flags: r.u16()}
	if r.err == nil && s.Flags&^KnownFlags != 0 {
		return nil, fmt.Errorf("%w: unknown flags %#x (this build knows %#x)", ErrFlags, s.Flags&^KnownFlags, KnownFlags)
	}
	copy(s.Migration[:], r.take(16))
	copy(s.KeySeed[:], r.take(32))
	n := int(r.u16())
	if n > cshim.MaxDisks {
		return nil, fmt.Errorf("%w: %d disks, at most %d", ErrTooLarge, n, cshim.MaxDisks)
	}
	seen := map[uint8]bool{}
	for i := 0; i < n && r.err == nil; i++ {
		var d Disk
		idx := r.take(1)
		d.Size = r.u64()
		d.Filename = string(r.take(int(r.u16())))
		d.NodeName = string(r.take(int(r.u16())))
		if r.err != nil {
			break
		}
		d.Index = idx[0]
		if len(d.Filename) > MaxFilename || len(d.NodeName) > MaxFilename {
			return nil, fmt.Errorf("%w: disk %d name too long", ErrTooLarge, d.Index)
		}
		if int(d.Index) >= cshim.MaxDisks || seen[d.Index] || d.Filename == "" {
			return nil, fmt.Errorf("%w %d (%q)", ErrBadDisk, d.Index, d.Filename)
		}
		seen[d.Index] = true
		s.Disks = append(s.Disks, d)
	}
	if r.err != nil {
		return nil, fmt.Errorf("setup section: %w", r.err)
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("setup section: %d trailing bytes", len(r.b))
	}
	return s, nil
}

// Ref is one decoded disk reference.
type Ref struct {
	Disk   uint8
	Offset uint64
	Hash   [2]uint64
}

// DecodeRef parses the cshim.RefWireSize bytes after a reference's page header.
func DecodeRef(b []byte) (Ref, error) {
	if len(b) < cshim.RefWireSize {
		return Ref{}, ErrTruncated
	}
	if b[0] != cshim.RefWireVersion {
		return Ref{}, fmt.Errorf("%w %d (this build reads %d)", ErrRefVersion, b[0], cshim.RefWireVersion)
	}
	r := Ref{Disk: b[1], Offset: binary.BigEndian.Uint64(b[2:])}
	r.Hash[0] = binary.BigEndian.Uint64(b[10:])
	r.Hash[1] = binary.BigEndian.Uint64(b[18:])
	if r.Offset%cshim.PageSize != 0 {
		return r, fmt.Errorf("disk reference to unaligned offset %#x", r.Offset)
	}
	return r, nil
}

// EncodeRef is DecodeRef's inverse (the C saver writes the same bytes).
func EncodeRef(r Ref) []byte {
	b := make([]byte, 0, cshim.RefWireSize)
	b = append(b, cshim.RefWireVersion, r.Disk)
	b = binary.BigEndian.AppendUint64(b, r.Offset)
	b = binary.BigEndian.AppendUint64(b, r.Hash[0])
	return binary.BigEndian.AppendUint64(b, r.Hash[1])
}

// Return-path messages of a destination library to its source library
// (carried by QEMU's MIG_RP_MSG_NASMIG; QEMU itself reads CAUGHT_UP and
// cshim.RPError):
//
//	CAUGHT_UP: u8 kind | be64 references the fetch has caught up with
//	RESEND:    u8 kind | u8 source disk | be64 disk offset | be64 RAM offset | RAMBlock idstr
//	DISK_OFF:  u8 kind | u8 source disk
//	SEND_FULL: u8 kind | u8 source disk | be64 disk offset | be32 blocks

// SourceMsg is one decoded message for the source library.
type SourceMsg struct {
	Kind       uint8
	Disk       uint8
	DiskOffset uint64 // RESEND, SEND_FULL (the first block)
	RAMOffset  uint64 // RESEND
	RAMBlock   string // RESEND
	Blocks     uint32 // SEND_FULL
}

// ErrSourceMsg is wrapped by every malformed return-path message.
var ErrSourceMsg = errors.New("bad nasmig return-path message")

// EncodeResend asks the source to send a page in full.
func EncodeResend(disk uint8, diskOffset, ramOffset uint64, ramBlock string) ([]byte, error) {
	if 18+len(ramBlock) > cshim.RPMaxBytes || ramBlock == "" {
		return nil, fmt.Errorf("%w: RAM block name of %d bytes", ErrSourceMsg, len(ramBlock))
	}
	b := []byte{cshim.RPResend, disk}
	b = binary.BigEndian.AppendUint64(b, diskOffset)
	b = binary.BigEndian.AppendUint64(b, ramOffset)
	return append(b, ramBlock...), nil
}

// EncodeCaughtUp tells the source that the fetch has caught up with the
// first refs references of this migration.
func EncodeCaughtUp(refs uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{cshim.RPCaughtUp}, refs)
}

// DecodeCaughtUp reads a CAUGHT_UP message.
func DecodeCaughtUp(b []byte) (uint64, error) {
	if len(b) != 9 || b[0] != cshim.RPCaughtUp {
		return 0, fmt.Errorf("%w: CAUGHT_UP of %d bytes", ErrSourceMsg, len(b))
	}
	return binary.BigEndian.Uint64(b[1:]), nil
}

// EncodeDiskOff tells the source that this side cannot read a disk.
func EncodeDiskOff(disk uint8) []byte { return []byte{cshim.RPDiskOff, disk} }

// EncodeSendFull asks the source to send in full the pages mapped to
// blocks blocks of disk from diskOffset on.
func EncodeSendFull(disk uint8, diskOffset uint64, blocks uint32) []byte {
	b := []byte{cshim.RPSendFull, disk}
	b = binary.BigEndian.AppendUint64(b, diskOffset)
	return binary.BigEndian.AppendUint32(b, blocks)
}

// DecodeSourceMsg parses a RESEND, DISK_OFF or SEND_FULL message.
func DecodeSourceMsg(b []byte) (SourceMsg, error) {
	if len(b) < 2 || len(b) > cshim.RPMaxBytes {
		return SourceMsg{}, fmt.Errorf("%w: %d bytes", ErrSourceMsg, len(b))
	}
	m := SourceMsg{Kind: b[0], Disk: b[1]}
	if int(m.Disk) >= cshim.MaxDisks {
		return m, fmt.Errorf("%w: disk %d", ErrSourceMsg, m.Disk)
	}
	switch m.Kind {
	case cshim.RPDiskOff:
		if len(b) != 2 {
			return m, fmt.Errorf("%w: DISK_OFF of %d bytes", ErrSourceMsg, len(b))
		}
	case cshim.RPResend:
		if len(b) < 19 {
			return m, fmt.Errorf("%w: RESEND of %d bytes", ErrSourceMsg, len(b))
		}
		m.DiskOffset = binary.BigEndian.Uint64(b[2:])
		m.RAMOffset = binary.BigEndian.Uint64(b[10:])
		m.RAMBlock = string(b[18:])
		if m.DiskOffset%cshim.PageSize != 0 || m.RAMOffset%cshim.PageSize != 0 {
			return m, fmt.Errorf("%w: unaligned RESEND %#x/%#x", ErrSourceMsg, m.DiskOffset, m.RAMOffset)
		}
	case cshim.RPSendFull:
		if len(b) != 14 {
			return m, fmt.Errorf("%w: SEND_FULL of %d bytes", ErrSourceMsg, len(b))
		}
		m.DiskOffset = binary.BigEndian.Uint64(b[2:])
		m.Blocks = binary.BigEndian.Uint32(b[10:])
		if m.DiskOffset%cshim.PageSize != 0 {
			return m, fmt.Errorf("%w: unaligned SEND_FULL %#x", ErrSourceMsg, m.DiskOffset)
		}
	default:
		return m, fmt.Errorf("%w: kind %d", ErrSourceMsg, m.Kind)
	}
	return m, nil
}
