package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"nasmig/cshim"
	"nasmig/tools/nasmig-inspect/migstream"
	"nasmig/tools/nbd"
)

// VerifyReport is verify's JSON output.
type VerifyReport struct {
	Schema string        `json:"schema"`
	Stream string        `json:"stream"`
	Disks  []*VerifyDisk `json:"disks"`
	// Refs counts every reference; Stale those a later record of the
	// stream replaced (page, zero page or another reference).
	Refs       uint64       `json:"refs"`
	Checked    uint64       `json:"checked"`
	Matched    uint64       `json:"matched"`
	Mismatched uint64       `json:"mismatched"`
	StaleBad   uint64       `json:"stale_mismatched"` // mismatches of stale references (not failures)
	OutOfRange uint64       `json:"out_of_range"`
	Unchecked  uint64       `json:"unchecked"` // references to disks without --disk
	Failures   []VerifyFail `json:"failures"`
	BytesRead  uint64       `json:"bytes_read"`
	Reads      uint64       `json:"reads"` // read requests (neighbouring blocks are read together)
	Seconds    float64      `json:"seconds"`
	OK         bool         `json:"ok"`
}

// VerifyDisk is one disk of the setup and what was found on its image.
type VerifyDisk struct {
	Index      uint8  `json:"index"`
	Filename   string `json:"filename"`
	NodeName   string `json:"node_name"`
	Size       uint64 `json:"size"`
	Image      string `json:"image,omitempty"`
	ImageSize  int64  `json:"image_size,omitempty"`
	Refs       uint64 `json:"refs"`
	Matched    uint64 `json:"matched"`
	Mismatched uint64 `json:"mismatched"`
	OutOfRange uint64 `json:"out_of_range"`
	// FromTable: Image is the stream's own filename (no --disk given);
	// ImageError says why that name did not open here.
	FromTable  bool   `json:"from_table,omitempty"`
	ImageError string `json:"image_error,omitempty"`
}

// VerifyFail is a reference that did not verify.
type VerifyFail struct {
	StreamOffset int64  `json:"stream_offset"`
	RAMBlock     string `json:"ramblock"`
	RAMOffset    uint64 `json:"ram_offset"`
	Disk         uint8  `json:"disk"`
	DiskOffset   uint64 `json:"disk_offset"`
	Reason       string `json:"reason"` // mismatch, out-of-range, no-image
	Stale        bool   `json:"stale"`
}

type refRec struct {
	p     migstream.Page
	stale bool
}

type pageKey struct {
	block string
	off   uint64
}

