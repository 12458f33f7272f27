package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// GuestPageSize is the unit in which RAM differences are reported.
const GuestPageSize = 4096

// maxReportedPages bounds RAMDiff.FirstPages: enough to see a pattern, small
// enough for a test log.
const maxReportedPages = 16

// compareChunk is how much of each dump is held in memory at a time: dumps
// are as large as guest RAM.
const compareChunk = 1 << 20

// RAMRange is a range of guest physical addresses backed by RAM.
type RAMRange struct {
	GPA  uint64
	Size uint64
}

// Q35RAMRanges returns where QEMU's q35 machine (default
// max-ram-below-4g) places memBytes of RAM: everything from address 0 when
// it fits below 0xb0000000, otherwise 2 GiB low and the rest from 4 GiB.
// pmemsave reads guest physical addresses, so a dump of [0, memBytes) would
// read the PCI hole instead of the top of RAM in large guests.
func Q35RAMRanges(memBytes uint64) []RAMRange {
	const lowLimit, splitLow, highStart = 0xb0000000, 0x80000000, 1 << 32
	if memBytes < lowLimit {
		return []RAMRange{{GPA: 0, Size: memBytes}}
	}
	return []RAMRange{{GPA: 0, Size: splitLow}, {GPA: highStart, Size: memBytes - splitLow}}
}

// PageDiff is one guest page whose bytes differ between two dumps.
type PageDiff struct {
	GPA            uint64 // guest physical address of the page
	DifferingBytes int    // how many of its 4096 bytes differ
}

// RAMDiff is the result of comparing two guests' RAM.
type RAMDiff struct {
	ComparedBytes  uint64
	DifferingPages uint64     // total count of differing pages
	FirstPages     []PageDiff // the first maxReportedPages of them, by address
}

// Equal says whether the compared RAM was byte-identical.
func (d RAMDiff) Equal() bool { return d.DifferingPages == 0 }

// String summarises the difference for a test log.
func (d RAMDiff) String() string {
	if d.Equal() {
		return fmt.Sprintf("RAM identical (%d MiB compared)", d.ComparedBytes>>20)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "RAM differs in %d of %d pages", d.DifferingPages, d.ComparedBytes/GuestPageSize)
	for _, page := range d.FirstPages {
		fmt.Fprintf(&b, "\n  GPA %#012x: %d bytes differ", page.GPA, page.DifferingBytes)
	}
	if d.DifferingPages > uint64(len(d.FirstPages)) {
		fmt.Fprintf(&b, "\n  ... and %d more pages", d.DifferingPages-uint64(len(d.FirstPages)))
	}
	return b.String()
}

func (d *RAMDiff) add(other RAMDiff) {
	d.ComparedBytes += other.ComparedBytes
	d.DifferingPages += other.DifferingPages
	for _, page := range other.FirstPages {
		if len(d.FirstPages) < maxReportedPages {
			d.FirstPages = append(d.FirstPages, page)
		}
	}
}

// CompareRAMDumps compares two dump files of the same RAM range byte for
// byte, streaming, and reports the differing 4 KiB pages; baseGPA is the
// guest physical address of the files' first byte. Files of different sizes
// are an error, not a difference: they mean the dumps are not comparable.
func CompareRAMDumps(pathA, pathB string, baseGPA uint64) (RAMDiff, error) {
	fileA, err := os.Open(pathA)
	if err != nil {
		return RAMDiff{}, fmt.Errorf("compare ram: %w", err)
	}
	defer fileA.Close()
	fileB, err := os.Open(pathB)
	if err != nil {
		return RAMDiff{}, fmt.Errorf("compare ram: %w", err)
	}
	defer fileB.Close()
	infoA, err := fileA.Stat()
	if err != nil {
		return RAMDiff{}, fmt.Errorf("compare ram: %w", err)
	}
	infoB, err := fileB.Stat()
	if err != nil {
		return RAMDiff{}, fmt.Errorf("compare ram: %w", err)
	}
	if infoA.Size() != infoB.Size() {
		return RAMDiff{}, fmt.Errorf("compare ram: %s has %d bytes, %s has %d", pathA, infoA.Size(), pathB, infoB.Size())
	}
	return compareRAMStreams(fileA, fileB, baseGPA)
}

