package harness

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"nasmig/cshim"
)

// The disk-refs counters have one home, struct nasmig_stats in
// cshim/nasmig.h.  QEMU's QAPI type (qemu-patches/0002) and the harness's
// DiskRefStats must name the same counters: snake_case becomes kebab-case,
// fetch_time_ns is reported in ms, ref-bytes-saved is derived from
// ref_pages, and switchover-ms is QEMU's own (when the source switched to
// postcopy).
func TestDiskRefStatsMatchTheHeader(t *testing.T) {
	var want []string
	for _, name := range cshim.StatNames() {
		name = strings.ReplaceAll(name, "_", "-")
		if name == "fetch-time-ns" {
			name = "fetch-time-ms"
		}
		want = append(want, name)
	}
	want = append(want, "ref-bytes-saved", "switchover-ms")
	slices.Sort(want)

	var harness []string
	rt := reflect.TypeOf(DiskRefStats{})
	for i := 0; i < rt.NumField(); i++ {
		harness = append(harness, strings.Split(rt.Field(i).Tag.Get("json"), ",")[0])
	}
	slices.Sort(harness)
	if !slices.Equal(harness, want) {
		t.Errorf("harness DiskRefStats has %v,\nstruct nasmig_stats gives %v", harness, want)
	}

	patches, err := filepath.Glob("../../qemu-patches/*.patch")
	if err != nil || len(patches) == 0 {
		t.Fatalf("no QEMU patches: %v", err)
	}
	var qapi []string
	def := regexp.MustCompile(`(?s)'struct': 'MigrationDiskRefs',\s*\n\+\s*'data': \{(.*?)\} \}`)
	key := regexp.MustCompile(`'([a-z0-9-]+)': 'uint64'`)
	for _, p := range patches {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if m := def.FindSubmatch(b); m != nil {
			for _, k := range key.FindAllSubmatch(m[1], -1) {
				qapi = append(qapi, string(k[1]))
			}
		}
	}
	slices.Sort(qapi)
	if !slices.Equal(qapi, want) {
		t.Errorf("QAPI MigrationDiskRefs in qemu-patches has %v,\nstruct nasmig_stats gives %v", qapi, want)
	}
}

// The ABI header has one home, cshim/nasmig.h; the host-glue patch adds
// the same file to QEMU as include/nasmig/nasmig.h (build.sh checks it
// too, on the patched tree).
func TestABIHeaderInPatchesIsCshims(t *testing.T) {
	want, err := os.ReadFile("../../cshim/nasmig.h")
	if err != nil {
		t.Fatal(err)
	}
	patches, err := filepath.Glob("../../qemu-patches/*.patch")
	if err != nil || len(patches) == 0 {
		t.Fatalf("no QEMU patches: %v", err)
	}
	const file = "+++ b/include/nasmig/nasmig.h\n"
	found := 0
	for _, p := range patches {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		i := strings.Index(string(b), file)
		if i < 0 {
			continue
		}
		found++
		// A new file: one hunk of added lines, up to the next file's diff.
		var got strings.Builder
		for _, line := range strings.Split(string(b[i+len(file):]), "\n")[1:] {
			if !strings.HasPrefix(line, "+") {
				break
			}
			got.WriteString(line[1:] + "\n")
		}
		if got.String() != string(want) {
			t.Errorf("%s adds an include/nasmig/nasmig.h that differs from cshim/nasmig.h", filepath.Base(p))
		}
	}
	if found != 1 {
		t.Errorf("%d patches add include/nasmig/nasmig.h, want exactly 1", found)
	}
}
