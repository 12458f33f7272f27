package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"nasmig/tools/nasmig-xl/xenstream"
)

func TestXenCommand(t *testing.T) {
	var b xenstream.Builder
	b.XLHeader([]byte(`{"disks":[{"pdev_path":"/srv/g.img","vdev":"xvda","backend":"qdisk","format":"raw"}]}`))
	b.LibxlHeader()
	b.Record(xenstream.LibxlLibxcContext, nil)
	b.LibxcHeaders(1)
	page := make([]byte, 2*xenstream.PageSize)
	page[xenstream.PageSize] = 1 // the second page is not zero
	b.PageData([]uint64{5, 1<<xenstream.PfnTypeShift | 6, xenstream.PfnTypeXtab << xenstream.PfnTypeShift}, page)
	b.Record(xenstream.LibxcEnd, nil)
	b.Record(xenstream.LibxlEmulatorCtx, []byte("ctx"))
	b.Record(xenstream.LibxlEnd, nil)
	b.Bytes = append(b.Bytes, "GO"...)
	path := filepath.Join(t.TempDir(), "sent.stream")
	if err := os.WriteFile(path, b.Bytes, 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runCmd(t, "xen", path, "--json")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var r xenReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatal(err)
	}
	if r.Bytes != int64(len(b.Bytes)) || r.DomainType != "x86 PV" || len(r.Disks) != 1 || r.Disks[0].Path != "/srv/g.img" ||
		r.Pages != 2 || r.ZeroPages != 1 || r.NoDataPfns != 1 || r.PagesByType["L1"] != 1 || r.PagesByType["invalid"] != 1 ||
		r.LibxcRecords["PAGE_DATA"] != 1 || r.LibxlRecords["EMULATOR_CONTEXT"] != 1 || r.TailBytes != 2 || r.Warning != "" {
		t.Fatalf("report %+v", r)
	}
	code, out, _ = runCmd(t, "xen", path)
	if code != exitOK || !strings.Contains(out, "pages carried: 2") || !strings.Contains(out, "/srv/g.img") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	// Not an xl stream: decoded as far as it goes, with a warning.
	os.WriteFile(path, []byte(strings.Repeat("x", 100)), 0o600)
	if code, out, _ = runCmd(t, "xen", path); code != exitOK || !strings.Contains(out, "warning: not an xl stream") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
}
