package cabitest_test

import (
	"math/rand/v2"
	"testing"
	"time"
	"unsafe"

	"nasmig/cshim"
	"nasmig/cshim/cabitest"
	"nasmig/cshim/cshimtest"
)

// A disk whose node goes away (blockdev-del, hot-unplug): its pages stop
// being references at once, and a new node created under the same node
// name is a new disk with its own filename, never the old handle.
func TestDiskRemovedThenNameReused(t *testing.T) {
	startDrainer(t)
	cabitest.InstallHost(nil)
	const npages = 4
	rb := cshim.RAMBlockAdd("remove-ram", npages*cshim.PageSize)
	old := cshim.DiskAdd("remove-node", "/shared/old.raw", npages*cshim.PageSize)
	if rb < 0 || old < 0 {
		t.Fatalf("registration: ram block %d, disk %d", rb, old)
	}
	ram := cshimtest.CMem(t, npages*cshim.PageSize)
	cshimtest.FillRandom(rand.New(rand.NewPCG(3, 3)), ram)
	cshim.SetDiskOff(old, false)
	read := func(disk int) {
		var gen uint32
		offs := []uint64{0, cshim.PageSize, 2 * cshim.PageSize, 3 * cshim.PageSize}
		hosts := make([]unsafe.Pointer, npages)
		for i := range hosts {
			hosts[i] = unsafe.Pointer(&ram[offs[i]])
		}
		cshim.BlockReadDone(disk, uint32(rb), offs, offs, hosts, &gen, 0)
	}
	refs := func() (n int, disks map[byte]bool) {
		disks = map[byte]bool{}
		for p := uint64(0); p < npages; p++ {
			if w, ok := cshim.RefQuery(uint32(rb), p*cshim.PageSize, unsafe.Pointer(&ram[p*cshim.PageSize])); ok {
				n++
				disks[w[1]] = true
			}
		}
		return n, disks
	}
	waitRefs := func(want int) map[byte]bool {
		deadline := time.Now().Add(10 * time.Second)
		for {
			n, d := refs()
			if n == want {
				return d
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d references after 10 s, want %d", n, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	read(old)
	if d := waitRefs(npages); !d[byte(old)] || len(d) != 1 {
		t.Fatalf("references name disks %v, want only %d", d, old)
	}

	cshim.DiskRemove(old)
	if n, _ := refs(); n != 0 {
		t.Fatalf("%d references to a removed disk", n)
	}
	if d := cshim.Disk(old); !d.Removed || !d.Excluded || d.NodeName != "" {
		t.Fatalf("removed disk reads %+v", d)
	}

	reused := cshim.DiskAdd("remove-node", "/shared/new.raw", npages*cshim.PageSize)
	if reused < 0 || reused == old {
		t.Fatalf("re-added node name got handle %d (old %d)", reused, old)
	}
	if f := cshim.Disk(reused).Filename; f != "/shared/new.raw" {
		t.Fatalf("re-added disk has filename %q", f)
	}
	cshim.SetDiskOff(reused, false)
	read(reused)
	if d := waitRefs(npages); !d[byte(reused)] || len(d) != 1 {
		t.Fatalf("references name disks %v, want only %d", d, reused)
	}
	cshim.DiskRemove(reused)
	cshim.DiskRemove(reused) // twice: harmless
}
