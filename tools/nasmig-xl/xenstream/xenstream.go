// Package xenstream reads the stream `xl migrate` and `xl save` write: xl's
// save-file header with the domain configuration, then the libxl v2
// stream, which carries the libxc v2 stream (docs/specs/libxl-migration-
// stream.pandoc and libxc-migration-stream.pandoc in Xen's source).  It is
// the one home of those formats' constants in this project.
//
// Splitter cuts a stream into pieces without losing or changing a byte:
// the libxc PAGE_DATA records (guest pages, which nasmig-xl may replace by
// disk references) and everything else as raw bytes.  Concatenating every
// piece's Bytes gives the input back, byte for byte.  Where the stream is
// not what this package understands (another version, big-endian, a
// record that contradicts its own length) the rest is passed on as raw
// bytes and Warning says why.
package xenstream

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
)

// xl's save-file header (tools/xl/xl.h): 32 bytes of magic, then four u32
// in the domain's byte order, then optional_data_len bytes of optional data
// (u32 config length, then the domain configuration as JSON).
const (
	XLMagic        = "Xen saved domain, xl format\n \x00 \r"
	XLHeaderSize   = 32 + 4*4
	XLByteOrder    = 0x01020304
	XLFlagJSON     = 1 << 0
	XLFlagStreamV2 = 1 << 1
	maxOptional    = 16 << 20
)

// libxl v2 stream: 16-byte big-endian header, then 8-byte aligned records.
const (
	LibxlIdent         = 0x4c6962786c466d74 // "LibxlFmt"
	LibxlVersion       = 2
	LibxlHeaderSize    = 16
	LibxlEnd           = 0
	LibxlLibxcContext  = 1
	LibxlEmulatorXS    = 2
	LibxlEmulatorCtx   = 3
	LibxlCheckpointEnd = 4
)

// libxc v2 stream (image header version 3): 24-byte image header
// (big-endian), 16-byte domain header, then 8-byte aligned records.
const (
	LibxcMarker        = 0xffffffffffffffff
	LibxcID            = 0x58454e46 // "XENF"
	LibxcVersion       = 3
	LibxcImageHdrSize  = 24
	LibxcDomainHdrSize = 16
	LibxcEnd           = 0
	LibxcPageData      = 1
	LibxcCheckpoint    = 0x0e
	RecordHeaderSize   = 8
	PageShift          = 12
	PageSize           = 1 << PageShift
	// MaxPagesPerRecord bounds PAGE_DATA records (libxc sends at most
	// 1024 pages per batch); a larger count is not split out.
	MaxPagesPerRecord = 4096
)

// LibxlRecordName and LibxcRecordName name record types (as the specs do).
func LibxlRecordName(t uint32) string {
	if n, ok := map[uint32]string{LibxlEnd: "END", LibxlLibxcContext: "LIBXC_CONTEXT", LibxlEmulatorXS: "EMULATOR_XENSTORE_DATA",
		LibxlEmulatorCtx: "EMULATOR_CONTEXT", LibxlCheckpointEnd: "CHECKPOINT_END", 5: "CHECKPOINT_STATE"}[t]; ok {
		return n
	}
	return fmt.Sprintf("%#x", t)
}

var libxcNames = []string{"END", "PAGE_DATA", "X86_PV_INFO", "X86_PV_P2M_FRAMES", "X86_PV_VCPU_BASIC", "X86_PV_VCPU_EXTENDED",
	"X86_PV_VCPU_XSAVE", "SHARED_INFO", "X86_TSC_INFO", "HVM_CONTEXT", "HVM_PARAMS", "TOOLSTACK", "X86_PV_VCPU_MSRS", "VERIFY",
	"CHECKPOINT", "CHECKPOINT_DIRTY_PFN_LIST", "STATIC_DATA_END", "X86_CPUID_POLICY", "X86_MSR_POLICY"}

func LibxcRecordName(t uint32) string {
	if int(t) < len(libxcNames) {
		return libxcNames[t]
	}
	return fmt.Sprintf("%#x", t)
}

// Page types in bits 63-60 of a PAGE_DATA pfn; the last three carry no data.
const (
	PfnTypeShift  = 60
	PfnMask       = 1<<52 - 1
	PfnTypeBroken = 0xd
	PfnTypeXalloc = 0xe
	PfnTypeXtab   = 0xf
)

// HasData reports whether a PAGE_DATA pfn entry carries a page.
func HasData(pfnEntry uint64) bool { return pfnEntry>>PfnTypeShift < PfnTypeBroken }

