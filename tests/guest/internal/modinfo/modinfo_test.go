package modinfo

import (
	"reflect"
	"strings"
	"testing"
)

// modinfoBytes builds a .modinfo section like the kernel's: NUL-terminated
// key=value strings.
func modinfoBytes(kv ...string) []byte {
	return []byte(strings.Join(kv, "\x00") + "\x00")
}

func TestParse(t *testing.T) {
	sec := modinfoBytes(
		"license=GPL",
		"softdep=pre: crypto-crc32c post: foo-bar",
		"alias=fs-ext4",
		"depends=jbd2,mbcache,crc16",
		"retpoline=Y",
		"name=ext4",
		"vermagic=6.1.0-56-amd64 SMP preempt mod_unload modversions ",
	)
	got := Parse(sec, "wrong")
	want := Info{Name: "ext4", Depends: []string{"jbd2", "mbcache", "crc16"}, SoftPre: []string{"crypto-crc32c"}, Aliases: []string{"fs-ext4"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Parse = %+v, want %+v", got, want)
	}

	// Dashes are normalised, an empty depends= means none, and the file
	// name is used when there is no name=.
	got = Parse(modinfoBytes("depends=crc-t10dif,crc64-rocksoft", "depends="), "t10-pi")
	want = Info{Name: "t10_pi", Depends: []string{"crc_t10dif", "crc64_rocksoft"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Parse = %+v, want %+v", got, want)
	}
	if got := Parse(nil, "x"); got.Name != "x" || got.Depends != nil {
		t.Fatalf("Parse(nil) = %+v", got)
	}
}

// fakeSource is a kernel's modules as .modinfo sections.
type fakeSource map[string][]byte

func (f fakeSource) Info(name string) (Info, bool, error) {
	sec, ok := f[name]
	if !ok {
		return Info{}, false, nil
	}
	return Parse(sec, name), true, nil
}

func (f fakeSource) Resolve(dep string) (string, bool, error) {
	n := Normalize(dep)
	if _, ok := f[n]; ok {
		return n, true, nil
	}
	for name, sec := range f {
		for _, a := range Parse(sec, name).Aliases {
			if a == dep {
				return name, true, nil
			}
		}
	}
	return "", false, nil
}

// debian61 holds the modules of Debian's 6.1 kernel the guest needs, with
// their real depends= and softdep= values.
var debian61 = fakeSource{
	"crc32c_generic":         modinfoBytes("alias=crypto-crc32c", "alias=crc32c", "depends=", "name=crc32c_generic"),
	"virtio_ring":            modinfoBytes("depends=", "name=virtio_ring"),
	"virtio":                 modinfoBytes("depends=", "name=virtio"),
	"virtio_pci_modern_dev":  modinfoBytes("depends=", "name=virtio_pci_modern_dev"),
	"virtio_pci_legacy_dev":  modinfoBytes("depends=", "name=virtio_pci_legacy_dev"),
	"virtio_pci":             modinfoBytes("depends=virtio_ring,virtio_pci_modern_dev,virtio_pci_legacy_dev,virtio", "name=virtio_pci"),
	"virtio_blk":             modinfoBytes("depends=virtio_ring,virtio", "name=virtio_blk"),
	"jbd2":                   modinfoBytes("softdep=pre: crypto-crc32c", "depends=", "name=jbd2"),
	"mbcache":                modinfoBytes("depends=", "name=mbcache"),
	"crc16":                  modinfoBytes("depends=", "name=crc16"),
	"ext4":                   modinfoBytes("softdep=pre: crypto-crc32c", "depends=jbd2,mbcache,crc16", "name=ext4"),
	"scsi_common":            modinfoBytes("depends=", "name=scsi_common"),
	"scsi_mod":               modinfoBytes("depends=scsi_common", "name=scsi_mod"),
	"crc64":                  modinfoBytes("depends=", "name=crc64"),
	"crc64_rocksoft":         modinfoBytes("softdep=pre: crc64", "depends=crc64", "name=crc64_rocksoft"),
	"crct10dif_common":       modinfoBytes("depends=", "name=crct10dif_common"),
	"crc_t10dif":             modinfoBytes("softdep=pre: crct10dif", "depends=crct10dif_common", "name=crc_t10dif"),
	"t10_pi":                 modinfoBytes("depends=crc-t10dif,crc64-rocksoft", "name=t10_pi"),
	"sd_mod":                 modinfoBytes("depends=scsi_mod,t10-pi", "name=sd_mod"),
	"virtio_scsi":            modinfoBytes("depends=scsi_mod,virtio_ring,virtio", "name=virtio_scsi"),
	"libata":                 modinfoBytes("depends=scsi_mod,scsi_common", "name=libata"),
	"libahci":                modinfoBytes("depends=libata", "name=libahci"),
	"ahci":                   modinfoBytes("depends=libahci,libata", "name=ahci"),
	"crct10dif_generic":      modinfoBytes("alias=crypto-crct10dif", "alias=crct10dif", "depends=crct10dif_common", "name=crct10dif_generic"),
	"crc64_rocksoft_generic": modinfoBytes("depends=crc64", "name=crc64_rocksoft_generic"),
}

func TestOrderVirtioBlkExt4(t *testing.T) {
	// The order testbed-notes.md found to work, for the same roots.
	got, err := Order(debian61, []string{"crc32c_generic", "virtio_pci", "virtio_blk", "ext4"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Fields("crc32c_generic virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio virtio_pci virtio_blk jbd2 mbcache crc16 ext4")
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("order\n got %v\nwant %v", got, want)
	}
}

func TestOrderDependenciesFirst(t *testing.T) {
	roots := []string{"ext4", "virtio_pci", "virtio_blk", "virtio_scsi", "ahci", "sd_mod"}
	got, err := Order(debian61, roots, nil)
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, n := range got {
		if _, dup := pos[n]; dup {
			t.Fatalf("%s twice in %v", n, got)
		}
		pos[n] = i
	}
	for name := range pos {
		info, _, _ := debian61.Info(name)
		deps := append([]string{}, info.Depends...)
		for _, s := range info.SoftPre {
			if d, ok, _ := debian61.Resolve(s); ok {
				deps = append(deps, d)
			}
		}
		for _, d := range deps {
			p, ok := pos[d]
			if !ok {
				t.Errorf("%s needs %s, which is not loaded", name, d)
			} else if p > pos[name] {
				t.Errorf("%s loaded before its dependency %s", name, d)
			}
		}
	}
	// The crc32c soft dependency of ext4 resolves through the alias.
	if _, ok := pos["crc32c_generic"]; !ok {
		t.Errorf("crc32c_generic missing from %v", got)
	}
}

func TestOrderErrors(t *testing.T) {
	src := fakeSource{
		"a": modinfoBytes("depends=b", "name=a"),
		"b": modinfoBytes("depends=a", "name=b"),
		"c": modinfoBytes("depends=nope", "name=c"),
		"d": modinfoBytes("softdep=pre: missing-alias", "depends=", "name=d"),
	}
	if _, err := Order(src, []string{"a"}, nil); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Errorf("cycle: err = %v", err)
	}
	if _, err := Order(src, []string{"c"}, nil); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("missing dependency: err = %v", err)
	}
	if _, err := Order(src, []string{"zz"}, nil); err == nil {
		t.Error("missing root: no error")
	}
	// A built-in (skipped) root and an unresolvable soft dependency are fine.
	got, err := Order(src, []string{"zz", "d"}, func(n string) bool { return n == "zz" })
	if err != nil || !reflect.DeepEqual(got, []string{"d"}) {
		t.Errorf("Order = %v, %v; want [d]", got, err)
	}
}
