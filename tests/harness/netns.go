package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// NetProfile is an emulated data-center network: the rate of the link
// between the source and destination hosts, and of each host's link to the
// storage host, in bits per second in each direction (0: unshaped).
type NetProfile struct {
	Name          string
	MigrationBits int64
	StorageBits   int64
}

// NetProfiles are the benchmark's networks.
var NetProfiles = []NetProfile{
	// The usual data center: a separate, faster storage network.
	{Name: "fast-storage", MigrationBits: 1e9, StorageBits: 10e9},
	{Name: "equal-links", MigrationBits: 1e9, StorageBits: 1e9},
	{Name: "10g", MigrationBits: 10e9, StorageBits: 25e9},
}

// NetProfileByName finds one of NetProfiles.
func NetProfileByName(name string) (NetProfile, bool) {
	for _, p := range NetProfiles {
		if p.Name == name {
			return p, true
		}
	}
	return NetProfile{}, false
}

// Network is three network namespaces (source host, destination host,
// storage host) joined by shaped veth links: the migration link between
// source and destination, and a storage network (a bridge in the storage
// namespace) that both hosts reach at the same address, so both QEMUs open
// the shared disk under the same NBD URI.
type Network struct {
	Profile NetProfile
	Src     string // namespace names
	Dst     string
	Storage string

	MigrationAddr string // the destination's address on the migration link
	StorageAddr   string // the storage host's address
}

// Addresses on links that exist only inside the namespaces created here.
const (
	netMigSrc  = "10.231.1.1"
	netMigDst  = "10.231.1.2"
	netStoHost = "10.231.2.1"
	netStoSrc  = "10.231.2.2"
	netStoDst  = "10.231.2.3"
)

// NewNetwork creates the namespaces, named prefix-src, prefix-dst and
// prefix-sto, their links and the shaping of each direction (on the
// sending device, as tc can only shape egress). On error nothing is left.
func NewNetwork(ctx context.Context, prefix string, p NetProfile) (n *Network, err error) {
	n = &Network{Profile: p, Src: prefix + "-src", Dst: prefix + "-dst", Storage: prefix + "-sto",
		MigrationAddr: netMigDst, StorageAddr: netStoHost}
	defer func() {
		if err != nil {
			n.Close()
			n = nil
		}
	}()
	for _, ns := range []string{n.Src, n.Dst, n.Storage} {
		if err := runIP(ctx, "netns", "add", ns); err != nil {
			return n, err
		}
		if err := runIP(ctx, "-n", ns, "link", "set", "lo", "up"); err != nil {
			return n, err
		}
	}
	steps := [][]string{
		{"link", "add", "mig0", "netns", n.Src, "type", "veth", "peer", "name", "mig1", "netns", n.Dst},
		{"-n", n.Src, "addr", "add", netMigSrc + "/24", "dev", "mig0"},
		{"-n", n.Dst, "addr", "add", netMigDst + "/24", "dev", "mig1"},
		{"-n", n.Storage, "link", "add", "br0", "type", "bridge"},
		{"-n", n.Storage, "addr", "add", netStoHost + "/24", "dev", "br0"},
		{"link", "add", "sto0", "netns", n.Src, "type", "veth", "peer", "name", "tosrc", "netns", n.Storage},
		{"link", "add", "sto0", "netns", n.Dst, "type", "veth", "peer", "name", "todst", "netns", n.Storage},
		{"-n", n.Src, "addr", "add", netStoSrc + "/24", "dev", "sto0"},
		{"-n", n.Dst, "addr", "add", netStoDst + "/24", "dev", "sto0"},
		{"-n", n.Storage, "link", "set", "tosrc", "master", "br0"},
		{"-n", n.Storage, "link", "set", "todst", "master", "br0"},
	}
	for _, s := range steps {
		if err := runIP(ctx, s...); err != nil {
			return n, err
		}
	}
	for _, d := range []struct {
		ns, dev string
		bits    int64
	}{
		{n.Src, "mig0", p.MigrationBits}, {n.Dst, "mig1", p.MigrationBits},
		{n.Src, "sto0", p.StorageBits}, {n.Dst, "sto0", p.StorageBits},
		{n.Storage, "tosrc", p.StorageBits}, {n.Storage, "todst", p.StorageBits},
		{n.Storage, "br0", 0},
	} {
		if err := runIP(ctx, "-n", d.ns, "link", "set", d.dev, "up"); err != nil {
			return n, err
		}
		if d.bits > 0 {
			if err := shape(ctx, d.ns, d.dev, d.bits); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// shape limits dev's egress to bits per second with a token bucket whose
// burst grows with the rate (a burst too small for the rate caps it lower:
// the kernel refills the bucket once per timer tick).
func shape(ctx context.Context, ns, dev string, bits int64) error {
	burst := max(bits/8/500, 256<<10) // 2 ms of traffic, at least 256 KiB
	out, err := exec.CommandContext(ctx, "tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf",
		"rate", fmt.Sprintf("%dbit", bits), "burst", fmt.Sprintf("%d", burst), "latency", "50ms").CombinedOutput()
	if err != nil {
		return fmt.Errorf("tc shape %s/%s to %d bit/s: %w: %s", ns, dev, bits, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func runIP(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Close deletes the namespaces, and with them every link and qdisc.
func (n *Network) Close() error {
	var errs []error
	for _, ns := range []string{n.Src, n.Dst, n.Storage} {
		if _, err := os.Stat("/run/netns/" + ns); err != nil {
			continue
		}
		if err := runIP(context.Background(), "netns", "delete", ns); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// NetNSCommand returns the command that runs binary in namespace ns (or
// directly when ns is empty). ip execs the binary: its PID is QEMU's.
func NetNSCommand(ns, binary string, args ...string) *exec.Cmd {
	if ns == "" {
		return exec.Command(binary, args...)
	}
	return exec.Command("ip", append([]string{"netns", "exec", ns, binary}, args...)...)
}

// dialInNetNS connects from inside namespace ns (the current one when
// empty). The socket belongs to the namespace it was created in and is then
// usable from any thread.
func dialInNetNS(ctx context.Context, ns, network, addr string) (conn net.Conn, err error) {
	if ns == "" {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	err = InNetNS(ns, func() error {
		var d net.Dialer
		conn, err = d.DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

// InNetNS runs fn on an OS thread switched into namespace ns, then switches
// the thread back. The thread must not exit instead: a child process
// started from it with Pdeathsig (every QEMU here) would be killed with it.
func InNetNS(ns string, fn func() error) error {
	target, err := os.Open("/run/netns/" + ns)
	if err != nil {
		return fmt.Errorf("netns %s: %w", ns, err)
	}
	defer target.Close()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		own, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("netns: %w", err)
			return
		}
		defer own.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("enter netns %s: %w", ns, err)
			return
		}
		err = fn()
		if unix.Setns(int(own.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		} // else the thread stays locked and exits with the goroutine
		done <- err
	}()
	return <-done
}
