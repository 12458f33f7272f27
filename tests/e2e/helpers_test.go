package e2e

import "testing"

// The helpers' own checks; they need no test bed.

func TestNamesDiskRefs(t *testing.T) {
	for _, tc := range []struct {
		s    string
		want bool
	}{
		{"qemu-system-x86_64: Capability x-disk-refs is off, but received capability is on", true},
		{"nasmig: disk references could not be verified", true},
		{"Capability 'x-disk-refs' requires libnasmig.so loaded with -plugin", true},
		{"load of migration failed: Invalid argument", false},
		{"block 0x1 of disk 0 (nbd+unix:///disk0?socket=/tmp/keep/nasmig-TestMigrations_09-1/storage.nbd)", false},
	} {
		if got := namesDiskRefs(tc.s); got != tc.want {
			t.Errorf("namesDiskRefs(%q) = %v, want %v", tc.s, got, tc.want)
		}
	}
}

func TestExtentLine(t *testing.T) {
	// debugfs -R "ex FILE": a leaf of a depth-1 tree, an interior node
	// (no physical range: skipped), a depth-0 leaf.
	lines := []string{
		" 1/ 1   1/  3     0 - 24279   8488 -  32767  24280 ",
		" 0/ 1   1/  1     0 - 65535   8487          65536",
		" 0/ 0   1/  1     0 -  7167  74282 -  81449   7168 ",
	}
	want := [][2]string{{"8488", "24280"}, {}, {"74282", "7168"}}
	for i, line := range lines {
		m := extentLine.FindStringSubmatch(line)
		switch {
		case want[i] == [2]string{} && m != nil:
			t.Errorf("line %q: matched %v, want no extent", line, m)
		case want[i] != [2]string{} && (m == nil || m[1] != want[i][0] || m[3] != want[i][1]):
			t.Errorf("line %q: %v, want start %s length %s", line, m, want[i][0], want[i][1])
		}
	}
}
