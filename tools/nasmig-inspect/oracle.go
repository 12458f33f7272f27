package main

import (
	"bytes"
	"debug/elf"
	"errors"
	"flag"
	"fmt"
	"hash/maphash"
	"io"
	"os"
	"time"

	"nasmig/cshim"
	"nasmig/tools/nasmig-inspect/migstream"
)

// OracleReport is oracle's JSON output.
type OracleReport struct {
	Schema    string       `json:"schema"`
	RAM       string       `json:"ram"`
	Format    string       `json:"format"` // raw or elf
	Pages     uint64       `json:"pages"`
	Zero      uint64       `json:"zero"`
	Identical uint64       `json:"identical"` // byte-identical to some disk block
	Other     uint64       `json:"other"`
	Shares    OracleShares `json:"shares"`
	// TailBytes is a partial page at the end of the dump, not counted.
	TailBytes uint64 `json:"tail_bytes"`
	// Collisions counts pages whose 64-bit hash matched an indexed block
	// that differs byte for byte (counted as other: an identical block
	// hidden behind such a collision would be missed, with probability
	// about blocks^2 / 2^64).
	Collisions uint64        `json:"collisions"`
	Disks      []OracleDisk  `json:"disks"`
	Stream     *OracleStream `json:"stream,omitempty"`
	Seconds    float64       `json:"seconds"`
}

// OracleShares are the page kinds' shares of all pages.
type OracleShares struct {
	Zero      float64 `json:"zero"`
	Identical float64 `json:"identical"`
	Other     float64 `json:"other"`
}

// OracleDisk is one indexed disk.
type OracleDisk struct {
	Path       string `json:"path"`
	Size       int64  `json:"size"`
	Blocks     uint64 `json:"blocks"`      // whole 4 KiB blocks
	ZeroBlocks uint64 `json:"zero_blocks"` // not indexed: zero pages are counted as zero
}

// OracleStream compares a stream's references with the identical pages.
type OracleStream struct {
	Path string `json:"path"`
	Refs uint64 `json:"refs"` // every reference record
	// FinalRefs counts pages whose last record in the stream is a
	// reference (the pages the destination fills from disk).
	FinalRefs uint64 `json:"final_refs"`
	// Coverage is FinalRefs / Identical.
	Coverage float64 `json:"coverage"`
}

// blockIndex maps a block's 64-bit hash to its first place: disk<<48 | block.
type blockIndex struct {
	seed  maphash.Seed
	m     map[uint64]uint64
	disks []*image
	paths []string
}

const oracleChunk = 1 << 20

var zeroPage = make([]byte, cshim.PageSize)

func cmdOracle(args []string, e env) (int, error) {
	fs := flag.NewFlagSet("oracle", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "JSON output (schema nasmig-inspect/1)")
	ram := fs.String("ram", "", "guest RAM `DUMP`: raw (pmemsave) or ELF (dump-guest-memory)")
	stream := fs.String("stream", "", "migration stream `FILE` whose references to compare")
	var disks multiFlag
	fs.Var(&disks, "disk", "disk image `PATH` or NBD URI (repeat)")
	if _, err := parseArgs(fs, args, 0); err != nil {
		return exitBad, err
	}
	if *ram == "" || len(disks) == 0 {
		return exitBad, fmt.Errorf("%w: --ram DUMP and at least one --disk PATH are needed", errUsage)
	}
	prog := newProgress(e.stderrFile)
	start := time.Now()
	rep := &OracleReport{Schema: migstream.Schema, RAM: *ram, Disks: []OracleDisk{}}

	idx := &blockIndex{seed: maphash.MakeSeed(), m: map[uint64]uint64{}}
	defer func() {
		for _, f := range idx.disks {
			f.Close()
		}
	}()
	for i, path := range disks {
		d, err := idx.add(path, prog, fmt.Sprintf("indexing disk %d/%d", i+1, len(disks)))
		if err != nil {
			return exitBad, err
		}
		rep.Disks = append(rep.Disks, d)
	}
	if err := classify(*ram, idx, rep, prog); err != nil {
		return exitBad, err
	}
	prog.done()
	if rep.Pages > 0 {
		n := float64(rep.Pages)
		rep.Shares = OracleShares{Zero: float64(rep.Zero) / n, Identical: float64(rep.Identical) / n, Other: float64(rep.Other) / n}
	}
	if *stream != "" {
		st, err := streamRefs(*stream, e)
		if err != nil {
			return exitBad, err
		}
		if rep.Identical > 0 {
			st.Coverage = float64(st.FinalRefs) / float64(rep.Identical)
		}
		rep.Stream = st
	}
	rep.Seconds = time.Since(start).Seconds()
	if *asJSON {
		if err := writeJSON(e.stdout, rep); err != nil {
			return exitBad, err
		}
	} else {
		printOracle(e.stdout, rep)
	}
	return exitOK, nil
}

