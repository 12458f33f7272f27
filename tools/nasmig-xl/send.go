package main

import (
	"bufio"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"nasmig/cshim"
	"nasmig/plugin/content"
	"nasmig/tools/nasmig-xl/xenstream"
	"nasmig/tools/nasmig-xl/xlwire"
)

// pendingWindow bounds the referenced pages the sender keeps for batches
// the receiver has not acknowledged (4 KiB each: 256 MiB).
const pendingWindow = 65536

// helloAckWait is how long the sender waits for the receiver's disks.
const helloAckWait = 30 * time.Second

type sendStats struct {
	pages, refs, zero, filled, records int
	linkBytes, streamBytes             int64
}

type sender struct {
	log zerolog.Logger

	wmu sync.Mutex
	w   *bufio.Writer // frames to the receiving half
	out io.Writer     // xl's return channel (our stdout)

	idx     *content.Client
	usable  [256]bool
	ackHold chan []uint8

	pmu     sync.Mutex
	pcond   *sync.Cond
	pend    map[uint64]map[uint32][]byte // seq -> page index -> page
	pendN   int
	acked   uint64
	rerr    error // the receiving direction's end (nil: clean Close)
	rdone   bool
	st      sendStats
	capture io.WriteCloser
	needs   chan need
}

type need struct {
	seq uint64
	idx []uint32
}

func (s *sender) writeFrame(b []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.st.linkBytes += int64(len(b))
	if _, err := s.w.Write(b); err != nil {
		return err
	}
	return s.w.Flush()
}

// transportCmd is the command that runs the receiving half for host.
func transportCmd(o options, host string, rest []string) (*exec.Cmd, error) {
	self := o.remote
	if self == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		self = exe
	}
	recv := []string{self, "--receive", "--log=" + o.logLevel}
	if o.capture != "" {
		recv = append(recv, "--capture="+o.capture)
	}
	recv = append(append(recv, "--"), rest...)
	mode := o.transport
	if mode == "auto" {
		mode = "ssh"
		if isLocal(host) {
			mode = "local"
		}
	}
	switch mode {
	case "local":
		return exec.Command(recv[0], recv[1:]...), nil
	case "ssh":
		q := make([]string, len(recv))
		for i, a := range recv {
			q[i] = shellQuote(a)
		}
		return exec.Command("ssh", "-T", "-o", "BatchMode=yes", host, strings.Join(q, " ")), nil
	}
	return nil, fmt.Errorf("unknown transport %q (ssh, local, auto)", o.transport)
}

func send(o options, host string, rest []string, in io.Reader, out io.Writer, log zerolog.Logger) int {
	cmd, err := transportCmd(o, host, rest)
	if err != nil {
		log.Error().Err(err).Msg("cannot start the receiving half")
		return 2
	}
	cmd.Stderr = os.Stderr
	tin, err := cmd.StdinPipe()
	if err == nil {
		var tout io.ReadCloser
		if tout, err = cmd.StdoutPipe(); err == nil {
			if err = cmd.Start(); err == nil {
				code, _ := runSender(o, cmd.Wait, tin, tout, in, out, log)
				return code
			}
		}
	}
	log.Error().Err(err).Str("host", host).Msg("cannot start the receiving half")
	return 1
}

