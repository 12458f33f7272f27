// Package migstream decodes a QEMU migration stream written by nasmig's
// patched QEMU: the file header, the configuration, every section's place,
// the RAM section page by page (normal, zero, XBZRLE and nasmig's disk
// references), the nasmig setup section, and, when the stream carries its
// vmdesc JSON, the byte range of every device section.  Device state
// without a vmdesc cannot be delimited, so the decoder stops there and says
// where it begins; it never guesses.
package migstream

// Schema names the JSON layout of Report; bump it on any incompatible change.
const Schema = "nasmig-inspect/1"

// Report is what a stream holds.  Offsets are bytes from the stream's start;
// sizes include headers and footers.
type Report struct {
	Schema         string      `json:"schema"`
	Magic          string      `json:"magic"`
	Version        uint32      `json:"version"`
	Configuration  *Config     `json:"configuration,omitempty"`
	Commands       []Command   `json:"commands,omitempty"`
	Sections       []Section   `json:"sections"`
	RAMBlocks      []*RAMBlock `json:"ramblocks"`
	MultifdFlushes uint64      `json:"multifd_flushes"`
	Setup          *Setup      `json:"nasmig_setup,omitempty"`
	RefsByDisk     []*DiskRefs `json:"refs_by_disk"`
	Totals         Totals      `json:"totals"`
	TotalBytes     int64       `json:"total_bytes"`
	// RAMEndOffset is where the RAM section's END (its final pass, in the
	// downtime) begins; -1 when there is none.
	RAMEndOffset int64 `json:"ram_end_offset"`
	// DeviceStateOffset is where the first device section begins: from
	// there on the stream is the guest's stopped state.  -1 when none.
	DeviceStateOffset int64 `json:"device_state_offset"`
	EOFOffset         int64 `json:"eof_offset"` // QEMU_VM_EOF, -1 when not reached
	VMDescOffset      int64 `json:"vmdesc_offset"`
	VMDescBytes       int64 `json:"vmdesc_bytes"`
	// Stopped says why decoding ended before the stream did (empty when
	// the whole stream was decoded).
	Stopped string `json:"stopped,omitempty"`
	// RAMComplete is set once the RAM section's END was decoded.
	RAMComplete bool `json:"ram_complete"`
}

// Config is the configuration section.
type Config struct {
	Machine        string   `json:"machine"`
	TargetPageBits uint32   `json:"target_page_bits,omitempty"`
	Capabilities   []string `json:"capabilities,omitempty"`
	UUID           string   `json:"uuid,omitempty"`
}

// Command is a QEMU_VM_COMMAND record.
type Command struct {
	Offset int64  `json:"offset"`
	Cmd    uint16 `json:"cmd"`
	Name   string `json:"name"`
	Len    uint16 `json:"len"`
	// Packaged is the length of the stream a PACKAGED command wraps
	// (postcopy's device state); it is skipped, not decoded.
	Packaged uint32 `json:"packaged,omitempty"`
}

// Section is one section record.
type Section struct {
	Offset   int64  `json:"offset"`
	Type     string `json:"type"` // start, part, end, full
	ID       uint32 `json:"id"`
	Name     string `json:"name"`
	Instance uint32 `json:"instance"`
	Version  uint32 `json:"version"`
	Size     int64  `json:"size"` // -1: not delimited (decoding stopped in it)
}

// PageCounts counts records of one kind and their bytes on the wire
// (page header included).
type PageCounts struct {
	Pages uint64 `json:"pages"`
	Bytes uint64 `json:"bytes"`
}

func (c *PageCounts) add(bytes int64) { c.Pages++; c.Bytes += uint64(bytes) }

// Totals sums the page records over every RAM block.
type Totals struct {
	Normal PageCounts `json:"normal"`
	Zero   PageCounts `json:"zero"`
	XBZRLE PageCounts `json:"xbzrle"`
	Refs   PageCounts `json:"refs"`
}

// RAMBlock is one RAM block of the MEM_SIZE list and what the stream sent of it.
type RAMBlock struct {
	Name   string     `json:"name"`
	Size   uint64     `json:"size"`
	Normal PageCounts `json:"normal"`
	Zero   PageCounts `json:"zero"`
	XBZRLE PageCounts `json:"xbzrle"`
	Refs   PageCounts `json:"refs"`
	// RefsByDisk counts this block's references per source disk index.
	RefsByDisk map[uint8]uint64 `json:"refs_by_disk,omitempty"`
	MappedRAM  *MappedRAM       `json:"mapped_ram,omitempty"`
}

// MappedRAM is a block's mapped-ram header and the pages its bitmap marks present.
type MappedRAM struct {
	HeaderOffset int64  `json:"header_offset"`
	Version      uint32 `json:"version"`
	PageSize     uint64 `json:"page_size"`
	BitmapOffset uint64 `json:"bitmap_offset"`
	PagesOffset  uint64 `json:"pages_offset"`
	PagesPresent uint64 `json:"pages_present"`
}

// Setup is the decoded nasmig setup section.
type Setup struct {
	Offset      int64  `json:"offset"`
	SectionVer  uint32 `json:"section_version"`
	WireVersion uint16 `json:"wire_version"`
	Flags       uint16 `json:"flags"`
	Hold        bool   `json:"hold"`
	Migration   string `json:"migration"`
	// KeySeedSHA256 fingerprints the migration's key seed (the seed
	// itself is in the stream; this only tells two streams apart).
	KeySeedSHA256 string      `json:"key_seed_sha256"`
	Disks         []SetupDisk `json:"disks"`
	keySeed       [32]byte
}

// KeySeed is the seed of the migration key that hashed the references.
func (s *Setup) KeySeed() [32]byte { return s.keySeed }

// SetupDisk is one entry of the setup's disk table.
type SetupDisk struct {
	Index    uint8  `json:"index"`
	Size     uint64 `json:"size"`
	Filename string `json:"filename"`
	NodeName string `json:"node_name"`
}

// DiskRefs counts the references to one source disk index.
type DiskRefs struct {
	Index uint8  `json:"index"`
	Refs  uint64 `json:"refs"`
	// Unknown: the index is not in the setup's disk table (or came first).
	Unknown bool `json:"unknown,omitempty"`
	// OutOfRange counts references whose block ends past the disk's size.
	OutOfRange uint64 `json:"out_of_range"`
}
