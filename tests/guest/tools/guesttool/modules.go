package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"nasmig/tests/guest/internal/modinfo"
)

// moduleExts are the file name endings of kernel modules, compressed or not.
var moduleExts = []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"}

// kernelModules is a modinfo.Source over an unpacked lib/modules/VERSION.
type kernelModules struct {
	paths   map[string]string // normalised name -> file
	data    map[string][]byte // decompressed module, once read
	infos   map[string]modinfo.Info
	scanned bool // every module's aliases are in infos
}

func openKernelModules(dir string) (*kernelModules, error) {
	km := &kernelModules{paths: map[string]string{}, data: map[string][]byte{}, infos: map[string]modinfo.Info{}}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if name, ok := moduleName(d.Name()); ok {
			km.paths[name] = p
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(km.paths) == 0 {
		return nil, fmt.Errorf("no kernel modules under %s", dir)
	}
	return km, nil
}

// moduleName returns the normalised module name of a module file name.
func moduleName(file string) (string, bool) {
	for _, ext := range moduleExts {
		if strings.HasSuffix(file, ext) {
			return modinfo.Normalize(strings.TrimSuffix(file, ext)), true
		}
	}
	return "", false
}

// readModule returns the decompressed bytes of a module file.
func readModule(path string) ([]byte, error) {
	var tool string
	switch {
	case strings.HasSuffix(path, ".xz"):
		tool = "xz"
	case strings.HasSuffix(path, ".zst"):
		tool = "zstd"
	case strings.HasSuffix(path, ".gz"):
		tool = "gzip"
	default:
		return os.ReadFile(path)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(tool, "-dc", path)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s -dc %s: %w: %s", tool, path, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

func (km *kernelModules) Info(name string) (modinfo.Info, bool, error) {
	if info, ok := km.infos[name]; ok {
		return info, true, nil
	}
	p, ok := km.paths[name]
	if !ok {
		return modinfo.Info{}, false, nil
	}
	data, err := readModule(p)
	if err != nil {
		return modinfo.Info{}, false, err
	}
	sec, err := modinfo.Section(bytes.NewReader(data))
	if err != nil {
		return modinfo.Info{}, false, fmt.Errorf("%s: %w", p, err)
	}
	info := modinfo.Parse(sec, name)
	if info.Name != name {
		// The file name and name= disagree: trust the file name, which is
		// how the order refers to it.
		info.Name = name
	}
	km.data[name] = data
	km.infos[name] = info
	return info, true, nil
}

// Resolve maps a soft dependency to a module: an exact module name first,
// then a generic implementation of a crypto alias, then a scan of every
// module's aliases (slow, done once), preferring generic implementations
// because accelerated ones may not match the guest's CPU.
func (km *kernelModules) Resolve(dep string) (string, bool, error) {
	n := modinfo.Normalize(dep)
	if _, ok := km.paths[n]; ok {
		return n, true, nil
	}
	base := strings.TrimPrefix(n, "crypto_")
	for _, c := range []string{base + "_generic", base} {
		if _, ok := km.paths[c]; ok {
			return c, true, nil
		}
	}
	if !km.scanned {
		names := make([]string, 0, len(km.paths))
		for name := range km.paths {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			if _, _, err := km.Info(name); err != nil {
				return "", false, err
			}
		}
		km.scanned = true
	}
	var found []string
	for name, info := range km.infos {
		for _, a := range info.Aliases {
			if a == dep {
				found = append(found, name)
			}
		}
	}
	if len(found) == 0 {
		return "", false, nil
	}
	sort.Slice(found, func(i, j int) bool {
		gi, gj := strings.Contains(found[i], "generic"), strings.Contains(found[j], "generic")
		if gi != gj {
			return gi
		}
		return found[i] < found[j]
	})
	return found[0], true, nil
}

// readConfig returns the symbols set to y in a kernel .config file, without
// the CONFIG_ prefix.
func readConfig(path string) (map[string]bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	yes := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok && v == "y" {
			yes[strings.TrimPrefix(k, "CONFIG_")] = true
		}
	}
	return yes, sc.Err()
}

// readBuiltin returns the module names listed in modules.builtin, if present.
func readBuiltin(path string) map[string]bool {
	out := map[string]bool{}
	data, err := os.ReadFile(path)
	if err != nil {
		return out
	}
	for _, l := range strings.Split(string(data), "\n") {
		if name, ok := moduleName(filepath.Base(strings.TrimSpace(l))); ok {
			out[name] = true
		}
	}
	return out
}

type rootSpec struct {
	name     string
	symbol   string
	optional bool
}

func parseRoot(s string) rootSpec {
	var r rootSpec
	r.optional = strings.HasSuffix(s, "?")
	s = strings.TrimSuffix(s, "?")
	name, sym, _ := strings.Cut(s, ":")
	r.name = modinfo.Normalize(name)
	r.symbol = strings.TrimPrefix(sym, "CONFIG_")
	return r
}

func modulesCmd(args []string) error {
	fl := flag.NewFlagSet("modules", flag.ExitOnError)
	moddir := fl.String("moddir", "", "unpacked lib/modules/VERSION")
	config := fl.String("config", "", "the kernel's boot/config-VERSION")
	out := fl.String("out", "", "output folder (the initramfs /modules)")
	fl.Parse(args)
	if *moddir == "" || *config == "" || *out == "" || fl.NArg() == 0 {
		return fmt.Errorf("need -moddir, -config, -out and at least one root module")
	}
	km, err := openKernelModules(*moddir)
	if err != nil {
		return err
	}
	yes, err := readConfig(*config)
	if err != nil {
		return err
	}
	builtin := readBuiltin(filepath.Join(*moddir, "modules.builtin"))

	var roots []string
	specs := map[string]rootSpec{}
	for _, a := range fl.Args() {
		r := parseRoot(a)
		roots = append(roots, r.name)
		specs[r.name] = r
	}
	var notes []string
	skip := func(name string) bool {
		r := specs[name]
		switch {
		case r.symbol != "" && yes[r.symbol]:
			notes = append(notes, fmt.Sprintf("%s built in (CONFIG_%s=y)", name, r.symbol))
		case builtin[name]:
			notes = append(notes, fmt.Sprintf("%s built in (modules.builtin)", name))
		case r.optional:
			notes = append(notes, fmt.Sprintf("%s absent (optional)", name))
		default:
			return false
		}
		return true
	}
	order, err := modinfo.Order(km, roots, skip)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	var list bytes.Buffer
	for _, name := range order {
		if err := os.WriteFile(filepath.Join(*out, name+".ko"), km.data[name], 0o644); err != nil {
			return err
		}
		fmt.Fprintf(&list, "%s.ko\n", name)
	}
	if err := os.WriteFile(filepath.Join(*out, "order"), list.Bytes(), 0o644); err != nil {
		return err
	}
	for _, n := range notes {
		fmt.Fprintf(os.Stderr, "guest: modules: %s\n", n)
	}
	fmt.Fprintf(os.Stderr, "guest: modules: %d in load order: %s\n", len(order), strings.Join(order, " "))
	return nil
}
