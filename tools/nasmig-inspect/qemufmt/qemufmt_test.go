package qemufmt

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// qemuSrc finds the pinned QEMU source: $NASMIG_QEMU_SRC, else the build
// cache, else the patched tree.
func qemuSrc(t *testing.T) string {
	t.Helper()
	if d := os.Getenv("NASMIG_QEMU_SRC"); d != "" {
		return d
	}
	cands, _ := filepath.Glob("/var/cache/nasmig/qemu-src-*")
	cands = append(cands, "/work/qpatch/q")
	for _, d := range cands {
		if _, err := os.Stat(filepath.Join(d, "migration", "ram.h")); err == nil {
			return d
		}
	}
	t.Skip("!!! NO QEMU SOURCE FOUND: QEMU's migration constants are NOT checked; " +
		"set NASMIG_QEMU_SRC to the pinned QEMU source tree (the one with migration/ram.h) !!!")
	return ""
}

func readSrc(t *testing.T, dir, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, rel))
	if err != nil {
		t.Fatalf("QEMU source: %v", err)
	}
	return string(b)
}

// define returns the value of "#define name value" in src.
func define(t *testing.T, src, file, name string) int64 {
	t.Helper()
	m := regexp.MustCompile(`(?m)^#define\s+` + regexp.QuoteMeta(name) + `\s+(0x[0-9a-fA-F]+|[0-9]+)\b`).FindStringSubmatch(src)
	if m == nil {
		t.Errorf("%s: no #define %s", file, name)
		return -1
	}
	v, err := strconv.ParseInt(m[1], 0, 64)
	if err != nil {
		t.Errorf("%s: %s = %q: %v", file, name, m[1], err)
	}
	return v
}

