package cabitest_test

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"nasmig/cshim/cshimtest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"nasmig/cshim"
	"nasmig/cshim/cabitest"
	"nasmig/plugin/p2b"
)

const childEnv = "NASMIG_CABITEST_CHILD"

// TestMain sets up the process-global C state once.  As a child process
// (TestTableLimits) it fills the registration tables instead, which no
// other test of this binary could survive.
func TestMain(m *testing.M) {
	cshim.SetFlags(true, false, false)
	if os.Getenv(childEnv) == "limits" {
		if err := cabitest.Limits(); err != nil {
			fmt.Println("FAIL:", err)
			os.Exit(1)
		}
		fmt.Println("limits OK")
		os.Exit(0)
	}
	if err := cshim.Init(1 << 16); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cshim.SetKey(cshim.ExpandKey([32]byte{'c', 'a', 'b', 'i'}))
	os.Exit(m.Run())
}

func TestShimFill(t *testing.T) {
	if err := cabitest.CheckFill(); err != nil {
		t.Fatal(err)
	}
}

// startDrainer runs the real map writer's loop until the test ends.
func startDrainer(t *testing.T) *p2b.Map {
	m := p2b.New()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { m.Run(stop); close(done) }()
	t.Cleanup(func() { close(stop); <-done })
	return m
}

func TestConcurrentThreads(t *testing.T) {
	startDrainer(t)
	st0 := cshim.StatsSnapshot()
	const threads, pages = 4, 512
	if err := cabitest.Concurrent(threads, pages); err != nil {
		t.Fatal(err)
	}
	st1 := cshim.StatsSnapshot()
	// Pages 0 mod 8 lost their mappings to writes; every thread's saver
	// got references for the 6 of 8 pages that stayed intact.
	if d := st1.Invalidations() - st0.Invalidations(); d < threads*pages/8 {
		t.Errorf("invalidations grew by %d, want at least %d", d, threads*pages/8)
	}
	if d := st1.RefPages() - st0.RefPages(); d < threads*pages*6/8 {
		t.Errorf("ref_pages grew by %d, want at least %d", d, threads*pages*6/8)
	}
	if d := st1.RefMisses() - st0.RefMisses(); d < threads*pages/8 {
		t.Errorf("ref_misses grew by %d, want at least %d (CPU-written pages)", d, threads*pages/8)
	}
	if d := st1.RingDrops() - st0.RingDrops(); d != 0 {
		t.Errorf("%d ring drops in a ring of 65536", d)
	}
	t.Logf("stats: mapped %d, ref_pages +%d, ref_misses +%d, invalidations +%d", st1.MappedPages(),
		st1.RefPages()-st0.RefPages(), st1.RefMisses()-st0.RefMisses(), st1.Invalidations()-st0.Invalidations())
}

func TestErrmsgTruncation(t *testing.T) {
	if err := cabitest.ErrmsgTruncation(); err != nil {
		t.Fatal(err)
	}
}