func cmdVerify(args []string, e env) (int, error) {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "JSON output (schema nasmig-inspect/1)")
	var diskArgs multiFlag
	fs.Var(&diskArgs, "disk", "INDEX_OR_NAME=PATH_OR_NBD_URI: where a disk of the stream is read here (repeat)")
	noDefault := fs.Bool("no-default-disks", false, "do not open disks without --disk at the filename the stream names")
	pos, err := parseArgs(fs, args, 1)
	if err != nil {
		return exitBad, err
	}
	r, done, err := openInput(pos[0], e)
	if err != nil {
		return exitBad, err
	}
	defer done()

	// Collect the references, and which of them a later record replaced.
	var refs []refRec
	last := map[pageKey]int{}
	onPage := func(p migstream.Page) error {
		k := pageKey{p.Block, p.Offset}
		if i, ok := last[k]; ok && p.Kind != migstream.PageXBZRLE {
			refs[i].stale = true // XBZRLE patches the filled page: it stays needed
			delete(last, k)
		}
		if p.Kind == migstream.PageRef {
			refs = append(refs, refRec{p: p})
			last[k] = len(refs) - 1
		}
		return nil
	}
	rep, err := migstream.Decode(r, migstream.Options{OnPage: onPage})
	if err != nil {
		return exitBad, err
	}
	if rep.Stopped != "" && !rep.RAMComplete {
		return exitBad, fmt.Errorf("the stream's RAM section is incomplete: %s", rep.Stopped)
	}
	if len(refs) > 0 && rep.Setup == nil {
		return exitBad, errors.New("the stream holds references but no nasmig setup section: nothing to verify them with")
	}

	vr := &VerifyReport{Schema: migstream.Schema, Stream: pos[0], Disks: []*VerifyDisk{}, Failures: []VerifyFail{}, Refs: uint64(len(refs))}
	byIndex := map[uint8]*VerifyDisk{}
	if rep.Setup != nil {
		for _, d := range rep.Setup.Disks {
			vd := &VerifyDisk{Index: d.Index, Filename: d.Filename, NodeName: d.NodeName, Size: d.Size}
			vr.Disks = append(vr.Disks, vd)
			byIndex[d.Index] = vd
		}
	}
	images := map[uint8]*image{}
	defer func() {
		for _, im := range images {
			im.Close()
		}
	}()
	for _, a := range diskArgs {
		vd, path, err := matchDisk(a, vr.Disks)
		if err != nil {
			return exitBad, err
		}
		im, err := openImage(path)
		if err != nil {
			return exitBad, fmt.Errorf("--disk %s: %w", a, err)
		}
		if old := images[vd.Index]; old != nil {
			old.Close()
		}
		images[vd.Index] = im
		vd.Image, vd.ImageSize = path, im.size
	}
	// A disk without --disk is read where the stream says it was, when that
	// name opens here: the same file on shared storage, or the same export.
	if !*noDefault {
		for _, vd := range vr.Disks {
			if images[vd.Index] != nil || vd.Filename == "" {
				continue
			}
			im, err := openImage(vd.Filename)
			if err != nil {
				vd.ImageError = err.Error()
				continue
			}
			images[vd.Index] = im
			vd.Image, vd.ImageSize, vd.FromTable = vd.Filename, im.size, true
		}
	}

	// The references' hashes are keyed with the migration key, which the
	// setup section carries as a seed: the same key the destination uses.
	if rep.Setup != nil {
		cshim.SetMigKey(cshim.ExpandKey(rep.Setup.KeySeed()))
	}
	// Read in disk order: one pass over each image.
	sort.SliceStable(refs, func(i, j int) bool {
		a, b := refs[i].p.Ref, refs[j].p.Ref
		return a.Disk < b.Disk || a.Disk == b.Disk && a.Offset < b.Offset
	})
	start := time.Now()
	win := window{buf: make([]byte, verifyWindow)}
	for i, rr := range refs {
		ref := rr.p.Ref
		fail := func(reason string) {
			vr.Failures = append(vr.Failures, VerifyFail{StreamOffset: rr.p.StreamOffset, RAMBlock: rr.p.Block, RAMOffset: rr.p.Offset,
				Disk: ref.Disk, DiskOffset: ref.Offset, Reason: reason, Stale: rr.stale})
		}
		vd := byIndex[ref.Disk]
		im := images[ref.Disk]
		if vd == nil || im == nil {
			vr.Unchecked++
			fail("no-image")
			continue
		}
		vd.Refs++
		if ref.Offset > vd.Size || vd.Size-ref.Offset < cshim.PageSize || ref.Offset+cshim.PageSize > uint64(vd.ImageSize) {
			vd.OutOfRange++
			vr.OutOfRange++
			fail("out-of-range")
			continue
		}
		block := win.block(ref.Disk, ref.Offset)
		if block == nil {
			n, err := win.fill(im, refs[i:], uint64(vd.ImageSize))
			if err != nil {
				return exitBad, fmt.Errorf("reading disk %d (%s) at %d: %w", ref.Disk, vd.Image, ref.Offset, err)
			}
			vr.BytesRead += n
			vr.Reads++
			block = win.block(ref.Disk, ref.Offset)
		}
		vr.Checked++
		if cshim.HashPageMig(block) == ref.Hash {
			vd.Matched++
			vr.Matched++
			continue
		}
		if rr.stale {
			vr.StaleBad++
		} else {
			vd.Mismatched++
			vr.Mismatched++
		}
		fail("mismatch")
	}
	vr.Seconds = time.Since(start).Seconds()
	sort.Slice(vr.Failures, func(i, j int) bool { return vr.Failures[i].StreamOffset < vr.Failures[j].StreamOffset })
	vr.OK = vr.Mismatched == 0 && vr.OutOfRange == 0 && vr.Unchecked == 0

	if *asJSON {
		if err := writeJSON(e.stdout, vr); err != nil {
			return exitBad, err
		}
	} else {
		printVerify(e.stdout, vr)
	}
	if !vr.OK {
		return exitMismatch, fmt.Errorf("%d references do not match, %d point past their disk's end, %d were not checked (no --disk for their disk)",
			vr.Mismatched, vr.OutOfRange, vr.Unchecked)
	}
	return exitOK, nil
}

