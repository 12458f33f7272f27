package migstream

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/bits"
	"sort"

	"nasmig/cshim"
	"nasmig/plugin/wire"
	"nasmig/tools/nasmig-inspect/qemufmt"
)

// PageKind is the kind of a RAM page record.
type PageKind int

const (
	PageNormal PageKind = iota
	PageZero
	PageXBZRLE
	PageRef
)

// Page is one page record of the RAM section, handed to Options.OnPage.
type Page struct {
	Kind         PageKind
	Block        string
	Offset       uint64 // in the RAM block
	StreamOffset int64  // of the record's header
	Ref          wire.Ref
}

// Options tune Decode.
type Options struct {
	// OnPage sees every page record in stream order; an error stops Decode.
	OnPage func(Page) error
	// MaxTail caps what a pipe's tail (device state and vmdesc) may take
	// in memory; 0 means 1 GiB.
	MaxTail int64
}

// Limits on lengths read from the stream, so that a corrupt length fails
// with a message instead of an allocation.
const (
	maxVMDesc    = 64 << 20
	maxBitmap    = 256 << 20
	maxCaps      = 1024
	maxMachine   = 4096
	vmdescSearch = 64 << 20
)

const pageMask = qemufmt.TargetPageSize - 1

type section struct {
	name     string
	instance uint32
	version  uint32
}

type decoder struct {
	in   *input
	opt  Options
	rep  *Report
	secs map[uint32]section
	// RAM
	blocks    map[string]*RAMBlock
	last      *RAMBlock
	disks     map[uint8]*DiskRefs
	footers   bool // the stream has section footers
	ignShared bool
	mapped    bool
	postcopy  *[2]uint64 // POSTCOPY_ADVISE: page size summary, target page size
	// device state
	desc    *vmdesc
	descIdx int
}

// Decode reads a whole stream.  The report is returned also with an error:
// it holds what was decoded before the failure.
func Decode(r io.Reader, opt Options) (*Report, error) {
	if opt.MaxTail == 0 {
		opt.MaxTail = 1 << 30
	}
	d := &decoder{in: newInput(r), opt: opt, secs: map[uint32]section{},
		blocks: map[string]*RAMBlock{}, disks: map[uint8]*DiskRefs{}}
	d.rep = &Report{Schema: Schema, RAMEndOffset: -1, DeviceStateOffset: -1, EOFOffset: -1, VMDescOffset: -1,
		Sections: []Section{}, RAMBlocks: []*RAMBlock{}, RefsByDisk: []*DiskRefs{}}
	err := d.run()
	d.rep.TotalBytes = d.in.off
	for _, idx := range sortedKeys(d.disks) {
		d.rep.RefsByDisk = append(d.rep.RefsByDisk, d.disks[idx])
	}
	return d.rep, err
}

func sortedKeys[V any](m map[uint8]V) []uint8 {
	k := make([]uint8, 0, len(m))
	for i := range m {
		k = append(k, i)
	}
	sort.Slice(k, func(a, b int) bool { return k[a] < k[b] })
	return k
}

func (d *decoder) run() error {
	in := d.in
	magic, err := in.be32("file magic")
	if err != nil {
		return err
	}
	if magic != qemufmt.FileMagic {
		return in.errf(0, "expected QEMU's file magic %#x (\"QEVM\"), found %#x: not a migration stream", qemufmt.FileMagic, magic)
	}
	d.rep.Magic = "QEVM"
	v, err := in.be32("file version")
	if err != nil {
		return err
	}
	d.rep.Version = v
	if v != qemufmt.FileVersion {
		return in.errf(4, "file version %d; this tool reads version %d", v, qemufmt.FileVersion)
	}
	for {
		off := in.off
		t, err := in.u8("section type")
		if err != nil {
			return err
		}
		switch t {
		case qemufmt.VMConfiguration:
			if err := d.config(); err != nil {
				return err
			}
		case qemufmt.VMCommand:
			if err := d.command(off); err != nil {
				return err
			}
		case qemufmt.VMSectionStart, qemufmt.VMSectionFull, qemufmt.VMSectionPart, qemufmt.VMSectionEnd:
			stop, err := d.section(off, t)
			if err != nil || stop {
				return err
			}
		case qemufmt.VMEOF:
			d.rep.EOFOffset = off
			return d.end()
		default:
			return in.errf(off, "expected a section type (0x%02x-0x%02x), found 0x%02x", qemufmt.VMEOF, qemufmt.VMCommand, t)
		}
	}
}