// PageData is one libxc PAGE_DATA record.
type PageData struct {
	// Head is the record's bytes before the pages: record header, count,
	// reserved word and the pfn array, exactly as read.
	Head []byte
	// PFNs are the entries of the pfn array (type in the top 4 bits).
	PFNs []uint64
	// Pages holds the data-carrying pages, PageSize bytes each, in the
	// order of their entries in PFNs.
	Pages []byte
}

// NPages is the number of pages the record carries.
func (p *PageData) NPages() int { return len(p.Pages) / PageSize }

// Page returns the i-th carried page.
func (p *PageData) Page(i int) []byte { return p.Pages[i*PageSize : (i+1)*PageSize] }

// Piece is what Splitter.Next returns: raw bytes, or a PAGE_DATA record.
type Piece struct {
	Raw   []byte
	Pages *PageData
}

type phase int

const (
	phXLHeader phase = iota
	phLibxlHeader
	phLibxlRecord
	phLibxcHeaders
	phLibxcRecord
	phTail // after libxl's END, or a stream not understood: raw to EOF
)

const rawChunk = 1 << 20

// Splitter cuts a stream into Pieces.  The slices of a Piece stay valid
// until the next call of Next.
type Splitter struct {
	r    *bufio.Reader
	ph   phase
	skip int64 // raw bytes of the current record still to pass on
	buf  []byte
	hdr  []byte
	page PageData
	// Warning is set once the stream is passed on raw because it was not
	// understood (empty: it was).
	Warning string
	// Config is the domain configuration from xl's header (JSON), if any.
	Config []byte
	// Domain is the libxc domain type (1 x86 PV, 2 x86 HVM; 0 not seen).
	Domain uint32
	// Counts of what went through.
	Records, PageRecords int
	// LibxlRecords and LibxcRecords count the records of each type.
	LibxlRecords, LibxcRecords map[uint32]int
	// Tail counts the bytes after libxl's END (xl's messages), or after
	// the point where the stream was not understood.
	Tail int64
}

// NewSplitter reads the stream from r.
func NewSplitter(r io.Reader) *Splitter {
	return &Splitter{r: bufio.NewReaderSize(r, 1<<20), LibxlRecords: map[uint32]int{}, LibxcRecords: map[uint32]int{}}
}

func (s *Splitter) giveUp(why string, raw []byte) (Piece, error) {
	if s.Warning == "" {
		s.Warning = why
	}
	s.ph = phTail
	return Piece{Raw: raw}, nil
}

// readN reads exactly n bytes into s.buf (reused).  A short read is an
// error wrapping io.ErrUnexpectedEOF, or io.EOF when nothing was read.
func (s *Splitter) readN(n int) ([]byte, error) {
	if cap(s.buf) < n {
		s.buf = make([]byte, n)
	}
	b := s.buf[:n]
	k, err := io.ReadFull(s.r, b)
	if err != nil {
		return b[:k], err
	}
	return b, nil
}

// readSome reads what is available now, at most n bytes and at least one
// (or an error).
func (s *Splitter) readSome(n int) ([]byte, error) {
	if cap(s.buf) < n {
		s.buf = make([]byte, n)
	}
	k, err := s.r.Read(s.buf[:n])
	return s.buf[:k], err
}

// Next returns the next piece, or io.EOF at the end of the stream.  A
// stream cut short inside a header or record returns the bytes read so far
// as a raw piece first, then an error wrapping io.ErrUnexpectedEOF.
func (s *Splitter) Next() (Piece, error) {
	if s.skip > 0 {
		b, err := s.readN(int(min(s.skip, rawChunk)))
		s.skip -= int64(len(b))
		if len(b) > 0 {
			return Piece{Raw: b}, nil
		}
		return Piece{}, fmt.Errorf("xen stream cut short inside a record: %w (%v)", io.ErrUnexpectedEOF, err)
	}
	switch s.ph {
	case phXLHeader:
		return s.xlHeader()
	case phLibxlHeader:
		return s.fixedHeader(LibxlHeaderSize, func(b []byte) string {
			if binary.BigEndian.Uint64(b) != LibxlIdent {
				return "no libxl stream after xl's header"
			}
			if v := binary.BigEndian.Uint32(b[8:]); v != LibxlVersion {
				return fmt.Sprintf("libxl stream version %d (understood: %d)", v, LibxlVersion)
			}
			if binary.BigEndian.Uint32(b[12:])&1 != 0 {
				return "big-endian libxl stream"
			}
			s.ph = phLibxlRecord
			return ""
		})
	case phLibxcHeaders:
		return s.fixedHeader(LibxcImageHdrSize+LibxcDomainHdrSize, func(b []byte) string {
			if binary.BigEndian.Uint64(b) != LibxcMarker || binary.BigEndian.Uint32(b[8:]) != LibxcID {
				return "no libxc image header where libxl announced one"
			}
			if v := binary.BigEndian.Uint32(b[12:]); v != LibxcVersion {
				return fmt.Sprintf("libxc stream version %d (understood: %d)", v, LibxcVersion)
			}
			if binary.BigEndian.Uint16(b[16:])&1 != 0 {
				return "big-endian libxc stream"
			}
			d := b[LibxcImageHdrSize:]
			s.Domain = binary.LittleEndian.Uint32(d)
			if shift := binary.LittleEndian.Uint16(d[4:]); shift != PageShift {
				return fmt.Sprintf("guest page shift %d (understood: %d)", shift, PageShift)
			}
			s.ph = phLibxcRecord
			return ""
		})
	case phLibxlRecord, phLibxcRecord:
		return s.record()
	default:
		// xl's messages after the stream are a dialogue (the receiver's
		// report, then the sender's go-ahead): pass on what is there now,
		// never wait for more.
		b, err := s.readSome(rawChunk)
		s.Tail += int64(len(b))
		if len(b) > 0 {
			return Piece{Raw: b}, nil
		}
		if err == io.ErrUnexpectedEOF {
			err = io.EOF
		}
		return Piece{}, err
	}
}

