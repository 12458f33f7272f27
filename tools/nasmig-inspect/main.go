// Command nasmig-inspect looks into nasmig migrations: a captured
// migration stream (stream, verify), a running library's map (map), how
// much of a guest's RAM its disks could have sent as references (oracle),
// and Xen's xl streams (xen).
//
// Exit status: 0 when all is well, 1 when verify finds a reference that
// does not match, 2 for bad arguments or input that does not decode.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

const usage = `nasmig-inspect: look into nasmig migrations

usage: nasmig-inspect COMMAND [flags] ARGS   (flags may follow ARGS; --json for
JSON output, schema "nasmig-inspect/1")

commands:
  stream FILE          decode a migration stream (FILE, or - for stdin): header,
                       sections, RAM blocks and their page kinds, references by
                       disk, the nasmig setup, where device state begins
      nasmig-inspect stream /var/tmp/vm.mig      (from: migrate "exec:cat>/var/tmp/vm.mig")
  verify FILE [--disk INDEX_OR_NAME=PATH_OR_NBD_URI ...] [--no-default-disks]
                       read the block of every reference from raw images or
                       NBD exports and check its keyed hash (the key seed is in
                       the stream); a disk without --disk is read at the
                       filename the stream names, when that opens here
      nasmig-inspect verify vm.mig --disk 0=/srv/disk0.raw
      nasmig-inspect verify vm.mig --disk disk0=nbd+unix:///disk0?socket=/run/sto.nbd
  map SOCKET [--dump FILE]
                       print the live map of a library started with
                       debug-socket=SOCKET; --dump writes every mapping as JSON
                       lines to FILE (- for stdout; the summary then goes to stderr)
      nasmig-inspect map /run/nasmig.sock --dump /tmp/map.jsonl
  oracle --ram DUMP --disk PATH [--disk PATH ...] [--stream FILE]
                       share of 4 KiB RAM pages that are zero, identical to a
                       4 KiB-aligned disk block, or other; with --stream, the
                       references' coverage of the identical pages
      nasmig-inspect oracle --ram guest.pmem --disk /srv/disk0.raw --stream vm.mig
  xen FILE             decode an xl-format Xen stream (xl save, or xl migrate as
                       nasmig-xl --capture=DIR keeps it): domain type, disks of
                       its configuration, libxl and libxc records, pages by type
      nasmig-inspect xen /var/tmp/capture/sent.stream

exit status: 0 ok, 1 verification mismatch, 2 bad arguments or input
`

// Exit statuses.
const (
	exitOK       = 0
	exitMismatch = 1
	exitBad      = 2
)

// errUsage marks argument errors (exit 2, with a hint to --help).
var errUsage = errors.New("usage")

type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	stderrFile     *os.File // for the terminal check; nil in tests
}

func main() {
	os.Exit(run(os.Args[1:], env{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, stderrFile: os.Stderr}))
}

func run(args []string, e env) int {
	if len(args) == 0 {
		fmt.Fprint(e.stderr, usage)
		return exitBad
	}
	cmd, rest := args[0], args[1:]
	var (
		code int
		err  error
	)
	switch cmd {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(e.stdout, usage)
		return exitOK
	case "stream":
		code, err = cmdStream(rest, e)
	case "verify":
		code, err = cmdVerify(rest, e)
	case "map":
		code, err = cmdMap(rest, e)
	case "oracle":
		code, err = cmdOracle(rest, e)
	case "xen":
		code, err = cmdXen(rest, e)
	default:
		err = fmt.Errorf("%w: unknown command %q", errUsage, cmd)
	}
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(e.stdout, usage)
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(e.stderr, "nasmig-inspect %s: %v\n", cmd, err)
		if errors.Is(err, errUsage) {
			fmt.Fprintln(e.stderr, "(nasmig-inspect --help shows the usage)")
		}
		if code == exitOK {
			code = exitBad
		}
	}
	return code
}

// parseArgs parses flags that may come before, between or after the
// positional arguments, and checks their number.
func parseArgs(fs *flag.FlagSet, args []string, npos int) ([]string, error) {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %v", errUsage, err)
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	if len(pos) != npos {
		return nil, fmt.Errorf("%w: %d arguments (%s), want %d", errUsage, len(pos), strings.Join(pos, " "), npos)
	}
	return pos, nil
}

// multiFlag collects a repeated flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// openInput opens FILE, or stdin for "-".
func openInput(name string, e env) (io.Reader, func(), error) {
	if name == "-" {
		return e.stdin, func() {}, nil
	}
	f, err := os.Open(name)
	if err != nil {
		return nil, nil, err
	}
	return f, func() { f.Close() }, nil
}

// mib formats a byte count (in KiB below 1 MiB).
func mib(b uint64) string {
	if b < 1<<20 {
		return fmt.Sprintf("%.1f KiB", float64(b)/(1<<10))
	}
	return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
}

// pct formats a share.
func pct(n, of uint64) string {
	if of == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f%%", 100*float64(n)/float64(of))
}