var typeNames = map[uint8]string{qemufmt.VMSectionStart: "start", qemufmt.VMSectionPart: "part",
	qemufmt.VMSectionEnd: "end", qemufmt.VMSectionFull: "full"}

// section decodes one START/PART/END/FULL section; stop ends decoding at
// device state that cannot be delimited.
func (d *decoder) section(off int64, t uint8) (stop bool, err error) {
	in := d.in
	id, err := in.be32("section id")
	if err != nil {
		return false, err
	}
	var se section
	if t == qemufmt.VMSectionStart || t == qemufmt.VMSectionFull {
		if se.name, err = in.str("section name"); err != nil {
			return false, err
		}
		if se.instance, err = in.be32("instance id"); err != nil {
			return false, err
		}
		if se.version, err = in.be32("version id"); err != nil {
			return false, err
		}
		d.secs[id] = se
	} else {
		var ok bool
		if se, ok = d.secs[id]; !ok {
			return false, in.errf(off, "%s section for id %d, which no START or FULL section opened", typeNames[t], id)
		}
	}
	d.rep.Sections = append(d.rep.Sections, Section{Offset: off, Type: typeNames[t], ID: id,
		Name: se.name, Instance: se.instance, Version: se.version})
	rec := &d.rep.Sections[len(d.rep.Sections)-1]

	switch {
	case se.name == qemufmt.RAMSectionName:
		if se.version != qemufmt.RAMSectionVersion {
			return false, in.errf(off, "RAM section version %d; this tool reads version %d", se.version, qemufmt.RAMSectionVersion)
		}
		if t == qemufmt.VMSectionEnd {
			d.rep.RAMEndOffset = off
		}
		if err := d.ram(); err != nil {
			return false, err
		}
		if t == qemufmt.VMSectionEnd {
			d.rep.RAMComplete = true
		}
	case se.name == cshim.SectionName && t == qemufmt.VMSectionStart:
		if err := d.setup(off, se.version); err != nil {
			return false, err
		}
	case t == qemufmt.VMSectionFull:
		if d.rep.DeviceStateOffset < 0 {
			d.rep.DeviceStateOffset = off
		}
		ok, err := d.device(off, id, se)
		if err != nil || !ok {
			rec.Size = -1 // not delimited
			return !ok, err
		}
	default:
		return false, in.errf(off, "%s section %q (id %d): this tool cannot decode that iterable section's data", typeNames[t], se.name, id)
	}
	if err := d.footer(id); err != nil {
		return false, err
	}
	rec.Size = in.off - off
	return false, nil
}

// footer reads a section footer when the stream has them (QEMU writes
// them for every section or for none; 0x7e is no section type).
func (d *decoder) footer(id uint32) error {
	in := d.in
	b, ok, err := in.peek()
	if err != nil {
		return err
	}
	if !ok || b != qemufmt.VMSectionFooter {
		if d.footers {
			return in.errf(in.off, "expected the footer (0x%02x) of section %d, found %s", qemufmt.VMSectionFooter, id, describeByte(b, ok))
		}
		return nil
	}
	off := in.off
	in.u8("section footer")
	got, err := in.be32("section footer id")
	if err != nil {
		return err
	}
	if got != id {
		return in.errf(off, "section footer names section %d, expected %d", got, id)
	}
	d.footers = true
	return nil
}

func describeByte(b byte, ok bool) string {
	if !ok {
		return "the end of the stream"
	}
	return fmt.Sprintf("0x%02x", b)
}