// matchDisk resolves INDEX_OR_NAME=PATH against the setup's disk table:
// an index, a filename or a node name.
func matchDisk(arg string, disks []*VerifyDisk) (*VerifyDisk, string, error) {
	key, path, ok := strings.Cut(arg, "=")
	// A filename may hold '=' (an NBD URI's query): cut at the last one
	// that leaves a known name before it.
	for i := len(arg) - 1; i > 0; i-- {
		if arg[i] == '=' {
			if d := findDisk(arg[:i], disks); d != nil {
				return d, arg[i+1:], nil
			}
		}
	}
	if !ok || key == "" || path == "" {
		return nil, "", fmt.Errorf("%w: --disk %q: want INDEX_OR_NAME=PATH", errUsage, arg)
	}
	var names []string
	for _, d := range disks {
		names = append(names, fmt.Sprintf("%d (%s, node %s)", d.Index, d.Filename, d.NodeName))
	}
	return nil, "", fmt.Errorf("--disk %q: no disk %q in the stream's setup; it has: %s", arg, key, strings.Join(names, "; "))
}

func findDisk(key string, disks []*VerifyDisk) *VerifyDisk {
	if n, err := strconv.ParseUint(key, 10, 8); err == nil {
		for _, d := range disks {
			if uint64(d.Index) == n {
				return d
			}
		}
		return nil
	}
	for _, d := range disks {
		if d.Filename == key || d.NodeName == key {
			return d
		}
	}
	return nil
}

func printVerify(w io.Writer, vr *VerifyReport) {
	fmt.Fprintf(w, "verify %s: %d references\n", vr.Stream, vr.Refs)
	for _, d := range vr.Disks {
		img := "NOT GIVEN (--disk)"
		if d.ImageError != "" {
			img = "NOT GIVEN (--disk), and the stream's filename does not open here: " + d.ImageError
		}
		if d.Image != "" {
			img = fmt.Sprintf("%s (%d bytes)", d.Image, d.ImageSize)
			if d.FromTable {
				img += ", the stream's own filename"
			}
		}
		fmt.Fprintf(w, "  disk %d %s (node %s, %d bytes): image %s\n", d.Index, d.Filename, d.NodeName, d.Size, img)
		fmt.Fprintf(w, "    %d references: %d match, %d do not, %d past the end\n", d.Refs, d.Matched, d.Mismatched, d.OutOfRange)
		if d.Image != "" && d.ImageSize >= 0 && uint64(d.ImageSize) < d.Size {
			fmt.Fprintf(w, "    warning: the image is smaller than the source's disk\n")
		}
	}
	const maxShown = 20
	for i, f := range vr.Failures {
		if i == maxShown {
			fmt.Fprintf(w, "  ... %d more (--json lists all)\n", len(vr.Failures)-maxShown)
			break
		}
		stale := ""
		if f.Stale {
			stale = " (stale: a later record replaced this page, not a failure)"
		}
		fmt.Fprintf(w, "  %s: stream offset %d, RAM block %s offset %#x, disk %d offset %#x%s\n",
			f.Reason, f.StreamOffset, f.RAMBlock, f.RAMOffset, f.Disk, f.DiskOffset, stale)
	}
	rate := 0.0
	if vr.Seconds > 0 {
		rate = float64(vr.BytesRead) / 1e6 / vr.Seconds
	}
	fmt.Fprintf(w, "checked %d: %d match, %d do not (+%d stale), %d past the end, %d unchecked; %d blocks read (%s) in %d reads, %.2fs, %.0f MB/s\n",
		vr.Checked, vr.Matched, vr.Mismatched, vr.StaleBad, vr.OutOfRange, vr.Unchecked, vr.BytesRead/cshim.PageSize, mib(vr.BytesRead), vr.Reads, vr.Seconds, rate)
	if vr.OK {
		fmt.Fprintln(w, "OK: every reference matches its block")
	} else {
		fmt.Fprintln(w, "FAILED")
	}
}

