package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"

	"nasmig/tests/guest/internal/gen"
)

// report collects the outcome of one verify command.
type report struct {
	checked int
	fails   []string
}

func (r *report) failf(format string, args ...any) {
	r.fails = append(r.fails, fmt.Sprintf(format, args...))
}

// maxFailLines bounds the FAIL detail lines of one verify answer.
const maxFailLines = 40

// lines returns the protocol lines (without "nasmig: ") answering verify:
// one FAIL line per problem (at most maxFailLines, then a count of the
// rest), then "PASS checked=N" or "FAIL done failures=K checked=N".
func (r *report) lines() []string {
	var out []string
	for i, f := range r.fails {
		if i == maxFailLines {
			out = append(out, fmt.Sprintf("FAIL ... and %d more", len(r.fails)-maxFailLines))
			break
		}
		out = append(out, "FAIL "+f)
	}
	if len(r.fails) == 0 {
		return append(out, fmt.Sprintf("PASS checked=%d", r.checked))
	}
	return append(out, fmt.Sprintf("FAIL done failures=%d checked=%d", len(r.fails), r.checked))
}

// maxListed is how many problems of one kind are listed one by one; the
// rest are only counted, so one bad file does not flood the console.
const maxListed = 10

// cappedFails reports the first maxListed failures of one check to r and
// counts the rest.
type cappedFails struct {
	r *report
	n int
}

func (c *cappedFails) failf(format string, args ...any) {
	if c.n < maxListed {
		c.r.failf(format, args...)
	}
	c.n++
}

// more reports how many failures were not listed; format ends in a %d for
// that count, after args.
func (c *cappedFails) more(format string, args ...any) {
	if c.n > maxListed {
		c.r.failf(format, append(args, c.n-maxListed)...)
	}
}

// problemLog remembers problems seen while a workload runs, so that the
// next verify reports them. It keeps the first few messages and a count.
type problemLog struct {
	n     int
	first []string
}

func (p *problemLog) addf(format string, args ...any) {
	p.n++
	if len(p.first) < maxListed {
		p.first = append(p.first, fmt.Sprintf(format, args...))
	}
}

func (p *problemLog) report(r *report, what string) {
	for _, m := range p.first {
		r.failf("%s: %s", what, m)
	}
	if p.n > len(p.first) {
		r.failf("%s: %d more problems while running", what, p.n-len(p.first))
	}
}

// blockFile is what the block workloads need of a file; tests use memory.
type blockFile interface {
	io.ReaderAt
	io.WriterAt
}

// blockBook keeps the current version of every 4 KiB block of a file that
// the guest rewrites, so the expected content of every block is known:
// gen.FillBlock(seed, block, version). Version 0 is the data disk's content.
type blockBook struct {
	seed     uint64
	versions []uint32
}

func newBlockBook(seed uint64, blocks int) *blockBook {
	return &blockBook{seed: seed, versions: make([]uint32, blocks)}
}

// expected writes the expected content of block blk into dst (BlockSize).
func (b *blockBook) expected(dst []byte, blk int) {
	gen.FillBlock(dst, b.seed, uint64(blk), b.versions[blk])
}

// bump moves block blk to its next version and returns it.
func (b *blockBook) bump(blk int) uint32 {
	b.versions[blk]++
	return b.versions[blk]
}

// mixedFile is the state of the mixed workload: random 4 KiB overwrites
// with new versions and random read-backs of one file.
type mixedFile struct {
	mu       sync.Mutex
	f        blockFile
	book     *blockBook
	blocks   int
	rng      *rand.Rand
	buf, exp []byte
	reads    uint64
	writes   uint64
	problems problemLog
}

func newMixedFile(f blockFile, seed uint64, blocks int, rngSeed uint64) *mixedFile {
	return &mixedFile{
		f:      f,
		book:   newBlockBook(seed, blocks),
		blocks: blocks,
		rng:    rand.New(rand.NewPCG(rngSeed, 0x6d69786564)),
		buf:    make([]byte, gen.BlockSize),
		exp:    make([]byte, gen.BlockSize),
	}
}

