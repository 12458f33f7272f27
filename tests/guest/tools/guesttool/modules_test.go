package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestParseRoot(t *testing.T) {
	for in, want := range map[string]rootSpec{
		"ext4:EXT4_FS":                  {name: "ext4", symbol: "EXT4_FS"},
		"crc-t10dif:CONFIG_CRC_T10DIF?": {name: "crc_t10dif", symbol: "CRC_T10DIF", optional: true},
		"virtio_blk":                    {name: "virtio_blk"},
	} {
		if got := parseRoot(in); got != want {
			t.Errorf("parseRoot(%q) = %+v, want %+v", in, got, want)
		}
	}
}

func TestModuleName(t *testing.T) {
	for in, want := range map[string]string{
		"crc-t10dif.ko": "crc_t10dif", "ext4.ko.xz": "ext4", "sd_mod.ko.zst": "sd_mod", "x.ko.gz": "x",
	} {
		if got, ok := moduleName(in); !ok || got != want {
			t.Errorf("moduleName(%q) = %q, %v", in, got, ok)
		}
	}
	if _, ok := moduleName("modules.order"); ok {
		t.Error("modules.order taken for a module")
	}
}

func TestReadConfigAndBuiltin(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config")
	os.WriteFile(cfg, []byte("# comment\nCONFIG_EXT4_FS=m\nCONFIG_SERIAL_8250=y\n# CONFIG_FOO is not set\n"), 0o644)
	yes, err := readConfig(cfg)
	if err != nil || !yes["SERIAL_8250"] || yes["EXT4_FS"] || len(yes) != 1 {
		t.Fatalf("readConfig = %v, %v", yes, err)
	}
	bi := filepath.Join(dir, "modules.builtin")
	os.WriteFile(bi, []byte("kernel/drivers/virtio/virtio.ko\nkernel/lib/crc-t10dif.ko\n"), 0o644)
	got := readBuiltin(bi)
	if !got["virtio"] || !got["crc_t10dif"] || len(got) != 2 {
		t.Fatalf("readBuiltin = %v", got)
	}
}
