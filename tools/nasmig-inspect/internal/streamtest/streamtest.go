// Package streamtest writes synthetic migration streams the way QEMU's
// savevm.c and ram.c do, for nasmig-inspect's tests: the decoder's tests
// must not use the decoder to build their input.
package streamtest

import (
	"encoding/binary"
	"encoding/json"

	"nasmig/cshim"
	"nasmig/plugin/wire"
	"nasmig/tools/nasmig-inspect/qemufmt"
)

// Enc accumulates a stream in B.  Its methods write what their names say,
// in the stream's byte order (big-endian).
type Enc struct{ B []byte }

func (e *Enc) U8(v uint8)    { e.B = append(e.B, v) }
func (e *Enc) Be16(v uint16) { e.B = binary.BigEndian.AppendUint16(e.B, v) }
func (e *Enc) Be32(v uint32) { e.B = binary.BigEndian.AppendUint32(e.B, v) }
func (e *Enc) Be64(v uint64) { e.B = binary.BigEndian.AppendUint64(e.B, v) }
func (e *Enc) Str(s string)  { e.U8(uint8(len(s))); e.B = append(e.B, s...) }
func (e *Enc) Raw(b []byte)  { e.B = append(e.B, b...) }
func (e *Enc) Off() int64    { return int64(len(e.B)) }

// Header writes the file magic and version.
func (e *Enc) Header() {
	e.Be32(qemufmt.FileMagic)
	e.Be32(qemufmt.FileVersion)
}

// Config writes the configuration section with the capabilities subsection.
func (e *Enc) Config(machine string, caps ...string) {
	e.U8(qemufmt.VMConfiguration)
	e.Be32(uint32(len(machine)))
	e.Raw([]byte(machine))
	if len(caps) > 0 {
		e.U8(qemufmt.VMSubsection)
		e.Str(qemufmt.ConfigSubCapabilities)
		e.Be32(1)
		e.Be32(uint32(len(caps)))
		for _, c := range caps {
			e.Str(c)
		}
	}
	e.U8(qemufmt.VMSubsection)
	e.Str(qemufmt.ConfigSubUUID)
	e.Be32(1)
	e.Raw(make([]byte, 16))
}

// Start writes a START or FULL section header.
func (e *Enc) Start(typ uint8, id uint32, name string, inst, ver uint32) {
	e.U8(typ)
	e.Be32(id)
	e.Str(name)
	e.Be32(inst)
	e.Be32(ver)
}

// Part writes a PART or END section header.
func (e *Enc) Part(typ uint8, id uint32) { e.U8(typ); e.Be32(id) }

func (e *Enc) Footer(id uint32) { e.U8(qemufmt.VMSectionFooter); e.Be32(id) }

// Page writes a page header; block "" continues the previous block.
func (e *Enc) Page(off, flags uint64, block string) {
	if block == "" {
		flags |= qemufmt.RAMFlagContinue
	}
	e.Be64(off | flags)
	if block != "" {
		e.Str(block)
	}
}

func (e *Enc) Normal(off uint64, block string) {
	e.Page(off, qemufmt.RAMFlagPage, block)
	e.Raw(make([]byte, qemufmt.TargetPageSize))
}

func (e *Enc) Zero(off uint64, block string) {
	e.Page(off, qemufmt.RAMFlagZero, block)
	e.U8(0)
}

func (e *Enc) Xbzrle(off uint64, block string, n int) {
	e.Page(off, qemufmt.RAMFlagXBZRLE, block)
	e.U8(qemufmt.EncodingFlagXBZRLE)
	e.Be16(uint16(n))
	e.Raw(make([]byte, n))
}

func (e *Enc) Ref(off uint64, block string, r wire.Ref) {
	e.Page(off, cshim.RAMSaveFlagRef, block)
	e.Raw(wire.EncodeRef(r))
}

func (e *Enc) Eos() { e.Be64(qemufmt.RAMFlagEOS) }

// Block is one entry of a MEM_SIZE list.
type Block struct {
	Name string
	Size uint64
}

func (e *Enc) MemSize(blocks []Block) {
	var total uint64
	for _, b := range blocks {
		total += b.Size
	}
	e.Be64(total | qemufmt.RAMFlagMemSize)
	for _, b := range blocks {
		e.Str(b.Name)
		e.Be64(b.Size)
	}
}

func (e *Enc) Setup(id uint32, s *wire.Setup) {
	b, err := wire.EncodeSetup(s)
	if err != nil {
		panic(err)
	}
	e.Start(qemufmt.VMSectionStart, id, cshim.SectionName, 0, cshim.SectionVersion)
	e.Be32(uint32(len(b)))
	e.Raw(b)
	e.Footer(id)
}

// Device is a device section and its vmdesc entry.
type Device struct {
	Name       string
	Inst, Ver  uint32
	FieldSizes []int64 // each field's bytes
	ArrayLen   int64   // the last field is a compressed array of this many
	Sub        string  // a subsection of 3 bytes, if set
}

func (dv Device) Payload() int64 {
	var n int64
	for i, s := range dv.FieldSizes {
		if i == len(dv.FieldSizes)-1 && dv.ArrayLen > 0 {
			s *= dv.ArrayLen
		}
		n += s
	}
	return n
}

func (e *Enc) Device(id uint32, dv Device) {
	e.Start(qemufmt.VMSectionFull, id, dv.Name, dv.Inst, dv.Ver)
	for i := range dv.Payload() {
		e.U8(uint8(i))
	}
	if dv.Sub != "" {
		e.U8(qemufmt.VMSubsection)
		e.Str(dv.Sub)
		e.Be32(1)
		e.Raw([]byte{1, 2, 3})
	}
	e.Footer(id)
}

// EofVMDesc writes EOF and the vmdesc JSON for devs.
func (e *Enc) EofVMDesc(devs []Device) {
	e.U8(qemufmt.VMEOF)
	type field struct {
		Name     string `json:"name"`
		Type     string `json:"type"`
		Size     int64  `json:"size"`
		ArrayLen int64  `json:"array_len,omitempty"`
	}
	type sub struct {
		VMSDName string  `json:"vmsd_name"`
		Version  int     `json:"version"`
		Fields   []field `json:"fields"`
	}
	type dev struct {
		Name        string  `json:"name"`
		InstanceID  uint32  `json:"instance_id"`
		VMSDName    string  `json:"vmsd_name"`
		Version     uint32  `json:"version"`
		Fields      []field `json:"fields"`
		Subsections []sub   `json:"subsections,omitempty"`
	}
	var out struct {
		PageSize int   `json:"page_size"`
		Devices  []dev `json:"devices"`
	}
	out.PageSize = qemufmt.TargetPageSize
	for _, dv := range devs {
		d := dev{Name: dv.Name, InstanceID: dv.Inst, VMSDName: dv.Name, Version: dv.Ver, Fields: []field{}}
		for i, s := range dv.FieldSizes {
			f := field{Name: "f", Type: "uint8", Size: s}
			if i == len(dv.FieldSizes)-1 {
				f.ArrayLen = dv.ArrayLen
			}
			d.Fields = append(d.Fields, f)
		}
		if dv.Sub != "" {
			d.Subsections = []sub{{VMSDName: dv.Sub, Version: 1, Fields: []field{{Name: "x", Type: "buffer", Size: 3}}}}
		}
		out.Devices = append(out.Devices, d)
	}
	js, _ := json.Marshal(out)
	e.U8(qemufmt.VMVMDescription)
	e.Be32(uint32(len(js)))
	e.Raw(js)
}
