package main

import (
	"bufio"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// compile is the benchmark's real workload: a real compiler (Debian's
// gcc-12 and binutils, unpacked on the data disk of real files) building a
// real source tree (from a Debian source package) over and over, chrooted
// into the data disk, while the VM migrates.  Its page cache is the
// compiler's binaries and headers and the sources; its anonymous memory
// churns as compilers' does; it writes its objects to the disk.  The disk
// carries the recipe in /build/recipe (see tests/guest/mkrealdisk.sh):
//
//	flags -O2 ...       compiler flags
//	src /src/tree/src   the folder of the sources (in the chroot)
//	cc file.c           one object per line
//	link name a.o b.o -lm
//
// Compilers are deterministic: every pass must produce the objects of the
// first one, byte for byte; a difference, or a compiler that fails, is a
// problem verify reports.
type compile struct {
	read     pagecacheRead
	recipe   compileRecipe
	mu       sync.Mutex
	passes   int64
	objects  int64               // compiled, over all passes
	first    map[string][32]byte // object -> sha256 of the first pass's
	problems problemLog
}

type compileRecipe struct {
	flags []string
	src   string
	cc    []string
	link  []string // output name, then objects and libraries
}

const (
	compileRecipePath = "/build/recipe"
	compileOut        = "/build/out" // in the chroot
	compileCC         = "/usr/bin/gcc-12"
	// compileFirst: the page cache takes the toolchain (under usr/) first.
	compileFirst = "usr"
)

func parseRecipe(text string) (compileRecipe, error) {
	var r compileRecipe
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		switch f[0] {
		case "flags":
			r.flags = f[1:]
		case "src":
			if len(f) != 2 {
				return r, fmt.Errorf("recipe: src takes one folder: %q", sc.Text())
			}
			r.src = f[1]
		case "cc":
			if len(f) != 2 || !strings.HasSuffix(f[1], ".c") {
				return r, fmt.Errorf("recipe: cc takes one .c file: %q", sc.Text())
			}
			r.cc = append(r.cc, f[1])
		case "link":
			if len(f) < 3 {
				return r, fmt.Errorf("recipe: link takes an output and its inputs: %q", sc.Text())
			}
			r.link = f[1:]
		default:
			return r, fmt.Errorf("recipe: unknown line %q", sc.Text())
		}
	}
	if r.src == "" || len(r.cc) == 0 {
		return r, errors.New("recipe: no src folder or no cc line")
	}
	return r, nil
}

func (w *compile) setup() error {
	text, err := os.ReadFile(filepath.Join(dataDir, compileRecipePath))
	if err != nil {
		return fmt.Errorf("compile needs the disk of real files (tests/guest/mkrealdisk.sh): %w", err)
	}
	if w.recipe, err = parseRecipe(string(text)); err != nil {
		return err
	}
	// The chroot's /dev (gcc opens /dev/null) and /proc; the disk has the
	// mount points.
	for _, m := range []struct{ src, dir, fstype string }{{"devtmpfs", "/dev", "devtmpfs"}, {"proc", "/proc", "proc"}} {
		if err := unix.Mount(m.src, filepath.Join(dataDir, m.dir), m.fstype, unix.MS_NOSUID, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s in the chroot: %w", m.dir, err)
		}
	}
	if err := os.MkdirAll(filepath.Join(dataDir, compileOut), 0o755); err != nil {
		return err
	}
	// The toolchain and the sources are on the disk's manifest: read them
	// (and the rest, up to mib) into the page cache.  The objects every
	// later pass must reproduce come from run's first pass.
	if err := w.read.setup(); err != nil {
		return err
	}
	w.first = map[string][32]byte{}
	return nil
}

// pass compiles every source and links; it returns the first error (a
// compiler that fails, or an object unlike the first pass's).
func (w *compile) pass() error {
	var objs []string
	for _, c := range w.recipe.cc {
		obj := strings.TrimSuffix(c, ".c") + ".o"
		args := append(append([]string{}, w.recipe.flags...), "-pipe", "-c", filepath.Join(w.recipe.src, c), "-o", filepath.Join(compileOut, obj))
		if err := w.gcc(args); err != nil {
			return fmt.Errorf("compile %s: %w", c, err)
		}
		objs = append(objs, obj)
		w.mu.Lock()
		w.objects++
		w.mu.Unlock()
	}
	if len(w.recipe.link) > 0 {
		args := []string{"-o", filepath.Join(compileOut, w.recipe.link[0])}
		for _, in := range w.recipe.link[1:] {
			if strings.HasSuffix(in, ".o") {
				in = filepath.Join(compileOut, in)
			}
			args = append(args, in)
		}
		if err := w.gcc(args); err != nil {
			return fmt.Errorf("link %s: %w", w.recipe.link[0], err)
		}
		objs = append(objs, w.recipe.link[0])
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, obj := range objs {
		data, err := os.ReadFile(filepath.Join(dataDir, compileOut, obj))
		if err != nil {
			return err
		}
		sum := sha256.Sum256(data)
		if first, ok := w.first[obj]; !ok {
			w.first[obj] = sum
		} else if sum != first {
			return fmt.Errorf("pass %d built %s unlike the first pass (sha256 %x, first %x)", w.passes+1, obj, sum[:8], first[:8])
		}
	}
	w.passes++
	return nil
}

// gcc runs the compiler driver chrooted into the data disk.
func (w *compile) gcc(args []string) error {
	cmd := exec.Command(compileCC, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: dataDir}
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C", "TMPDIR=/tmp"}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%v: %s", err, oneLine(string(out)))
	}
	return nil
}

func (w *compile) run() {
	for {
		if err := w.pass(); err != nil {
			w.mu.Lock()
			w.problems.addf("%v", err)
			w.mu.Unlock()
			time.Sleep(time.Second) // a broken toolchain fails at once: do not spin
		}
	}
}

func (w *compile) verify(r *report) {
	w.read.verifyFiles(r, nil)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.problems.report(r, "compile")
	r.checked += len(w.first)
}

func (w *compile) status() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return fmt.Sprintf("%s passes=%d objects=%d problems=%d", w.read.status(), w.passes, w.objects, w.problems.n)
}
