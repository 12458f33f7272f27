package nbd

import "testing"

func TestParseURI(t *testing.T) {
	good := []struct {
		in   string
		want Target
	}{
		{"nbd+unix:///disk0?socket=/run/s.nbd", Target{"unix", "/run/s.nbd", "disk0"}},
		{"nbd+unix://?socket=/run/s.nbd", Target{"unix", "/run/s.nbd", ""}},
		{"nbd://10.0.0.2:10810/disk0", Target{"tcp", "10.0.0.2:10810", "disk0"}},
		{"nbd://storage/vol", Target{"tcp", "storage:10809", "vol"}},
		{"nbd+tcp://[fd00::1]:9000/x", Target{"tcp", "[fd00::1]:9000", "x"}},
		{"nbd:unix:/run/s.nbd", Target{"unix", "/run/s.nbd", ""}},
		{"nbd:unix:/run/s.nbd:exportname=disk0", Target{"unix", "/run/s.nbd", "disk0"}},
		{"nbd:storage:10809:exportname=vol", Target{"tcp", "storage:10809", "vol"}},
	}
	for _, g := range good {
		if !IsURI(g.in) {
			t.Errorf("IsURI(%q) = false", g.in)
		}
		got, err := ParseURI(g.in)
		if err != nil || got != g.want {
			t.Errorf("ParseURI(%q) = %+v, %v; want %+v", g.in, got, err, g.want)
		}
	}
	for _, bad := range []string{
		"nbd+unix:///disk0", "nbd+unix://host/disk0?socket=/s", "nbd:///x", "nbds://h/x",
		"nbd:unix:", "nbd:hostonly", "nbd+ssh://h/x", "nbd:h:10809x:exportname=",
	} {
		if got, err := ParseURI(bad); err == nil {
			t.Errorf("ParseURI(%q) = %+v, want an error", bad, got)
		}
	}
	if IsURI("/srv/disk0.raw") {
		t.Error("a path is not an NBD URI")
	}
}
