package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"nasmig/cshim"
	"nasmig/tools/nasmig-xl/xenstream"
	"nasmig/tools/nasmig-xl/xlwire"
)

// maxRead is the largest read of nearby referenced blocks; maxReadGap the
// widest run of unreferenced blocks one read spans (64 KiB: cheaper read
// along than a read of its own; wider ones, such as between the random
// blocks a guest wrote, would be read for nothing).
const (
	maxRead    = 1 << 20
	maxReadGap = 16
)

type recvStats struct {
	refs, verified, mismatched, reads int
	readBytes                         int64
	readTime                          time.Duration
}

type receiver struct {
	log   zerolog.Logger
	wmu   sync.Mutex
	w     *bufio.Writer // frames to the sending half
	cin   *bufio.Writer // xl migrate-receive's stdin
	in    *bufio.Reader // frames from the sending half (under fr)
	disks map[uint8]*os.File
	hello bool
	queue []xlwire.Frame // frames that came while a batch waited for Fill
	fr    *xlwire.Reader
	st    recvStats
}

func (r *receiver) writeFrame(b []byte) error {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if _, err := r.w.Write(b); err != nil {
		return err
	}
	return r.w.Flush()
}

func receive(o options, args []string, in io.Reader, out io.Writer, log zerolog.Logger) int {
	code, _ := runReceiver(o, args, in, out, log)
	return code
}

// runReceiver runs args (xl migrate-receive ...) and feeds it the stream
// the sending half sends on in; its answers go back on out.
func runReceiver(o options, args []string, in io.Reader, out io.Writer, log zerolog.Logger) (int, recvStats) {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stderr = os.Stderr
	cin, err := cmd.StdinPipe()
	var cout io.ReadCloser
	if err == nil {
		cout, err = cmd.StdoutPipe()
	}
	if err == nil {
		err = cmd.Start()
	}
	if err != nil {
		log.Error().Err(err).Strs("command", args).Msg("cannot start")
		return 1, recvStats{}
	}
	r := &receiver{log: log, w: bufio.NewWriterSize(out, 64<<10), disks: map[uint8]*os.File{}, in: bufio.NewReaderSize(in, 1<<20)}
	r.fr = xlwire.NewReader(r.in)
	var sink io.Writer = cin
	capture, cerr := captureFile(o.capture, "received.stream")
	if cerr != nil {
		log.Warn().Err(cerr).Msg("no capture")
	} else if capture != nil {
		sink = io.MultiWriter(cin, capture)
	}
	r.cin = bufio.NewWriterSize(sink, 1<<20)

	// xl migrate-receive's answers go back unchanged.
	fwd := make(chan error, 1)
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := cout.Read(buf)
			if n > 0 {
				if werr := r.writeFrame(append(xlwire.AppendHeader(nil, xlwire.TData, n), buf[:n]...)); werr != nil {
					fwd <- werr
					return
				}
			}
			if err != nil {
				fwd <- r.writeFrame(xlwire.AppendHeader(nil, xlwire.TClose, 0))
				return
			}
		}
	}()

	start := time.Now()
	err = r.run()
	if err != nil {
		// Never hand xl a stream we could not complete: cut it, so that
		// xl migrate-receive fails and the source keeps its domain.
		msg := err.Error()
		r.writeFrame(append(xlwire.AppendHeader(nil, xlwire.TAbort, len(msg)), msg...))
		cmd.Process.Kill()
	} else if ferr := r.cin.Flush(); ferr != nil {
		err = fmt.Errorf("to %s: %w", args[0], ferr)
	}
	cin.Close()
	if capture != nil {
		capture.Close()
	}
	werr := cmd.Wait()
	ferr := <-fwd
	for _, f := range r.disks {
		f.Close()
	}
	st := r.st
	ev := log.Info()
	if err != nil || werr != nil || ferr != nil {
		ev = log.Error().AnErr("stream", err).AnErr("command", werr).AnErr("answers", ferr)
	}
	mbps := 0.0
	if st.readTime > 0 {
		mbps = float64(st.readBytes) / st.readTime.Seconds() / 1e6
	}
	ev.Int("references", st.refs).Int("verified", st.verified).Int("did-not-verify", st.mismatched).
		Int("reads", st.reads).Str("read-mib", fmt.Sprintf("%.1f", float64(st.readBytes)/(1<<20))).
		Str("read-mb-s", fmt.Sprintf("%.0f", mbps)).Dur("took", time.Since(start).Round(time.Millisecond)).Msg("done")
	if err != nil || ferr != nil {
		return 1, st
	}
	if werr != nil {
		var ee *exec.ExitError
		if errors.As(werr, &ee) && ee.ExitCode() > 0 {
			return ee.ExitCode(), st
		}
		return 1, st
	}
	return 0, st
}

