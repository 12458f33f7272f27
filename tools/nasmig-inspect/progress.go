package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// progress draws one status line on stderr, only when stderr is a
// terminal (never into a log or a pipe).
type progress struct {
	w     io.Writer
	label string
	start time.Time
	last  time.Time
	drawn bool
}

func newProgress(f *os.File) *progress {
	if f == nil {
		return &progress{}
	}
	if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err != nil {
		return &progress{}
	}
	return &progress{w: f, start: time.Now()}
}

func (p *progress) show(label string, done, total int64) {
	if p.w == nil {
		return
	}
	now := time.Now()
	if label != p.label {
		p.label, p.start = label, now // a new phase: its own rate
	}
	if now.Sub(p.last) < 200*time.Millisecond && done < total {
		return
	}
	p.last = now
	frac := 1.0
	if total > 0 {
		frac = float64(done) / float64(total)
	}
	const width = 30
	bar := make([]byte, width)
	for i := range bar {
		bar[i] = ' '
		if float64(i) < frac*width {
			bar[i] = '#'
		}
	}
	rate := float64(done) / 1e6 / max(now.Sub(p.start).Seconds(), 1e-9)
	fmt.Fprintf(p.w, "\r%-22s [%s] %5.1f%% %7.0f MB/s", label, bar, 100*frac, rate)
	p.drawn = true
}

func (p *progress) done() {
	if p.w != nil && p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
	}
}
