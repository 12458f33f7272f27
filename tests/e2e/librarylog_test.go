package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"testing"
	"time"

	"nasmig/tests/harness"
)

// libraryEvent returns the last line the library logged on vm (zerolog
// JSON on QEMU's stderr) whose message is msg, waiting up to wait for it:
// the destination logs the end of an incoming migration from its cleanup,
// just after query-migrate says completed.
func libraryEvent(t *testing.T, vm *harness.VM, msg string, wait time.Duration) map[string]any {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		if ev := lastLogEvent(vm.Paths.QEMULog, msg); ev != nil {
			return ev
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no library log line %q in %s", vm.Config.Name, msg, vm.Paths.QEMULog)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func lastLogEvent(path, msg string) map[string]any {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var last map[string]any
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var ev map[string]any
		if json.Unmarshal(line, &ev) == nil && ev["message"] == msg {
			last = ev
		}
	}
	return last
}
