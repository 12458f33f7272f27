package e2e

// Flows for the standard QEMU operations an operator runs with the library
// loaded everywhere: save and restore, snapshots, postcopy, a channel
// without a return path, cancelled and failed attempts, and migrations
// hop after hop.  Each must do what stock QEMU does, or better.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"nasmig/tests/harness"
)

// defaultMaxBandwidth is QEMU's default max-bandwidth (128 MiB/s), restored
// after a flow slowed a first attempt down.
const defaultMaxBandwidth = 128 << 20

// saveRestoreFlow saves the running guest to a file (migrate file:, what
// virsh save and managedsave do), then restores it into the waiting
// destination with migrate-incoming file: and checks RAM byte for byte.
func saveRestoreFlow(t *testing.T, ctx context.Context, p *pair) {
	path := p.run.Path("guest.sav")
	p.run.Scratch(path)
	if err := harness.Configure(ctx, p.src, p.c.opts); err != nil {
		t.Fatal(err)
	}
	srcInfo := migrateToFile(t, ctx, p, path, "save")
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("save file: %s (%d bytes)", mib(st.Size()), st.Size())
	p.fig.note = "save file " + mib(st.Size())
	rep := checkSavedStream(t, ctx, p, path, srcInfo)
	switch {
	case rep.Setup != nil && p.storage != nil:
		checkVerify(t, ctx, p, path)
		checkOracle(t, ctx, p, path)
	case p.c.workload == "idle":
		checkOracle(t, ctx, p, "")
	}

	if err := harness.Configure(ctx, p.dst, p.c.opts); err != nil {
		t.Fatal(err)
	}
	dstInfo := restoreFromFile(t, ctx, p, path)
	result := &harness.MigrationResult{URI: "file:" + path, Source: srcInfo, Destination: dstInfo}
	p.finish(t, result)
	if dstInfo.Status != "completed" {
		t.Fatalf("restore from %s: status %s (%s)", path, dstInfo.Status, dstInfo.ErrorDesc)
	}
	expectStatus(t, ctx, p.src, "postmigrate")
	expectStatus(t, ctx, p.dst, "paused")
	compareRAM(t, ctx, p)
	if p.c.check != nil {
		p.c.check(t, outcomeOf(result))
	}
	resumeAndVerify(t, ctx, p)
}

// migrateToFile migrates the source into the file at path (migrate file:)
// and returns its final query-migrate; anything but completed fails.
func migrateToFile(t *testing.T, ctx context.Context, p *pair, path, what string) harness.MigrationInfo {
	t.Helper()
	if _, err := p.src.QMP.Execute(ctx, "migrate", map[string]any{"uri": "file:" + path}); err != nil {
		t.Fatal(err)
	}
	waitCtx, cancel := context.WithTimeout(ctx, p.c.opts.Timeout)
	defer cancel()
	info, err := harness.WaitMigration(waitCtx, p.src, 0)
	if err != nil {
		t.Fatal(err)
	}
	if info.Status != "completed" {
		t.Fatalf("%s to %s: status %s (%s)", what, path, info.Status, info.ErrorDesc)
	}
	return info
}