// load reads the whole file (which brings it into the page cache) and
// rewrites every block that does not hold version 0, e.g. blocks left over
// from an earlier boot on the same image. It returns how many it rewrote.
func (m *mixedFile) load(chunk int) (restored int, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	chunk = max(chunk&^(gen.BlockSize-1), gen.BlockSize)
	buf := make([]byte, chunk)
	for first := 0; first < m.blocks; first += chunk / gen.BlockSize {
		n := min(chunk/gen.BlockSize, m.blocks-first)
		data := buf[:n*gen.BlockSize]
		if _, err := m.f.ReadAt(data, int64(first)*gen.BlockSize); err != nil {
			return restored, fmt.Errorf("read block %d: %w", first, err)
		}
		for i := 0; i < n; i++ {
			blk := first + i
			m.book.expected(m.exp, blk)
			if bytes.Equal(data[i*gen.BlockSize:(i+1)*gen.BlockSize], m.exp) {
				continue
			}
			if _, err := m.f.WriteAt(m.exp, int64(blk)*gen.BlockSize); err != nil {
				return restored, fmt.Errorf("restore block %d: %w", blk, err)
			}
			restored++
		}
	}
	return restored, nil
}

// step does one random operation: overwrite a block with its next version,
// or read a block back and compare it with its expected content.
func (m *mixedFile) step() {
	m.mu.Lock()
	defer m.mu.Unlock()
	blk := m.rng.IntN(m.blocks)
	off := int64(blk) * gen.BlockSize
	if m.rng.IntN(2) == 0 {
		v := m.book.bump(blk)
		m.book.expected(m.exp, blk)
		if _, err := m.f.WriteAt(m.exp, off); err != nil {
			m.problems.addf("write block %d version %d: %v", blk, v, err)
		}
		m.writes++
		return
	}
	m.reads++
	if _, err := m.f.ReadAt(m.buf, off); err != nil {
		m.problems.addf("read block %d: %v", blk, err)
		return
	}
	m.book.expected(m.exp, blk)
	if !bytes.Equal(m.buf, m.exp) {
		m.problems.addf("block %d read back does not match version %d", blk, m.book.versions[blk])
	}
}

// check compares every block of the file with its expected content.
func (m *mixedFile) check(r *report, name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.problems.report(r, name)
	const chunkBlocks = 256
	buf := make([]byte, chunkBlocks*gen.BlockSize)
	bad := cappedFails{r: r}
	for first := 0; first < m.blocks; first += chunkBlocks {
		n := min(chunkBlocks, m.blocks-first)
		data := buf[:n*gen.BlockSize]
		if _, err := m.f.ReadAt(data, int64(first)*gen.BlockSize); err != nil {
			r.failf("%s: read block %d: %v", name, first, err)
			return
		}
		for i := 0; i < n; i++ {
			blk := first + i
			m.book.expected(m.exp, blk)
			if !bytes.Equal(data[i*gen.BlockSize:(i+1)*gen.BlockSize], m.exp) {
				bad.failf("%s: block %d (offset %d) differs from version %d", name, blk, int64(blk)*gen.BlockSize, m.book.versions[blk])
			}
		}
		r.checked += n
	}
	bad.more("%s: %d more blocks differ", name)
}

// Pages modified through a shared mapping (mmap-write) carry a 16-byte stamp
// over their version-0 content: magic|version, then the page's global index.
// The stamp's offset depends on the page so writes hit different cache lines.
const stampMagic = uint64(0x6e61736d) << 32

func stampOffset(globalPage uint64) int { return int(globalPage%255) * 16 }

// putStamp writes the stamp of version v (> 0) into page.
func putStamp(page []byte, globalPage uint64, v uint32) {
	off := stampOffset(globalPage)
	binary.LittleEndian.PutUint64(page[off:], stampMagic|uint64(v))
	binary.LittleEndian.PutUint64(page[off+8:], globalPage)
}

// expectedMmapPage writes the expected content of block blk of the file
// with the given seed, which is global page globalPage of the mmap-write
// workload, at version v (0: untouched).
func expectedMmapPage(dst []byte, seed, blk, globalPage uint64, v uint32) {
	gen.FillBlock(dst, seed, blk, 0)
	if v > 0 {
		putStamp(dst, globalPage, v)
	}
}

// hotWord is word w of page p in pass n of the memory-hot workload.
func hotWord(pass, page uint64, w int) uint64 {
	return pass<<40 | page<<9 | uint64(w)
}

// fillHotPage writes pass n's pattern into page p.
func fillHotPage(page []byte, pass, p uint64) {
	for w := 0; w < len(page)/8; w++ {
		binary.LittleEndian.PutUint64(page[w*8:], hotWord(pass, p, w))
	}
}

// checkHotPage returns the index of the first word of page p that does not
// hold pass n's pattern, or -1.
func checkHotPage(page []byte, pass, p uint64) int {
	for w := 0; w < len(page)/8; w++ {
		if binary.LittleEndian.Uint64(page[w*8:]) != hotWord(pass, p, w) {
			return w
		}
	}
	return -1
}