// TestTableLimits fills both registration tables (64 entries each) in a
// child process: -ENOSPC past the limit, known names still found.
func TestTableLimits(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestTableLimits$")
	cmd.Env = append(os.Environ(), childEnv+"=limits")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "limits OK") {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

// registerProg loads libnasmig.so as QEMU's plugin loader would and
// checks nasmig_register's version and argument checks.
const registerProg = `
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "nasmig.h"

#define CHECK(cond, ...) do { if (!(cond)) { printf("FAIL line %d: ", __LINE__); \
    printf(__VA_ARGS__); printf("\n"); return 1; } } while (0)

static void mark_dirty(uint32_t rb, uint64_t off, uint64_t len) { (void)rb; (void)off; (void)len; }
static void kick(void) {}

int main(int argc, char **argv)
{
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    nasmig_register_fn reg;
    struct nasmig_host host;
    struct nasmig_lib lib, zero;
    char err[512], small[12];
    uint8_t *setup;
    uint32_t len;
    int r;

    (void)argc;
    CHECK(h, "dlopen: %s", dlerror());
    reg = (nasmig_register_fn)dlsym(h, NASMIG_REGISTER_SYMBOL);
    CHECK(reg, "no %s", NASMIG_REGISTER_SYMBOL);
    CHECK(dlsym(h, "qemu_plugin_install") && dlsym(h, "qemu_plugin_version"),
          "not a valid TCG plugin");

    memset(&host, 0, sizeof(host));
    host.abi_version = NASMIG_ABI_VERSION + 1;
    host.struct_size = sizeof(host);
    host.mark_dirty = mark_dirty;
    host.kick = kick;
    memset(&lib, 0, sizeof(lib));
    memset(&zero, 0, sizeof(zero));

    /* A different ABI version: -EPROTO and a message naming both. */
    memset(err, 0x7f, sizeof(err));
    r = reg(&host, &lib, NULL, 0, err, sizeof(err));
    CHECK(r == -EPROTO, "wrong abi_version: %d, want -EPROTO", r);
    CHECK(memchr(err, 0, sizeof(err)), "message not NUL-terminated");
    printf("abi_version %u: %d \"%s\"\n", host.abi_version, r, err);
    {
        char a[16], b[16];
        snprintf(a, sizeof(a), "%u", NASMIG_ABI_VERSION + 1);
        snprintf(b, sizeof(b), "%u", NASMIG_ABI_VERSION);
        CHECK(strstr(err, "ABI") && strstr(err, a) && strstr(err, b), "message: %s", err);
    }
    CHECK(!memcmp(&lib, &zero, sizeof(lib)), "table filled although refused");
    memset(small, 0x7f, sizeof(small));
    r = reg(&host, &lib, NULL, 0, small, sizeof(small));
    CHECK(r == -EPROTO && small[sizeof(small) - 1] == 0 && strlen(small) == sizeof(small) - 1,
          "truncated message: %d len %zu", r, strnlen(small, sizeof(small)));
    memset(small, 0x7f, sizeof(small));
    r = reg(&host, &lib, NULL, 0, small, 0);
    CHECK(r == -EPROTO && small[0] == 0x7f, "errlen 0: %d, wrote %#x", r, small[0]);
    r = reg(NULL, &lib, NULL, 0, err, sizeof(err));
    CHECK(r == -EPROTO, "NULL host: %d", r);
    host.abi_version = 0;
    r = reg(&host, &lib, NULL, 0, err, sizeof(err));
    CHECK(r == -EPROTO, "abi_version 0: %d", r);
    host.abi_version = NASMIG_ABI_VERSION;
    host.struct_size = sizeof(host) - sizeof(void *);
    r = reg(&host, &lib, NULL, 0, err, sizeof(err));
    CHECK(r == -EPROTO, "short host table: %d", r);
    printf("short host table: %d \"%s\"\n", r, err);
    host.struct_size = sizeof(host);

    /* The right version and a bad argument: -EINVAL naming it. */
    {
        const char *bad[] = { "enable=on", "bogus=1" };
        r = reg(&host, &lib, bad, 2, err, sizeof(err));
        CHECK(r == -EINVAL && strstr(err, "bogus"), "bad key: %d \"%s\"", r, err);
        printf("bad argument: %d \"%s\"\n", r, err);
    }
    {
        const char *bad[] = { "ring=100" };
        r = reg(&host, &lib, bad, 1, err, sizeof(err));
        CHECK(r == -EINVAL && strstr(err, "ring"), "bad ring: %d \"%s\"", r, err);
    }
    CHECK(!memcmp(&lib, &zero, sizeof(lib)), "table filled although refused");

    /* And right: every entry filled, the library works. */
    {
        const char *good[] = { "enable=on", "auto=off", "ring=1024", "log=error" };
        r = reg(&host, &lib, good, 4, err, sizeof(err));
        CHECK(r == 0, "good registration: %d \"%s\"", r, err);
    }
    CHECK(lib.abi_version == NASMIG_ABI_VERSION && lib.struct_size == sizeof(lib),
          "lib version %u size %u", lib.abi_version, lib.struct_size);
#define NEED(f) CHECK(lib.f, "%s not filled", #f)
    NEED(ramblock_add); NEED(disk_add); NEED(block_read_done); NEED(block_read_begin);
    NEED(block_read_end); NEED(block_write_done); NEED(source_setup); NEED(source_message);
    NEED(before_bitmap_sync); NEED(ref_query); NEED(source_cleanup); NEED(dest_setup);
    NEED(ref_received); NEED(before_page_write); NEED(read_done); NEED(dest_finish);
    NEED(dest_pending); NEED(dest_barrier); NEED(dest_cleanup); NEED(stats);
    NEED(errmsg); NEED(auto_enable); NEED(shutdown); NEED(ramblock_remove);
    NEED(disk_remove); NEED(disk_names); NEED(switchover_hold); NEED(fault);
    CHECK(lib.fault(NASMIG_FAULT_RING_FULL) == 0, "a fault fired with nothing armed");
    CHECK(lib.ramblock_add("pc.ram", 1 << 20) == 0, "ramblock_add");
    CHECK(lib.disk_add("drive0", "/shared/a.raw", 1 << 30) == 0, "disk_add");
    CHECK(lib.auto_enable() == 0, "auto_enable with auto=off");
    setup = malloc(NASMIG_SETUP_MAX_BYTES);
    len = NASMIG_SETUP_MAX_BYTES;
    r = lib.source_setup(NASMIG_MODE_LIVE, setup, &len);
    CHECK(r == 0 && len > 56 && !memcmp(setup, "NSMG", 4), "source_setup: %d len %u", r, len);
    /* Offsets: magic 4, version 2, flags 2, migration UUID 16, key seed 32. */
    CHECK(setup[6] == 0 && setup[7] == NASMIG_SETUP_FLAG_HOLD, "live setup flags %02x%02x", setup[6], setup[7]);
    lib.before_bitmap_sync();
    lib.source_cleanup(0);
    {
        /* A save: no hold; and every migration draws a fresh key. */
        uint8_t *again = malloc(NASMIG_SETUP_MAX_BYTES);
        uint32_t len2 = NASMIG_SETUP_MAX_BYTES;

        r = lib.source_setup(NASMIG_MODE_SAVE, again, &len2);
        CHECK(r == 0 && len2 == len, "save source_setup: %d len %u", r, len2);
        CHECK(again[6] == 0 && again[7] == 0, "save setup flags %02x%02x", again[6], again[7]);
        CHECK(memcmp(setup + 24, again + 24, 32) != 0, "two migrations sent the same key seed");
        lib.source_cleanup(0);
        len2 = NASMIG_SETUP_MAX_BYTES;
        r = lib.source_setup(7, again, &len2);
        CHECK(r == -EINVAL, "unknown mode accepted: %d", r);
        free(again);
    }
    lib.shutdown();
    printf("OK\n");
    return 0;
}
`

func TestRegisterABI(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping: builds libnasmig.so (-short)")
	}
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("skipping: no gcc to build the loader program")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	so := filepath.Join(dir, "libnasmig.so")
	start := time.Now()
	build := exec.Command("go", "build", "-buildmode=c-shared", "-o", so, "./plugin")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building libnasmig.so: %v\n%s", err, out)
	}
	t.Logf("built libnasmig.so in %v", time.Since(start).Round(time.Millisecond))
	src := filepath.Join(dir, "loader.c")
	if err := os.WriteFile(src, []byte(registerProg), 0o644); err != nil {
		t.Fatal(err)
	}
	prog := filepath.Join(dir, "loader")
	cc := exec.Command(gcc, "-Wall", "-Werror", "-I", filepath.Join(root, "cshim"), "-o", prog, src, "-ldl")
	if out, err := cc.CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	out, err := exec.Command(prog, so).CombinedOutput()
	t.Logf("loader output:\n%s", out)
	if err != nil || !strings.Contains(string(out), "OK\n") {
		t.Fatalf("loader failed: %v", err)
	}
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// TestCMicroBench measures the hot paths from C with clock_gettime and
// prints medians (no assertion on time).
func TestCMicroBench(t *testing.T) {
	if os.Getenv("NASMIG_BENCH") != "1" {
		t.Skip("skipping the C micro-benchmark: set NASMIG_BENCH=1 to run it")
	}
	const npages = 1 << 18 // a 1 GiB guest, fully mapped
	rb := cshim.RAMBlockAdd("bench-rb", npages*cshim.PageSize)
	disk := cshim.DiskAdd("bench-disk", "/shared/bench.raw", npages*cshim.PageSize)
	if rb < 0 || disk < 0 {
		t.Fatalf("registration: %d %d", rb, disk)
	}
	hostbuf := cshimtest.CMem(t, 64*cshim.PageSize)
	r := rand.New(rand.NewPCG(1, 1))
	for i := 0; i+8 <= len(hostbuf); i += 8 {
		binary.LittleEndian.PutUint64(hostbuf[i:], r.Uint64())
	}
	m := p2b.New()
	m.Sync()
	var done, full []float64
	const perCall, callsPerRound = cshim.MaxPagesPerCall, 256
	for first := uint64(0); first < npages; first += perCall * callsPerRound {
		d, f := cabitest.BenchReadDone(disk, uint32(rb), first, callsPerRound, perCall, unsafe.Pointer(&hostbuf[0]))
		done, full = append(done, d...), append(full, f...)
		m.Sync()
	}
	if got := m.Mapped(); got != npages {
		t.Fatalf("%d pages mapped, want %d", got, npages)
	}
	seq, hits := cabitest.BenchLookup(uint32(rb), npages, 1, 2001, 1024)
	if hits != 2001*1024 {
		t.Fatalf("sequential lookups: %d hits of %d", hits, 2001*1024)
	}
	rnd, hits := cabitest.BenchLookup(uint32(rb), npages, 7919, 2001, 1024)
	if hits != 2001*1024 {
		t.Fatalf("strided lookups: %d hits of %d", hits, 2001*1024)
	}
	q, hits := cabitest.BenchRefQuery(uint32(rb), npages, unsafe.Pointer(&hostbuf[0]), 2001, 256)
	if hits != 2001*256 {
		t.Fatalf("ref_query: %d hits of %d", hits, 2001*256)
	}
	report := fmt.Sprintf(`C micro-benchmark (medians, clock_gettime, %d-page map):
  block_read_done                     %6.1f ns/page (calls of %d pages, incl. the page hash)
  block_read_begin+done+end           %6.1f ns/page
  lookup (map_offers), sequential     %6.1f ns
  lookup (map_offers), stride 7919    %6.1f ns
  ref_query hit (lookup+hash+record)  %6.1f ns/page`,
		npages, median(done), perCall, median(full), median(seq), median(rnd), median(q))
	fmt.Println(report)
}
