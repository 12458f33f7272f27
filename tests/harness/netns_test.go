package harness

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// listenInNetNS is dialInNetNS's counterpart for the test's server side.
func listenInNetNS(ns, addr string) (l net.Listener, err error) {
	err = InNetNS(ns, func() error {
		l, err = net.Listen("tcp", addr)
		return err
	})
	return l, err
}

// TestNetworkLinksAndShaping builds the benchmark's network with a slow
// migration link, checks that each host reaches the other and the storage
// host at the addresses the benchmark uses, and that the shaped link is not
// faster than its rate (noise can only make it slower).
func TestNetworkLinksAndShaping(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIP: network namespaces need root")
	}
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("SKIP: %s not installed (iproute2)", tool)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const rate = 80e6 // bit/s: 10 MB/s, slow enough to measure in a second
	n, err := NewNetwork(ctx, fmt.Sprintf("nasmigt%d", os.Getpid()), NetProfile{Name: "test", MigrationBits: rate, StorageBits: 1e9})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := n.Close(); err != nil {
			t.Error(err)
		}
		if _, err := os.Stat("/run/netns/" + n.Src); err == nil {
			t.Errorf("namespace %s still exists after Close", n.Src)
		}
	}()
	out, err := exec.CommandContext(ctx, "tc", "-n", n.Src, "qdisc", "show", "dev", "mig0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "tbf") {
		t.Fatalf("tc qdisc show on the migration link: %v: %s", err, out)
	}

	// Storage host, reached from both hosts at the same address.
	sto, err := listenInNetNS(n.Storage, n.StorageAddr+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer sto.Close()
	go func() {
		for {
			c, err := sto.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("storage"))
			c.Close()
		}
	}()
	for _, ns := range []string{n.Src, n.Dst} {
		c, err := dialInNetNS(ctx, ns, "tcp", sto.Addr().String())
		if err != nil {
			t.Fatalf("from %s to the storage host: %v", ns, err)
		}
		got, _ := io.ReadAll(c)
		c.Close()
		if string(got) != "storage" {
			t.Fatalf("from %s: read %q", ns, got)
		}
	}

	// Migration link, source to destination, timed.
	dst, err := listenInNetNS(n.Dst, n.MigrationAddr+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	received := make(chan int64, 1)
	go func() {
		c, err := dst.Accept()
		if err != nil {
			received <- -1
			return
		}
		defer c.Close()
		got, _ := io.Copy(io.Discard, c)
		received <- got
	}()
	c, err := dialInNetNS(ctx, n.Src, "tcp", dst.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	const size = 8 << 20
	started := time.Now()
	if _, err := c.Write(make([]byte, size)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if got := <-received; got != size {
		t.Fatalf("destination received %d of %d bytes", got, size)
	}
	elapsed := time.Since(started)
	bits := float64(size*8) / elapsed.Seconds()
	t.Logf("migration link: %d MiB in %v = %.0f Mbit/s (shaped to %.0f)", size>>20, elapsed.Round(time.Millisecond), bits/1e6, rate/1e6)
	// The first burst passes unshaped; above 1.3x the rate it is not shaped.
	if bits > 1.3*rate {
		t.Errorf("migration link carried %.0f Mbit/s, shaped to %.0f", bits/1e6, rate/1e6)
	}
}
