// Command nasmig-xl puts nasmig's disk references into Xen's standard live
// migration.  It sits in the slot of `xl migrate -s`:
//
//	xl migrate -s nasmig-xl DOMAIN HOST
//
// xl then runs `nasmig-xl HOST xl migrate-receive ...` with the migration
// stream on its stdin and xl's return channel on its stdout.  This sending
// half starts the receiving half on HOST (`ssh HOST nasmig-xl --receive --
// xl migrate-receive ...`, or directly for localhost), passes everything
// through unchanged except the guest pages of the libxc stream: a page
// whose content the domain's device model (QEMU with libnasmig.so and
// content-index=on) saw in a block of a shared disk goes as a reference
// (disk, block, keyed hash).  The receiving half reads the block, checks
// the hash, and hands `xl migrate-receive` the original stream, byte for
// byte; a reference that does not verify is asked from the sending half,
// which keeps every referenced page until the receiver has it.  Nothing
// unverified ever reaches xl: if a page cannot be had, the stream is cut
// and xl's own failure path keeps the domain running on the source.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/rs/zerolog"

	"nasmig/plugin/config"
)

const usage = `usage:
  nasmig-xl [flags] HOST COMMAND...      sending half (what xl migrate -s runs)
  nasmig-xl --receive [flags] -- COMMAND...  receiving half (run by the sending half)

In xl:  xl migrate -s "nasmig-xl [flags]" DOMAIN HOST

flags:
`

type options struct {
	receive    bool
	transport  string
	remote     string
	contentDir string
	capture    string
	logLevel   string
}

func main() {
	o := options{}
	fs := flag.NewFlagSet("nasmig-xl", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, usage); fs.PrintDefaults() }
	fs.BoolVar(&o.receive, "receive", false, "run as the receiving half: start COMMAND (xl migrate-receive ...) and feed it the stream")
	fs.StringVar(&o.transport, "transport", "auto", "how the sending half reaches HOST: ssh, local (run the receiving half here), auto (local for localhost, 127.0.0.1 and ::1, else ssh)")
	fs.StringVar(&o.remote, "remote", "", "path of nasmig-xl on HOST (default: this executable's path)")
	fs.StringVar(&o.contentDir, "content-dir", config.DefaultContentDir, "where device models with content-index=on keep their content sockets")
	fs.StringVar(&o.capture, "capture", "", "debugging: write the stream as read from xl to DIR/sent.stream (sending half) and as handed to COMMAND to DIR/received.stream (receiving half)")
	fs.StringVar(&o.logLevel, "log", "info", "log level on stderr: debug, info, warn, error")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	lvl, err := zerolog.ParseLevel(o.logLevel)
	if err != nil {
		fmt.Fprintf(os.Stderr, "nasmig-xl: -log: %v\n", err)
		os.Exit(2)
	}
	half := "send"
	if o.receive {
		half = "receive"
	}
	log := zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, NoColor: true, PartsExclude: []string{zerolog.TimestampFieldName}}).
		Level(lvl).With().Str("nasmig-xl", half).Logger()
	args := fs.Args()
	var code int
	if o.receive {
		if len(args) == 0 {
			fs.Usage()
			os.Exit(2)
		}
		code = receive(o, args, os.Stdin, os.Stdout, log)
	} else {
		if len(args) < 2 {
			fs.Usage()
			os.Exit(2)
		}
		code = send(o, args[0], args[1:], os.Stdin, os.Stdout, log)
	}
	os.Exit(code)
}

func isLocal(host string) bool {
	switch strings.Trim(host, "[]") {
	case "localhost", "127.0.0.1", "::1", "localhost.localdomain":
		return true
	}
	return false
}

// shellQuote quotes an argument for the remote shell ssh runs commands in.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,@+") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// captureFile opens DIR/name for a copy of a stream, or returns nil.
func captureFile(dir, name string) (io.WriteCloser, error) {
	if dir == "" {
		return nil, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("capture: %w", err)
	}
	f, err := os.Create(dir + "/" + name)
	if err != nil {
		return nil, fmt.Errorf("capture: %w", err)
	}
	return f, nil
}