func (s *Splitter) short(err error) error {
	if err == io.EOF {
		return io.EOF
	}
	return fmt.Errorf("xen stream cut short: %w", io.ErrUnexpectedEOF)
}

// readHeader reads a header of n bytes.  Cut short, it ends the parse
// (ok false): the bytes read go on raw, or the end is returned.
func (s *Splitter) readHeader(n int) (b []byte, pc Piece, err error, ok bool) {
	b, err = s.readN(n)
	switch {
	case err == nil:
		return b, Piece{}, nil, true
	case len(b) > 0:
		s.ph = phTail
		return nil, Piece{Raw: b}, nil, false
	}
	return nil, Piece{}, s.short(err), false
}

func (s *Splitter) fixedHeader(n int, check func([]byte) string) (Piece, error) {
	b, pc, err, ok := s.readHeader(n)
	if !ok {
		return pc, err
	}
	if why := check(b); why != "" {
		return s.giveUp(why, b)
	}
	return Piece{Raw: b}, nil
}

func (s *Splitter) xlHeader() (Piece, error) {
	b, pc, err, ok := s.readHeader(XLHeaderSize)
	if !ok {
		return pc, err
	}
	if string(b[:32]) != XLMagic {
		return s.giveUp("not an xl stream (no xl save-file magic)", b)
	}
	if binary.LittleEndian.Uint32(b[32:]) != XLByteOrder {
		return s.giveUp("xl header not little-endian", b)
	}
	mandatory := binary.LittleEndian.Uint32(b[36:])
	optLen := binary.LittleEndian.Uint32(b[44:])
	if mandatory&^(XLFlagJSON|XLFlagStreamV2) != 0 || mandatory&XLFlagStreamV2 == 0 {
		return s.giveUp(fmt.Sprintf("xl mandatory flags %#x (understood: v2 stream, JSON)", mandatory), b)
	}
	if optLen > maxOptional {
		return s.giveUp(fmt.Sprintf("xl optional data of %d bytes", optLen), b)
	}
	head := append([]byte(nil), b...)
	opt, err := s.readN(int(optLen))
	head = append(head, opt...)
	if err != nil {
		s.ph = phTail
		return Piece{Raw: head}, nil
	}
	if mandatory&XLFlagJSON != 0 && len(opt) >= 4 {
		if n := binary.LittleEndian.Uint32(opt); int64(n) <= int64(len(opt)-4) {
			s.Config = append([]byte(nil), opt[4:4+n]...)
		}
	}
	s.ph = phLibxlHeader
	return Piece{Raw: head}, nil
}

func (s *Splitter) record() (Piece, error) {
	hdr, pc, err, ok := s.readHeader(RecordHeaderSize)
	if !ok {
		return pc, err
	}
	typ := binary.LittleEndian.Uint32(hdr)
	length := binary.LittleEndian.Uint32(hdr[4:])
	padded := (int64(length) + 7) &^ 7
	s.Records++
	inLibxc := s.ph == phLibxcRecord
	if inLibxc {
		s.LibxcRecords[typ]++
	} else {
		s.LibxlRecords[typ]++
	}
	switch {
	case !inLibxc && typ == LibxlLibxcContext:
		s.ph = phLibxcHeaders
	case !inLibxc && typ == LibxlEnd:
		s.ph = phTail
	case inLibxc && typ == LibxcEnd:
		s.ph = phLibxlRecord
	case inLibxc && typ == LibxcPageData:
		return s.pageData(hdr, length, padded)
	}
	s.hdr = append(s.hdr[:0], hdr...)
	s.skip = padded
	return Piece{Raw: s.hdr}, nil
}

