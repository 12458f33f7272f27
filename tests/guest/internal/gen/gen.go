// Package gen defines the deterministic content of every file of the test
// guest's data disk and of the files the guest workloads write.
//
// Content is block-addressable: the bytes of 4 KiB block b of a file are a
// function of (file seed, b, version) only, so the guest can compute the
// expected content of any block without reading the disk or keeping copies.
// Version 0 is the content the data disk is built with; workloads that
// overwrite a block use versions 1, 2, ...
//
// The stream is math/rand/v2's PCG, reseeded per block from a mix of the
// three inputs. It is not cryptographic; it only has to be fast, stable and
// unlikely to repeat a block anywhere on the disk (which would make two
// different disk blocks hold the same bytes).
//
// The same code runs on the host (building the disk) and in the guest
// (checking it), so both always agree.
package gen

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"sort"
)

// BlockSize is the unit of block-addressable content, equal to the guest's
// page size and the data disk's file system block size.
const BlockSize = 4096

// MiB is one mebibyte.
const MiB = 1 << 20

// SeedOf returns the seed of the file at path (relative to the disk root,
// slash-separated, e.g. "big/mixed.bin").
func SeedOf(path string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(path))
	return h.Sum64()
}

// mix64 is SplitMix64's finaliser: a bijective scrambler of 64-bit values.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// FillBlock writes the first len(dst) bytes (at most BlockSize) of block
// number block of the file with the given seed, at the given version.
func FillBlock(dst []byte, seed, block uint64, version uint32) {
	if len(dst) > BlockSize {
		panic(fmt.Sprintf("gen.FillBlock: %d bytes > BlockSize", len(dst)))
	}
	var p rand.PCG
	p.Seed(mix64(seed^mix64(block+0x6e61736d6967)), mix64(block^uint64(version)<<40^seed*0x9e3779b97f4a7c15))
	n := len(dst) &^ 7
	for i := 0; i < n; i += 8 {
		binary.LittleEndian.PutUint64(dst[i:], p.Uint64())
	}
	if n < len(dst) {
		var tail [8]byte
		binary.LittleEndian.PutUint64(tail[:], p.Uint64())
		copy(dst[n:], tail[:])
	}
}

// Fill writes into dst the content of the file with the given seed starting
// at byte offset off, every block at the given version. off must be a
// multiple of BlockSize.
func Fill(dst []byte, seed uint64, off int64, version uint32) {
	if off%BlockSize != 0 {
		panic(fmt.Sprintf("gen.Fill: offset %d not block-aligned", off))
	}
	b := uint64(off / BlockSize)
	for len(dst) > 0 {
		n := min(len(dst), BlockSize)
		FillBlock(dst[:n], seed, b, version)
		dst = dst[n:]
		b++
	}
}

// File is one file of the data disk.
type File struct {
	Path string // relative to the disk root, slash-separated
	Size int64
}

// Well-known files and folders of the data disk.
const (
	MixedPath   = "big/mixed.bin" // the file the mixed workload rewrites
	MmapDir     = "mmap"          // files the mmap-write workload maps
	ManifestRel = "manifest.sha256"
)

// Plan returns the files of a data disk holding about totalMiB MiB of
// content: MixedPath (256 MiB when the total allows), 16 files under MmapDir,
// a few hundred small files of 1-64 KiB and files of 1-64 MiB filling the
// rest. The plan depends only on totalMiB. Paths are sorted.
func Plan(totalMiB int) []File {
	if totalMiB < 64 {
		totalMiB = 64
	}
	total := int64(totalMiB) * MiB
	r := rand.New(rand.NewPCG(0x6e61736d6967, uint64(totalMiB)))
	var files []File
	add := func(path string, size int64) {
		files = append(files, File{Path: path, Size: size})
		total -= size
	}

	mixed := int64(256)
	if totalMiB < 1024 {
		mixed = max(int64(totalMiB)/4, 8)
	}
	add(MixedPath, mixed*MiB)

	mmapEach := int64(4 * MiB)
	if totalMiB < 512 {
		mmapEach = MiB
	}
	for i := 0; i < 16; i++ {
		add(fmt.Sprintf("%s/%02d.bin", MmapDir, i), mmapEach)
	}

	for i := 0; i < 300; i++ {
		add(fmt.Sprintf("small/%03d.bin", i), 1024+r.Int64N(63*1024))
	}

	for i := 0; total >= MiB; i++ {
		size := (1 + r.Int64N(64)) * MiB
		if size > total || total-size < MiB {
			size = total &^ (BlockSize - 1)
		}
		// Some files end inside a block, like real files do.
		if i%3 == 1 && size > BlockSize {
			size -= 1 + r.Int64N(BlockSize-1)
		}
		add(fmt.Sprintf("files/%03d.bin", i), size)
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	return files
}
