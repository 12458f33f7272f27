//go:build race

package p2b_test

const raceEnabled = true