// add indexes every non-zero 4 KiB-aligned block of a disk image.
func (x *blockIndex) add(path string, prog *progress, label string) (OracleDisk, error) {
	d := OracleDisk{Path: path}
	if len(x.disks) >= 1<<15 {
		return d, fmt.Errorf("too many disks")
	}
	im, err := openImage(path)
	if err != nil {
		return d, fmt.Errorf("--disk: %w", err)
	}
	x.disks = append(x.disks, im)
	x.paths = append(x.paths, path)
	d.Size = im.size
	f := io.NewSectionReader(im, 0, im.size)
	disk := uint64(len(x.disks) - 1)
	buf := make([]byte, oracleChunk)
	var off int64
	for {
		n, err := io.ReadFull(f, buf)
		n -= n % cshim.PageSize // a partial last block is no aligned block
		for p := 0; p < n; p += cshim.PageSize {
			blk := buf[p : p+cshim.PageSize]
			d.Blocks++
			if bytes.Equal(blk, zeroPage) {
				d.ZeroBlocks++
				continue
			}
			h := maphash.Bytes(x.seed, blk)
			if _, dup := x.m[h]; !dup {
				x.m[h] = disk<<48 | uint64(off+int64(p))/cshim.PageSize
			}
		}
		off += int64(n)
		prog.show(label, off, d.Size)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return d, nil
			}
			return d, fmt.Errorf("--disk %s: %w", path, err)
		}
	}
}

// match reports whether page is byte-identical to an indexed block.
func (x *blockIndex) match(page, scratch []byte) (found, collision bool, err error) {
	loc, ok := x.m[maphash.Bytes(x.seed, page)]
	if !ok {
		return false, false, nil
	}
	disk := loc >> 48
	if _, err := x.disks[disk].ReadAt(scratch, int64(loc&(1<<48-1))*cshim.PageSize); err != nil {
		return false, false, fmt.Errorf("re-reading %s: %w", x.paths[disk], err)
	}
	if bytes.Equal(page, scratch) {
		return true, false, nil
	}
	return false, true, nil
}

// segment is a stretch of guest RAM in the dump.
type segment struct {
	r    io.ReaderAt
	off  int64
	size int64
}

// ramSegments opens a raw dump (one segment) or an ELF core's PT_LOAD
// segments.
func ramSegments(f *os.File) ([]segment, string, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, "", err
	}
	var magic [4]byte
	if _, err := f.ReadAt(magic[:], 0); err == nil && string(magic[:]) == elf.ELFMAG {
		ef, err := elf.NewFile(f)
		if err != nil {
			return nil, "", fmt.Errorf("ELF dump: %w", err)
		}
		var segs []segment
		for _, p := range ef.Progs {
			if p.Type == elf.PT_LOAD && p.Filesz > 0 {
				segs = append(segs, segment{r: f, off: int64(p.Off), size: int64(p.Filesz)})
			}
		}
		return segs, "elf", nil
	}
	return []segment{{r: f, off: 0, size: st.Size()}}, "raw", nil
}