func compareRAMStreams(a, b io.Reader, baseGPA uint64) (RAMDiff, error) {
	var diff RAMDiff
	bufA := make([]byte, compareChunk)
	bufB := make([]byte, compareChunk)
	offset := uint64(0)
	for {
		nA, errA := io.ReadFull(a, bufA)
		nB, errB := io.ReadFull(b, bufB)
		if nA != nB {
			return diff, fmt.Errorf("compare ram: dumps end at different offsets (%d and %d)", offset+uint64(nA), offset+uint64(nB))
		}
		for _, err := range []error{errA, errB} {
			if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
				return diff, fmt.Errorf("compare ram at offset %d: %w", offset, err)
			}
		}
		chunkA, chunkB := bufA[:nA], bufB[:nB]
		// Whole-chunk equality is the common case and the fast path.
		if !bytes.Equal(chunkA, chunkB) {
			for pageStart := 0; pageStart < nA; pageStart += GuestPageSize {
				pageEnd := min(pageStart+GuestPageSize, nA)
				pageA, pageB := chunkA[pageStart:pageEnd], chunkB[pageStart:pageEnd]
				if bytes.Equal(pageA, pageB) {
					continue
				}
				differing := 0
				for i := range pageA {
					if pageA[i] != pageB[i] {
						differing++
					}
				}
				diff.DifferingPages++
				if len(diff.FirstPages) < maxReportedPages {
					diff.FirstPages = append(diff.FirstPages, PageDiff{GPA: baseGPA + offset + uint64(pageStart), DifferingBytes: differing})
				}
			}
		}
		diff.ComparedBytes += uint64(nA)
		offset += uint64(nA)
		if errA != nil { // EOF or short last chunk, on both sides (nA == nB)
			return diff, nil
		}
	}
}

// RAMDumpPaths names the dump files of vm in dir, one per RAM range.
func RAMDumpPaths(dir string, vm *VM) []string {
	ranges := Q35RAMRanges(uint64(vm.Config.MemMiB) << 20)
	paths := make([]string, len(ranges))
	for i := range ranges {
		paths[i] = filepath.Join(dir, fmt.Sprintf("%s.ram%d", vm.Config.Name, i))
	}
	return paths
}

// DumpRAM writes vm's guest RAM to the files RAMDumpPaths names, with QMP
// pmemsave. The guest should be paused, or the dump is not a snapshot.
func DumpRAM(ctx context.Context, vm *VM, dir string) ([]string, error) {
	ranges := Q35RAMRanges(uint64(vm.Config.MemMiB) << 20)
	paths := RAMDumpPaths(dir, vm)
	for i, r := range ranges {
		absPath, err := filepath.Abs(paths[i])
		if err != nil {
			return nil, fmt.Errorf("dump ram of %s: %w", vm.Config.Name, err)
		}
		args := map[string]any{"val": r.GPA, "size": r.Size, "filename": absPath}
		if _, err := vm.QMP.Execute(ctx, "pmemsave", args); err != nil {
			return nil, fmt.Errorf("dump ram of %s (GPA %#x, %d MiB): %w", vm.Config.Name, r.GPA, r.Size>>20, err)
		}
	}
	return paths, nil
}

// CompareGuestRAM dumps the RAM of both VMs into dir and compares it. Both
// should be paused: after a migration the source is in "postmigrate" and a
// destination started with -S is "paused". It returns the dump files too,
// so the caller can delete them (they are as large as guest RAM).
func CompareGuestRAM(ctx context.Context, src, dst *VM, dir string) (RAMDiff, []string, error) {
	if src.Config.MemMiB != dst.Config.MemMiB {
		return RAMDiff{}, nil, fmt.Errorf("compare ram: %s has %d MiB, %s has %d MiB",
			src.Config.Name, src.Config.MemMiB, dst.Config.Name, dst.Config.MemMiB)
	}
	var files []string
	srcFiles, err := DumpRAM(ctx, src, dir)
	files = append(files, srcFiles...)
	if err != nil {
		return RAMDiff{}, files, err
	}
	dstFiles, err := DumpRAM(ctx, dst, dir)
	files = append(files, dstFiles...)
	if err != nil {
		return RAMDiff{}, files, err
	}
	var total RAMDiff
	for i, r := range Q35RAMRanges(uint64(src.Config.MemMiB) << 20) {
		diff, err := CompareRAMDumps(srcFiles[i], dstFiles[i], r.GPA)
		if err != nil {
			return total, files, err
		}
		total.add(diff)
	}
	return total, files, nil
}
