package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"nasmig/tests/guest/internal/gen"
)

// workload is one guest workload. setup runs until the steady state (then
// /init prints "ready"), run does the steady-state activity (forever, or
// returns at once), verify checks everything the workload can check.
type workload interface {
	setup() error
	run()
	verify(r *report)
	status() string
}

func newWorkload(cfg config) workload {
	switch cfg.Workload {
	case wlPagecacheRead:
		return &pagecacheRead{mib: cfg.mibOr(0)}
	case wlPagecacheWrite:
		return &pagecacheWrite{mib: cfg.mibOr(256), seed: cfg.Seed}
	case wlMixed:
		return &mixedWorkload{seed: cfg.Seed, mib: cfg.mibOr(0)}
	case wlMmapWrite:
		return &mmapWrite{read: pagecacheRead{mib: cfg.mibOr(256)}, seed: cfg.Seed}
	case wlMemoryHot:
		return &memoryHot{mib: cfg.mibOr(256)}
	case wlReader:
		return &reader{read: pagecacheRead{mib: cfg.mibOr(0)}, seed: cfg.Seed}
	case wlCompile:
		return &compile{read: pagecacheRead{mib: cfg.mibOr(0), first: compileFirst}}
	default:
		return idle{}
	}
}

// needsDisk reports whether a workload cannot run without the data disk.
func needsDisk(name string) bool {
	return name != wlIdle && name != wlMemoryHot
}

// reader fills the page cache like pagecache-read, then keeps reading the
// data disk for ever, as a database or a scan would while the VM migrates:
// readerThreads goroutines each read a random 64 KiB chunk of a random file
// every readerTick, alternating O_DIRECT reads (the disk's data lands in
// the goroutine's own anonymous buffer, over and over) and buffered reads
// (page-cache hits, or new page cache), and check that both agree.  A third
// goroutine reads with O_DIRECT into a buffer that a fourth keeps writing to
// at the same time (a DMA buffer also written by a CPU): the page's content
// after the read is not the disk block's.
type reader struct {
	read pagecacheRead
	seed uint64
	mu   sync.Mutex
	ops  int64
	bad  problemLog
}

const (
	readerThreads = 2
	readerTick    = 10 * time.Millisecond
	readerChunk   = 64 << 10
)

func (w *reader) setup() error { return w.read.setup() }

func (w *reader) run() {
	entries, err := readManifest()
	if err != nil {
		w.mu.Lock()
		w.bad.addf("manifest: %v", err)
		w.mu.Unlock()
		return
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		w.race(entries, rand.New(rand.NewPCG(w.seed, 99)))
	}()
	for t := 0; t < readerThreads; t++ {
		wg.Add(1)
		go func(t int) {
			defer wg.Done()
			w.loop(entries, rand.New(rand.NewPCG(w.seed, uint64(t)+1)))
		}(t)
	}
	wg.Wait()
}

func (w *reader) loop(entries []manifestEntry, r *rand.Rand) {
	// O_DIRECT needs an aligned buffer: a private mapping is page-aligned.
	direct, err := unix.Mmap(-1, 0, readerChunk, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		w.mu.Lock()
		w.bad.addf("buffer: %v", err)
		w.mu.Unlock()
		return
	}
	buffered := make([]byte, readerChunk)
	tick := time.NewTicker(readerTick)
	for n := 0; ; n++ {
		<-tick.C
		e := entries[r.IntN(len(entries))]
		p := filepath.Join(dataDir, e.path)
		if err := w.readBoth(p, r, direct, buffered, n%2 == 0); err != nil {
			w.mu.Lock()
			w.bad.addf("%s: %v", e.path, err)
			w.mu.Unlock()
		}
		w.mu.Lock()
		w.ops++
		w.mu.Unlock()
	}
}