// restoreFromFile loads the file at path into the waiting destination
// (migrate-incoming file:) and returns its final query-migrate.
func restoreFromFile(t *testing.T, ctx context.Context, p *pair, path string) harness.MigrationInfo {
	t.Helper()
	if _, err := p.dst.QMP.Execute(ctx, "migrate-incoming", map[string]any{"uri": "file:" + path, "exit-on-error": false}); err != nil {
		t.Fatal(err)
	}
	waitCtx, cancel := context.WithTimeout(ctx, p.c.opts.Timeout)
	defer cancel()
	info, err := harness.WaitMigration(waitCtx, p.dst, 0)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// hmp runs one human monitor command; a non-empty answer is an error.
func hmp(ctx context.Context, vm *harness.VM, cmd string) error {
	raw, err := vm.QMP.Execute(ctx, "human-monitor-command", map[string]any{"command-line": cmd})
	if err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	var out string
	if err := json.Unmarshal(raw, &out); err != nil {
		return fmt.Errorf("%s: answer %s: %w", cmd, raw, err)
	}
	if strings.TrimSpace(out) != "" {
		return fmt.Errorf("%s: %s", cmd, strings.TrimSpace(out))
	}
	return nil
}

// runJob starts a QMP job command and waits until it concludes.
func runJob(ctx context.Context, vm *harness.VM, cmd string, args map[string]any) error {
	id := args["job-id"].(string)
	if _, err := vm.QMP.Execute(ctx, cmd, args); err != nil {
		return err
	}
	for {
		raw, err := vm.QMP.Execute(ctx, "query-jobs", nil)
		if err != nil {
			return err
		}
		var jobs []struct {
			ID     string `json:"id"`
			Status string `json:"status"`
			Error  string `json:"error"`
		}
		if err := json.Unmarshal(raw, &jobs); err != nil {
			return fmt.Errorf("query-jobs %s: %w", raw, err)
		}
		for _, j := range jobs {
			if j.ID != id || j.Status != "concluded" {
				continue
			}
			if _, err := vm.QMP.Execute(ctx, "job-dismiss", map[string]any{"id": id}); err != nil {
				return err
			}
			if j.Error != "" {
				return fmt.Errorf("%s %s: %s", cmd, id, j.Error)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s %s: %w", cmd, id, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// qcow2Node returns the node name of the guest disk's qcow2 format node.
func qcow2Node(ctx context.Context, vm *harness.VM) (string, error) {
	raw, err := vm.QMP.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true})
	if err != nil {
		return "", err
	}
	var nodes []struct {
		NodeName string `json:"node-name"`
		Drv      string `json:"drv"`
	}
	if err := json.Unmarshal(raw, &nodes); err != nil {
		return "", err
	}
	for _, n := range nodes {
		if n.Drv == "qcow2" {
			return n.NodeName, nil
		}
	}
	return "", fmt.Errorf("no qcow2 node in %s", raw)
}

// snapshotsFlow takes internal snapshots of the running guest on its qcow2
// disk and loads them back (savevm/loadvm, then snapshot-save and
// snapshot-load): each must work as in stock QEMU, and the guest must run
// on and verify its files after each load.
func snapshotsFlow(t *testing.T, ctx context.Context, p *pair) {
	alive := func(what string) {
		t.Helper()
		expectStatus(t, ctx, p.src, "running")
		beats := waitBeats(t, ctx, p.src, p.src.Serial.Mark(), 2)
		verifyCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		defer cancel()
		checked, err := p.src.Verify(verifyCtx)
		if err != nil {
			t.Fatalf("after %s: %v", what, err)
		}
		t.Logf("after %s: running, heartbeats %v, verify PASS checked=%d", what, beats, checked)
	}
	started := time.Now()
	if err := hmp(ctx, p.src, "savevm s1"); err != nil {
		t.Fatal(err)
	}
	t.Logf("savevm s1 in %.1f s", time.Since(started).Seconds())
	alive("savevm")
	if err := hmp(ctx, p.src, "loadvm s1"); err != nil {
		t.Fatal(err)
	}
	alive("loadvm")

	node, err := qcow2Node(ctx, p.src)
	if err != nil {
		t.Fatal(err)
	}
	jobCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if err := runJob(jobCtx, p.src, "snapshot-save", map[string]any{"job-id": "save0", "tag": "s2", "vmstate": node, "devices": []string{node}}); err != nil {
		t.Fatal(err)
	}
	alive("snapshot-save")
	if err := runJob(jobCtx, p.src, "snapshot-load", map[string]any{"job-id": "load0", "tag": "s2", "vmstate": node, "devices": []string{node}}); err != nil {
		t.Fatal(err)
	}
	alive("snapshot-load")
	if info, err := harness.QueryMigrate(ctx, p.src); err == nil && info.DiskRefs != nil {
		if info.DiskRefs.RefPages != 0 {
			t.Errorf("a snapshot sent %d disk references; snapshots must be stock", info.DiskRefs.RefPages)
		}
	}
	p.fig.result = "savevm/loadvm, snapshot-save/load"
}

// postcopyFlow enables postcopy-ram on both sides (what virsh migrate
// --postcopy does) and asks for postcopy once the migration runs: the
// migration must pass through postcopy-active and complete, the guest RAM
// identical on both sides.
func postcopyFlow(t *testing.T, ctx context.Context, p *pair) {
	uri := startMigration(t, ctx, p, "pc.migrate")
	seen := waitSourceStatus(t, ctx, p, "active")
	if _, err := p.src.QMP.Execute(ctx, "migrate-start-postcopy", nil); err != nil {
		t.Fatal(err)
	}
	result := waitBothEnd(t, ctx, p, uri, seen)
	srcInfo, dstInfo := result.Source, result.Destination
	if srcInfo.Status != "completed" || dstInfo.Status != "completed" {
		t.Fatalf("postcopy: source %s (%s), destination %s (%s)", srcInfo.Status, srcInfo.ErrorDesc, dstInfo.Status, dstInfo.ErrorDesc)
	}
	postcopy := false
	for _, s := range srcInfo.StatusPath {
		postcopy = postcopy || s == "postcopy-active"
	}
	t.Logf("source status path %v (postcopy phase seen: %v)", srcInfo.StatusPath, postcopy)
	if srcInfo.RAM != nil && srcInfo.RAM.PostcopyBytes == 0 && !postcopy {
		t.Errorf("the migration never entered postcopy (status path %v, postcopy-bytes 0)", srcInfo.StatusPath)
	}
	expectStatus(t, ctx, p.src, "postmigrate")
	expectStatus(t, ctx, p.dst, "paused")
	compareRAM(t, ctx, p)
	if p.c.check != nil {
		p.c.check(t, outcomeOf(result))
	}
	resumeAndVerify(t, ctx, p)
}

// fillAfterGuestRunsFlow migrates with slow storage and resumes the
// destination's guest as soon as the migration is in postcopy, while
// references are still being filled, and has the guest verify every file
// (through its page cache) right then.  The destination's guest ran, so
// its RAM is not compared; its own verification is the check.
func fillAfterGuestRunsFlow(t *testing.T, ctx context.Context, p *pair) {
	if err := p.storage.SetReadLimit(ctx, p.c.slowStorage); err != nil {
		t.Fatal(err)
	}
	uri := startMigration(t, ctx, p, "fa.migrate")
	seen := waitSourceStatus(t, ctx, p, "postcopy-active")
	lastSourceBeat, _ := p.src.Heartbeat()
	mark := p.dst.Serial.Mark()
	if p.c.stallStorage > 0 {
		if err := p.storage.Pause(); err != nil {
			t.Fatal(err)
		}
		resume := time.AfterFunc(p.c.stallStorage, func() {
			if err := p.storage.Resume(); err != nil {
				t.Error(err)
			}
		})
		defer func() {
			if resume.Stop() {
				_ = p.storage.Resume()
			}
		}()
		t.Logf("storage server stopped for %v", p.c.stallStorage)
	}
	if err := p.dst.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	verifyCtx, cancelVerify := context.WithTimeout(ctx, 3*time.Minute)
	defer cancelVerify()
	checked, verifyErr := p.dst.Verify(verifyCtx)
	result := waitBothEnd(t, ctx, p, uri, seen)
	srcInfo, dstInfo := result.Source, result.Destination
	if err := p.storage.SetReadLimit(ctx, 0); err != nil {
		t.Error(err)
	}
	if srcInfo.Status != "completed" || dstInfo.Status != "completed" {
		t.Fatalf("source %s (%s), destination %s (%s)", srcInfo.Status, srcInfo.ErrorDesc, dstInfo.Status, dstInfo.ErrorDesc)
	}
	if verifyErr != nil {
		t.Fatalf("the guest's verification while references were filled: %v", verifyErr)
	}
	t.Logf("verify while filling: PASS, checked=%d", checked)
	beats := waitBeats(t, ctx, p.dst, mark, 2)
	if beats[0] <= lastSourceBeat || beats[1] <= beats[0] {
		t.Fatalf("heartbeats: source's last %d, destination's %v: want increasing past the source's", lastSourceBeat, beats)
	}
	if p.c.check != nil {
		p.c.check(t, outcomeOf(result))
	}
}

// waitBothEnd waits until the migration to uri has ended on both sides,
// and records it.  seen is what the source's status was before (from
// waitSourceStatus): a postcopy that ends before the next poll would
// otherwise be recorded as if it had gone straight to completed.
func waitBothEnd(t *testing.T, ctx context.Context, p *pair, uri string, seen []string) *harness.MigrationResult {
	t.Helper()
	waitCtx, cancel := context.WithTimeout(ctx, p.c.opts.Timeout)
	defer cancel()
	srcInfo, err := harness.WaitMigration(waitCtx, p.src, 0)
	if err != nil {
		t.Fatal(err)
	}
	dstInfo, err := harness.WaitMigration(waitCtx, p.dst, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := len(seen) - 1; i >= 0; i-- {
		if len(srcInfo.StatusPath) == 0 || srcInfo.StatusPath[0] != seen[i] {
			srcInfo.StatusPath = append([]string{seen[i]}, srcInfo.StatusPath...)
		}
	}
	result := &harness.MigrationResult{URI: uri, Source: srcInfo, Destination: dstInfo}
	p.finish(t, result)
	return result
}

// waitSourceStatus polls the source's migration until it has status and
// returns every distinct status it saw, in order; the migration ending
// first fails the test.
func waitSourceStatus(t *testing.T, ctx context.Context, p *pair, status string) []string {
	t.Helper()
	var seen []string
	for {
		info, err := harness.QueryMigrate(ctx, p.src)
		if err != nil {
			t.Fatal(err)
		}
		if len(seen) == 0 || seen[len(seen)-1] != info.Status {
			seen = append(seen, info.Status)
		}
		if info.Status == status {
			return seen
		}
		if terminal(info.Status) {
			t.Fatalf("migration ended (%s: %s) before it was %s", info.Status, info.ErrorDesc, status)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startMigration sets the case's capabilities and parameters on both
// sides and starts a migration over the unix socket name next to the
// destination's sockets, without waiting for it; it returns the URI.
func startMigration(t *testing.T, ctx context.Context, p *pair, name string) string {
	t.Helper()
	uri := p.socketURI(name)
	for _, vm := range []*harness.VM{p.src, p.dst} {
		if err := harness.Configure(ctx, vm, p.c.opts); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := p.dst.QMP.Execute(ctx, "migrate-incoming", map[string]any{"uri": uri, "exit-on-error": false}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.src.QMP.Execute(ctx, "migrate", map[string]any{"uri": uri}); err != nil {
		t.Fatal(err)
	}
	return uri
}

// socketURI is a migration URI for the unix socket name next to the
// destination's sockets.
func (p *pair) socketURI(name string) string {
	return "unix:" + filepath.Join(filepath.Dir(p.dst.Paths.QMPSocket), name)
}

func terminal(status string) bool {
	return status == "completed" || status == "failed" || status == "cancelled"
}

// execFlow migrates over exec: (the source writes into a FIFO that the
// destination's command reads): a live channel that cannot carry a return
// path.  nasmig steps aside for it, saying why in the source's log.
func execFlow(t *testing.T, ctx context.Context, p *pair) {
	fifo := p.run.Path("migration.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	p.run.Scratch(fifo)
	opts := p.c.opts
	opts.URI = "exec:cat > " + fifo
	opts.DestURI = "exec:cat " + fifo
	result, err := harness.Migrate(ctx, p.src, p.dst, opts)
	p.finish(t, result)
	if err != nil {
		t.Fatal(err)
	}
	if o := outcomeOf(result); o.src.RefPages != 0 {
		t.Errorf("exec: without a return path sent %d disk references: nasmig must step aside", o.src.RefPages)
	}
	if !strings.Contains(p.src.LogTail(200), "sends no disk references") {
		t.Errorf("the source's log does not say why this migration sends no references:\n%s", p.src.LogTail(20))
	}
	expectStatus(t, ctx, p.src, "postmigrate")
	expectStatus(t, ctx, p.dst, "paused")
	compareRAM(t, ctx, p)
	resumeAndVerify(t, ctx, p)
}

// retryFlow breaks a first attempt that has already sent references
// (migrate_cancel, or the destination QEMU killed), checks the source runs
// on, then migrates to a fresh destination: it must complete with
// identical RAM, and its counters must describe that attempt alone.
func retryFlow(killDestination bool) func(t *testing.T, ctx context.Context, p *pair) {
	return func(t *testing.T, ctx context.Context, p *pair) {
		startMigration(t, ctx, p, "first.migrate")
		var firstRefs int64
		for firstRefs == 0 {
			info, err := harness.QueryMigrate(ctx, p.src)
			if err != nil {
				t.Fatal(err)
			}
			if terminal(info.Status) {
				t.Fatalf("first attempt ended (%s) before sending references", info.Status)
			}
			if info.DiskRefs != nil {
				firstRefs = info.DiskRefs.RefPages
			}
			time.Sleep(50 * time.Millisecond)
		}
		if killDestination {
			if err := p.dst.Kill(); err != nil {
				t.Fatal(err)
			}
		} else if _, err := p.src.QMP.Execute(ctx, "migrate_cancel", nil); err != nil {
			t.Fatal(err)
		}
		waitCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		first, err := harness.WaitMigration(waitCtx, p.src, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("first attempt: %s after %d references (%s)", first.Status, firstRefs, first.ErrorDesc)
		if want := map[bool]string{true: "failed", false: "cancelled"}[killDestination]; first.Status != want {
			t.Fatalf("first attempt ended %q, want %q", first.Status, want)
		}
		expectSourceAlive(t, ctx, p)

		p.newDestination(t, ctx, "dst2")
		opts := p.c.opts
		opts.Params = map[string]any{"max-bandwidth": defaultMaxBandwidth}
		result, err := harness.Migrate(ctx, p.src, p.dst, opts)
		p.finish(t, result)
		if err != nil {
			t.Fatal(err)
		}
		o := outcomeOf(result)
		requireRefsAndFetched(t, o)
		if o.src.RefPages > o.src.MappedPages {
			t.Errorf("second attempt: ref-pages %d > mapped-pages %d: the counters still include the first attempt's %d", o.src.RefPages, o.src.MappedPages, firstRefs)
		}
		p.fig.note = fmt.Sprintf("1st attempt %d refs, 2nd %d", firstRefs, o.src.RefPages)
		expectStatus(t, ctx, p.src, "postmigrate")
		expectStatus(t, ctx, p.dst, "paused")
		compareRAM(t, ctx, p)
		resumeAndVerify(t, ctx, p)
	}
}

// chainFlow migrates the guest A -> B -> C -> D, resuming it on each
// destination before the next hop: every hop must complete with identical
// RAM, and the later hops must send at least 90% of the first hop's
// references (the pages a destination filled from verified references are
// in its map).
func chainFlow(t *testing.T, ctx context.Context, p *pair) {
	const hops = 3
	var refs []int64
	for hop := 1; hop <= hops; hop++ {
		result, err := harness.Migrate(ctx, p.src, p.dst, p.c.opts)
		p.finish(t, result)
		if err != nil {
			t.Fatalf("hop %d (%s -> %s): %v", hop, p.src.Config.Name, p.dst.Config.Name, err)
		}
		o := outcomeOf(result)
		expectStatus(t, ctx, p.src, "postmigrate")
		expectStatus(t, ctx, p.dst, "paused")
		compareRAM(t, ctx, p)
		requireRefsAndFetched(t, o)
		refs = append(refs, o.src.RefPages)
		t.Logf("hop %d %s -> %s: %d references, total %d ms, downtime %d ms", hop, p.src.Config.Name, p.dst.Config.Name,
			o.src.RefPages, result.Source.TotalTime, result.Source.Downtime)
		if hop > 1 && o.src.RefPages*10 < refs[0]*9 {
			t.Errorf("hop %d sent %d references, under 90%% of the first hop's %d", hop, o.src.RefPages, refs[0])
		}
		last, _ := p.src.Heartbeat()
		mark := p.dst.Serial.Mark()
		if err := p.dst.Cont(ctx); err != nil {
			t.Fatal(err)
		}
		if beats := waitBeats(t, ctx, p.dst, mark, 2); beats[0] <= last {
			t.Fatalf("hop %d: heartbeat %v does not continue past the source's %d", hop, beats, last)
		}
		// The old source is done; the guest runs on its new host.
		p.src.Kill()
		p.src = p.dst
		if hop < hops {
			p.newDestination(t, ctx, fmt.Sprintf("hop%d", hop+1))
		}
	}
	verifyCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	checked, err := p.src.Verify(verifyCtx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after %d hops: verify PASS, checked=%d; references per hop %v", hops, checked, refs)
	p.fig.note = fmt.Sprintf("refs per hop %v", refs)
}

// makeTLSCerts writes a CA, a server certificate for "localhost" and a
// client certificate, in the file names QEMU's tls-creds-x509 expects:
// the server's directory gets ca-cert.pem and server-*.pem, the client's
// ca-cert.pem and client-*.pem.
func makeTLSCerts(ctx context.Context, dir string) (serverDir, clientDir string, err error) {
	serverDir, clientDir = filepath.Join(dir, "server"), filepath.Join(dir, "client")
	for _, d := range []string{serverDir, clientDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return "", "", err
		}
	}
	run := func(args ...string) error {
		cmd := exec.CommandContext(ctx, "openssl", args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("openssl %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	steps := [][]string{
		{"req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=nasmig test CA",
			"-keyout", "ca-key.pem", "-out", "ca-cert.pem",
			"-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"},
	}
	for _, who := range []struct{ name, usage string }{{"server", "serverAuth"}, {"client", "clientAuth"}} {
		ext := who.name + ".ext"
		if err := os.WriteFile(filepath.Join(dir, ext), []byte("basicConstraints=critical,CA:FALSE\n"+
			"keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage="+who.usage+"\n"+
			"subjectAltName=DNS:localhost\n"), 0o600); err != nil {
			return "", "", err
		}
		steps = append(steps,
			[]string{"req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", who.name + "-key.pem", "-out", who.name + ".csr"},
			[]string{"x509", "-req", "-in", who.name + ".csr", "-CA", "ca-cert.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
				"-days", "2", "-extfile", ext, "-out", who.name + "-cert.pem"})
	}
	for _, s := range steps {
		if err := run(s...); err != nil {
			return "", "", err
		}
	}
	for _, f := range []struct{ name, to string }{
		{"ca-cert.pem", serverDir}, {"server-cert.pem", serverDir}, {"server-key.pem", serverDir},
		{"ca-cert.pem", clientDir}, {"client-cert.pem", clientDir}, {"client-key.pem", clientDir},
	} {
		data, err := os.ReadFile(filepath.Join(dir, f.name))
		if err != nil {
			return "", "", err
		}
		if err := os.WriteFile(filepath.Join(f.to, f.name), data, 0o600); err != nil {
			return "", "", err
		}
	}
	return serverDir, clientDir, nil
}

// tlsFlow migrates over TLS (tls-creds-x509 on both sides, peers verified
// both ways): references travel inside the TLS channel like every other
// record, and the return path too.
func tlsFlow(t *testing.T, ctx context.Context, p *pair) {
	serverDir, clientDir, err := makeTLSCerts(ctx, p.run.Path("tls"))
	if err != nil {
		t.Fatal(err)
	}
	for _, side := range []struct {
		vm       *harness.VM
		dir, end string
	}{{p.dst, serverDir, "server"}, {p.src, clientDir, "client"}} {
		if _, err := side.vm.QMP.Execute(ctx, "object-add", map[string]any{"qom-type": "tls-creds-x509", "id": "tls0",
			"dir": side.dir, "endpoint": side.end, "verify-peer": true}); err != nil {
			t.Fatal(err)
		}
	}
	opts := p.c.opts
	opts.Params = map[string]any{"tls-creds": "tls0", "tls-hostname": "localhost"}
	result, err := harness.Migrate(ctx, p.src, p.dst, opts)
	p.finish(t, result)
	if err != nil {
		t.Fatal(err)
	}
	requireRefsAndFetched(t, outcomeOf(result))
	expectStatus(t, ctx, p.src, "postmigrate")
	expectStatus(t, ctx, p.dst, "paused")
	compareRAM(t, ctx, p)
	resumeAndVerify(t, ctx, p)
}

// cprRebootFlow saves the stopped guest with migration mode cpr-reboot (a
// host kernel update: QEMU exits, comes back, and loads the file) and
// restores it: nasmig steps aside for cpr modes, the guest comes back
// bit-exact.
func cprRebootFlow(t *testing.T, ctx context.Context, p *pair) {
	if _, err := p.src.QMP.Execute(ctx, "stop", nil); err != nil {
		t.Fatal(err)
	}
	p.c.opts.Params = map[string]any{"mode": "cpr-reboot"}
	saveRestoreFlow(t, ctx, p)
}

// backgroundSnapshotFlow takes a background snapshot of the running guest
// to a file (capability background-snapshot, userfaultfd write protection)
// and restores it into the waiting destination: the restored guest runs and
// verifies its files.  The source ran on, so RAM is not compared.
func backgroundSnapshotFlow(t *testing.T, ctx context.Context, p *pair) {
	path := p.run.Path("snapshot.sav")
	p.run.Scratch(path)
	set := harness.MigrateOpts{Caps: map[string]bool{"background-snapshot": true}}
	if err := harness.Configure(ctx, p.src, set); err != nil {
		if strings.Contains(err.Error(), "not supported") {
			t.Skipf("SKIPPED, not run: background-snapshot is not supported here: %v", err)
		}
		t.Fatal(err)
	}
	srcInfo := migrateToFile(t, ctx, p, path, "background snapshot")
	if d := srcInfo.DiskRefs; d != nil && d.RefPages != 0 {
		t.Errorf("a background snapshot sent %d disk references: it must be stock", d.RefPages)
	}
	expectStatus(t, ctx, p.src, "running")
	dstInfo := restoreFromFile(t, ctx, p, path)
	p.finish(t, &harness.MigrationResult{URI: "file:" + path, Source: srcInfo, Destination: dstInfo})
	if dstInfo.Status != "completed" {
		t.Fatalf("restore of the background snapshot: %s (%s)", dstInfo.Status, dstInfo.ErrorDesc)
	}
	mark := p.dst.Serial.Mark()
	if err := p.dst.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	beats := waitBeats(t, ctx, p.dst, mark, 2)
	verifyCtx, cancelVerify := context.WithTimeout(ctx, 3*time.Minute)
	defer cancelVerify()
	checked, err := p.dst.Verify(verifyCtx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("restored background snapshot runs (heartbeats %v) and verifies (%d files)", beats, checked)
}

// slowStorageFlow throttles the shared storage's reads to the case's rate
// for the migration (the guest keeps writing meanwhile), then lifts the
// limit for the guest's own verification: the migration completes with
// identical RAM, whatever failed verification recovered from the source.
func slowStorageFlow(t *testing.T, ctx context.Context, p *pair) {
	if err := p.storage.SetReadLimit(ctx, p.c.slowStorage); err != nil {
		t.Fatal(err)
	}
	o := migrateAndCompare(t, ctx, p, func() {
		if err := p.storage.SetReadLimit(ctx, 0); err != nil {
			t.Error(err)
		}
	})
	requireRefs(t, o)
	t.Logf("storage at %d MB/s: %d references, %d fetched in %d ms, %d verify failures, %d fallbacks (pages asked from the source), %d handed back",
		p.c.slowStorage/1_000_000, o.src.RefPages, o.dst.FetchedPages, o.dst.FetchTimeMs, o.dst.VerifyFailures, o.dst.Fallbacks, o.dst.HandedBack)
	if p.c.check != nil {
		p.c.check(t, o)
	}
	resumeAndVerify(t, ctx, p)
}
