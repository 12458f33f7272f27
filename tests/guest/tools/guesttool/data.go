package main

import (
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"nasmig/tests/guest/internal/gen"
)

func dataCmd(args []string) error {
	fl := flag.NewFlagSet("data", flag.ExitOnError)
	out := fl.String("out", "", "folder to fill (becomes the data disk's root)")
	mib := fl.Int("mib", 1300, "about how many MiB of file content")
	fl.Parse(args)
	if *out == "" {
		return fmt.Errorf("need -out")
	}
	files := gen.Plan(*mib)
	sums := make([]string, len(files))
	errs := make([]error, len(files))

	workers := min(runtime.GOMAXPROCS(0), 4)
	next := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, gen.MiB)
			for i := range next {
				sums[i], errs[i] = writeFile(*out, files[i], buf)
			}
		}()
	}
	for i := range files {
		next <- i
	}
	close(next)
	wg.Wait()

	var manifest strings.Builder
	var total int64
	for i, f := range files {
		if errs[i] != nil {
			return errs[i]
		}
		fmt.Fprintf(&manifest, "%s  %s\n", sums[i], f.Path)
		total += f.Size
	}
	if err := os.WriteFile(filepath.Join(*out, gen.ManifestRel), []byte(manifest.String()), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "guest: data: %d files, %.1f MiB\n", len(files), float64(total)/gen.MiB)
	return nil
}

// writeFile writes one planned file at version 0 and returns its sha256.
func writeFile(root string, f gen.File, buf []byte) (string, error) {
	p := filepath.Join(root, filepath.FromSlash(f.Path))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return "", err
	}
	fd, err := os.Create(p)
	if err != nil {
		return "", err
	}
	defer fd.Close()
	h := sha256.New()
	seed := gen.SeedOf(f.Path)
	for off := int64(0); off < f.Size; off += int64(len(buf)) {
		chunk := buf[:min(int64(len(buf)), f.Size-off)]
		gen.Fill(chunk, seed, off, 0)
		h.Write(chunk)
		if _, err := fd.Write(chunk); err != nil {
			return "", err
		}
	}
	if err := fd.Close(); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