// race reads with O_DIRECT into a buffer that another goroutine stamps
// without pause.
func (w *reader) race(entries []manifestEntry, r *rand.Rand) {
	buf, err := unix.Mmap(-1, 0, readerChunk, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		w.mu.Lock()
		w.bad.addf("race buffer: %v", err)
		w.mu.Unlock()
		return
	}
	go func() {
		for n := uint64(0); ; n++ {
			for off := 0; off < len(buf); off += 4096 {
				buf[off+int(n%4096)] = byte(n)
			}
			time.Sleep(time.Millisecond)
		}
	}()
	tick := time.NewTicker(readerTick)
	for {
		<-tick.C
		e := entries[r.IntN(len(entries))]
		p := filepath.Join(dataDir, e.path)
		st, err := os.Stat(p)
		if err != nil || st.Size() < readerChunk {
			continue
		}
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECT, 0)
		if err != nil {
			continue
		}
		unix.Pread(fd, buf, r.Int64N(st.Size()/readerChunk)*readerChunk)
		unix.Close(fd)
	}
}

// readBoth reads one random chunk of p with O_DIRECT and buffered, in the
// order first says, and compares them.
func (w *reader) readBoth(p string, r *rand.Rand, direct, buffered []byte, directFirst bool) error {
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	chunks := st.Size() / readerChunk
	if chunks == 0 {
		return nil
	}
	off := r.Int64N(chunks) * readerChunk
	readDirect := func() error {
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECT, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if n, err := unix.Pread(fd, direct, off); err != nil || n != readerChunk {
			return fmt.Errorf("O_DIRECT read at %d: %d bytes, %v", off, n, err)
		}
		return nil
	}
	readBuffered := func() error {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = f.ReadAt(buffered, off)
		return err
	}
	first, second := readDirect, readBuffered
	if !directFirst {
		first, second = readBuffered, readDirect
	}
	if err := first(); err != nil {
		return err
	}
	if err := second(); err != nil {
		return err
	}
	if !bytes.Equal(direct, buffered) {
		return fmt.Errorf("O_DIRECT and buffered reads at %d differ at byte %d", off, firstDiff(direct, buffered))
	}
	return nil
}

func (w *reader) verify(r *report) {
	w.read.verify(r)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.bad.report(r, "reader")
}

func (w *reader) status() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return fmt.Sprintf("reads=%d", w.ops)
}

// ---- files of the data disk ----

type manifestEntry struct{ sum, path string }

func readManifest() ([]manifestEntry, error) {
	data, err := os.ReadFile(filepath.Join(dataDir, gen.ManifestRel))
	if err != nil {
		return nil, err
	}
	var out []manifestEntry
	for i, l := range strings.Split(string(data), "\n") {
		if l == "" {
			continue
		}
		sum, p, ok := strings.Cut(l, "  ")
		if !ok || len(sum) != 64 {
			return nil, fmt.Errorf("manifest line %d malformed: %q", i+1, l)
		}
		out = append(out, manifestEntry{sum: sum, path: p})
	}
	return out, nil
}

