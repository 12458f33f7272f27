// Command guesttool holds the host-side helpers of tests/guest/mkguest.sh.
//
//	guesttool modules -moddir DIR -config FILE -out DIR ROOT...
//	    Copy the kernel modules needed for ROOT... (and their dependencies,
//	    decompressed) to -out and write -out/order, dependencies first.
//	    ROOT is NAME[:CONFIG_SYMBOL][?]: a module that is not present as a
//	    file is skipped when CONFIG_SYMBOL is =y in -config (or when NAME is in
//	    modules.builtin), or when it is marked optional with '?'.
//	guesttool data -out DIR -mib N
//	    Write the data disk's files (about N MiB, deterministic content) and
//	    DIR/manifest.sha256.
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "modules":
		err = modulesCmd(os.Args[2:])
	case "data":
		err = dataCmd(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "guesttool %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: guesttool modules -moddir DIR -config FILE -out DIR ROOT... | guesttool data -out DIR -mib N")
	os.Exit(2)
}
