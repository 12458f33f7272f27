package main

import (
	"context"
	"time"

	"nasmig/tests/harness"
)

// sample is one point of a migration's timeline.
type sample struct {
	Ms         int64 `json:"ms"`                 // since the sampling started (just before migrate)
	LinkBytes  int64 `json:"link_bytes"`         // the source's ram.transferred
	FetchBytes int64 `json:"fetch_bytes"`        // the destination's disk-refs.fetch-bytes
	Postcopy   bool  `json:"postcopy,omitempty"` // the source's status is postcopy-active
}

// switchMs is when the guest could run on the destination: the first
// sample in postcopy (within 100 ms after it), or, without a postcopy
// phase, the migration's end.
func switchMs(timeline []sample, totalMs int64) int64 {
	for _, s := range timeline {
		if s.Postcopy {
			return min(s.Ms, totalMs)
		}
	}
	return totalMs
}

// sampleTimeline polls both sides' query-migrate every 100 ms into out
// until the returned stop is called (which waits for the poller).
func sampleTimeline(ctx context.Context, src, dst *harness.VM, out *[]sample) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t0 := time.Now()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		var last sample
		for {
			s := sample{Ms: time.Since(t0).Milliseconds(), LinkBytes: last.LinkBytes, FetchBytes: last.FetchBytes}
			if info, err := harness.QueryMigrate(ctx, src); err == nil && info.RAM != nil {
				s.LinkBytes = info.RAM.Transferred
				s.Postcopy = info.Status == "postcopy-active"
			}
			if info, err := harness.QueryMigrate(ctx, dst); err == nil && info.DiskRefs != nil {
				s.FetchBytes = info.DiskRefs.FetchBytes
			}
			if ctx.Err() != nil {
				return
			}
			*out = append(*out, s)
			last = s
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}