// runSender drives one migration: tin and tout reach the receiving half,
// wait waits for it to end.
func runSender(o options, wait func() error, tin io.WriteCloser, tout io.Reader, in io.Reader, out io.Writer, log zerolog.Logger) (int, sendStats) {
	s := &sender{log: log, w: bufio.NewWriterSize(tin, 1<<20), out: out, pend: map[uint64]map[uint32][]byte{}, ackHold: make(chan []uint8, 1)}
	s.pcond = sync.NewCond(&s.pmu)
	start := time.Now()
	var err error
	if s.capture, err = captureFile(o.capture, "sent.stream"); err != nil {
		log.Warn().Err(err).Msg("no capture")
	}
	// The receiving half waits for a Fill only after its Need, so one
	// request at a time is in flight; the reader hands them to fillLoop
	// so that it never blocks on the sending direction (the receiving
	// half may be blocked writing to us meanwhile).
	s.needs = make(chan need, 16)
	filled := make(chan struct{})
	go func() { defer close(filled); s.fillLoop() }()
	rdone := make(chan struct{})
	go func() { defer close(rdone); defer close(s.needs); s.fromReceiver(tout) }()

	err = s.pump(o, in)
	if err == nil {
		err = s.writeFrame(xlwire.AppendHeader(nil, xlwire.TClose, 0))
	} else {
		msg := err.Error()
		s.writeFrame(append(xlwire.AppendHeader(nil, xlwire.TAbort, len(msg)), msg...))
	}
	tin.Close()
	if s.capture != nil {
		s.capture.Close()
	}
	<-rdone
	<-filled
	werr := wait()
	if s.idx != nil {
		s.idx.Close()
	}
	st := s.st
	ev := log.Info()
	if err != nil || s.rerr != nil || werr != nil {
		ev = log.Error().AnErr("stream", err).AnErr("receiver", s.rerr).AnErr("receiving half", werr)
	}
	ev.Int("pages", st.pages).Int("references", st.refs).Int("zero", st.zero).Int("sent-in-full-after-check", st.filled).
		Str("stream-mib", fmt.Sprintf("%.1f", float64(st.streamBytes)/(1<<20))).
		Str("link-mib", fmt.Sprintf("%.1f", float64(st.linkBytes)/(1<<20))).
		Dur("took", time.Since(start).Round(time.Millisecond)).Msg("done")
	switch {
	case err != nil || s.rerr != nil:
		return 1, st
	case werr != nil:
		var ee *exec.ExitError
		if errors.As(werr, &ee) && ee.ExitCode() > 0 {
			return ee.ExitCode(), st
		}
		return 1, st
	}
	return 0, st
}

// pump splits xl's stream and sends it on.
func (s *sender) pump(o options, in io.Reader) error {
	if s.capture != nil {
		in = io.TeeReader(in, s.capture)
	}
	sp := xenstream.NewSplitter(in)
	helloSent := false
	var pw xlwire.PagesWriter
	var seq uint64
	hashes := make([]uint64, xenstream.MaxPagesPerRecord)
	locs := make([]content.Loc, xenstream.MaxPagesPerRecord)
	found := make([]bool, xenstream.MaxPagesPerRecord)
	// lookup[i]: page i's slot in hashes/locs/found, or -1 for a page of
	// zeros (sent as one byte: neither hashed nor looked up).
	lookup := make([]int, xenstream.MaxPagesPerRecord)
	for {
		pc, err := sp.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if !helloSent {
			// xl's header came first: it names the domain's disks.
			helloSent = true
			if err := s.hello(o, sp.Config); err != nil {
				return err
			}
		}
		if pc.Pages == nil || s.idx == nil {
			for _, b := range pc.Bytes() {
				s.st.streamBytes += int64(len(b))
				if len(b) > 0 {
					if err := s.writeFrame(append(xlwire.AppendHeader(nil, xlwire.TData, len(b)), b...)); err != nil {
						return fmt.Errorf("to the receiving half: %w", err)
					}
				}
			}
			if pc.Pages != nil {
				s.st.pages += pc.Pages.NPages()
			}
			continue
		}
		p := pc.Pages
		n := p.NPages()
		s.st.pages += n
		s.st.streamBytes += int64(len(p.Head) + len(p.Pages))
		m := 0
		for i := 0; i < n; i++ {
			page := p.Page(i)
			if xlwire.IsZero(page) {
				lookup[i] = -1
				continue
			}
			hashes[m] = cshim.HashPage(page)[0]
			lookup[i] = m
			m++
		}
		if m > 0 {
			if err := s.idx.Lookup(hashes[:m], locs, found); err != nil {
				// The device model went away: no more references.
				s.log.Warn().Err(err).Msg("content index lost: the rest goes in full")
				s.idx.Close()
				s.idx = nil
				clear(found[:m])
			}
		}
		seq++
		pw.Begin(seq, p.Head)
		kept := map[uint32][]byte{}
		for i := 0; i < n; i++ {
			page := p.Page(i)
			j := lookup[i]
			if j < 0 {
				// Free memory: no disk needed, and nothing to verify.
				pw.Zero()
				s.st.zero++
				continue
			}
			if !found[j] || !s.usable[locs[j].Disk] {
				pw.Page(page)
				continue
			}
			pw.Ref(xlwire.Ref{Disk: locs[j].Disk, Block: locs[j].Block, Hash: cshim.HashPageMig(page)})
			kept[uint32(i)] = append([]byte(nil), page...)
		}
		s.st.refs += len(kept)
		if len(kept) > 0 {
			if err := s.keep(seq, kept); err != nil {
				return err
			}
		}
		if err := s.writeFrame(pw.Bytes()); err != nil {
			return fmt.Errorf("to the receiving half: %w", err)
		}
	}
	if sp.Warning != "" {
		s.log.Warn().Str("why", sp.Warning).Msg("part of the stream passed on unchanged")
	}
	s.st.records = sp.Records
	return nil
}

