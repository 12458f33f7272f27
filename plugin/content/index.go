// Package content is the content index: for every 4 KiB block of a disk
// that QEMU read (or wrote) through its block layer, the keyed hash of the
// block's bytes -> where the block is (disk, block number).  It serves
// where a guest page cannot be tied to the block it came from, only to
// its content: Xen's qdisk backend copies a guest's I/O through QEMU's own
// buffers, and guest RAM travels in libxenguest's stream, not QEMU's.
// nasmig-xl asks the index, over the library's content socket (proto.go,
// this package: one home for both ends), which pages of that stream a
// disk block holds.
//
// The index is a hint, never a promise: whoever uses an entry reads the
// block and compares it with the page (the receiving half of nasmig-xl
// does, with a key of its own migration) before the page is trusted.  An
// entry may therefore be stale, but the index drops every entry of a
// block that was written as soon as the write completes, so a stale entry
// is rare and only costs a fallback to the page itself.
package content

import "sync"

// Loc is where a block is: disk index (the library's disk handle) and
// block number (byte offset / 4 KiB).
type Loc struct {
	Disk  uint8
	Block uint64
}

// locKey packs a Loc into one word: 8 bits of disk, 56 of block number
// (2^56 blocks of 4 KiB are far beyond any disk).
func locKey(l Loc) uint64 { return uint64(l.Disk)<<56 | l.Block&(1<<56-1) }

func keyLoc(k uint64) Loc { return Loc{Disk: uint8(k >> 56), Block: k & (1<<56 - 1)} }

// Index maps block-content hashes to blocks.  One block is kept per hash
// (the latest seen): blocks with equal content are interchangeable.  Safe
// for concurrent use: the library's ring reader adds and drops while the
// socket answers lookups.
type Index struct {
	mu     sync.RWMutex
	byHash map[uint64]uint64 // hash -> locKey
	byLoc  map[uint64]uint64 // locKey -> hash of the block's content
}

// NewIndex returns an empty index.
func NewIndex() *Index {
	return &Index{byHash: make(map[uint64]uint64), byLoc: make(map[uint64]uint64)}
}

// Add records that block l holds content with hash h.
func (x *Index) Add(l Loc, h uint64) {
	k := locKey(l)
	x.mu.Lock()
	if old, ok := x.byLoc[k]; ok && old != h && x.byHash[old] == k {
		delete(x.byHash, old)
	}
	x.byLoc[k] = h
	x.byHash[h] = k
	x.mu.Unlock()
}

// Drop forgets blocks [first, first+count) of disk: they were written,
// discarded or truncated, and their content is no longer known.
func (x *Index) Drop(disk uint8, first, count uint64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if count > uint64(len(x.byLoc)) {
		// A large discard: walk what we know instead of the range.
		for k, h := range x.byLoc {
			if l := keyLoc(k); l.Disk == disk && l.Block >= first && l.Block-first < count {
				x.forget(k, h)
			}
		}
		return
	}
	for b := first; b-first < count; b++ {
		k := locKey(Loc{Disk: disk, Block: b})
		if h, ok := x.byLoc[k]; ok {
			x.forget(k, h)
		}
	}
}

// DropDisk forgets every block of disk (the disk was removed or lost a
// write the index could not see).
func (x *Index) DropDisk(disk uint8) { x.Drop(disk, 0, 1<<56) }

func (x *Index) forget(k, h uint64) {
	delete(x.byLoc, k)
	if x.byHash[h] == k {
		delete(x.byHash, h)
	}
}

// Lookup returns a block whose content had hash h when last seen.
func (x *Index) Lookup(h uint64) (Loc, bool) {
	x.mu.RLock()
	k, ok := x.byHash[h]
	x.mu.RUnlock()
	return keyLoc(k), ok
}

// LookupBatch fills locs[i] for each hashes[i] and found[i] whether it was
// found, under one lock.
func (x *Index) LookupBatch(hashes []uint64, locs []Loc, found []bool) {
	x.mu.RLock()
	for i, h := range hashes {
		k, ok := x.byHash[h]
		locs[i], found[i] = keyLoc(k), ok
	}
	x.mu.RUnlock()
}

// Len is the number of blocks indexed and of distinct contents among them.
func (x *Index) Len() (blocks, contents int) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return len(x.byLoc), len(x.byHash)
}