// config decodes the configuration section (savevm.c's vmstate_configuration).
func (d *decoder) config() error {
	in := d.in
	n, err := in.be32("configuration: machine name length")
	if err != nil {
		return err
	}
	if n > maxMachine {
		return in.errf(in.off-4, "configuration: machine name of %d bytes", n)
	}
	name, err := in.read(int(n), "configuration: machine name")
	if err != nil {
		return err
	}
	c := &Config{Machine: string(name)}
	d.rep.Configuration = c
	for {
		b, ok, err := in.peek()
		if err != nil || !ok || b != qemufmt.VMSubsection {
			return err
		}
		off := in.off
		in.u8("subsection")
		sub, err := in.str("configuration: subsection name")
		if err != nil {
			return err
		}
		if _, err := in.be32("configuration: subsection version"); err != nil {
			return err
		}
		switch sub {
		case qemufmt.ConfigSubPageBits:
			if c.TargetPageBits, err = in.be32("configuration: target page bits"); err != nil {
				return err
			}
			if c.TargetPageBits != qemufmt.TargetPageBits {
				return in.errf(in.off-4, "target page bits %d; this tool reads x86 streams (%d)", c.TargetPageBits, qemufmt.TargetPageBits)
			}
		case qemufmt.ConfigSubCapabilities:
			cnt, err := in.be32("configuration: capability count")
			if err != nil {
				return err
			}
			if cnt > maxCaps {
				return in.errf(in.off-4, "configuration: %d capabilities", cnt)
			}
			for range cnt {
				cp, err := in.str("configuration: capability")
				if err != nil {
					return err
				}
				c.Capabilities = append(c.Capabilities, cp)
				switch cp {
				case "x-ignore-shared":
					d.ignShared = true
				case "mapped-ram":
					d.mapped = true
				}
			}
		case qemufmt.ConfigSubUUID:
			u, err := in.read(16, "configuration: uuid")
			if err != nil {
				return err
			}
			c.UUID = fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
		default:
			return in.errf(off, "configuration subsection %q is unknown to this tool: its length is not in the stream", sub)
		}
	}
}

// command decodes a QEMU_VM_COMMAND record.
func (d *decoder) command(off int64) error {
	in := d.in
	cmd, err := in.be16("command")
	if err != nil {
		return err
	}
	n, err := in.be16("command length")
	if err != nil {
		return err
	}
	if cmd == qemufmt.CmdInvalid || cmd >= qemufmt.CmdMax {
		return in.errf(off, "unknown command %d", cmd)
	}
	data, err := in.read(int(n), "command data")
	if err != nil {
		return err
	}
	c := Command{Offset: off, Cmd: cmd, Name: qemufmt.CmdNames[cmd], Len: n}
	switch cmd {
	case qemufmt.CmdPostcopyAdvise:
		if n == 16 {
			d.postcopy = &[2]uint64{uint64(be32(data))<<32 | uint64(be32(data[4:])), uint64(be32(data[8:]))<<32 | uint64(be32(data[12:]))}
		}
	case qemufmt.CmdPackaged:
		if n != 4 {
			return in.errf(off, "PACKAGED command with %d bytes of data, expected 4", n)
		}
		c.Packaged = be32(data)
		if d.rep.DeviceStateOffset < 0 {
			d.rep.DeviceStateOffset = off
		}
		d.rep.Commands = append(d.rep.Commands, c)
		return in.skip(int64(c.Packaged), "the PACKAGED stream")
	}
	d.rep.Commands = append(d.rep.Commands, c)
	return nil
}

