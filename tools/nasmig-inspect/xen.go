package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"

	"nasmig/tools/nasmig-xl/xenstream"
	"nasmig/tools/nasmig-xl/xlwire"
)

// xenReport is what `xen` finds in an xl stream.
type xenReport struct {
	Schema       string                 `json:"schema"`
	Bytes        int64                  `json:"bytes"`
	DomainType   string                 `json:"domain_type"`
	Disks        []xenstream.ConfigDisk `json:"disks"`
	LibxlRecords map[string]int         `json:"libxl_records"`
	LibxcRecords map[string]int         `json:"libxc_records"`
	Pages        uint64                 `json:"pages"`
	ZeroPages    uint64                 `json:"zero_pages"`
	PagesByType  map[string]uint64      `json:"pages_by_type"`
	NoDataPfns   uint64                 `json:"pfns_without_data"`
	TailBytes    int64                  `json:"tail_bytes"`
	Warning      string                 `json:"warning,omitempty"`
}

var pfnTypeNames = map[uint64]string{0: "normal", 1: "L1", 2: "L2", 3: "L3", 4: "L4", 9: "L1 pinned", 10: "L2 pinned",
	11: "L3 pinned", 12: "L4 pinned", xenstream.PfnTypeBroken: "broken", xenstream.PfnTypeXalloc: "allocate-only", xenstream.PfnTypeXtab: "invalid"}

// cmdXen decodes an xl-format stream: xl save, or what nasmig-xl
// --capture kept of xl migrate.
func cmdXen(args []string, e env) (int, error) {
	fs := flag.NewFlagSet("xen", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "JSON output")
	pos, err := parseArgs(fs, args, 1)
	if err != nil {
		return exitBad, err
	}
	in, closeIn, err := openInput(pos[0], e)
	if err != nil {
		return exitBad, err
	}
	defer closeIn()
	r := xenReport{Schema: "nasmig-inspect/1", PagesByType: map[string]uint64{}, LibxlRecords: map[string]int{}, LibxcRecords: map[string]int{}}
	sp := xenstream.NewSplitter(in)
	for {
		pc, err := sp.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return exitBad, fmt.Errorf("at byte %d: %w", r.Bytes, err)
		}
		for _, b := range pc.Bytes() {
			r.Bytes += int64(len(b))
		}
		if p := pc.Pages; p != nil {
			for _, e := range p.PFNs {
				if !xenstream.HasData(e) {
					r.NoDataPfns++
				}
				r.PagesByType[pfnTypeNames[e>>xenstream.PfnTypeShift]]++
			}
			for i := 0; i < p.NPages(); i++ {
				r.Pages++
				if xlwire.IsZero(p.Page(i)) {
					r.ZeroPages++
				}
			}
		}
	}
	r.DomainType = map[uint32]string{0: "-", 1: "x86 PV", 2: "x86 HVM"}[sp.Domain]
	if r.DomainType == "" {
		r.DomainType = fmt.Sprint(sp.Domain)
	}
	for t, n := range sp.LibxlRecords {
		r.LibxlRecords[xenstream.LibxlRecordName(t)] = n
	}
	for t, n := range sp.LibxcRecords {
		r.LibxcRecords[xenstream.LibxcRecordName(t)] = n
	}
	r.TailBytes, r.Warning = sp.Tail, sp.Warning
	if sp.Config != nil {
		if r.Disks, err = xenstream.ConfigDisks(sp.Config); err != nil {
			r.Warning = err.Error()
		}
	}
	if *asJSON {
		return exitOK, writeJSON(e.stdout, r)
	}
	w := e.stdout
	fmt.Fprintf(w, "xl stream: %s, domain %s\n", mib(uint64(r.Bytes)), r.DomainType)
	for _, d := range r.Disks {
		fmt.Fprintf(w, "  disk %s: %s (backend %s, format %s)\n", d.Vdev, d.Path, d.Backend, d.Format)
	}
	fmt.Fprintf(w, "libxl records: %s\nlibxc records: %s\n", countList(r.LibxlRecords), countList(r.LibxcRecords))
	fmt.Fprintf(w, "pages carried: %d (%s), zero %d (%s); pfns without data %d\n", r.Pages, mib(r.Pages*xenstream.PageSize), r.ZeroPages, pct(r.ZeroPages, r.Pages), r.NoDataPfns)
	var kinds []string
	for k := range r.PagesByType {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		fmt.Fprintf(w, "  %-14s %d\n", k, r.PagesByType[k])
	}
	fmt.Fprintf(w, "after the stream: %d bytes\n", r.TailBytes)
	if r.Warning != "" {
		fmt.Fprintf(w, "warning: %s\n", r.Warning)
	}
	return exitOK, nil
}

func countList(m map[string]int) string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	s := ""
	for i, k := range keys {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%s %d", k, m[k])
	}
	return s
}
