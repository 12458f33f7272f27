package cshim_test

import (
	"testing"

	"nasmig/cshim"
)

// The fault-latency histogram reports the top of a sample's bucket: never
// below the sample, and at most 1/8 above it (exact below 8 us).
func TestLatencyBucketsWithinAnEighth(t *testing.T) {
	for us := uint64(1); us < 1<<22; us = us*9/8 + 1 {
		for _, v := range []uint64{us, us + 1, us*2 - 1} {
			top := cshim.LatencyBucketTop(v)
			if top < v || (v < 8 && top != v) || top > v+v/8 {
				t.Fatalf("latency %d us reported as %d us", v, top)
			}
		}
	}
	if top := cshim.LatencyBucketTop(1 << 62); top < 1<<62 {
		t.Fatalf("a huge latency reported as %d", top)
	}
}
