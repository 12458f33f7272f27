// Package e2e holds nasmig's end-to-end tests: real guests migrated between
// two patched QEMUs over shared NBD storage, with libnasmig.so loaded, and
// the destination's RAM compared byte for byte with the source's. The tests
// run only when NASMIG_OUT and NASMIG_GUEST are set (see
// docs/testbed-contract.md); otherwise they skip and say why.
//
// The RAM comparison's negative control (a single flipped byte must be
// found, at the right guest address) is the harness's own unit test,
// harness.TestCompareRAMDumpsOneByte in tests/harness/ramcmp_test.go, with
// TestCompareRAMDumpsManyPagesAndLastPartialPage for many pages and chunk
// edges; it is not repeated here.
package e2e