func classify(path string, idx *blockIndex, rep *OracleReport, prog *progress) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("--ram: %w", err)
	}
	defer f.Close()
	segs, format, err := ramSegments(f)
	if err != nil {
		return fmt.Errorf("--ram %s: %w", path, err)
	}
	rep.Format = format
	var total, done int64
	for _, s := range segs {
		total += s.size
	}
	buf := make([]byte, oracleChunk)
	scratch := make([]byte, cshim.PageSize)
	for _, s := range segs {
		for pos := int64(0); pos < s.size; {
			n := int(min(int64(len(buf)), s.size-pos))
			if _, err := s.r.ReadAt(buf[:n], s.off+pos); err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("--ram %s at %d: %w", path, s.off+pos, err)
			}
			pages := n - n%cshim.PageSize
			rep.TailBytes += uint64(n - pages)
			for p := 0; p < pages; p += cshim.PageSize {
				page := buf[p : p+cshim.PageSize]
				rep.Pages++
				if bytes.Equal(page, zeroPage) {
					rep.Zero++
					continue
				}
				ok, coll, err := idx.match(page, scratch)
				if err != nil {
					return err
				}
				switch {
				case ok:
					rep.Identical++
				default:
					if coll {
						rep.Collisions++
					}
					rep.Other++
				}
			}
			pos += int64(n)
			done += int64(n)
			prog.show("classifying RAM", done, total)
		}
	}
	return nil
}

// streamRefs counts a stream's references and the pages whose last record
// is one.
func streamRefs(path string, e env) (*OracleStream, error) {
	r, closeIt, err := openInput(path, e)
	if err != nil {
		return nil, fmt.Errorf("--stream: %w", err)
	}
	defer closeIt()
	lastIsRef := map[pageKey]bool{}
	st := &OracleStream{Path: path}
	_, err = migstream.Decode(r, migstream.Options{OnPage: func(p migstream.Page) error {
		k := pageKey{p.Block, p.Offset}
		switch p.Kind {
		case migstream.PageRef:
			st.Refs++
			lastIsRef[k] = true
		case migstream.PageXBZRLE:
			// patches the page: a filled reference stays the base
		default:
			delete(lastIsRef, k)
		}
		return nil
	}})
	if err != nil {
		return nil, fmt.Errorf("--stream %s: %w", path, err)
	}
	st.FinalRefs = uint64(len(lastIsRef))
	return st, nil
}

func printOracle(w io.Writer, rep *OracleReport) {
	fmt.Fprintf(w, "oracle %s (%s): %d pages of 4 KiB (%s)\n", rep.RAM, rep.Format, rep.Pages, mib(rep.Pages*cshim.PageSize))
	fmt.Fprintf(w, "  zero       %10d  %s\n", rep.Zero, pct(rep.Zero, rep.Pages))
	fmt.Fprintf(w, "  identical  %10d  %s  (byte-identical to a 4 KiB-aligned disk block)\n", rep.Identical, pct(rep.Identical, rep.Pages))
	fmt.Fprintf(w, "  other      %10d  %s\n", rep.Other, pct(rep.Other, rep.Pages))
	if rep.TailBytes > 0 {
		fmt.Fprintf(w, "  (%d bytes of partial pages not counted)\n", rep.TailBytes)
	}
	if rep.Collisions > 0 {
		fmt.Fprintf(w, "  %d pages matched a block's 64-bit hash but not its bytes (counted as other)\n", rep.Collisions)
	}
	for _, d := range rep.Disks {
		fmt.Fprintf(w, "disk %s: %d bytes, %d blocks, %d of them zero (not indexed)\n", d.Path, d.Size, d.Blocks, d.ZeroBlocks)
	}
	if s := rep.Stream; s != nil {
		fmt.Fprintf(w, "stream %s: %d references, %d pages whose last record is a reference; coverage %s of the identical pages\n",
			s.Path, s.Refs, s.FinalRefs, pct(s.FinalRefs, rep.Identical))
	}
	fmt.Fprintf(w, "%.2fs\n", rep.Seconds)
}
