package cshim_test

import (
	"strings"
	"syscall"
	"testing"

	"nasmig/cshim"
)

// QEMU allows RAMBlock ids of 255 characters and filenames of PATH_MAX:
// names up to those limits keep their identity, longer ones are refused,
// never truncated into another block's or disk's name.
func TestLongNamesKeepTheirIdentity(t *testing.T) {
	prefix := strings.Repeat("r", 200)
	a := cshim.RAMBlockAdd(prefix+"/a", 1<<20)
	b := cshim.RAMBlockAdd(prefix+"/b", 1<<20)
	if a < 0 || b < 0 || a == b {
		t.Fatalf("two RAM blocks sharing a 200-character prefix: handles %d and %d, want two distinct", a, b)
	}
	if got := cshim.RAMBlockName(a); got != prefix+"/a" {
		t.Fatalf("RAM block name came back as %d characters, want %d", len(got), len(prefix)+2)
	}
	if h := cshim.RAMBlockAdd(strings.Repeat("x", cshim.MaxIDStr), 1<<20); h != -int(syscall.ENAMETOOLONG) {
		t.Fatalf("RAM block id of %d characters: %d, want -ENAMETOOLONG", cshim.MaxIDStr, h)
	}

	long := "/shared/" + strings.Repeat("d", cshim.MaxFilename-20)
	d1 := cshim.DiskAdd("long1", long+"1", 1<<30)
	d2 := cshim.DiskAdd("long2", long+"2", 1<<30)
	if d1 < 0 || d2 < 0 || d1 == d2 {
		t.Fatalf("two disks with %d-byte filenames: handles %d and %d", len(long)+1, d1, d2)
	}
	if got := cshim.Disk(d2).Filename; got != long+"2" {
		t.Fatalf("filename came back as %d bytes, want %d", len(got), len(long)+1)
	}
	if h := cshim.DiskAdd("toolong", strings.Repeat("f", cshim.MaxFilename), 1<<30); h != -int(syscall.ENAMETOOLONG) {
		t.Fatalf("filename of %d bytes: %d, want -ENAMETOOLONG", cshim.MaxFilename, h)
	}
}