// image is a disk's content as verify reads it: a raw file or an NBD export.
type image struct {
	io.ReaderAt
	size  int64
	close func() error
}

func (im *image) Close() error { return im.close() }

// openImage opens a raw image file or an NBD URI (QEMU's forms). A
// reference addresses the node whose filename the stream names: for qcow2
// on NBD that is the export of the protocol (file) node, for a local qcow2
// the file itself.
func openImage(name string) (*image, error) {
	if nbd.IsURI(name) {
		target, err := nbd.ParseURI(name)
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := nbd.Dial(ctx, target.Network, target.Addr, target.Export)
		if err != nil {
			return nil, err
		}
		return &image{ReaderAt: c, size: c.Size(), close: c.Close}, nil
	}
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	size := st.Size()
	if st.Mode()&os.ModeDevice != 0 {
		if size, err = f.Seek(0, io.SeekEnd); err != nil {
			f.Close()
			return nil, fmt.Errorf("%s: size of the device: %w", name, err)
		}
	} else if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s: not a file or a block device", name)
	}
	return &image{ReaderAt: f, size: size, close: f.Close}, nil
}

// verifyWindow bounds one read: blocks referenced close together are read
// at once (over NBD one request per block would cost a round trip each).
const (
	verifyWindow = 1 << 20
	// verifyMaxGap: a gap larger than this between referenced blocks ends a
	// read rather than reading the unreferenced blocks in it.
	verifyMaxGap = 64 << 10
)

// window holds the bytes of one read: disk, from start, len(data).
type window struct {
	disk  uint8
	start uint64
	data  []byte
	buf   []byte
}

// block returns the 4 KiB at off of disk when the window holds it.
func (w *window) block(disk uint8, off uint64) []byte {
	if w.data == nil || disk != w.disk || off < w.start || off+cshim.PageSize > w.start+uint64(len(w.data)) {
		return nil
	}
	return w.data[off-w.start : off-w.start+cshim.PageSize]
}

// fill reads from the first reference's block through the last following
// reference (same disk, in offset order) that fits the window without a
// large gap, clipped to the image's size; it returns the bytes read.
func (w *window) fill(im io.ReaderAt, refs []refRec, imageSize uint64) (uint64, error) {
	first := refs[0].p.Ref
	end := first.Offset + cshim.PageSize
	for _, r := range refs[1:] {
		ref := r.p.Ref
		if ref.Disk != first.Disk || ref.Offset+cshim.PageSize > imageSize ||
			ref.Offset+cshim.PageSize-first.Offset > uint64(len(w.buf)) || ref.Offset > end+verifyMaxGap {
			break
		}
		end = max(end, ref.Offset+cshim.PageSize)
	}
	w.data = nil
	data := w.buf[:end-first.Offset]
	if _, err := im.ReadAt(data, int64(first.Offset)); err != nil && !errors.Is(err, io.EOF) {
		return 0, err
	}
	w.disk, w.start, w.data = first.Disk, first.Offset, data
	return uint64(len(data)), nil
}