// keep holds the referenced pages of batch seq until the receiver acks
// it, waiting while the window is full.
func (s *sender) keep(seq uint64, pages map[uint32][]byte) error {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	for s.pendN > 0 && s.pendN+len(pages) > pendingWindow && !s.rdone {
		s.pcond.Wait()
	}
	if s.rdone {
		return fmt.Errorf("the receiving half ended early: %v", s.rerr)
	}
	s.pend[seq] = pages
	s.pendN += len(pages)
	return nil
}

// hello picks the content index for the domain's disks and tells the
// receiving half which disks references may name.
func (s *sender) hello(o options, config []byte) error {
	var h xlwire.Hello
	if _, err := rand.Read(h.KeySeed[:]); err != nil {
		return err
	}
	var indexDisks []content.Disk
	if config == nil {
		s.log.Info().Msg("no domain configuration in the stream: pages go in full")
	} else if c, disks, err := chooseIndex(o.contentDir, config, s.log); err != nil {
		s.log.Info().Err(err).Msg("no content index: pages go in full")
	} else {
		s.idx, indexDisks = c, disks
		for _, d := range disks {
			h.Disks = append(h.Disks, xlwire.Disk{ID: d.Index, Size: d.Size, Path: d.Path})
		}
		cshim.SetKey(cshim.ExpandKey(c.Hello.KeySeed))
		cshim.SetMigKey(cshim.ExpandKey(h.KeySeed))
	}
	if err := s.writeFrame(xlwire.AppendHello(nil, h)); err != nil {
		return fmt.Errorf("to the receiving half: %w", err)
	}
	if s.idx == nil {
		return nil
	}
	select {
	case ids := <-s.ackHold:
		for _, id := range ids {
			s.usable[id] = true
		}
		var names []string
		for _, d := range indexDisks {
			if s.usable[d.Index] {
				names = append(names, d.Path)
			}
		}
		if len(names) == 0 {
			s.log.Warn().Msg("the receiving half can read none of the domain's disks: pages go in full")
		} else {
			s.log.Info().Strs("disks", names).Uint64("indexed-blocks", s.idx.Hello.Blocks).Int32("device-model-pid", int32(s.idx.Hello.PID)).Msg("references to")
		}
	case <-time.After(helloAckWait):
		return fmt.Errorf("the receiving half did not answer within %v", helloAckWait)
	}
	return nil
}

// chooseIndex finds the content socket of the device model serving the
// domain's disks: the one that indexed most, if several (the receiving
// device model of a local migration serves the same disks).
func chooseIndex(dir string, config []byte, log zerolog.Logger) (*content.Client, []content.Disk, error) {
	cdisks, err := xenstream.ConfigDisks(config)
	if err != nil {
		return nil, nil, err
	}
	type ident struct{ dev, ino uint64 }
	want := map[ident]bool{}
	for _, d := range cdisks {
		var st syscall.Stat_t
		if d.Path != "" && syscall.Stat(d.Path, &st) == nil {
			want[ident{uint64(st.Dev), st.Ino}] = true
		}
	}
	if len(want) == 0 {
		return nil, nil, fmt.Errorf("none of the domain's %d disks is a file here", len(cdisks))
	}
	socks, _ := filepath.Glob(filepath.Join(dir, "*.sock"))
	var best *content.Client
	var bestDisks []content.Disk
	var seen []string // what each device model serves, for the error
	for _, path := range socks {
		c, err := content.Dial(path)
		if err != nil {
			log.Debug().Err(err).Msg("content socket")
			continue
		}
		var disks []content.Disk
		var offered []string
		for _, d := range c.Hello.Disks {
			if (d.Dev != 0 || d.Ino != 0) && want[ident{d.Dev, d.Ino}] {
				disks = append(disks, d)
			}
			offered = append(offered, d.Path)
		}
		seen = append(seen, fmt.Sprintf("pid %d: %q", c.Hello.PID, offered))
		if len(disks) == 0 || best != nil && best.Hello.Blocks >= c.Hello.Blocks {
			c.Close()
			continue
		}
		if best != nil {
			best.Close()
		}
		best, bestDisks = c, disks
	}
	if best == nil {
		return nil, nil, fmt.Errorf("no device model in %s serves the domain's disks %v (content-index=on); they serve %v", dir, diskPaths(cdisks), seen)
	}
	sort.Slice(bestDisks, func(i, j int) bool { return bestDisks[i].Index < bestDisks[j].Index })
	return best, bestDisks, nil
}

