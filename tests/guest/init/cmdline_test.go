package main

import (
	"reflect"
	"testing"
)

func TestParseCmdline(t *testing.T) {
	for _, c := range []struct {
		in   string
		want config
	}{
		{"console=ttyS0 quiet panic=-1 nasmig.workload=pagecache-read nasmig.mib=300\n",
			config{Workload: "pagecache-read", MiB: 300, Heartbeat: true, Seed: 1}},
		{"BOOT_IMAGE=/vmlinuz nasmig.workload=mixed nasmig.heartbeat=1",
			config{Workload: "mixed", MiB: -1, Heartbeat: true, Seed: 1}},
		{"nasmig.workload=memory-hot nasmig.mib=0 nasmig.heartbeat=0 nasmig.seed=0x10",
			config{Workload: "memory-hot", MiB: 0, Heartbeat: false, Seed: 16}},
		{"", config{Workload: "idle", MiB: -1, Heartbeat: true, Seed: 1}},
		{`x="a nasmig.workload=mixed" nasmig.foo=1  nasmig.workload=idle`,
			config{Workload: "idle", MiB: -1, Heartbeat: true, Seed: 1, Unknown: []string{"nasmig.foo=1"}}},
	} {
		got, err := parseCmdline(c.in)
		if err != nil {
			t.Errorf("parseCmdline(%q): %v", c.in, err)
			continue
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("parseCmdline(%q)\n got %+v\nwant %+v", c.in, got, c.want)
		}
	}
	for _, bad := range []string{"nasmig.workload=nope", "nasmig.mib=-3", "nasmig.mib=lots", "nasmig.seed=x"} {
		if _, err := parseCmdline(bad); err == nil {
			t.Errorf("parseCmdline(%q): no error", bad)
		}
	}
}

func TestSplitCmdline(t *testing.T) {
	got := splitCmdline(` a  b="c d" "e f"=g` + "\n")
	want := []string{"a", "b=c d", "e f=g"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("splitCmdline = %q, want %q", got, want)
	}
}

func TestMibOr(t *testing.T) {
	if (config{MiB: -1}).mibOr(7) != 7 || (config{MiB: 0}).mibOr(7) != 0 {
		t.Fatal("mibOr")
	}
}

func TestPickDisk(t *testing.T) {
	size := func(n string) int64 {
		if n == "sdz" {
			return 0 // present but empty (e.g. a card reader)
		}
		return 1
	}
	for _, c := range []struct {
		names []string
		want  string
	}{
		{[]string{"loop0", "sr0", "vda", "sda"}, "vda"},
		{[]string{"sdb", "sda", "vdb"}, "sda"},
		{[]string{"vdb", "sdb"}, "vdb"},
		{[]string{"sdaa", "sdb"}, "sdb"},
		{[]string{"xvdb", "xvda", "loop0"}, "xvda"},
		{[]string{"sdz", "loop0", "nvme0n1"}, ""},
		{nil, ""},
	} {
		if got := pickDisk(c.names, size); got != c.want {
			t.Errorf("pickDisk(%v) = %q, want %q", c.names, got, c.want)
		}
	}
}
