package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"nasmig/tests/harness"
)

// The guest's slowdown, measured by the workload's own count of work done
// (its answer to "status" on the console): the rate before the migration,
// while it runs on the source during the migration, and in the first
// seconds on the destination.  Only workloads that work flat out have such
// a count; the others (a page cache that sits still, stamps on a timer)
// show "-".

// workLine is the prefix of the guest's answer to "status".
const workLine = "nasmig: info status: "

// rateWindow is how long the rate before and after the migration is
// measured.
const rateWindow = 3 * time.Second

// workCount is the work done so far that the status text reports, for the
// workloads that have a count.
func workCount(workload, text string) (int64, bool) {
	fields := map[string]int64{}
	for _, f := range strings.Fields(text) {
		if k, v, ok := strings.Cut(f, "="); ok {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				fields[k] = n
			}
		}
	}
	switch workload {
	case "memory-hot":
		n, ok := fields["written-pages"]
		return n, ok
	case "mixed":
		reads, ok1 := fields["reads"]
		writes, ok2 := fields["writes"]
		return reads + writes, ok1 && ok2
	case "reader":
		reads, ok := fields["reads"]
		return reads, ok
	}
	return 0, false
}

// hasWorkCount says whether the workload's rate is measured.
func hasWorkCount(workload string) bool {
	_, ok := workCount(workload, "written-pages=0 reads=0 writes=0")
	return ok
}

type workSample struct {
	count int64
	at    time.Duration // when the harness received the answer
}

// guestStatus asks the guest for its status: the text after workLine, and
// when the harness received it.
func guestStatus(ctx context.Context, vm *harness.VM) (string, time.Duration, error) {
	mark := vm.Serial.Mark()
	if err := vm.Serial.WriteLine(ctx, "status"); err != nil {
		return "", 0, err
	}
	line, err := vm.WaitLineAfter(ctx, mark, workLine)
	if err != nil {
		return "", 0, fmt.Errorf("vm %s: no answer to status: %w", vm.Config.Name, err)
	}
	return strings.TrimPrefix(line.Text, workLine), line.At, nil
}

// askWork asks the guest for its status and parses the work count.  A
// question the guest's console lost (a byte dropped as the guest resumes)
// is asked again, three times at most.
func askWork(ctx context.Context, vm *harness.VM, workload string) (workSample, error) {
	var text string
	var at time.Duration
	var err error
	for try := 0; try < 3; try++ {
		askCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		text, at, err = guestStatus(askCtx, vm)
		cancel()
		if err == nil || ctx.Err() != nil {
			break
		}
	}
	if err != nil {
		return workSample{}, err
	}
	n, ok := workCount(workload, text)
	if !ok {
		return workSample{}, fmt.Errorf("vm %s: no work count for %s in %q", vm.Config.Name, workload, text)
	}
	return workSample{count: n, at: at}, nil
}

// rateOver measures the work rate (per second) over about d.
func rateOver(ctx context.Context, vm *harness.VM, workload string, d time.Duration) (float64, error) {
	a, err := askWork(ctx, vm, workload)
	if err != nil {
		return 0, err
	}
	select {
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-time.After(d):
	}
	b, err := askWork(ctx, vm, workload)
	if err != nil {
		return 0, err
	}
	return perSecond(a, b), nil
}

func perSecond(a, b workSample) float64 {
	if b.at <= a.at {
		return 0
	}
	return float64(b.count-a.count) / (b.at - a.at).Seconds()
}

// sampleWork asks the guest for its count every half second until stop;
// stop returns the rate from the first answer to the last one the guest
// gave before it was paused for the switchover.
func sampleWork(ctx context.Context, vm *harness.VM, workload string) (stop func() float64) {
	ctx, cancel := context.WithCancel(ctx)
	var mu sync.Mutex
	var first, last *workSample
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			s, err := askWork(ctx, vm, workload)
			if err == nil {
				mu.Lock()
				if first == nil {
					first = &s
				}
				last = &s
				mu.Unlock()
			}
			select {
			case <-ctx.Done():
			case <-time.After(500 * time.Millisecond):
			}
		}
	}()
	return func() float64 {
		cancel()
		<-done
		mu.Lock()
		defer mu.Unlock()
		if first == nil || last == first {
			return 0
		}
		return perSecond(*first, *last)
	}
}

// permille is rate as a share of base, in thousandths (0: not measured).
func permille(rate, base float64) int64 {
	if base <= 0 {
		return 0
	}
	return int64(1000*rate/base + 0.5)
}

// switchRun is what resumeAtSwitch saw.
type switchRun struct {
	resumedMs int64   // when the destination's guest was resumed, since the call
	rate      float64 // its work rate over rateWindow from then (0: no count)
	err       error
}

// resumeAtSwitch waits until the source switches to postcopy, resumes the
// destination's guest at once and measures its work rate there while
// pages are still arriving (from the source, or filled from storage).
func resumeAtSwitch(ctx context.Context, src, dst *harness.VM, workload string) switchRun {
	t0 := time.Now()
	for {
		info, err := harness.QueryMigrate(ctx, src)
		if err != nil {
			return switchRun{err: err}
		}
		if info.Status == "postcopy-active" {
			break
		}
		if info.Status == "completed" || info.Status == "failed" || info.Status == "cancelled" {
			return switchRun{err: fmt.Errorf("the migration ended (%s) without switching to postcopy", info.Status)}
		}
		select {
		case <-ctx.Done():
			return switchRun{err: ctx.Err()}
		case <-time.After(20 * time.Millisecond):
		}
	}
	res := switchRun{resumedMs: time.Since(t0).Milliseconds()}
	mark := dst.Serial.Mark()
	if err := dst.Cont(ctx); err != nil {
		return switchRun{err: fmt.Errorf("resuming the destination in postcopy: %w", err)}
	}
	// Its first heartbeat: the guest runs and reads its console.
	beatCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	_, err := dst.WaitLineAfter(beatCtx, mark, harness.LineHeartbeat)
	cancel()
	if err != nil {
		return switchRun{err: fmt.Errorf("no heartbeat from the destination's guest in postcopy: %w", err)}
	}
	if hasWorkCount(workload) {
		res.rate, res.err = rateOver(ctx, dst, workload, rateWindow)
	}
	return res
}