// setup decodes the nasmig section: be32 length, then the library's setup
// buffer (migration/nasmig-host.c, nasmig_save_setup).
func (d *decoder) setup(off int64, version uint32) error {
	in := d.in
	if version != cshim.SectionVersion {
		return in.errf(off, "nasmig section version %d; this tool reads version %d", version, cshim.SectionVersion)
	}
	n, err := in.be32("nasmig setup length")
	if err != nil {
		return err
	}
	if n > cshim.SetupMaxBytes {
		return in.errf(in.off-4, "nasmig setup of %d bytes exceeds %d", n, cshim.SetupMaxBytes)
	}
	start := in.off
	b, err := in.read(int(n), "nasmig setup")
	if err != nil {
		return err
	}
	s, err := wire.DecodeSetup(b)
	if err != nil {
		return in.errf(start, "nasmig setup: %v", err)
	}
	sum := sha256.Sum256(s.KeySeed[:])
	rs := &Setup{Offset: off, SectionVer: version, WireVersion: wire.SetupVersion, Flags: s.Flags,
		Hold: s.Flags&cshim.SetupFlagHold != 0, Migration: s.Migration.String(),
		KeySeedSHA256: hex.EncodeToString(sum[:8]), Disks: []SetupDisk{}, keySeed: s.KeySeed}
	for _, disk := range s.Disks {
		rs.Disks = append(rs.Disks, SetupDisk{Index: disk.Index, Size: disk.Size, Filename: disk.Filename, NodeName: disk.NodeName})
	}
	d.rep.Setup = rs
	return nil
}

// ram decodes one RAM section's records up to its EOS (ram.c, ram_load_precopy).
func (d *decoder) ram() error {
	in := d.in
	for {
		off := in.off
		addr, err := in.be64("RAM page header")
		if err != nil {
			return err
		}
		flags := addr & pageMask
		addr &^= pageMask
		if d.mapped && flags&(qemufmt.RAMFlagHook|qemufmt.RAMFlagMultifdFlush|qemufmt.RAMFlagPage|
			qemufmt.RAMFlagXBZRLE|qemufmt.RAMFlagZero|cshim.RAMSaveFlagRef) != 0 {
			return in.errf(off, "RAM flags %#x in a mapped-ram stream", flags)
		}
		var blk *RAMBlock
		if flags&(qemufmt.RAMFlagZero|qemufmt.RAMFlagPage|qemufmt.RAMFlagXBZRLE|cshim.RAMSaveFlagRef) != 0 {
			if blk, err = d.block(off, flags); err != nil {
				return err
			}
			if addr >= blk.Size {
				return in.errf(off, "page offset %#x outside RAM block %q (%#x bytes)", addr, blk.Name, blk.Size)
			}
		}
		page := Page{Offset: addr, StreamOffset: off}
		switch flags &^ qemufmt.RAMFlagContinue {
		case qemufmt.RAMFlagMemSize:
			if err := d.memSize(off, addr); err != nil {
				return err
			}
		case qemufmt.RAMFlagZero:
			ch, err := in.u8("zero page byte")
			if err != nil {
				return err
			}
			if ch != 0 {
				return in.errf(in.off-1, "zero page with fill byte %d, expected 0", ch)
			}
			blk.Zero.add(in.off - off)
			d.rep.Totals.Zero.add(in.off - off)
			page.Kind = PageZero
		case qemufmt.RAMFlagPage:
			if err := in.skip(qemufmt.TargetPageSize, "page data of RAM block "+blk.Name); err != nil {
				return err
			}
			blk.Normal.add(in.off - off)
			d.rep.Totals.Normal.add(in.off - off)
			page.Kind = PageNormal
		case qemufmt.RAMFlagXBZRLE:
			enc, err := in.u8("XBZRLE encoding flag")
			if err != nil {
				return err
			}
			if enc != qemufmt.EncodingFlagXBZRLE {
				return in.errf(in.off-1, "XBZRLE encoding flag %d, expected %d", enc, qemufmt.EncodingFlagXBZRLE)
			}
			n, err := in.be16("XBZRLE length")
			if err != nil {
				return err
			}
			if n > qemufmt.TargetPageSize {
				return in.errf(in.off-2, "XBZRLE record of %d bytes exceeds a page", n)
			}
			if err := in.skip(int64(n), "XBZRLE data"); err != nil {
				return err
			}
			blk.XBZRLE.add(in.off - off)
			d.rep.Totals.XBZRLE.add(in.off - off)
			page.Kind = PageXBZRLE
		case cshim.RAMSaveFlagRef:
			start := in.off
			b, err := in.read(cshim.RefWireSize, "disk reference")
			if err != nil {
				return err
			}
			ref, err := wire.DecodeRef(b)
			if err != nil {
				return in.errf(start, "disk reference: %v", err)
			}
			blk.Refs.add(in.off - off)
			d.rep.Totals.Refs.add(in.off - off)
			if blk.RefsByDisk == nil {
				blk.RefsByDisk = map[uint8]uint64{}
			}
			blk.RefsByDisk[ref.Disk]++
			d.countRef(ref)
			page.Kind, page.Ref = PageRef, ref
		case qemufmt.RAMFlagMultifdFlush:
			d.rep.MultifdFlushes++
		case qemufmt.RAMFlagEOS:
			return nil
		case qemufmt.RAMFlagHook:
			return in.errf(off, "RDMA hook record (RAM_SAVE_FLAG_HOOK): RDMA streams are not supported")
		default:
			return in.errf(off, "unknown combination of RAM flags %#x", flags)
		}
		if blk != nil && d.opt.OnPage != nil {
			page.Block = blk.Name
			if err := d.opt.OnPage(page); err != nil {
				return err
			}
		}
	}
}

