package harness

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"nasmig/tools/nbd"
)

// storageDaemonForTest finds a qemu-storage-daemon: NASMIG_OUT's first,
// then PATH's. It skips the test, saying why, when there is none.
func storageDaemonForTest(t *testing.T) string {
	t.Helper()
	if env := EnvFromOS(); env.Out != "" {
		path := env.StorageDaemonBinary()
		if _, err := os.Stat(path); err == nil {
			return path
		}
	}
	if path, err := exec.LookPath("qemu-storage-daemon"); err == nil {
		return path
	}
	t.Skip("skipping: needs qemu-storage-daemon in $NASMIG_OUT or on PATH")
	return ""
}

func startTestStorage(t *testing.T, cfg StorageConfig) *StorageDaemon {
	t.Helper()
	dir := t.TempDir()
	socketDir, cleanup, err := shortSocketDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cleanup)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := StartStorage(ctx, cfg, NewStoragePaths(dir, socketDir, "storage"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

func TestNBDClientAgainstStorageDaemon(t *testing.T) {
	binary := storageDaemonForTest(t)
	const imageSize = 4 << 20
	image := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(image, make([]byte, imageSize), 0o644); err != nil {
		t.Fatal(err)
	}
	s := startTestStorage(t, StorageConfig{Binary: binary, Image: image, Format: FormatRaw, CacheDirect: true})

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client, err := s.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if client.Size() != imageSize || client.ReadOnly() {
		t.Fatalf("export: size %d, read-only %v; want %d, writable", client.Size(), client.ReadOnly(), imageSize)
	}

	// More than one request's worth, at an unaligned offset.
	data := make([]byte, nbd.MaxChunk+12345)
	rng := rand.New(rand.NewPCG(7, 7))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	const offset = 1<<20 + 511
	if _, err := client.WriteAt(data, offset); err != nil {
		t.Fatal(err)
	}
	if err := client.Flush(); err != nil {
		t.Fatal(err)
	}
	readBack := make([]byte, len(data))
	if _, err := client.ReadAt(readBack, offset); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readBack, data) {
		t.Fatal("read back through NBD differs from what was written")
	}
	// The file node is exported: the bytes land at the same offset of the file.
	onDisk, err := os.ReadFile(image)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(onDisk[offset:offset+len(data)], data) {
		t.Error("image file does not hold the written bytes at the written offset")
	}

	// The one-shot helpers go through connections of their own.
	if err := s.WriteAt(ctx, []byte("nasmig"), 4096); err != nil {
		t.Fatal(err)
	}
	got, err := s.ReadAt(ctx, 6, 4096)
	if err != nil || string(got) != "nasmig" {
		t.Errorf("ReadAt after WriteAt = %q, %v", got, err)
	}

	if _, err := client.ReadAt(make([]byte, 10), imageSize-5); err == nil {
		t.Error("read past the end of the export accepted")
	}
}

func TestNBDReadOnlyAndUnknownExport(t *testing.T) {
	binary := storageDaemonForTest(t)
	image := filepath.Join(t.TempDir(), "disk.qcow2")
	// A qcow2 image is the file node's content: exported read-only through
	// its format node, the client sees the guest-visible (zero) bytes.
	qemuImg := "qemu-img"
	if env := EnvFromOS(); env.Out != "" {
		qemuImg = env.QEMUImgBinary()
	}
	out, err := exec.Command(qemuImg, "create", "-q", "-f", "qcow2", image, "1M").CombinedOutput()
	if err != nil {
		t.Skipf("skipping: %s cannot create a qcow2 image: %v %s", qemuImg, err, out)
	}
	s := startTestStorage(t, StorageConfig{Binary: binary, Image: image, Format: FormatQcow2, ExportFormatNode: true, ReadOnly: true, ExportName: "ro"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client, err := s.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if client.Size() != 1<<20 || !client.ReadOnly() {
		t.Errorf("export: size %d, read-only %v; want 1 MiB, read-only", client.Size(), client.ReadOnly())
	}
	if _, err := client.WriteAt([]byte{1}, 0); err == nil {
		t.Error("write to a read-only export accepted")
	}
	buf := make([]byte, 4096)
	if _, err := client.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, make([]byte, 4096)) {
		t.Errorf("read of a fresh qcow2 through its format node: %v", err)
	}

	if _, err := nbd.Dial(ctx, "unix", s.Paths.Socket, "no-such-export"); err == nil || !strings.Contains(err.Error(), "no-such-export") {
		t.Errorf("unknown export: %v", err)
	}
}