// fromReceiver handles the receiving half's frames until it closes.
func (s *sender) fromReceiver(r io.Reader) {
	err := s.readReceiver(xlwire.NewReader(r))
	s.pmu.Lock()
	s.rerr, s.rdone = err, true
	s.pcond.Broadcast()
	s.pmu.Unlock()
	if err != nil {
		s.log.Error().Err(err).Msg("receiving half")
	}
}

// readReceiver reads until the receiving half exits: its Close only
// means xl migrate-receive's answers ended, Needs and Acks may follow.
func (s *sender) readReceiver(fr *xlwire.Reader) error {
	closed := false
	for {
		f, err := fr.Next()
		if err == io.EOF {
			if closed {
				return nil
			}
			return errors.New("the receiving half ended without closing")
		}
		if err != nil {
			return err
		}
		switch f.Type {
		case xlwire.TData:
			if _, err := s.out.Write(f.Payload); err != nil {
				return fmt.Errorf("to xl: %w", err)
			}
		case xlwire.THello:
			ids, err := xlwire.ParseHelloAck(f.Payload)
			if err != nil {
				return err
			}
			s.ackHold <- ids
		case xlwire.TPages: // Need
			seq, idx, err := xlwire.ParseNeed(f.Payload)
			if err != nil {
				return err
			}
			s.needs <- need{seq, idx}
		case xlwire.TFill: // Ack
			seq, err := xlwire.ParseSeq(f.Payload)
			if err != nil {
				return err
			}
			s.pmu.Lock()
			for ; s.acked < seq; s.acked++ {
				s.pendN -= len(s.pend[s.acked+1])
				delete(s.pend, s.acked+1)
			}
			s.pcond.Broadcast()
			s.pmu.Unlock()
		case xlwire.TClose:
			closed = true
		case xlwire.TAbort:
			return fmt.Errorf("the receiving half gave up: %s", f.Payload)
		}
	}
}

// fillLoop answers the receiving half's Needs.  A Need it cannot answer
// ends the migration: the receiving half then cuts the stream.
func (s *sender) fillLoop() {
	for n := range s.needs {
		if err := s.fill(n.seq, n.idx); err != nil {
			s.log.Error().Err(err).Msg("cannot send the pages the receiving half asked for")
			msg := err.Error()
			s.writeFrame(append(xlwire.AppendHeader(nil, xlwire.TAbort, len(msg)), msg...))
		}
	}
}

// fill sends the pages of batch seq whose references did not verify.
func (s *sender) fill(seq uint64, idx []uint32) error {
	s.pmu.Lock()
	kept := s.pend[seq]
	pages := make([][]byte, len(idx))
	for k, i := range idx {
		pages[k] = kept[i]
	}
	s.pmu.Unlock()
	for k, p := range pages {
		if p == nil {
			return fmt.Errorf("the receiving half asked for page %d of batch %d, which was not a reference", idx[k], seq)
		}
	}
	s.log.Warn().Uint64("batch", seq).Int("pages", len(idx)).Msg("references did not verify on the receiving side: sending those pages in full")
	s.st.filled += len(idx)
	return s.writeFrame(xlwire.AppendFill(nil, seq, idx, pages))
}

func diskPaths(ds []xenstream.ConfigDisk) []string {
	var p []string
	for _, d := range ds {
		p = append(p, d.Path)
	}
	return p
}
