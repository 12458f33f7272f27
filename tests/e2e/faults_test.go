package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"nasmig/tests/harness"
)

// faultCases run one migration per fault that the library or QEMU's glue
// injects on purpose (NASMIG_FAULT, the list in cshim/nasmig.h).  Each must
// end as the design promises: the guest RAM identical on both sides and the
// guest's own verification passing, or a failed migration with the source
// still running (and then a migration without the fault that succeeds).
// The fault must really have fired: the library logs how often, per fault,
// when the migration ends on the side that armed it.
func faultCases() []e2eCase {
	return []e2eCase{
		// Every storage read fails: every reference comes back in full from
		// the source (its resend), none from storage.
		nasmigBothSides(e2eCase{
			name: "32a-fault-dest-read-error", workload: "pagecache-read", dstFault: "dest-read-error:*",
			flow: faultFlow("dest-read-error", "", func(t *testing.T, o outcome) {
				requireRefs(t, o)
				if o.dst.FetchedPages != 0 || o.dst.Fallbacks == 0 {
					t.Errorf("every read failed, yet fetched-pages %d, fallbacks %d: want 0 and > 0", o.dst.FetchedPages, o.dst.Fallbacks)
				}
			}),
		}),
		// Reads that fill only half their buffer, or return a flipped byte:
		// the destination's verification must catch each.
		nasmigBothSides(e2eCase{
			name: "32b-fault-dest-read-short", workload: "pagecache-read", dstFault: "dest-read-short:3",
			flow: faultFlow("dest-read-short", "", requireVerifyFailures),
		}),
		nasmigBothSides(e2eCase{
			name: "32c-fault-dest-read-corrupt", workload: "pagecache-read", dstFault: "dest-read-corrupt:3",
			flow: faultFlow("dest-read-corrupt", "", requireVerifyFailures),
		}),
		// The fetch stops for 3 s: the switchover waits for it, nothing
		// else changes (hand-back off: with it, the link would take over
		// part of the stalled fetch, as case 33 shows).
		nasmigBothSides(e2eCase{
			name: "32d-fault-fetch-stall", workload: "pagecache-read", dstFault: "fetch-stall",
			pluginArgs: []string{"hand-back=off"},
			flow: faultFlow("fetch-stall", "", func(t *testing.T, o outcome) {
				requireRefsAndFetched(t, o)
				if o.dst.FetchTimeMs < 3000 {
					t.Errorf("fetch-time %d ms: the 3 s stall does not show", o.dst.FetchTimeMs)
				}
			}),
		}),
		// The tracking ring is always full: no mapping is ever made, so the
		// migration is a stock one; a lost record must never cost a page.
		nasmigBothSides(e2eCase{
			name: "32e-fault-ring-full", workload: "pagecache-read", srcFault: "ring-full:*",
			flow: faultFlow("ring-full", "", func(t *testing.T, o outcome) {
				if o.src.RefPages != 0 || o.src.MappedPages != 0 {
					t.Errorf("every tracking record was dropped, yet mapped-pages %d, ref-pages %d: want 0", o.src.MappedPages, o.src.RefPages)
				}
			}),
		}),
		// Every write's invalidation is lost while the guest rewrites the
		// blocks it has cached: the map goes stale, and the checks at
		// both ends (the source's hash at send, the destination's
		// verification) must keep every stale mapping out of the RAM.
		nasmigBothSides(e2eCase{
			name: "32f-fault-write-record-lost", workload: "mixed", settle: 3, srcFault: "write-record-lost:*",
			opts: harness.MigrateOpts{Params: map[string]any{"max-bandwidth": 60_000_000}},
			flow: faultFlow("write-record-lost", "", func(t *testing.T, o outcome) {
				requireRefs(t, o)
				// The guest rewrote cached blocks through those very pages:
				// the source's hash at send is what caught them.
				if o.src.RefMisses == 0 {
					t.Errorf("ref-misses 0: no stale mapping was caught at send, so the case proved nothing")
				}
			}),
		}),
		// The setup section arrives cut short: the destination refuses the
		// stream, the migration fails cleanly with the reason, the source
		// runs on, and the next migration (the fault fired once) succeeds.
		nasmigBothSides(e2eCase{
			name: "32g-fault-setup-cut-short", workload: "pagecache-read", srcFault: "setup-cut-short",
			flow: faultFlow("setup-cut-short", "setup", requireRefsAndFetched),
		}),
	}
}

func requireVerifyFailures(t *testing.T, o outcome) {
	t.Helper()
	requireRefs(t, o)
	if o.dst.VerifyFailures == 0 || o.dst.Fallbacks == 0 {
		t.Errorf("bad blocks were read, yet verify-failures %d, fallbacks %d: want both > 0", o.dst.VerifyFailures, o.dst.Fallbacks)
	}
}

// faultFlow migrates with the fault armed.  failsWith empty: the migration
// must complete.  Else it must fail, the source's error-desc or the
// destination's log must name failsWith, and the source must keep running;
// a second migration, to a destination without faults, must then succeed.
// check runs on the migration that completed, after the RAM comparison.
func faultFlow(fault, failsWith string, check func(*testing.T, outcome)) func(*testing.T, context.Context, *pair) {
	return func(t *testing.T, ctx context.Context, p *pair) {
		armed, event := p.dst, "incoming migration ended"
		if p.c.srcFault != "" {
			armed, event = p.src, "outgoing migration ended"
		}
		if failsWith != "" {
			result, err := p.migrate(t, ctx)
			if err == nil {
				t.Fatalf("the migration with %s completed (status %s); want it to fail", fault, result.Status())
			}
			desc := ""
			if result != nil {
				desc = result.Source.ErrorDesc
			}
			t.Logf("failed as expected: %v (source error-desc %q)", err, desc)
			if !strings.Contains(desc, failsWith) && !strings.Contains(p.dst.LogTail(50), failsWith) {
				t.Errorf("neither the source's error-desc nor the destination's log names %q:\n%s", failsWith, p.dst.LogTail(20))
			}
			expectSourceAlive(t, ctx, p)
			requireFaultFired(t, armed, event, fault)
			p.newDestination(t, ctx, "dst2")
		}
		o := migrateAndCompare(t, ctx, p)
		if failsWith == "" {
			requireFaultFired(t, armed, event, fault)
		}
		check(t, o)
		resumeAndVerify(t, ctx, p)
	}
}

// requireFaultFired finds the library's end-of-migration line on vm and
// asserts that the fault fired at least once.
func requireFaultFired(t *testing.T, vm *harness.VM, event, fault string) {
	t.Helper()
	ev := libraryEvent(t, vm, event, 10*time.Second)
	fired, _ := ev["faults_fired"].(map[string]any)
	n, _ := fired[fault].(float64)
	if n < 1 {
		t.Fatalf("%s: fault %s never fired (faults_fired %v)", vm.Config.Name, fault, ev["faults_fired"])
	}
	t.Logf("%s: fault %s fired %d times", vm.Config.Name, fault, int64(n))
}
