package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"nasmig/cshim"
	"nasmig/plugin/debugproto"
)

func debugReport() debugproto.Report {
	st := cshim.StatsSnapshot()
	r := debugproto.Report{Stats: st.Map()}
	for i := 0; i < cshim.RAMBlockCount(); i++ {
		fwd := cshim.Forward(i)
		var mapped uint64
		for j := range fwd {
			if atomic.LoadUint64(&fwd[j])&cshim.FwdValid != 0 {
				mapped++
			}
		}
		r.RAMBlocks = append(r.RAMBlocks, debugproto.RAMBlock{Name: cshim.RAMBlockName(i), Pages: uint64(len(fwd)), Mapped: mapped})
	}
	for i := 0; i < cshim.DiskCount(); i++ {
		r.Disks = append(r.Disks, cshim.Disk(i))
	}
	return r
}

var errDebugRequest = errors.New("bad debug request")

// parseDebugRequest reads the request line a client sent (empty: none).
func parseDebugRequest(line []byte) (string, error) {
	req := string(bytes.TrimSpace(line))
	switch req {
	case debugproto.RequestReport, debugproto.RequestDump:
		return req, nil
	}
	if len(req) > 32 {
		req = req[:32] + "..."
	}
	return "", fmt.Errorf("%w %q (known: %q)", errDebugRequest, req, debugproto.RequestDump)
}

// readDebugRequest reads at most one short line within debugproto.RequestWait.
func readDebugRequest(c net.Conn) (string, error) {
	c.SetReadDeadline(time.Now().Add(debugproto.RequestWait))
	defer c.SetReadDeadline(time.Time{})
	line, err := bufio.NewReaderSize(io.LimitReader(c, 256), 256).ReadSlice('\n')
	if err != nil && len(line) == 0 {
		return debugproto.RequestReport, nil // timeout or EOF: an old client
	}
	return parseDebugRequest(line)
}

// debugDump writes every valid forward word as one debugproto.Entry line.
func debugDump(enc *json.Encoder) error {
	for i := 0; i < cshim.RAMBlockCount(); i++ {
		name := cshim.RAMBlockName(i)
		fwd := cshim.Forward(i)
		for j := range fwd {
			w := atomic.LoadUint64(&fwd[j])
			if w&cshim.FwdValid == 0 {
				continue
			}
			e := debugproto.Entry{RAMBlock: name, Page: uint64(j), Disk: int((w >> cshim.FwdDiskShift) & cshim.FwdDiskMask), Block: w & cshim.FwdBlockMask}
			if err := enc.Encode(e); err != nil {
				return err
			}
		}
	}
	return nil
}

func handleDebug(c net.Conn, log zerolog.Logger) {
	defer c.Close()
	req, err := readDebugRequest(c)
	if err != nil {
		log.Warn().Err(err).Msg("debug socket")
		return
	}
	w := bufio.NewWriter(c)
	enc := json.NewEncoder(w)
	err = enc.Encode(debugReport())
	if err == nil && req == debugproto.RequestDump {
		err = debugDump(enc)
	}
	if err == nil {
		err = w.Flush()
	}
	if err != nil {
		log.Debug().Err(err).Msg("debug socket")
	}
}

// serveDebug answers each connection with one JSON debugproto.Report; a client
// that first sends "dump\n" gets every mapping after it, one JSON line each.
func serveDebug(path string, log zerolog.Logger) (io.Closer, error) {
	// A socket another live process answers on is not ours to take: a
	// destination started on the same host with the same arguments (a
	// local migration, one domain definition) must not steal the source's.
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		log.Warn().Str("path", path).Msg("debug socket in use by another process: this QEMU serves none")
		return nil, nil
	}
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
			go handleDebug(c, log)
		}
	}()
	return l, nil
}