// readIntoCache reads a whole file with plain buffered reads, which leaves
// its content in the page cache, and returns its size.
func readIntoCache(p string, buf []byte) (int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var n int64
	for {
		k, err := f.Read(buf)
		n += int64(k)
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

func sha256File(p string, buf []byte) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(h, f, buf); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// pagecacheRead reads files of the data disk into the page cache (about mib
// MiB, 0 = all), in manifest order with the files other workloads rewrite
// (big/, mmap/) last unless first names a folder to take first.
type pagecacheRead struct {
	mib   int
	first string // folder read before the rest (mmap-write)
	files []manifestEntry
	bytes int64
}

func (w *pagecacheRead) setup() error {
	entries, err := readManifest()
	if err != nil {
		return err
	}
	rank := func(p string) int {
		switch {
		case w.first != "" && strings.HasPrefix(p, w.first+"/"):
			return 0
		case strings.HasPrefix(p, "big/"), strings.HasPrefix(p, gen.MmapDir+"/"):
			return 2
		}
		return 1
	}
	sort.SliceStable(entries, func(i, j int) bool { return rank(entries[i].path) < rank(entries[j].path) })
	limit := int64(w.mib) * gen.MiB
	buf := make([]byte, gen.MiB)
	for _, e := range entries {
		if limit > 0 && w.bytes >= limit {
			break
		}
		n, err := readIntoCache(filepath.Join(dataDir, e.path), buf)
		if err != nil {
			return fmt.Errorf("read %s: %w", e.path, err)
		}
		w.bytes += n
		w.files = append(w.files, e)
	}
	return nil
}

func (w *pagecacheRead) run() {}

// verifyFiles checks the sha256 of every file read (through the page cache)
// against the manifest, except those skip says another check covers.
func (w *pagecacheRead) verifyFiles(r *report, skip func(string) bool) {
	buf := make([]byte, gen.MiB)
	for _, e := range w.files {
		if skip != nil && skip(e.path) {
			continue
		}
		sum, err := sha256File(filepath.Join(dataDir, e.path), buf)
		switch {
		case err != nil:
			r.failf("%s: %v", e.path, err)
		case sum != e.sum:
			r.failf("%s: sha256 %s, manifest says %s", e.path, sum, e.sum)
		}
		r.checked++
	}
}

func (w *pagecacheRead) verify(r *report) { w.verifyFiles(r, nil) }

func (w *pagecacheRead) status() string {
	return fmt.Sprintf("files-read=%d read-mib=%d", len(w.files), w.bytes/gen.MiB)
}

// pagecacheWrite writes mib MiB of new files under /data/w/, fsyncs them
// and idles. Their content is gen's at version 1 with a seed mixed from
// nasmig.seed, so verify recomputes it.
type pagecacheWrite struct {
	mib   int
	seed  uint64
	files []gen.File
}

const writeDir = "w"
const writeFileMiB = 16

func (w *pagecacheWrite) fileSeed(p string) uint64 { return gen.SeedOf(p) ^ w.seed*0x9e3779b97f4a7c15 }

func (w *pagecacheWrite) setup() error {
	dir := filepath.Join(dataDir, writeDir)
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	buf := make([]byte, gen.MiB)
	left := int64(w.mib) * gen.MiB
	for i := 0; left > 0; i++ {
		f := gen.File{Path: path.Join(writeDir, fmt.Sprintf("%03d.bin", i)), Size: min(left, writeFileMiB*gen.MiB)}
		if err := w.write(f, buf); err != nil {
			return fmt.Errorf("write %s: %w", f.Path, err)
		}
		w.files = append(w.files, f)
		left -= f.Size
	}
	for _, d := range []string{dir, dataDir} {
		if err := fsyncPath(d); err != nil {
			return err
		}
	}
	return nil
}

func (w *pagecacheWrite) write(file gen.File, buf []byte) error {
	f, err := os.Create(filepath.Join(dataDir, file.Path))
	if err != nil {
		return err
	}
	defer f.Close()
	seed := w.fileSeed(file.Path)
	for off := int64(0); off < file.Size; off += int64(len(buf)) {
		chunk := buf[:min(int64(len(buf)), file.Size-off)]
		gen.Fill(chunk, seed, off, 1)
		if _, err := f.Write(chunk); err != nil {
			return err
		}
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return f.Close()
}

func fsyncPath(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

func (w *pagecacheWrite) run() {}

func (w *pagecacheWrite) verify(r *report) {
	buf := make([]byte, gen.MiB)
	exp := make([]byte, gen.MiB)
	for _, file := range w.files {
		r.checked++
		if err := w.check(file, buf, exp); err != nil {
			r.failf("%s: %v", file.Path, err)
		}
	}
}

func (w *pagecacheWrite) check(file gen.File, buf, exp []byte) error {
	f, err := os.Open(filepath.Join(dataDir, file.Path))
	if err != nil {
		return err
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil {
		return err
	} else if st.Size() != file.Size {
		return fmt.Errorf("size %d, wrote %d", st.Size(), file.Size)
	}
	seed := w.fileSeed(file.Path)
	for off := int64(0); off < file.Size; off += int64(len(buf)) {
		n := min(int64(len(buf)), file.Size-off)
		if _, err := io.ReadFull(f, buf[:n]); err != nil {
			return fmt.Errorf("read at %d: %w", off, err)
		}
		gen.Fill(exp[:n], seed, off, 1)
		if !bytes.Equal(buf[:n], exp[:n]) {
			return fmt.Errorf("content differs in the MiB at offset %d (first bad byte at %d)", off, off+int64(firstDiff(buf[:n], exp[:n])))
		}
	}
	return nil
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

func (w *pagecacheWrite) status() string {
	return fmt.Sprintf("files-written=%d", len(w.files))
}

// mixedWorkload reads gen.MixedPath (its first mib MiB, 0 = all) into the
// page cache, then forever overwrites random blocks of it with new versions
// and reads random blocks back (about 300 operations a second), with an
// fsync every 5 seconds.
type mixedWorkload struct {
	seed uint64
	mib  int
	f    *os.File
	m    *mixedFile
}

const (
	mixedTick        = 10 * time.Millisecond
	mixedOpsPerTick  = 3
	mixedSyncEvery   = 5 * time.Second
	mmapStampsPerSec = 200
)

func (w *mixedWorkload) setup() error {
	f, err := os.OpenFile(filepath.Join(dataDir, filepath.FromSlash(gen.MixedPath)), os.O_RDWR, 0)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Size()%gen.BlockSize != 0 || st.Size() == 0 {
		return fmt.Errorf("%s: size %d is not a positive multiple of %d", gen.MixedPath, st.Size(), gen.BlockSize)
	}
	blocks := int(st.Size() / gen.BlockSize)
	if w.mib > 0 {
		// A small guest's page cache holds only part of the file.
		blocks = min(blocks, w.mib*gen.MiB/gen.BlockSize)
	}
	w.f = f
	w.m = newMixedFile(f, gen.SeedOf(gen.MixedPath), blocks, w.seed)
	restored, err := w.m.load(gen.MiB)
	if err != nil {
		return fmt.Errorf("%s: %w", gen.MixedPath, err)
	}
	if restored > 0 {
		infof("mixed: rewrote %d blocks left from an earlier run", restored)
		if err := f.Sync(); err != nil {
			return err
		}
	}
	return nil
}

func (w *mixedWorkload) run() {
	t := time.NewTicker(mixedTick)
	lastSync := time.Now()
	for range t.C {
		for i := 0; i < mixedOpsPerTick; i++ {
			w.m.step()
		}
		if time.Since(lastSync) >= mixedSyncEvery {
			if err := w.f.Sync(); err != nil {
				w.m.mu.Lock()
				w.m.problems.addf("fsync: %v", err)
				w.m.mu.Unlock()
			}
			lastSync = time.Now()
		}
	}
}

func (w *mixedWorkload) verify(r *report) { w.m.check(r, gen.MixedPath) }

func (w *mixedWorkload) status() string {
	w.m.mu.Lock()
	defer w.m.mu.Unlock()
	return fmt.Sprintf("reads=%d writes=%d problems=%d", w.m.reads, w.m.writes, w.m.problems.n)
}

// mmapWrite reads files into the page cache (the mmap/ folder first), maps
// the mmap/ files MAP_SHARED and stamps every page through the mapping
// without msync, with writeback pushed far out so the pages stay dirty.
// After ready it keeps stamping random pages (about 200 a second).
type mmapWrite struct {
	read     pagecacheRead
	seed     uint64
	mu       sync.Mutex
	maps     []mmapFile
	pages    []mmapPage // global page index -> file, block
	vers     []uint32
	rng      *rand.Rand
	stamps   uint64
	problems problemLog
}

type mmapFile struct {
	path string
	seed uint64
	f    *os.File
	mem  []byte
}

type mmapPage struct {
	file int
	blk  uint64
}

func (w *mmapWrite) setup() error {
	// Keep dirty pages dirty: no periodic writeback, no expiry, and
	// thresholds high enough that background writeback does not start.
	for _, s := range [][2]string{
		{"vm.dirty_writeback_centisecs", "0"},
		{"vm.dirty_expire_centisecs", "8640000"},
		{"vm.dirty_background_ratio", "90"},
		{"vm.dirty_ratio", "95"},
	} {
		if err := sysctl(s[0], s[1]); err != nil {
			return fmt.Errorf("sysctl %s=%s: %w", s[0], s[1], err)
		}
	}
	w.read.first = gen.MmapDir
	if err := w.read.setup(); err != nil {
		return err
	}
	w.rng = rand.New(rand.NewPCG(w.seed, 0x6d6d6170))
	page := make([]byte, gen.BlockSize)
	for _, e := range w.read.files {
		if !strings.HasPrefix(e.path, gen.MmapDir+"/") {
			continue
		}
		f, err := os.OpenFile(filepath.Join(dataDir, e.path), os.O_RDWR, 0)
		if err != nil {
			return err
		}
		st, err := f.Stat()
		if err != nil {
			return err
		}
		if st.Size()%gen.BlockSize != 0 || st.Size() == 0 {
			return fmt.Errorf("%s: size %d is not a positive multiple of %d", e.path, st.Size(), gen.BlockSize)
		}
		mem, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			return fmt.Errorf("mmap %s: %w", e.path, err)
		}
		mf := mmapFile{path: e.path, seed: gen.SeedOf(e.path), f: f, mem: mem}
		fi := len(w.maps)
		w.maps = append(w.maps, mf)
		restored := 0
		for blk := uint64(0); blk < uint64(len(mem)/gen.BlockSize); blk++ {
			gp := uint64(len(w.pages))
			w.pages = append(w.pages, mmapPage{file: fi, blk: blk})
			w.vers = append(w.vers, 0)
			dst := mem[blk*gen.BlockSize : (blk+1)*gen.BlockSize]
			expectedMmapPage(page, mf.seed, blk, gp, 0)
			if !bytes.Equal(dst, page) {
				copy(dst, page) // left from an earlier boot's writeback
				restored++
			}
		}
		if restored > 0 {
			infof("mmap-write: %s: rewrote %d pages left from an earlier run", e.path, restored)
		}
	}
	if len(w.maps) == 0 {
		return fmt.Errorf("no %s/ files read (nasmig.mib too small?)", gen.MmapDir)
	}
	for gp := range w.pages {
		w.stamp(gp)
	}
	return nil
}

// stamp moves global page gp to its next version, writing through the
// mapping. Preconditions: w.mu held, or setup.
func (w *mmapWrite) stamp(gp int) {
	pg := w.pages[gp]
	w.vers[gp]++
	mem := w.maps[pg.file].mem[pg.blk*gen.BlockSize : (pg.blk+1)*gen.BlockSize]
	putStamp(mem, uint64(gp), w.vers[gp])
	w.stamps++
}

func (w *mmapWrite) run() {
	const perTick = mmapStampsPerSec / 100
	t := time.NewTicker(10 * time.Millisecond)
	for range t.C {
		w.mu.Lock()
		for i := 0; i < perTick; i++ {
			w.stamp(w.rng.IntN(len(w.pages)))
		}
		w.mu.Unlock()
	}
}

func (w *mmapWrite) verify(r *report) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.problems.report(r, "mmap-write")
	// Files read but not mapped: sha256 against the manifest.
	w.read.verifyFiles(r, func(p string) bool { return strings.HasPrefix(p, gen.MmapDir+"/") })
	exp := make([]byte, gen.BlockSize)
	buf := make([]byte, gen.BlockSize)
	bad := cappedFails{r: r}
	for gp, pg := range w.pages {
		mf := &w.maps[pg.file]
		expectedMmapPage(exp, mf.seed, pg.blk, uint64(gp), w.vers[gp])
		mem := mf.mem[pg.blk*gen.BlockSize : (pg.blk+1)*gen.BlockSize]
		if !bytes.Equal(mem, exp) {
			bad.failf("mmap-write: %s page %d differs from version %d (through the mapping)", mf.path, pg.blk, w.vers[gp])
		} else if _, err := mf.f.ReadAt(buf, int64(pg.blk)*gen.BlockSize); err != nil || !bytes.Equal(buf, exp) {
			bad.failf("mmap-write: %s page %d: read() disagrees with the mapping (err %v)", mf.path, pg.blk, err)
		}
		r.checked++
	}
	bad.more("mmap-write: %d more pages differ")
}

func (w *mmapWrite) status() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return fmt.Sprintf("%s mapped-pages=%d stamps=%d", w.read.status(), len(w.pages), w.stamps)
}

// memoryHot rewrites mib MiB of anonymous memory continuously: pass n
// writes hotWord(n, page, word) into every word, page by page.
type memoryHot struct {
	mib     int
	mu      sync.Mutex
	mem     []byte
	pass    uint64 // the pass being written
	cursor  int    // pages [0, cursor) hold pass, the rest pass-1
	written uint64 // pages written since setup: the workload's rate
}

const hotChunkPages = 64

func (w *memoryHot) setup() error {
	if w.mib <= 0 {
		return errors.New("memory-hot needs nasmig.mib > 0")
	}
	mem, err := unix.Mmap(-1, 0, w.mib*gen.MiB, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("mmap %d MiB: %w", w.mib, err)
	}
	w.mem = mem
	pages := len(mem) / gen.BlockSize
	for p := 0; p < pages; p++ {
		fillHotPage(mem[p*gen.BlockSize:(p+1)*gen.BlockSize], 0, uint64(p))
	}
	w.pass, w.cursor = 1, 0
	return nil
}

func (w *memoryHot) run() {
	pages := len(w.mem) / gen.BlockSize
	for {
		w.mu.Lock()
		end := min(w.cursor+hotChunkPages, pages)
		for p := w.cursor; p < end; p++ {
			fillHotPage(w.mem[p*gen.BlockSize:(p+1)*gen.BlockSize], w.pass, uint64(p))
		}
		w.written += uint64(end - w.cursor)
		w.cursor = end
		if w.cursor == pages {
			w.pass++
			w.cursor = 0
		}
		w.mu.Unlock()
	}
}

func (w *memoryHot) verify(r *report) {
	w.mu.Lock()
	defer w.mu.Unlock()
	pages := len(w.mem) / gen.BlockSize
	bad := cappedFails{r: r}
	for p := 0; p < pages; p++ {
		pass := w.pass
		if p >= w.cursor {
			pass--
		}
		if i := checkHotPage(w.mem[p*gen.BlockSize:(p+1)*gen.BlockSize], pass, uint64(p)); i >= 0 {
			bad.failf("memory-hot: page %d word %d does not hold pass %d", p, i, pass)
		}
		r.checked++
	}
	bad.more("memory-hot: %d more pages differ")
}

func (w *memoryHot) status() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return fmt.Sprintf("pass=%d cursor=%d written-pages=%d", w.pass, w.cursor, w.written)
}

type idle struct{}

func (idle) setup() error     { return nil }
func (idle) run()             {}
func (idle) verify(r *report) {}
func (idle) status() string   { return "" }

// selfCheck is a small anonymous buffer written once at boot and checked by
// every verify, so that even idle has guest memory to check.
type selfCheck struct{ mem []byte }

const selfCheckMiB = 4

func newSelfCheck() *selfCheck {
	s := &selfCheck{mem: make([]byte, selfCheckMiB*gen.MiB)}
	gen.Fill(s.mem, gen.SeedOf("self"), 0, 0)
	return s
}

func (s *selfCheck) verify(r *report) {
	exp := make([]byte, gen.BlockSize)
	for p := 0; p < len(s.mem)/gen.BlockSize; p++ {
		gen.FillBlock(exp, gen.SeedOf("self"), uint64(p), 0)
		if !bytes.Equal(exp, s.mem[p*gen.BlockSize:(p+1)*gen.BlockSize]) {
			r.failf("self: page %d of the init's check buffer changed", p)
		}
		r.checked++
	}
}

// infof prints an informational line ("nasmig: info ..."); the harness
// ignores these.
func infof(format string, args ...any) {
	if cons != nil {
		cons.printf("info "+format, args...)
	}
}
