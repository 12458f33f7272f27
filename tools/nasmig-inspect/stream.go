package main

import (
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"nasmig/tools/nasmig-inspect/migstream"
	"nasmig/tools/nasmig-inspect/qemufmt"
)

func cmdStream(args []string, e env) (int, error) {
	fs := flag.NewFlagSet("stream", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "JSON output (schema nasmig-inspect/1)")
	pos, err := parseArgs(fs, args, 1)
	if err != nil {
		return exitBad, err
	}
	r, done, err := openInput(pos[0], e)
	if err != nil {
		return exitBad, err
	}
	defer done()
	rep, derr := migstream.Decode(r, migstream.Options{})
	if *asJSON {
		out := struct {
			*migstream.Report
			Error string `json:"error,omitempty"`
		}{Report: rep}
		if derr != nil {
			out.Error = derr.Error()
		}
		if err := writeJSON(e.stdout, out); err != nil {
			return exitBad, err
		}
	} else {
		printStream(e.stdout, pos[0], rep)
	}
	switch {
	case derr != nil:
		return exitBad, derr
	case rep.Stopped != "" && !rep.RAMComplete:
		return exitBad, fmt.Errorf("decoding stopped before the RAM section ended: %s", rep.Stopped)
	}
	return exitOK, nil
}

func printStream(w io.Writer, name string, rep *migstream.Report) {
	fmt.Fprintf(w, "stream %s: %d bytes, magic %s, version %d\n", name, rep.TotalBytes, rep.Magic, rep.Version)
	if c := rep.Configuration; c != nil {
		fmt.Fprintf(w, "machine %s", c.Machine)
		if len(c.Capabilities) > 0 {
			fmt.Fprintf(w, ", capabilities %s", strings.Join(c.Capabilities, ","))
		}
		if c.UUID != "" {
			fmt.Fprintf(w, ", uuid %s", c.UUID)
		}
		fmt.Fprintln(w)
	}
	for _, c := range rep.Commands {
		fmt.Fprintf(w, "command %s at %d (%d bytes", c.Name, c.Offset, c.Len)
		if c.Cmd == qemufmt.CmdPackaged {
			fmt.Fprintf(w, ", wraps %d bytes, not decoded", c.Packaged)
		}
		fmt.Fprintln(w, ")")
	}

	fmt.Fprintf(w, "\nsections (%d):\n", len(rep.Sections))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "offset\ttype\tid\tname\tinstance\tversion\tsize\t")
	for _, s := range rep.Sections {
		size := fmt.Sprint(s.Size)
		if s.Size < 0 {
			size = "?"
		}
		fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%d\t%d\t%s\t\n", s.Offset, s.Type, s.ID, s.Name, s.Instance, s.Version, size)
	}
	tw.Flush()

	fmt.Fprintf(w, "\nRAM blocks (%d):\n", len(rep.RAMBlocks))
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "name\tsize\tnormal\tzero\txbzrle\trefs\trefs by disk\t")
	cnt := func(c migstream.PageCounts) string { return fmt.Sprintf("%d (%s)", c.Pages, mib(c.Bytes)) }
	for _, b := range rep.RAMBlocks {
		var byDisk []string
		keys := make([]int, 0, len(b.RefsByDisk))
		for k := range b.RefsByDisk {
			keys = append(keys, int(k))
		}
		sort.Ints(keys)
		for _, k := range keys {
			byDisk = append(byDisk, fmt.Sprintf("%d:%d", k, b.RefsByDisk[uint8(k)]))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", b.Name, mib(b.Size), cnt(b.Normal), cnt(b.Zero), cnt(b.XBZRLE), cnt(b.Refs), strings.Join(byDisk, " "))
	}
	t := rep.Totals
	fmt.Fprintf(tw, "total\t\t%s\t%s\t%s\t%s\t\t\n", cnt(t.Normal), cnt(t.Zero), cnt(t.XBZRLE), cnt(t.Refs))
	tw.Flush()
	fmt.Fprintf(w, "multifd flush markers: %d\n", rep.MultifdFlushes)
	for _, b := range rep.RAMBlocks {
		if m := b.MappedRAM; m != nil {
			fmt.Fprintf(w, "mapped-ram %s: header at %d (version %d), bitmap at %d, pages at %d, %d of %d pages present\n",
				b.Name, m.HeaderOffset, m.Version, m.BitmapOffset, m.PagesOffset, m.PagesPresent, b.Size/m.PageSize)
		}
	}

	if s := rep.Setup; s != nil {
		fmt.Fprintf(w, "\nnasmig setup at %d: section version %d, wire version %d, flags %#x", s.Offset, s.SectionVer, s.WireVersion, s.Flags)
		if s.Hold {
			fmt.Fprint(w, " (hold)")
		}
		fmt.Fprintf(w, "\n  migration %s, key seed sha256 %s (the seed verifies this stream's hashes)\n", s.Migration, s.KeySeedSHA256)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  disk\tsize\tfilename\tnode")
		for _, d := range s.Disks {
			fmt.Fprintf(tw, "  %d\t%d\t%s\t%s\n", d.Index, d.Size, d.Filename, d.NodeName)
		}
		tw.Flush()
	} else {
		fmt.Fprintln(w, "\nno nasmig setup section: this stream sends no disk references")
	}
	if len(rep.RefsByDisk) > 0 {
		fmt.Fprintln(w, "references by disk:")
		for _, d := range rep.RefsByDisk {
			fmt.Fprintf(w, "  disk %d: %d references", d.Index, d.Refs)
			if d.Unknown {
				fmt.Fprint(w, ", NOT IN THE SETUP'S DISK TABLE")
			}
			if d.OutOfRange > 0 {
				fmt.Fprintf(w, ", %d PAST THE DISK'S END", d.OutOfRange)
			}
			fmt.Fprintln(w)
		}
	}

	fmt.Fprintln(w)
	if rep.RAMEndOffset >= 0 {
		fmt.Fprintf(w, "RAM's final pass (END section) begins at byte offset %d\n", rep.RAMEndOffset)
	}
	if rep.DeviceStateOffset >= 0 {
		fmt.Fprintf(w, "device state (the switchover) begins at byte offset %d\n", rep.DeviceStateOffset)
	}
	if rep.EOFOffset >= 0 {
		fmt.Fprintf(w, "end of stream (QEMU_VM_EOF) at %d", rep.EOFOffset)
		if rep.VMDescOffset >= 0 {
			fmt.Fprintf(w, ", vmdesc at %d (%d bytes)", rep.VMDescOffset, rep.VMDescBytes)
		}
		fmt.Fprintln(w)
	}
	if rep.Stopped != "" {
		fmt.Fprintf(w, "STOPPED: %s\n", rep.Stopped)
	}
}
