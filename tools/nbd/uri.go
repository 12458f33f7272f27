package nbd

import (
	"fmt"
	"net"
	"net/url"
	"strings"
)

// DefaultPort is NBD's registered TCP port, QEMU's default for nbd:// URIs.
const DefaultPort = "10809"

// Target is where an export is served: what Dial takes.
type Target struct {
	Network string // "unix" or "tcp"
	Addr    string // socket path, or host:port
	Export  string
}

// IsURI says whether name is one of QEMU's NBD filenames (nbd://,
// nbd+tcp://, nbd+unix://, their TLS forms nbds..., or the legacy
// nbd:HOST:PORT and nbd:unix:PATH).
func IsURI(name string) bool {
	for _, p := range []string{"nbd:", "nbd+", "nbds:", "nbds+"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// ParseURI reads an NBD filename the way QEMU's nbd driver does, so that a
// disk's filename in a migration stream can be opened here as it was there:
//
//	nbd+unix:///EXPORT?socket=PATH
//	nbd://HOST[:PORT]/EXPORT      (and nbd+tcp://)
//	nbd:unix:PATH[:exportname=EXPORT]
//	nbd:HOST:PORT[:exportname=EXPORT]
//
// TLS (nbds://) is refused: this client does not speak it.
func ParseURI(name string) (Target, error) {
	if rest, ok := strings.CutPrefix(name, "nbd:"); ok && !strings.HasPrefix(rest, "//") {
		return parseLegacy(rest, name)
	}
	u, err := url.Parse(name)
	if err != nil {
		return Target{}, fmt.Errorf("NBD URI %q: %w", name, err)
	}
	export := strings.TrimPrefix(u.Path, "/")
	switch u.Scheme {
	case "nbd", "nbd+tcp":
		if u.Host == "" {
			return Target{}, fmt.Errorf("NBD URI %q: no host", name)
		}
		host := u.Host
		if u.Port() != "" && !isPort(u.Port()) {
			return Target{}, fmt.Errorf("NBD URI %q: bad port", name)
		}
		if u.Port() == "" {
			host = net.JoinHostPort(u.Hostname(), DefaultPort)
		}
		return Target{Network: "tcp", Addr: host, Export: export}, nil
	case "nbd+unix":
		socket := u.Query().Get("socket")
		if socket == "" {
			return Target{}, fmt.Errorf("NBD URI %q: nbd+unix needs ?socket=PATH", name)
		}
		if u.Host != "" {
			return Target{}, fmt.Errorf("NBD URI %q: nbd+unix takes no host", name)
		}
		return Target{Network: "unix", Addr: socket, Export: export}, nil
	case "nbds", "nbds+tcp", "nbds+unix":
		return Target{}, fmt.Errorf("NBD URI %q: TLS exports are not supported by this client", name)
	default:
		return Target{}, fmt.Errorf("NBD URI %q: unknown scheme %q", name, u.Scheme)
	}
}

func parseLegacy(rest, name string) (Target, error) {
	var t Target
	if before, export, ok := strings.Cut(rest, ":exportname="); ok {
		rest, t.Export = before, export
	}
	if path, ok := strings.CutPrefix(rest, "unix:"); ok {
		if path == "" {
			return Target{}, fmt.Errorf("NBD filename %q: no socket path", name)
		}
		t.Network, t.Addr = "unix", path
		return t, nil
	}
	host, port, err := net.SplitHostPort(rest)
	if err != nil || host == "" || !isPort(port) {
		return Target{}, fmt.Errorf("NBD filename %q: want nbd:HOST:PORT or nbd:unix:PATH", name)
	}
	t.Network, t.Addr = "tcp", net.JoinHostPort(host, port)
	return t, nil
}

func isPort(s string) bool {
	if s == "" || len(s) > 5 {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
