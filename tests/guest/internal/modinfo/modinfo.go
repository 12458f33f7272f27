// Package modinfo reads the .modinfo section of Linux kernel modules and
// orders modules so that each one is loaded after its dependencies. It stands
// in for depmod/modprobe, which the host does not have.
package modinfo

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Info is what the loader needs from one module's .modinfo section.
type Info struct {
	Name    string   // normalised module name ("crc_t10dif")
	Depends []string // normalised names from depends=
	SoftPre []string // module names or aliases from "softdep=pre: ..."
	Aliases []string
}

// Normalize returns the kernel's canonical form of a module name: '-' and
// '_' are equivalent and the canonical form uses '_'.
func Normalize(name string) string {
	return strings.ReplaceAll(name, "-", "_")
}

// ErrNoModinfo is returned when an ELF file has no .modinfo section.
var ErrNoModinfo = errors.New("no .modinfo section")

// Section returns the raw .modinfo section of an ELF kernel module.
func Section(r io.ReaderAt) ([]byte, error) {
	f, err := elf.NewFile(r)
	if err != nil {
		return nil, fmt.Errorf("failed to parse ELF: %w", err)
	}
	defer f.Close()
	s := f.Section(".modinfo")
	if s == nil {
		return nil, ErrNoModinfo
	}
	return s.Data()
}

// Parse decodes a .modinfo section: NUL-separated key=value strings.
// fallbackName is used when the section has no name= entry (modules older
// than Linux 5.x).
func Parse(section []byte, fallbackName string) Info {
	info := Info{Name: Normalize(fallbackName)}
	for _, kv := range bytes.Split(section, []byte{0}) {
		k, v, ok := strings.Cut(string(kv), "=")
		if !ok {
			continue
		}
		switch k {
		case "name":
			if v != "" {
				info.Name = Normalize(v)
			}
		case "depends":
			for _, d := range strings.Split(v, ",") {
				if d = strings.TrimSpace(d); d != "" {
					info.Depends = append(info.Depends, Normalize(d))
				}
			}
		case "softdep":
			info.SoftPre = append(info.SoftPre, parseSoftPre(v)...)
		case "alias":
			info.Aliases = append(info.Aliases, v)
		}
	}
	return info
}

// parseSoftPre returns the names after "pre:" in a softdep value such as
// "pre: crc32c post: foo".
func parseSoftPre(v string) []string {
	var out []string
	pre := false
	for _, tok := range strings.Fields(v) {
		switch tok {
		case "pre:":
			pre = true
		case "post:":
			pre = false
		default:
			if pre {
				out = append(out, tok)
			}
		}
	}
	return out
}

// Source gives the orderer access to the modules of one kernel.
type Source interface {
	// Info returns the module called name (normalised), or ok=false when the
	// kernel has no such loadable module.
	Info(name string) (info Info, ok bool, err error)
	// Resolve maps a soft dependency (a module name or an alias such as
	// "crypto-crc32c") to a module name, or ok=false if nothing provides it.
	Resolve(dep string) (name string, ok bool, err error)
}

// Order returns the modules to load, dependencies first, for the given root
// modules (in the order given, each at most once). A hard dependency that
// Source does not know is an error; a soft dependency that resolves to
// nothing is skipped. Roots must exist unless skip(root) says they are
// built into the kernel or optional.
func Order(src Source, roots []string, skip func(name string) bool) ([]string, error) {
	const (
		unseen = iota
		visiting
		done
	)
	state := map[string]int{}
	var order []string
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		name = Normalize(name)
		switch state[name] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("dependency cycle: %s -> %s", strings.Join(chain, " -> "), name)
		}
		info, ok, err := src.Info(name)
		if err != nil {
			return err
		}
		if !ok {
			if len(chain) == 0 && skip != nil && skip(name) {
				state[name] = done
				return nil
			}
			if len(chain) == 0 {
				return fmt.Errorf("module %s not found", name)
			}
			return fmt.Errorf("module %s (needed by %s) not found", name, strings.Join(chain, " <- "))
		}
		state[name] = visiting
		chain = append(chain, name)
		for _, s := range info.SoftPre {
			dep, ok, err := src.Resolve(s)
			if err != nil {
				return err
			}
			if !ok || state[dep] == visiting {
				continue // optional, or a soft loop: ignore like modprobe does
			}
			if err := visit(dep, chain); err != nil {
				return err
			}
		}
		for _, d := range info.Depends {
			if err := visit(d, chain); err != nil {
				return err
			}
		}
		state[name] = done
		order = append(order, name)
		return nil
	}
	for _, r := range roots {
		if err := visit(r, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}