// next returns a queued frame first, then the sending half's next one.
func (r *receiver) next() (xlwire.Frame, error) {
	if len(r.queue) > 0 {
		f := r.queue[0]
		r.queue = r.queue[1:]
		return f, nil
	}
	if r.in.Buffered() == 0 {
		// Nothing more to hand on without waiting for the sending half:
		// xl migrate-receive gets what it has now, since xl's messages
		// after the stream wait for its answer.
		if err := r.cin.Flush(); err != nil {
			return xlwire.Frame{}, fmt.Errorf("to xl migrate-receive: %w", err)
		}
	}
	return r.fr.Next()
}

func (r *receiver) run() error {
	var entries []xlwire.Entry
	for {
		f, err := r.next()
		if err == io.EOF {
			return errors.New("the sending half ended without closing: stream incomplete")
		}
		if err != nil {
			return err
		}
		switch f.Type {
		case xlwire.THello:
			if err := r.onHello(f.Payload); err != nil {
				return err
			}
		case xlwire.TData:
			if _, err := r.cin.Write(f.Payload); err != nil {
				return fmt.Errorf("to xl migrate-receive: %w", err)
			}
		case xlwire.TPages:
			if !r.hello {
				return fmt.Errorf("%w: pages before hello", xlwire.ErrProto)
			}
			var seq uint64
			var head []byte
			seq, head, entries, err = xlwire.ParsePages(f.Payload, xenstream.CarriedPages, entries)
			if err != nil {
				return err
			}
			if err := r.batch(seq, head, entries); err != nil {
				return err
			}
		case xlwire.TClose:
			return nil
		case xlwire.TAbort:
			return fmt.Errorf("the sending half gave up: %s", f.Payload)
		default:
			return fmt.Errorf("%w: unexpected frame type %d", xlwire.ErrProto, f.Type)
		}
	}
}

func (r *receiver) onHello(p []byte) error {
	h, err := xlwire.ParseHello(p)
	if err != nil {
		return err
	}
	r.hello = true
	cshim.SetMigKey(cshim.ExpandKey(h.KeySeed))
	var ids []uint8
	for _, d := range h.Disks {
		f, err := os.Open(d.Path)
		if err != nil {
			r.log.Warn().Err(err).Msg("disk not readable here: its pages come in full")
			continue
		}
		size, err := f.Seek(0, io.SeekEnd)
		if err != nil || uint64(size) != d.Size {
			r.log.Warn().Str("disk", d.Path).Int64("size-here", size).Uint64("size-there", d.Size).Msg("disk differs here: its pages come in full")
			f.Close()
			continue
		}
		r.disks[d.ID] = f
		ids = append(ids, d.ID)
	}
	return r.writeFrame(xlwire.AppendHelloAck(nil, ids))
}

// batch resolves the references of one PAGE_DATA record and hands the
// record, as the source's libxc wrote it, to xl migrate-receive.
func (r *receiver) batch(seq uint64, head []byte, entries []xlwire.Entry) error {
	pages := make([][]byte, len(entries))
	var refs []int
	for i, e := range entries {
		if e.IsRef {
			refs = append(refs, i)
		} else {
			pages[i] = e.Page
		}
	}
	var bad []uint32
	if len(refs) > 0 {
		r.st.refs += len(refs)
		bad = r.resolve(entries, refs, pages)
	}
	if len(bad) > 0 {
		r.st.mismatched += len(bad)
		// Waiting reads further frames into the buffer head and the
		// pages sent in full point into.
		head = append([]byte(nil), head...)
		for i, e := range entries {
			if !e.IsRef {
				pages[i] = append([]byte(nil), e.Page...)
			}
		}
		if err := r.awaitFill(seq, bad, pages); err != nil {
			return err
		}
	}
	if _, err := r.cin.Write(head); err != nil {
		return fmt.Errorf("to xl migrate-receive: %w", err)
	}
	for _, p := range pages {
		if _, err := r.cin.Write(p); err != nil {
			return fmt.Errorf("to xl migrate-receive: %w", err)
		}
	}
	if len(refs) > 0 {
		return r.writeFrame(xlwire.AppendSeq(nil, xlwire.TFill, seq))
	}
	return nil
}

