package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"syscall"
	"text/tabwriter"
	"time"

	"nasmig/cshim"
	"nasmig/plugin/debugproto"
	"nasmig/tools/nasmig-inspect/migstream"
)

// MapReport is map's JSON output.
type MapReport struct {
	Schema    string            `json:"schema"`
	Socket    string            `json:"socket"`
	Mapped    uint64            `json:"mapped"` // sum over the RAM blocks
	Stats     map[string]uint64 `json:"stats"`
	RAMBlocks []MapRAMBlock     `json:"ramblocks"`
	Disks     []MapDisk         `json:"disks"`
	// Dumped is set when the library answered the dump request; Entries
	// counts the mappings it sent.
	DumpRequested bool   `json:"dump_requested"`
	Dumped        bool   `json:"dumped"`
	Entries       uint64 `json:"entries"`
}

// MapRAMBlock is a RAM block's share of mapped pages.
type MapRAMBlock struct {
	Name   string  `json:"name"`
	Pages  uint64  `json:"pages"`
	Mapped uint64  `json:"mapped"`
	Share  float64 `json:"share"`
}

// MapDisk is a disk and, with a dump, its mapped blocks.
type MapDisk struct {
	cshim.DiskInfo
	Mapped *uint64  `json:"mapped,omitempty"` // with --dump
	Share  *float64 `json:"share,omitempty"`  // mapped bytes / disk size
}

func cmdMap(args []string, e env) (int, error) {
	fs := flag.NewFlagSet("map", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "JSON output (schema nasmig-inspect/1)")
	dump := fs.String("dump", "", "write every mapping as JSON lines to `FILE` (- for stdout)")
	timeout := fs.Duration("timeout", 10*time.Second, "give up after this long")
	pos, err := parseArgs(fs, args, 1)
	if err != nil {
		return exitBad, err
	}
	c, err := net.DialTimeout("unix", pos[0], *timeout)
	if err != nil {
		return exitBad, fmt.Errorf("debug socket: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(*timeout))

	summary := e.stdout
	var dumpW io.Writer
	if *dump != "" {
		// A library that predates the request may have answered and
		// closed already (EPIPE): its report is still there to read.
		io.WriteString(c, debugproto.RequestDump+"\n")
		if *dump == "-" {
			dumpW, summary = e.stdout, e.stderr
		} else {
			f, err := os.Create(*dump)
			if err != nil {
				return exitBad, err
			}
			defer f.Close()
			bw := bufio.NewWriter(f)
			defer bw.Flush()
			dumpW = bw
		}
	}
	mr, err := readMap(c, pos[0], dumpW)
	if err != nil {
		return exitBad, err
	}
	if *asJSON {
		err = writeJSON(summary, mr)
	} else {
		printMap(summary, mr)
	}
	if err != nil {
		return exitBad, err
	}
	return exitOK, nil
}

// readMap reads the report and, after it, any dump entries, copying them
// to dump.  A library without the dump request sends the report alone.
func readMap(r io.Reader, socket string, dump io.Writer) (*MapReport, error) {
	dec := json.NewDecoder(bufio.NewReaderSize(r, 1<<16))
	var rep debugproto.Report
	if err := dec.Decode(&rep); err != nil {
		return nil, fmt.Errorf("debug socket: reading the report: %w", err)
	}
	mr := &MapReport{Schema: migstream.Schema, Socket: socket, Stats: rep.Stats, RAMBlocks: []MapRAMBlock{}, Disks: []MapDisk{},
		DumpRequested: dump != nil}
	if mr.Stats == nil {
		mr.Stats = map[string]uint64{}
	}
	for _, b := range rep.RAMBlocks {
		mr.Mapped += b.Mapped
		mr.RAMBlocks = append(mr.RAMBlocks, MapRAMBlock{Name: b.Name, Pages: b.Pages, Mapped: b.Mapped, Share: share(b.Mapped, b.Pages)})
	}
	perDisk := map[int]uint64{}
	if dump != nil {
		enc := json.NewEncoder(dump)
		for {
			var ent debugproto.Entry
			err := dec.Decode(&ent)
			if errors.Is(err, io.EOF) {
				break
			}
			// A library that predates the request closes without reading
			// it, which resets the connection after its report.
			if mr.Entries == 0 && errors.Is(err, syscall.ECONNRESET) {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("debug socket: dump entry %d: %w", mr.Entries+1, err)
			}
			mr.Dumped = true
			mr.Entries++
			perDisk[ent.Disk]++
			if err := enc.Encode(ent); err != nil {
				return nil, fmt.Errorf("writing the dump: %w", err)
			}
		}
		// An empty map sends no entries: the report's mapped count tells
		// an old library (no dump) from an empty one.
		if mr.Mapped == 0 {
			mr.Dumped = true
		}
	}
	for _, d := range rep.Disks {
		md := MapDisk{DiskInfo: d}
		if mr.Dumped {
			n := perDisk[d.Index]
			md.Mapped = &n
			if d.Size > 0 {
				s := share(n*cshim.PageSize, d.Size)
				md.Share = &s
			}
		}
		mr.Disks = append(mr.Disks, md)
	}
	return mr, nil
}

func share(n, of uint64) float64 {
	if of == 0 {
		return 0
	}
	return float64(n) / float64(of)
}

func printMap(w io.Writer, mr *MapReport) {
	fmt.Fprintf(w, "map %s: %d pages tracked (%s)\n", mr.Socket, mr.Mapped, mib(mr.Mapped*cshim.PageSize))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "RAM block\tmapped/pages\tshare")
	for _, b := range mr.RAMBlocks {
		fmt.Fprintf(tw, "%s\t%d/%d\t%s\n", b.Name, b.Mapped, b.Pages, pct(b.Mapped, b.Pages))
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "disk\tnode\tfilename\tsize\tmapped\tshare of disk\tstate")
	for _, d := range mr.Disks {
		mapped, sh := "(--dump)", "(--dump)"
		if d.Mapped != nil {
			mapped = fmt.Sprint(*d.Mapped)
			sh = "-"
			if d.Size > 0 {
				sh = pct(*d.Mapped*cshim.PageSize, d.Size)
			}
		}
		size := "unknown"
		if d.Size > 0 {
			size = fmt.Sprint(d.Size)
		}
		state := "tracked"
		switch {
		case d.Removed:
			state = "removed"
		case d.Excluded:
			state = "excluded"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", d.Index, d.NodeName, d.Filename, size, mapped, sh, state)
	}
	tw.Flush()
	if mr.DumpRequested && !mr.Dumped {
		fmt.Fprintln(w, "the library sent no dump: it predates the dump request (per-disk counts need it)")
	}
	fmt.Fprintf(w, "\nring drops %d, invalidations %d\ncounters:\n", mr.Stats["ring_drops"], mr.Stats["invalidations"])
	names := make([]string, 0, len(mr.Stats))
	for k := range mr.Stats {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		fmt.Fprintf(w, "  %-16s %d\n", k, mr.Stats[k])
	}
}
