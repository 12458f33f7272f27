package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"

	"github.com/rs/zerolog"

	"nasmig/cshim"
)

// DebugReport is what the debug socket answers (read by nasmig-inspect).
type DebugReport struct {
	Stats     map[string]uint64 `json:"stats"`
	RAMBlocks []DebugRAMBlock   `json:"ramblocks"`
	Disks     []cshim.DiskInfo  `json:"disks"`
}

// DebugRAMBlock counts the mapped pages of one RAM block.
type DebugRAMBlock struct {
	Name   string `json:"name"`
	Pages  uint64 `json:"pages"`
	Mapped uint64 `json:"mapped"`
}

func debugReport() DebugReport {
	st := cshim.StatsSnapshot()
	r := DebugReport{Stats: st.Map()}
	for i := 0; i < cshim.RAMBlockCount(); i++ {
		fwd := cshim.Forward(i)
		var mapped uint64
		for j := range fwd {
			if atomic.LoadUint64(&fwd[j])&cshim.FwdValid != 0 {
				mapped++
			}
		}
		r.RAMBlocks = append(r.RAMBlocks, DebugRAMBlock{Name: cshim.RAMBlockName(i), Pages: uint64(len(fwd)), Mapped: mapped})
	}
	for i := 0; i < cshim.DiskCount(); i++ {
		r.Disks = append(r.Disks, cshim.Disk(i))
	}
	return r
}

// serveDebug answers each connection with one JSON DebugReport.
func serveDebug(path string, log zerolog.Logger) (io.Closer, error) {
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("debug socket %s: %w", path, err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					log.Warn().Err(err).Msg("debug socket")
				}
				return
			}
			json.NewEncoder(c).Encode(debugReport())
			c.Close()
		}
	}()
	return l, nil
}