// resolve reads the referenced blocks (nearby ones in one read), keeps
// each that has the reference's hash and returns the indexes of the rest.
func (r *receiver) resolve(entries []xlwire.Entry, refs []int, pages [][]byte) []uint32 {
	sort.Slice(refs, func(a, b int) bool {
		ra, rb := entries[refs[a]].Ref, entries[refs[b]].Ref
		return ra.Disk < rb.Disk || ra.Disk == rb.Disk && ra.Block < rb.Block
	})
	var bad []uint32
	t0 := time.Now()
	for k := 0; k < len(refs); {
		first := entries[refs[k]].Ref
		j := k + 1
		for j < len(refs) {
			n := entries[refs[j]].Ref
			prev := entries[refs[j-1]].Ref.Block
			if n.Disk != first.Disk || n.Block < first.Block || (n.Block-first.Block+1)*xlwire.PageSize > maxRead ||
				n.Block > prev+maxReadGap+1 {
				break
			}
			j++
		}
		last := entries[refs[j-1]].Ref.Block
		buf := make([]byte, (last-first.Block+1)*xlwire.PageSize)
		f := r.disks[first.Disk]
		var err error
		if f == nil {
			err = fmt.Errorf("disk %d not offered", first.Disk)
		} else {
			_, err = f.ReadAt(buf, int64(first.Block*xlwire.PageSize))
			r.st.reads++
			r.st.readBytes += int64(len(buf))
		}
		for _, i := range refs[k:j] {
			ref := entries[i].Ref
			blk := buf[(ref.Block-first.Block)*xlwire.PageSize:][:xlwire.PageSize]
			if err == nil && cshim.HashPageMig(blk) == ref.Hash {
				pages[i] = blk
				r.st.verified++
			} else {
				bad = append(bad, uint32(i))
			}
		}
		if err != nil {
			r.log.Warn().Err(err).Msg("reading referenced blocks")
		}
		k = j
	}
	r.st.readTime += time.Since(t0)
	sort.Slice(bad, func(a, b int) bool { return bad[a] < bad[b] })
	return bad
}

// awaitFill asks the sending half for the pages at bad and waits for
// them, queuing every other frame that comes first.
func (r *receiver) awaitFill(seq uint64, bad []uint32, pages [][]byte) error {
	r.log.Warn().Uint64("batch", seq).Int("pages", len(bad)).Msg("references that did not verify: asking for the pages")
	if err := r.writeFrame(xlwire.AppendNeed(nil, seq, bad)); err != nil {
		return err
	}
	for {
		f, err := r.fr.Next()
		if err != nil {
			return fmt.Errorf("waiting for pages of batch %d: %w", seq, err)
		}
		switch f.Type {
		case xlwire.TFill:
			fseq, idx, fpages, err := xlwire.ParseFill(f.Payload)
			if err != nil {
				return err
			}
			if fseq != seq || len(idx) != len(bad) {
				return fmt.Errorf("%w: fill for batch %d (%d pages), waiting for batch %d (%d pages)", xlwire.ErrProto, fseq, len(idx), seq, len(bad))
			}
			for k, i := range idx {
				if i != bad[k] {
					return fmt.Errorf("%w: fill of page %d, asked for %d", xlwire.ErrProto, i, bad[k])
				}
				pages[i] = append([]byte(nil), fpages[k]...)
			}
			return nil
		case xlwire.TAbort:
			return fmt.Errorf("the sending half gave up: %s", f.Payload)
		default:
			r.queue = append(r.queue, xlwire.Frame{Type: f.Type, Payload: append([]byte(nil), f.Payload...)})
		}
	}
}