func (d *decoder) countRef(ref wire.Ref) {
	dr := d.disks[ref.Disk]
	if dr == nil {
		dr = &DiskRefs{Index: ref.Disk, Unknown: true}
		if s := d.rep.Setup; s != nil {
			for _, disk := range s.Disks {
				if disk.Index == ref.Disk {
					dr.Unknown = false
				}
			}
		}
		d.disks[ref.Disk] = dr
	}
	dr.Refs++
	if s := d.rep.Setup; s != nil && !dr.Unknown {
		for _, disk := range s.Disks {
			if disk.Index == ref.Disk && (ref.Offset > disk.Size || disk.Size-ref.Offset < cshim.PageSize) {
				dr.OutOfRange++
			}
		}
	}
}

// block reads the RAM block a page record names (ram_block_from_stream).
func (d *decoder) block(off int64, flags uint64) (*RAMBlock, error) {
	if flags&qemufmt.RAMFlagContinue != 0 {
		if d.last == nil {
			return nil, d.in.errf(off, "page record continues a RAM block, but none was named before")
		}
		return d.last, nil
	}
	name, err := d.in.str("RAM block name")
	if err != nil {
		return nil, err
	}
	blk := d.blocks[name]
	if blk == nil {
		return nil, d.in.errf(off, "page record of RAM block %q, which the MEM_SIZE list does not hold", name)
	}
	d.last = blk
	return blk, nil
}

// memSize decodes the RAM block list (ram.c, parse_ramblocks).
func (d *decoder) memSize(off int64, total uint64) error {
	in := d.in
	for total > 0 {
		boff := in.off
		name, err := in.str("RAM block name")
		if err != nil {
			return err
		}
		size, err := in.be64("RAM block length")
		if err != nil {
			return err
		}
		if size > total {
			return in.errf(boff, "RAM block %q of %#x bytes exceeds the %#x bytes left of the MEM_SIZE total", name, size, total)
		}
		total -= size
		if d.postcopy != nil {
			// A block whose page size differs from max(host, target page
			// size) carries it; the summary ORs every block's size.
			if d.postcopy[0] != qemufmt.TargetPageSize {
				return in.errf(boff, "postcopy stream with page sizes %#x: which blocks carry a page size field depends on the source host's page size, which the stream does not hold", d.postcopy[0])
			}
		}
		if d.ignShared {
			if _, err := in.be64("RAM block address (x-ignore-shared)"); err != nil {
				return err
			}
		}
		blk := d.blocks[name]
		if blk == nil {
			blk = &RAMBlock{Name: name}
			d.blocks[name] = blk
			d.rep.RAMBlocks = append(d.rep.RAMBlocks, blk)
		}
		blk.Size = size
		if d.mapped {
			if err := d.mappedRAM(blk); err != nil {
				return err
			}
		}
	}
	return nil
}

