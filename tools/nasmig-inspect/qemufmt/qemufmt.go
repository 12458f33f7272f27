// Package qemufmt holds the values of QEMU's migration stream format that
// nasmig-inspect decodes, defined here once.  They are QEMU's, not
// nasmig's: qemufmt_test.go compares every one with the pinned QEMU source
// (migration/savevm.h, savevm.c, ram.h, ram.c, target/i386/cpu-param.h).
// nasmig's own flag, RAM_SAVE_FLAG_DISKREF, is cshim.RAMSaveFlagRef.
package qemufmt

// File header (migration/savevm.h).
const (
	FileMagic         = 0x5145564d // "QEVM"
	FileVersionCompat = 0x00000002
	FileVersion       = 0x00000003
)

// Section types (QEMU_VM_*, migration/savevm.h).
const (
	VMEOF           = 0x00
	VMSectionStart  = 0x01
	VMSectionPart   = 0x02
	VMSectionEnd    = 0x03
	VMSectionFull   = 0x04
	VMSubsection    = 0x05
	VMVMDescription = 0x06
	VMConfiguration = 0x07
	VMCommand       = 0x08
	VMSectionFooter = 0x7e
)

// Commands of a QEMU_VM_COMMAND section (enum qemu_vm_cmd, migration/savevm.c).
const (
	CmdInvalid = iota
	CmdOpenReturnPath
	CmdPing
	CmdPostcopyAdvise
	CmdPostcopyListen
	CmdPostcopyRun
	CmdPostcopyRAMDiscard
	CmdPackaged
	CmdEnableColo
	CmdPostcopyResume
	CmdRecvBitmap
	CmdSwitchoverStart
	CmdMax
)

// CmdNames are the commands' names as QEMU's mig_cmd_args spells them.
var CmdNames = [...]string{
	CmdInvalid:            "INVALID",
	CmdOpenReturnPath:     "OPEN_RETURN_PATH",
	CmdPing:               "PING",
	CmdPostcopyAdvise:     "POSTCOPY_ADVISE",
	CmdPostcopyListen:     "POSTCOPY_LISTEN",
	CmdPostcopyRun:        "POSTCOPY_RUN",
	CmdPostcopyRAMDiscard: "POSTCOPY_RAM_DISCARD",
	CmdPackaged:           "PACKAGED",
	CmdEnableColo:         "ENABLE_COLO",
	CmdPostcopyResume:     "POSTCOPY_RESUME",
	CmdRecvBitmap:         "RECV_BITMAP",
	CmdSwitchoverStart:    "SWITCHOVER_START",
}

// RAM page header flags (RAM_SAVE_FLAG_*, migration/ram.h).  They live in
// the low bits of the be64 page offset, below TargetPageSize.
const (
	RAMFlagZero         = 0x002
	RAMFlagMemSize      = 0x004
	RAMFlagPage         = 0x008
	RAMFlagEOS          = 0x010
	RAMFlagContinue     = 0x020
	RAMFlagXBZRLE       = 0x040
	RAMFlagHook         = 0x080
	RAMFlagMultifdFlush = 0x200
)

// RAM section details (migration/ram.c).
const (
	RAMSectionName      = "ram"
	RAMSectionVersion   = 4   // register_savevm_live("ram", 0, 4, ...)
	EncodingFlagXBZRLE  = 0x1 // the byte before an XBZRLE record's be16 length
	MappedRAMHdrVersion = 1
	// MappedRAMHeaderSize is sizeof(struct MappedRamHeader), QEMU_PACKED:
	// be32 version, be64 page_size, be64 bitmap_offset, be64 pages_offset.
	MappedRAMHeaderSize = 4 + 8 + 8 + 8
)

// TargetPageBits is x86's TARGET_PAGE_BITS (target/i386/cpu-param.h): the
// stream does not carry it unless it differs from the target's minimum, and
// nasmig only runs x86_64 guests.
const (
	TargetPageBits = 12
	TargetPageSize = 1 << TargetPageBits
)

// Names of the configuration section's subsections (migration/savevm.c).
const (
	ConfigSubPageBits     = "configuration/target-page-bits"
	ConfigSubCapabilities = "configuration/capabilities"
	ConfigSubUUID         = "configuration/uuid"
)
