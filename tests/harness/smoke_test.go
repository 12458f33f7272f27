package harness

import (
	"context"
	"testing"
	"time"
)

// TestPlainMigrationSmoke runs the whole test bed once, with nasmig off:
// shared NBD storage, an idle guest, a stock pre-copy migration, the
// bit-exact RAM check, then the destination resumes and must keep beating
// and verify its files. It checks the harness, not nasmig. Under TCG it
// takes a minute or so.
func TestPlainMigrationSmoke(t *testing.T) {
	env := EnvFromOS()
	if reason := env.SkipReason(); reason != "" {
		t.Skip("skipping: " + reason)
	}
	if err := env.Check(); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	run := NewTestRun(t, env)

	probe := env.ProbeConfig()
	probe.Log = testLogWriter{t}
	accel, err := ProbeAccel(ctx, probe)
	if err != nil {
		t.Fatal(err)
	}
	run.Logf("accelerator %s: %s", accel.Accel, accel.Reason)

	image, err := run.CopyImage(ctx, env.DataImage(FormatRaw), "data.raw")
	if err != nil {
		t.Fatal(err)
	}
	storage, err := run.StartStorage(ctx, StorageConfig{
		Binary: env.StorageDaemonBinary(), Image: image, Format: FormatRaw, CacheDirect: true,
	})
	if err != nil {
		t.Fatal(err)
	}

	const memMiB = 512
	cmdline := GuestCmdline("idle", 0, true)
	srcCfg := env.VMConfig("src", accel.Accel, memMiB, cmdline)
	srcCfg.Disk = storage.Disk(BusVirtio)
	src, err := run.StartVM(ctx, srcCfg)
	if err != nil {
		t.Fatal(err)
	}
	// Boot and workload are waited for separately, so that a guest that
	// never starts (firmware, kernel) fails fast and says so.
	bootCtx, cancelBoot := context.WithTimeout(ctx, time.Minute)
	_, err = src.WaitLine(bootCtx, LineBoot)
	cancelBoot()
	if err != nil {
		t.Fatalf("guest did not boot: %v", err)
	}
	readyCtx, cancelReady := context.WithTimeout(ctx, 3*time.Minute)
	ready, err := src.WaitLine(readyCtx, LineReady)
	cancelReady()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("source ready after %.1f s: %s", ready.At.Seconds(), ready.Text)
	// Migrate a guest that is visibly alive: its heartbeat must continue.
	if _, err := src.WaitLineAfter(ctx, ready.Index, LineHeartbeat); err != nil {
		t.Fatal(err)
	}

	dstCfg := srcCfg
	dstCfg.Name = "dst"
	dstCfg.Incoming = true
	dst, err := run.StartVM(ctx, dstCfg)
	if err != nil {
		t.Fatal(err)
	}

	result, err := Migrate(ctx, src, dst, MigrateOpts{})
	if saveErr := run.SaveJSON("migration.json", result); saveErr != nil {
		t.Error(saveErr)
	}
	if err != nil {
		t.Fatal(err)
	}
	srcInfo := result.Source
	t.Logf("migration %s: total %d ms, downtime %d ms, setup %d ms, status path %v",
		srcInfo.Status, srcInfo.TotalTime, srcInfo.Downtime, srcInfo.SetupTime, srcInfo.StatusPath)
	if srcInfo.RAM != nil {
		t.Logf("ram: transferred %d B, normal %d pages (%d B), duplicate %d pages",
			srcInfo.RAM.Transferred, srcInfo.RAM.Normal, srcInfo.RAM.NormalBytes, srcInfo.RAM.Duplicate)
	}
	if srcInfo.DiskRefs != nil {
		t.Logf("disk-refs (nasmig off, expect zeros): %+v", *srcInfo.DiskRefs)
	}
	lastSourceBeat, ok := src.Heartbeat()
	if !ok {
		t.Fatal("source printed no heartbeat")
	}

	for vm, want := range map[*VM]string{src: "postmigrate", dst: "paused"} {
		status, err := vm.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if status != want {
			t.Fatalf("vm %s is %q after migration, want %q", vm.Config.Name, status, want)
		}
	}

	diff, err := run.CompareRAM(ctx, src, dst)
	if err != nil {
		t.Fatal(err)
	}
	if !diff.Equal() {
		t.Fatalf("guest RAM differs between source and destination after migration:\n%s", diff)
	}
	t.Logf("%s", diff)

	mark := dst.Serial.Mark()
	if err := dst.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	// Two heartbeats on the destination, both after the source's last one
	// and increasing: the guest's clock and its init loop survived.
	var beats []int64
	for len(beats) < 2 {
		beatCtx, cancelBeat := context.WithTimeout(ctx, 30*time.Second)
		line, err := dst.WaitLineAfter(beatCtx, mark, LineHeartbeat)
		cancelBeat()
		if err != nil {
			t.Fatal(err)
		}
		mark = line.Index + 1
		if n, ok := ParseHeartbeat(line.Text); ok {
			beats = append(beats, n)
		}
	}
	if beats[0] <= lastSourceBeat || beats[1] <= beats[0] {
		t.Fatalf("heartbeats: source's last %d, destination's %v: want increasing past the source's", lastSourceBeat, beats)
	}
	t.Logf("heartbeat: source's last n=%d, destination n=%v", lastSourceBeat, beats)

	verifyCtx, cancelVerify := context.WithTimeout(ctx, 3*time.Minute)
	checked, err := dst.Verify(verifyCtx)
	cancelVerify()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("verify: PASS, %d files checked", checked)
	t.Logf("smoke test took %.1f s (accelerator %s)", time.Since(started).Seconds(), accel.Accel)
}