// mappedRAM decodes a block's MappedRamHeader, counts the pages its bitmap
// marks present, and moves to where QEMU continues the stream (after the
// block's pages).
func (d *decoder) mappedRAM(blk *RAMBlock) error {
	in := d.in
	off := in.off
	h, err := in.read(qemufmt.MappedRAMHeaderSize, "mapped-ram header of "+blk.Name)
	if err != nil {
		return err
	}
	u64 := func(b []byte) uint64 { return uint64(be32(b))<<32 | uint64(be32(b[4:])) }
	m := &MappedRAM{HeaderOffset: off, Version: be32(h), PageSize: u64(h[4:]), BitmapOffset: u64(h[12:]), PagesOffset: u64(h[20:])}
	blk.MappedRAM = m
	if m.Version > qemufmt.MappedRAMHdrVersion {
		return in.errf(off, "mapped-ram header version %d; this tool reads up to %d", m.Version, qemufmt.MappedRAMHdrVersion)
	}
	if m.PageSize != qemufmt.TargetPageSize {
		return in.errf(off+4, "mapped-ram page size %d, expected %d", m.PageSize, qemufmt.TargetPageSize)
	}
	if m.PagesOffset%qemufmt.TargetPageSize != 0 {
		return in.errf(off+20, "mapped-ram pages offset %#x is not page aligned", m.PagesOffset)
	}
	npages := blk.Size / m.PageSize
	bitmapSize := (npages + 63) / 64 * 8
	if bitmapSize > maxBitmap || m.BitmapOffset > 1<<62 || m.PagesOffset > 1<<62 {
		return in.errf(off, "mapped-ram bitmap of %d bytes at %#x, pages at %#x: out of range", bitmapSize, m.BitmapOffset, m.PagesOffset)
	}
	var bm []byte
	if in.seek != nil {
		bm, err = in.readAt(int64(m.BitmapOffset), int(bitmapSize), "mapped-ram bitmap of "+blk.Name)
	} else {
		if err = in.skipTo(int64(m.BitmapOffset), "mapped-ram bitmap of "+blk.Name); err == nil {
			bm, err = in.read(int(bitmapSize), "mapped-ram bitmap of "+blk.Name)
		}
	}
	if err != nil {
		return err
	}
	// Host-order unsigned longs: little-endian on x86, so byte k bit i is
	// page 8k+i.
	for i, b := range bm {
		if uint64(i*8) >= npages {
			break
		}
		if left := npages - uint64(i*8); left < 8 {
			b &= byte(1<<left - 1)
		}
		m.PagesPresent += uint64(bits.OnesCount8(b))
	}
	return in.skipTo(int64(m.PagesOffset+blk.Size), "the pages of mapped-ram block "+blk.Name)
}

// end decodes what follows QEMU_VM_EOF: the vmdesc, then nothing.
func (d *decoder) end() error {
	in := d.in
	b, ok, err := in.peek()
	if err != nil || !ok {
		return err
	}
	off := in.off
	if b != qemufmt.VMVMDescription {
		return in.errf(off, "expected the vmdesc (0x%02x) or the end after QEMU_VM_EOF, found 0x%02x", qemufmt.VMVMDescription, b)
	}
	in.u8("vmdesc")
	n, err := in.be32("vmdesc length")
	if err != nil {
		return err
	}
	if n > maxVMDesc {
		return in.errf(off+1, "vmdesc of %d bytes exceeds %d", n, maxVMDesc)
	}
	if d.desc != nil && d.desc.offset != off {
		return in.errf(off, "vmdesc here, but the one found from the end is at %d", d.desc.offset)
	}
	if err := in.skip(int64(n), "vmdesc JSON"); err != nil {
		return err
	}
	d.rep.VMDescOffset, d.rep.VMDescBytes = off, int64(n)
	if _, ok, err := in.peek(); err != nil || ok {
		if err != nil {
			return err
		}
		return in.errf(in.off, "trailing bytes after the vmdesc")
	}
	return nil
}
