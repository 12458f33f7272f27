package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"nasmig/cshim"
	"nasmig/plugin/content"
)

// startContentIndex switches completed reads to the content index and
// serves it on dir/PID.sock (content-index=...).
func startContentIndex(dir string) error {
	x := content.NewIndex()
	path := filepath.Join(dir, strconv.Itoa(os.Getpid())+".sock")
	l, err := content.Listen(path)
	if err != nil {
		return err
	}
	lib.m.Content = x
	cshim.SetContentMode(true)
	lib.contentSrv = l
	dom := xenDomid()
	go content.Serve(l, x, func() content.Hello { return contentHello(x, dom) }, func(err error) {
		lib.log.Warn().Err(err).Msg("content socket")
	})
	lib.log.Info().Str("socket", path).Int32("xen-domid", dom).Msg("content index: completed reads are indexed by content (no page-to-block map)")
	return nil
}

// contentHello describes the index: the key its hashes use (the tracking
// key: in content mode there is no map it could weaken) and the disks.
func contentHello(x *content.Index, dom int32) content.Hello {
	blocks, _ := x.Len()
	h := content.Hello{KeySeed: lib.keySeed, PID: uint32(os.Getpid()), XenDom: dom, Blocks: uint64(blocks)}
	for i := 0; i < cshim.DiskCount() && i < content.MaxDisks; i++ {
		d := cshim.Disk(i)
		if d.Removed || d.Excluded {
			continue
		}
		cd := content.Disk{Index: uint8(i), Size: d.Size, Path: d.Filename}
		var st syscall.Stat_t
		if syscall.Stat(d.Filename, &st) == nil {
			cd.Dev, cd.Ino = uint64(st.Dev), st.Ino
		}
		h.Disks = append(h.Disks, cd)
	}
	return h
}

// xenDomid is the domain a Xen device model serves (-xen-domid N), or -1.
func xenDomid() int32 {
	b, err := os.ReadFile("/proc/self/cmdline")
	if err != nil {
		return -1
	}
	args := bytes.Split(b, []byte{0})
	for i := 0; i+1 < len(args); i++ {
		if string(args[i]) == "-xen-domid" {
			var d int32
			if _, err := fmt.Sscan(string(args[i+1]), &d); err == nil {
				return d
			}
		}
	}
	return -1
}
