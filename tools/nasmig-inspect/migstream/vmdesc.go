package migstream

import (
	"encoding/json"
	"fmt"
	"math"

	"nasmig/tools/nasmig-inspect/qemufmt"
)

// vmdesc is the JSON QEMU appends after QEMU_VM_EOF: for every device
// section, the size of each field as written (savevm.c, vmstate.c).
type vmdesc struct {
	offset  int64      // of its QEMU_VM_VMDESCRIPTION byte
	Devices []descNode `json:"devices"`
}

type descNode struct {
	Name        string     `json:"name"`
	InstanceID  *int64     `json:"instance_id"`
	VMSDName    string     `json:"vmsd_name"`
	Size        *int64     `json:"size"`
	ArrayLen    *int64     `json:"array_len"`
	Fields      []descNode `json:"fields"`
	Subsections []descNode `json:"subsections"`
}

// payload is the bytes a vmstate object (a device or a subsection) wrote:
// its fields (a compressed array is array_len times its first element),
// then each subsection with its header (marker, name, be32 version).
func (n *descNode) payload(depth int) (int64, error) {
	if depth > 64 {
		return 0, fmt.Errorf("vmdesc nested too deep")
	}
	var sum int64
	add := func(v int64) error {
		if v < 0 || sum > math.MaxInt64-v {
			return fmt.Errorf("vmdesc size overflows")
		}
		sum += v
		return nil
	}
	for _, f := range n.Fields {
		if f.Size == nil {
			return 0, fmt.Errorf("vmdesc field %q has no size", f.Name)
		}
		cnt := int64(1)
		if f.ArrayLen != nil {
			cnt = *f.ArrayLen
		}
		if cnt < 0 || *f.Size < 0 || (cnt > 0 && *f.Size > math.MaxInt64/cnt) {
			return 0, fmt.Errorf("vmdesc field %q: size %d x %d out of range", f.Name, *f.Size, cnt)
		}
		if err := add(*f.Size * cnt); err != nil {
			return 0, err
		}
	}
	for _, s := range n.Subsections {
		if s.VMSDName == "" || len(s.VMSDName) > 255 {
			return 0, fmt.Errorf("vmdesc subsection without a valid vmsd_name")
		}
		p, err := s.payload(depth + 1)
		if err != nil {
			return 0, fmt.Errorf("subsection %s: %w", s.VMSDName, err)
		}
		if err := add(1 + 1 + int64(len(s.VMSDName)) + 4); err != nil {
			return 0, err
		}
		if err := add(p); err != nil {
			return 0, err
		}
	}
	return sum, nil
}

// findVMDesc looks for the vmdesc at the end of tail (which starts at
// stream offset base): QEMU_VM_EOF, QEMU_VM_VMDESCRIPTION, be32 n, then n
// bytes of JSON that end the stream.  Decoding later checks that the
// device sections end exactly at that QEMU_VM_EOF.
func findVMDesc(tail []byte, base int64) (*vmdesc, bool) {
	for p := len(tail) - 5; p >= 1; p-- {
		if tail[p] != qemufmt.VMVMDescription || tail[p-1] != qemufmt.VMEOF ||
			int64(be32(tail[p+1:])) != int64(len(tail)-p-5) {
			continue
		}
		js := tail[p+5:]
		var v vmdesc
		if !json.Valid(js) || json.Unmarshal(js, &v) != nil {
			continue
		}
		v.offset = base + int64(p)
		return &v, true
	}
	return nil, false
}

// device delimits a device section (its header read) with the vmdesc; ok
// is false when the stream has none and decoding stops here.
func (d *decoder) device(off int64, id uint32, se section) (ok bool, err error) {
	in := d.in
	if d.desc == nil {
		var tail []byte
		base := in.off
		if in.seek != nil {
			tail, base, err = in.tail(vmdescSearch)
		} else {
			tail, err = in.rest(d.opt.MaxTail)
		}
		if err != nil {
			return false, err
		}
		end := base + int64(len(tail))
		desc, found := findVMDesc(tail, base)
		if !found {
			d.rep.Stopped = fmt.Sprintf("device state begins at byte offset %d (section %q, instance %d, id %d): "+
				"the stream carries no vmdesc JSON at its end (it is truncated, or the source ran with suppress-vmdesc=on), "+
				"so device sections cannot be delimited without their vmstate "+
				"descriptions; decoding stopped there (that is where the switchover's device state begins)",
				off, se.name, se.instance, id)
			return false, in.skipTo(end, "the rest of the stream")
		}
		d.desc = desc
	}
	if d.descIdx >= len(d.desc.Devices) {
		return false, in.errf(off, "device section %q (instance %d) has no entry in the vmdesc (it lists %d devices)", se.name, se.instance, len(d.desc.Devices))
	}
	n := &d.desc.Devices[d.descIdx]
	d.descIdx++
	if n.Name != se.name || n.InstanceID == nil || *n.InstanceID != int64(se.instance) {
		inst := int64(-1)
		if n.InstanceID != nil {
			inst = *n.InstanceID
		}
		return false, in.errf(off, "device section %q instance %d, but vmdesc entry %d is %q instance %d", se.name, se.instance, d.descIdx-1, n.Name, inst)
	}
	size, err := n.payload(0)
	if err != nil {
		return false, in.errf(off, "device section %q: %v", se.name, err)
	}
	if lim := d.desc.offset - in.off; size > lim {
		return false, in.errf(off, "device section %q: the vmdesc gives %d bytes of state, but only %d are left before the vmdesc", se.name, size, lim)
	}
	return true, in.skip(size, "device state of "+se.name)
}
