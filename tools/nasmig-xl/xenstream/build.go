package xenstream

import "encoding/binary"

// Builder writes a stream in the formats this package reads, as xl,
// libxl and libxc write them (for tests and for tools that need a stream
// without a Xen host).  Each method appends to Bytes.
type Builder struct {
	Bytes []byte
}

// XLHeader appends xl's save-file header with config (JSON) as optional
// data, as save_domain_core_writeconfig writes it.
func (b *Builder) XLHeader(config []byte) {
	b.Bytes = append(b.Bytes, XLMagic...)
	flags := uint32(XLFlagStreamV2)
	if len(config) > 0 {
		flags |= XLFlagJSON
	}
	b.Bytes = binary.LittleEndian.AppendUint32(b.Bytes, XLByteOrder)
	b.Bytes = binary.LittleEndian.AppendUint32(b.Bytes, flags)
	b.Bytes = binary.LittleEndian.AppendUint32(b.Bytes, 0)
	b.Bytes = binary.LittleEndian.AppendUint32(b.Bytes, uint32(4+len(config)))
	b.Bytes = binary.LittleEndian.AppendUint32(b.Bytes, uint32(len(config)))
	b.Bytes = append(b.Bytes, config...)
}

// LibxlHeader appends the libxl v2 stream header.
func (b *Builder) LibxlHeader() {
	b.Bytes = binary.BigEndian.AppendUint64(b.Bytes, LibxlIdent)
	b.Bytes = binary.BigEndian.AppendUint32(b.Bytes, LibxlVersion)
	b.Bytes = binary.BigEndian.AppendUint32(b.Bytes, 0)
}

// Record appends a record (libxl and libxc records share the layout),
// padded to 8 bytes.
func (b *Builder) Record(typ uint32, body []byte) {
	b.Bytes = binary.LittleEndian.AppendUint32(b.Bytes, typ)
	b.Bytes = binary.LittleEndian.AppendUint32(b.Bytes, uint32(len(body)))
	b.Bytes = append(b.Bytes, body...)
	b.Bytes = append(b.Bytes, make([]byte, (8-len(body)%8)%8)...)
}

// LibxcHeaders appends libxc's image and domain headers (domainType 1 x86
// PV, 2 x86 HVM; Xen 4.17).
func (b *Builder) LibxcHeaders(domainType uint32) {
	b.Bytes = binary.BigEndian.AppendUint64(b.Bytes, LibxcMarker)
	b.Bytes = binary.BigEndian.AppendUint32(b.Bytes, LibxcID)
	b.Bytes = binary.BigEndian.AppendUint32(b.Bytes, LibxcVersion)
	b.Bytes = append(b.Bytes, 0, 0, 0, 0, 0, 0, 0, 0)
	b.Bytes = binary.LittleEndian.AppendUint32(b.Bytes, domainType)
	b.Bytes = binary.LittleEndian.AppendUint16(b.Bytes, PageShift)
	b.Bytes = append(b.Bytes, 0, 0)
	b.Bytes = binary.LittleEndian.AppendUint32(b.Bytes, 4)
	b.Bytes = binary.LittleEndian.AppendUint32(b.Bytes, 17)
}

// PageData appends a PAGE_DATA record: pfns are the entries (type in bits
// 63-60), pages the data of the entries that carry some, in order.
func (b *Builder) PageData(pfns []uint64, pages []byte) {
	body := binary.LittleEndian.AppendUint32(nil, uint32(len(pfns)))
	body = append(body, 0, 0, 0, 0)
	for _, p := range pfns {
		body = binary.LittleEndian.AppendUint64(body, p)
	}
	b.Record(LibxcPageData, append(body, pages...))
}