// pageData reads a PAGE_DATA record whose header is hdr.  A record whose
// length contradicts its pfn array means the stream is not what this
// package thinks it is: the rest goes on raw.
func (s *Splitter) pageData(hdr []byte, length uint32, padded int64) (Piece, error) {
	p := &s.page
	p.Head = append(p.Head[:0], hdr...)
	if length < 8 || padded != int64(length) {
		return s.giveUp(fmt.Sprintf("PAGE_DATA record of %d bytes", length), p.Head)
	}
	b, err := s.readN(8)
	p.Head = append(p.Head, b...)
	if err != nil {
		s.ph = phTail
		return Piece{Raw: p.Head}, nil
	}
	count := binary.LittleEndian.Uint32(b)
	if count == 0 || count > MaxPagesPerRecord || int64(length) < 8+8*int64(count) {
		return s.giveUp(fmt.Sprintf("PAGE_DATA record of %d bytes for %d pfns", length, count), p.Head)
	}
	b, err = s.readN(8 * int(count))
	p.Head = append(p.Head, b...)
	if err != nil {
		s.ph = phTail
		return Piece{Raw: p.Head}, nil
	}
	p.PFNs = p.PFNs[:0]
	n := 0
	for i := 0; i < int(count); i++ {
		e := binary.LittleEndian.Uint64(b[8*i:])
		p.PFNs = append(p.PFNs, e)
		if HasData(e) {
			n++
		}
	}
	if int64(length) != 8+8*int64(count)+int64(n)*PageSize {
		return s.giveUp(fmt.Sprintf("PAGE_DATA record of %d bytes for %d pfns with %d pages", length, count, n), p.Head)
	}
	if cap(p.Pages) < n*PageSize {
		p.Pages = make([]byte, n*PageSize)
	}
	p.Pages = p.Pages[:n*PageSize]
	if k, err := io.ReadFull(s.r, p.Pages); err != nil {
		s.ph = phTail
		return Piece{Raw: append(p.Head, p.Pages[:k]...)}, nil
	}
	s.PageRecords++
	return Piece{Pages: p}, nil
}

// Bytes returns the piece as it was in the stream.
func (pc Piece) Bytes() [][]byte {
	if pc.Pages != nil {
		return [][]byte{pc.Pages.Head, pc.Pages.Pages}
	}
	return [][]byte{pc.Raw}
}

// ConfigDisk is one disk of the domain configuration.
type ConfigDisk struct {
	Path    string `json:"pdev_path"`
	Vdev    string `json:"vdev"`
	Backend string `json:"backend"`
	Format  string `json:"format"`
}

// ConfigDisks returns the disks named in the domain configuration JSON
// that xl's header carries (xl writes it with its C string's NUL).
func ConfigDisks(config []byte) ([]ConfigDisk, error) {
	var c struct {
		Disks []ConfigDisk `json:"disks"`
	}
	if err := json.Unmarshal(bytes.TrimRight(config, "\x00"), &c); err != nil {
		return nil, fmt.Errorf("domain configuration: %w", err)
	}
	return c.Disks, nil
}

// CarriedPages returns how many pages follow a PAGE_DATA record's head
// (as PageData.Head holds it), checking the head's shape.
func CarriedPages(head []byte) (int, error) {
	if len(head) < RecordHeaderSize+8 || binary.LittleEndian.Uint32(head) != LibxcPageData {
		return 0, fmt.Errorf("not a PAGE_DATA head (%d bytes)", len(head))
	}
	count := int(binary.LittleEndian.Uint32(head[RecordHeaderSize:]))
	if count < 1 || count > MaxPagesPerRecord || len(head) != RecordHeaderSize+8+8*count {
		return 0, fmt.Errorf("PAGE_DATA head of %d bytes for %d pfns", len(head), count)
	}
	n := 0
	for i := 0; i < count; i++ {
		if HasData(binary.LittleEndian.Uint64(head[RecordHeaderSize+8+8*i:])) {
			n++
		}
	}
	if int64(binary.LittleEndian.Uint32(head[4:])) != int64(8+8*count+n*PageSize) {
		return 0, fmt.Errorf("PAGE_DATA length does not match its %d pages", n)
	}
	return n, nil
}