func TestConstantsMatchQEMU(t *testing.T) {
	dir := qemuSrc(t)
	t.Logf("QEMU source: %s", dir)
	savevmH := readSrc(t, dir, "migration/savevm.h")
	savevmC := readSrc(t, dir, "migration/savevm.c")
	ramH := readSrc(t, dir, "migration/ram.h")
	ramC := readSrc(t, dir, "migration/ram.c")
	param := readSrc(t, dir, "target/i386/cpu-param.h")

	defs := []struct {
		src, file, name string
		want            int64
	}{
		{savevmH, "savevm.h", "QEMU_VM_FILE_MAGIC", FileMagic},
		{savevmH, "savevm.h", "QEMU_VM_FILE_VERSION_COMPAT", FileVersionCompat},
		{savevmH, "savevm.h", "QEMU_VM_FILE_VERSION", FileVersion},
		{savevmH, "savevm.h", "QEMU_VM_EOF", VMEOF},
		{savevmH, "savevm.h", "QEMU_VM_SECTION_START", VMSectionStart},
		{savevmH, "savevm.h", "QEMU_VM_SECTION_PART", VMSectionPart},
		{savevmH, "savevm.h", "QEMU_VM_SECTION_END", VMSectionEnd},
		{savevmH, "savevm.h", "QEMU_VM_SECTION_FULL", VMSectionFull},
		{savevmH, "savevm.h", "QEMU_VM_SUBSECTION", VMSubsection},
		{savevmH, "savevm.h", "QEMU_VM_VMDESCRIPTION", VMVMDescription},
		{savevmH, "savevm.h", "QEMU_VM_CONFIGURATION", VMConfiguration},
		{savevmH, "savevm.h", "QEMU_VM_COMMAND", VMCommand},
		{savevmH, "savevm.h", "QEMU_VM_SECTION_FOOTER", VMSectionFooter},
		{ramH, "ram.h", "RAM_SAVE_FLAG_ZERO", RAMFlagZero},
		{ramH, "ram.h", "RAM_SAVE_FLAG_MEM_SIZE", RAMFlagMemSize},
		{ramH, "ram.h", "RAM_SAVE_FLAG_PAGE", RAMFlagPage},
		{ramH, "ram.h", "RAM_SAVE_FLAG_EOS", RAMFlagEOS},
		{ramH, "ram.h", "RAM_SAVE_FLAG_CONTINUE", RAMFlagContinue},
		{ramH, "ram.h", "RAM_SAVE_FLAG_XBZRLE", RAMFlagXBZRLE},
		{ramH, "ram.h", "RAM_SAVE_FLAG_HOOK", RAMFlagHook},
		{ramH, "ram.h", "RAM_SAVE_FLAG_MULTIFD_FLUSH", RAMFlagMultifdFlush},
		{ramC, "ram.c", "ENCODING_FLAG_XBZRLE", EncodingFlagXBZRLE},
		{ramC, "ram.c", "MAPPED_RAM_HDR_VERSION", MappedRAMHdrVersion},
		{param, "target/i386/cpu-param.h", "TARGET_PAGE_BITS", TargetPageBits},
	}
	for _, d := range defs {
		if got := define(t, d.src, d.file, d.name); got >= 0 && got != d.want {
			t.Errorf("%s: %s = %#x in QEMU, %#x in qemufmt", d.file, d.name, got, d.want)
		}
	}

	// Every RAM_SAVE_FLAG_* QEMU defines must be known here (a new one
	// would otherwise be reported as an unknown flag combination).
	known := map[string]bool{"ZERO": true, "MEM_SIZE": true, "PAGE": true, "EOS": true, "CONTINUE": true,
		"XBZRLE": true, "HOOK": true, "MULTIFD_FLUSH": true, "DISKREF": true}
	for _, m := range regexp.MustCompile(`(?m)^#define\s+RAM_SAVE_FLAG_(\w+)\s`).FindAllStringSubmatch(ramH+ramC, -1) {
		if !known[m[1]] {
			t.Errorf("QEMU defines RAM_SAVE_FLAG_%s, which qemufmt does not know", m[1])
		}
	}
	// DISKREF must be nasmig's (cshim's) value, not a number of QEMU's own.
	if !regexp.MustCompile(`(?m)^#define\s+RAM_SAVE_FLAG_DISKREF\s+NASMIG_RAM_SAVE_FLAG_DISKREF\b`).MatchString(ramH) {
		t.Errorf("ram.h: RAM_SAVE_FLAG_DISKREF is not NASMIG_RAM_SAVE_FLAG_DISKREF")
	}

	m := regexp.MustCompile(`register_savevm_live\("ram",\s*0,\s*(\d+),`).FindStringSubmatch(ramC)
	if m == nil {
		t.Errorf("ram.c: no register_savevm_live(\"ram\", ...)")
	} else if v, _ := strconv.Atoi(m[1]); v != RAMSectionVersion {
		t.Errorf("ram.c: RAM section version %d, qemufmt has %d", v, RAMSectionVersion)
	}

	// struct MappedRamHeader: its fields' sizes (QEMU_PACKED).
	body := regexp.MustCompile(`(?s)struct MappedRamHeader \{(.*?)\} QEMU_PACKED;`).FindStringSubmatch(ramC)
	if body == nil {
		t.Errorf("ram.c: no packed struct MappedRamHeader")
	} else {
		size := 0
		var names []string
		for _, f := range regexp.MustCompile(`(?m)^\s*uint(32|64)_t\s+(\w+);`).FindAllStringSubmatch(body[1], -1) {
			bits, _ := strconv.Atoi(f[1])
			size += bits / 8
			names = append(names, f[2])
		}
		if size != MappedRAMHeaderSize || strings.Join(names, ",") != "version,page_size,bitmap_offset,pages_offset" {
			t.Errorf("ram.c: MappedRamHeader is %v, %d bytes; qemufmt decodes version,page_size,bitmap_offset,pages_offset in %d",
				names, size, MappedRAMHeaderSize)
		}
	}

	// enum qemu_vm_cmd, in order, and the names of mig_cmd_args.
	enum := regexp.MustCompile(`(?s)enum qemu_vm_cmd \{(.*?)\};`).FindStringSubmatch(savevmC)
	if enum == nil {
		t.Fatalf("savevm.c: no enum qemu_vm_cmd")
	}
	cmds := regexp.MustCompile(`(?m)^\s*(MIG_CMD_\w+)`).FindAllStringSubmatch(enum[1], -1)
	if len(cmds) != CmdMax+1 {
		t.Errorf("savevm.c: enum qemu_vm_cmd has %d entries, qemufmt %d", len(cmds), CmdMax+1)
	}
	args := map[string]string{}
	for _, a := range regexp.MustCompile(`\[(MIG_CMD_\w+)\]\s*=\s*\{[^}]*\.name\s*=\s*"([^"]+)"`).FindAllStringSubmatch(savevmC, -1) {
		args[a[1]] = a[2]
	}
	for i, c := range cmds {
		if i >= CmdMax {
			if c[1] != "MIG_CMD_MAX" {
				t.Errorf("savevm.c: enum entry %d is %s, qemufmt expects MIG_CMD_MAX", i, c[1])
			}
			continue
		}
		if want := "MIG_CMD_" + CmdNames[i]; c[1] != want {
			t.Errorf("savevm.c: command %d is %s, qemufmt has %s", i, c[1], want)
		}
		// mig_cmd_args has no entry for some commands (ENABLE_COLO).
		if name, ok := args[c[1]]; ok && name != CmdNames[i] {
			t.Errorf("savevm.c: mig_cmd_args names %s %q, qemufmt %q", c[1], name, CmdNames[i])
		}
	}

	for _, name := range []string{ConfigSubPageBits, ConfigSubCapabilities, ConfigSubUUID} {
		if !strings.Contains(savevmC, `.name = "`+name+`"`) {
			t.Errorf("savevm.c: no subsection %q", name)
		}
	}
	if !strings.Contains(savevmC, `.name = "configuration"`) {
		t.Errorf(`savevm.c: no vmstate "configuration"`)
	}
}
