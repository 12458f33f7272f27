package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"nasmig/cshim"
	"nasmig/plugin/content"
	"nasmig/tests/harness"
	"nasmig/tools/nasmig-xl/xenstream"
)

const xlBanner = "xl migration receiver ready, send binary domain data.\n"

// contentIndexFlow runs the Xen path of nasmig on this test bed, where no
// Xen host exists: the source's library (content-index=...) indexed what
// the guest read by content; the guest is paused and its RAM becomes the
// PAGE_DATA records of a libxc stream (as libxenguest would send it for a
// PV guest of this RAM), which goes through out/nasmig-xl's two halves
// into a command standing for xl migrate-receive.  That command must get
// the stream byte for byte; references must cover the page cache; and
// blocks overwritten behind QEMU's back after the index saw them must
// come from the sending half, not from the disk.
func contentIndexFlow(t *testing.T, ctx context.Context, p *pair) {
	if _, err := p.src.QMP.Execute(ctx, "stop", nil); err != nil {
		t.Fatal(err)
	}
	dumps, err := harness.DumpRAM(ctx, p.src, p.run.Dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dumps {
		p.run.Scratch(d)
	}
	ranges := harness.Q35RAMRanges(uint64(p.src.Config.MemMiB) << 20)
	sock := filepath.Join(p.run.Path("content"), strconv.Itoa(p.src.PID())+".sock")
	c, err := content.Dial(sock)
	if err != nil {
		t.Fatalf("the source's content socket: %v", err)
	}
	t.Logf("content index of the source (pid %d): %d blocks, disks %+v", c.Hello.PID, c.Hello.Blocks, c.Hello.Disks)
	if c.Hello.Blocks*4096 < uint64(guestMiB)<<20 {
		t.Errorf("the index holds %d blocks, fewer than the %d MiB the guest read", c.Hello.Blocks, guestMiB)
	}
	stale := overwriteIndexedBlocks(t, c, dumps, p.image, 3)
	c.Close()

	gen := func(w io.Writer) error {
		var b xenstream.Builder
		b.XLHeader([]byte(fmt.Sprintf(`{"c_info":{"name":"e2e"},"disks":[{"pdev_path":%q,"vdev":"xvda","backend":"qdisk","format":"raw"}]}`, p.image)))
		b.LibxlHeader()
		b.Record(xenstream.LibxlLibxcContext, nil)
		b.LibxcHeaders(1)
		b.Record(2, []byte{8, 4, 0, 0, 0, 0, 0, 0}) // X86_PV_INFO: 64-bit, 4 levels
		if _, err := w.Write(b.Bytes); err != nil {
			return err
		}
		for i, path := range dumps {
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			buf := make([]byte, 1024*4096)
			for pfn := ranges[i].GPA >> 12; ; {
				n, err := io.ReadFull(f, buf)
				if n == 0 {
					break
				}
				pfns := make([]uint64, n/4096)
				for k := range pfns {
					pfns[k] = pfn + uint64(k)
				}
				pfn += uint64(len(pfns))
				b.Bytes = b.Bytes[:0]
				b.PageData(pfns, buf[:len(pfns)*4096])
				if _, werr := w.Write(b.Bytes); werr != nil {
					f.Close()
					return werr
				}
				if err != nil {
					break
				}
			}
			f.Close()
		}
		b.Bytes = b.Bytes[:0]
		b.Record(xenstream.LibxcEnd, nil)
		b.Record(xenstream.LibxlEnd, nil)
		b.Bytes = append(b.Bytes, "domain is yours, you are cleared to unpause"...)
		_, err := w.Write(b.Bytes)
		return err
	}

	sumFile := p.run.Path("received.sha256")
	cmd := exec.CommandContext(ctx, filepath.Join(p.env.Out, "nasmig-xl"), "--transport=local", "--content-dir="+p.run.Path("content"),
		"localhost", "sh", "-c", `printf '%s' "$1"; exec sha256sum > "$2"`, "sh", xlBanner, sumFile)
	var xlSide, logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &xlSide, &logs
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	genErr := gen(io.MultiWriter(in, h))
	in.Close()
	err = cmd.Wait()
	t.Logf("nasmig-xl:\n%s", logs.String())
	if genErr != nil || err != nil {
		t.Fatalf("nasmig-xl: %v (writing the stream: %v)", err, genErr)
	}
	if xlSide.String() != xlBanner {
		t.Errorf("xl's side got %q, want the receiver's banner", xlSide.String())
	}
	got, err := os.ReadFile(sumFile)
	if err != nil {
		t.Fatal(err)
	}
	want := hex.EncodeToString(h.Sum(nil))
	if !strings.HasPrefix(string(got), want) {
		t.Fatalf("xl migrate-receive got a stream with sha256 %.64s, the source wrote %s", got, want)
	}
	refs := logFigure(t, logs.String(), "send", "references")
	verified := logFigure(t, logs.String(), "receive", "verified")
	bad := logFigure(t, logs.String(), "receive", "did-not-verify")
	zero := logFigure(t, logs.String(), "send", "zero")
	t.Logf("stream of %d MiB identical on both sides; %d references (%.0f MiB), %d zero pages, %d verified, %d did not verify (%d stale pages expected)",
		p.src.Config.MemMiB, refs, float64(refs)/256, zero, verified, bad, stale)
	if refs*4096 < int64(guestMiB)<<20*9/10 {
		t.Errorf("%d references: less than 90%% of the %d MiB page cache", refs, guestMiB)
	}
	if bad != int64(stale) || verified != refs-bad {
		t.Errorf("%d references, %d verified, %d did not: want exactly the %d stale pages to fail", refs, verified, bad, stale)
	}
}

// overwriteIndexedBlocks finds n blocks the index holds for pages of the
// RAM dumps, overwrites them in the image behind QEMU's back, and returns
// how many pages of the dumps held their old contents.
func overwriteIndexedBlocks(t *testing.T, c *content.Client, dumps []string, image string, n int) int {
	t.Helper()
	cshim.SetKey(cshim.ExpandKey(c.Hello.KeySeed))
	old := map[[2]uint64]bool{}
	var blocks []uint64
	hashes := make([]uint64, 1024)
	full := make([][2]uint64, 1024)
	locs := make([]content.Loc, 1024)
	found := make([]bool, 1024)
	buf := make([]byte, 1024*4096)
	scan := func(visit func(page []byte, h [2]uint64, loc content.Loc, ok bool)) {
		for _, path := range dumps {
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			for {
				k, err := io.ReadFull(f, buf)
				k /= 4096
				for i := 0; i < k; i++ {
					full[i] = cshim.HashPage(buf[i*4096:])
					hashes[i] = full[i][0]
				}
				if k > 0 {
					if err := c.Lookup(hashes[:k], locs, found); err != nil {
						t.Fatal(err)
					}
				}
				for i := 0; i < k; i++ {
					visit(buf[i*4096:(i+1)*4096], full[i], locs[i], found[i])
				}
				if err != nil {
					break
				}
			}
			f.Close()
		}
	}
	scan(func(page []byte, h [2]uint64, loc content.Loc, ok bool) {
		if ok && len(blocks) < n && !old[h] && !bytes.Equal(page, make([]byte, 4096)) {
			old[h] = true
			blocks = append(blocks, loc.Block)
		}
	})
	if len(blocks) < n {
		t.Fatalf("found %d indexed blocks among the guest's pages, want %d", len(blocks), n)
	}
	f, err := os.OpenFile(image, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range blocks {
		if _, err := f.WriteAt(bytes.Repeat([]byte{0x5a}, 4096), int64(b)*4096); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	stale := 0
	scan(func(page []byte, h [2]uint64, loc content.Loc, ok bool) {
		if old[h] {
			stale++
		}
	})
	t.Logf("overwrote blocks %v behind QEMU's back: %d pages of the guest held their old contents", blocks, stale)
	return stale
}

// logFigure reads key=N from nasmig-xl's "done" line of one half.
func logFigure(t *testing.T, logs, half, key string) int64 {
	t.Helper()
	re := regexp.MustCompile(`done .*nasmig-xl=` + half + `\b.*`)
	line := re.FindString(logs)
	m := regexp.MustCompile(`\b` + regexp.QuoteMeta(key) + `=(\d+)`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("no %s= in nasmig-xl's %s summary %q", key, half, line)
	}
	v, _ := strconv.ParseInt(m[1], 10, 64)
	return v
}
