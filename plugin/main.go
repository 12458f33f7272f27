// Command libnasmig.so (built with -buildmode=c-shared) is nasmig's library
// for QEMU: loaded with `-plugin libnasmig.so[,key=value...]`, it tracks
// which guest pages hold which disk blocks and serves disk references during
// live migration.  The hot paths are C (package nasmig/cshim); the exports
// here are the slow paths QEMU calls once per migration or per bitmap sync.
package main

/*
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include "../cshim/nasmig.h"
void nasmig_fill_go(struct nasmig_lib *lib);
*/
import "C"

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
	"unsafe"

	"github.com/google/uuid"
	"github.com/rs/zerolog"

	"nasmig/cshim"
	"nasmig/plugin/config"
	"nasmig/plugin/fetch"
	"nasmig/plugin/p2b"
	"nasmig/plugin/wire"
)

func main() {}

// lib is the process-wide state of the library (QEMU loads it once).
var lib struct {
	mu       sync.Mutex
	cfg      config.Config
	log      zerolog.Logger
	keySeed  [32]byte
	m        *p2b.Map
	stop     chan struct{}
	fetcher  *fetch.Fetcher
	setup    *wire.Setup // destination: the source's disk table
	debugSrv io.Closer
	// contentSrv serves the content index (content-index=...).
	contentSrv io.Closer
	// diskNames holds, per disk handle, the other names QEMU gave at the
	// last migration setup (drive ids, device ids, node names above).
	diskNames map[int][]string
	// Source: when this migration's switchover hold began (zero: not
	// held), and whether it ran out (hold-max).
	holdStart   time.Time
	holdExpired bool
	// Source: the destination's fetch asked for pages in full
	// (sendFullAsked blocks in this migration); the hold lets QEMU send
	// them while that makes progress: sendFullAskedSeen and sendFullLeft
	// are what the last answer saw.
	sendFullAsked     uint64
	sendFullAskedSeen uint64
	sendFullLeft      int64
	// resendsAsked: pages the destination asked for in full (a reference
	// that failed there) in this migration; the first few are logged.
	resendsAsked uint64
}

// maxResendLines: pages asked for in full logged one by one (Info); the
// end-of-migration line counts them all (a migration whose blocks were
// overwritten behind QEMU's back asks for tens of thousands).
const maxResendLines = 8

func cError(buf *C.char, n C.size_t, msg string) {
	if n == 0 {
		return
	}
	b := unsafe.Slice((*byte)(unsafe.Pointer(buf)), int(n))
	k := copy(b[:n-1], msg)
	b[k] = 0
}

//export nasmig_register
func nasmig_register(host *C.struct_nasmig_host, out *C.struct_nasmig_lib, args **C.char, nargs C.int, errBuf *C.char, errLen C.size_t) C.int {
	if host == nil {
		cError(errBuf, errLen, "no host table")
		return -C.EPROTO
	}
	if host.abi_version != C.NASMIG_ABI_VERSION {
		cError(errBuf, errLen, fmt.Sprintf("ABI version mismatch: QEMU speaks nasmig ABI %d, libnasmig.so speaks %d; rebuild both from one checkout", host.abi_version, cshim.ABIVersion))
		return -C.EPROTO
	}
	if uintptr(host.struct_size) < unsafe.Sizeof(*host) {
		cError(errBuf, errLen, fmt.Sprintf("ABI mismatch: QEMU's host table has %d bytes, libnasmig.so needs %d (same ABI version %d: a build from another checkout?)", host.struct_size, unsafe.Sizeof(*host), cshim.ABIVersion))
		return -C.EPROTO
	}
	var argv []string
	for _, a := range unsafe.Slice(args, int(nargs)) {
		argv = append(argv, C.GoString(a))
	}
	cfg, err := config.Parse(argv)
	if err != nil {
		cError(errBuf, errLen, err.Error())
		return -C.EINVAL
	}
	if err := initLibrary(cfg, unsafe.Pointer(host), unsafe.Pointer(out)); err != nil {
		cError(errBuf, errLen, err.Error())
		return -C.EINVAL
	}
	return 0
}

func initLibrary(cfg config.Config, host, out unsafe.Pointer) error {
	lib.mu.Lock()
	defer lib.mu.Unlock()
	lib.cfg = cfg
	var w io.Writer = os.Stderr
	if cfg.LogFile != "" {
		f, err := os.OpenFile(cfg.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
		if err != nil {
			return fmt.Errorf("logfile: %w", err)
		}
		w = f
	}
	// Milliseconds: a migration's phases (hold, sync points, the gate)
	// last tens to hundreds of them.
	zerolog.TimeFieldFormat = "2006-01-02T15:04:05.000Z07:00"
	lib.log = zerolog.New(w).Level(cfg.LogLevel).With().Timestamp().Str("component", "nasmig").Logger()
	if err := cshim.Init(cfg.RingSlots); err != nil {
		return err
	}
	if err := cshim.SetExclude(cfg.Exclude); err != nil {
		return err
	}
	if spec := os.Getenv(cshim.FaultEnv); spec != "" {
		if err := cshim.ArmFaults(spec); err != nil {
			return err
		}
		lib.log.Warn().Str("faults", spec).Msg("fault injection armed (" + cshim.FaultEnv + "): this process will fail on purpose")
	}
	// The key is secret to the hosts: a guest cannot aim for collisions.
	if _, err := rand.Read(lib.keySeed[:]); err != nil {
		return fmt.Errorf("hash key: %w", err)
	}
	cshim.SetKey(cshim.ExpandKey(lib.keySeed))
	cshim.SetFlags(cfg.Enabled, cfg.Auto, cfg.FillAfter)
	cshim.SetHost(host)
	cshim.FillLib(out)
	C.nasmig_fill_go((*C.struct_nasmig_lib)(out))
	lib.m = p2b.New()
	lib.stop = make(chan struct{})
	if cfg.Enabled && cfg.ContentDir != "" {
		if err := startContentIndex(cfg.ContentDir); err != nil {
			return err
		}
	}
	if cfg.Enabled {
		go lib.m.Run(lib.stop)
	}
	if cfg.DebugSocket != "" {
		srv, err := serveDebug(cfg.DebugSocket, lib.log)
		if err != nil {
			return err
		}
		lib.debugSrv = srv
	}
	lib.log.Info().Bool("enabled", cfg.Enabled).Bool("auto", cfg.Auto).Strs("exclude", cfg.Exclude).Msg("libnasmig loaded")
	return nil
}

//export nasmigSourceSetup
func nasmigSourceSetup(mode C.uint32_t, buf *C.uint8_t, length *C.uint32_t) C.int {
	lib.mu.Lock()
	defer lib.mu.Unlock()
	s := &wire.Setup{Migration: uuid.New()}
	switch mode {
	case cshim.ModeLive:
		s.Flags = cshim.SetupFlagHold
	case cshim.ModeFillAfter:
		s.Flags = cshim.SetupFlagHold | cshim.SetupFlagAfter
	case cshim.ModeSave:
	default:
		cshim.SetErr(fmt.Sprintf("source_setup: unknown mode %d", mode))
		return -C.EINVAL
	}
	// A fresh key for this migration's references: the destination (or a
	// save file) learns it, never the tracking key of this process.
	if _, err := rand.Read(s.KeySeed[:]); err != nil {
		cshim.SetErr(fmt.Sprintf("migration key: %v", err))
		return -C.EIO
	}
	// Only disks that hold references are announced: a destination need
	// not open (and with strict=on must not fail on) a disk nothing points
	// to.  The map is brought up to date first.
	lib.m.Sync()
	for i := 0; i < cshim.DiskCount(); i++ {
		d := cshim.Disk(i)
		if d.Excluded || lib.m.MappedOn(i) == 0 {
			continue
		}
		s.Disks = append(s.Disks, wire.Disk{Index: uint8(i), Size: d.Size, Filename: d.Filename, NodeName: d.NodeName})
	}
	b, err := wire.EncodeSetup(s)
	if err == nil && len(b) > int(*length) {
		err = fmt.Errorf("setup section of %d bytes exceeds %d", len(b), *length)
	}
	if err != nil {
		cshim.SetErr(err.Error())
		return -C.EINVAL
	}
	cshim.SetMigKey(cshim.ExpandKey(s.KeySeed))
	cshim.StatsReset()
	lib.holdStart, lib.holdExpired = time.Time{}, false
	lib.sendFullAsked, lib.sendFullAskedSeen, lib.sendFullLeft = 0, 0, 0
	lib.resendsAsked = 0
	cshim.SendFullReset()
	// Only disks the destination hears of now may be referenced: one whose
	// first read comes later is sent in full for this migration.
	announced := map[int]bool{}
	for _, d := range s.Disks {
		announced[int(d.Index)] = true
	}
	for i := 0; i < cshim.MaxDisks; i++ {
		cshim.SetDiskOff(i, !announced[i])
	}
	C.memcpy(unsafe.Pointer(buf), unsafe.Pointer(&b[0]), C.size_t(len(b)))
	*length = C.uint32_t(len(b))
	lib.m.SetMigrating(true)
	lib.m.Sync()
	warnUnmatchedExcludes()
	lib.log.Info().Str("migration", s.Migration.String()).Bool("hold", s.Flags&cshim.SetupFlagHold != 0).Bool("fill_after_switchover", s.Flags&cshim.SetupFlagAfter != 0).Int("disks", len(s.Disks)).Int64("mapped_pages", lib.m.Mapped()).Msg("outgoing migration with disk references")
	return 0
}

//export nasmigSourceMessage
func nasmigSourceMessage(buf *C.uint8_t, length C.size_t) {
	m, err := wire.DecodeSourceMsg(C.GoBytes(unsafe.Pointer(buf), C.int(length)))
	if err != nil {
		lib.log.Warn().Err(err).Msg("ignored a return-path message")
		return
	}
	switch m.Kind {
	case cshim.RPDiskOff:
		cshim.SetDiskOff(int(m.Disk), true)
		lib.log.Warn().Str("disk", cshim.Disk(int(m.Disk)).Filename).Msg("the destination cannot read this disk: its pages go in full")
	case cshim.RPResend:
		// As if the block had been written: the mapping goes (and with it
		// any later reference), and the page is sent again in full.
		cshim.BlockWriteDone(int(m.Disk), m.DiskOffset, cshim.PageSize)
		if rb, ok := cshim.RAMBlockByName(m.RAMBlock); ok {
			cshim.MarkDirty(rb, m.RAMOffset, cshim.PageSize)
		}
		lib.mu.Lock()
		lib.resendsAsked++
		n := lib.resendsAsked
		lib.mu.Unlock()
		level, msg := zerolog.InfoLevel, "the destination asked for a page in full"
		switch {
		case n > maxResendLines:
			level = zerolog.DebugLevel
		case n == maxResendLines:
			msg += " (further ones are logged at debug level only)"
		}
		lib.log.WithLevel(level).Str("ramblock", m.RAMBlock).Uint64("ram_offset", m.RAMOffset).Uint64("disk_offset", m.DiskOffset).Msg(msg)
	case cshim.RPSendFull:
		n := cshim.SendFull(int(m.Disk), m.DiskOffset>>cshim.PageShift, uint64(m.Blocks))
		lib.mu.Lock()
		lib.sendFullAsked += uint64(m.Blocks)
		lib.mu.Unlock()
		lib.log.Debug().Uint8("disk", m.Disk).Uint64("disk_offset", m.DiskOffset).Uint32("blocks", m.Blocks).Uint64("marked", n).
			Msg("the destination's fetch is behind: pages go in full")
	}
}

//export nasmigDiskNames
func nasmigDiskNames(disk C.int, names *C.char, length C.size_t) C.int {
	lib.mu.Lock()
	defer lib.mu.Unlock()
	list := splitNames(C.GoBytes(unsafe.Pointer(names), C.int(length)))
	if lib.diskNames == nil {
		lib.diskNames = map[int][]string{}
	}
	lib.diskNames[int(disk)] = list
	for _, n := range list {
		for _, ex := range lib.cfg.Exclude {
			if n == ex {
				cshim.ExcludeDisk(int(disk))
				lib.log.Info().Str("exclude", ex).Str("disk", cshim.Disk(int(disk)).Filename).Msg("disk excluded from references")
				return -C.EPERM
			}
		}
	}
	return 0
}

// splitNames splits NUL-terminated strings; empty ones are dropped.
func splitNames(b []byte) []string {
	var out []string
	for _, f := range bytes.Split(b, []byte{0}) {
		if len(f) > 0 {
			out = append(out, string(f))
		}
	}
	return out
}

// warnUnmatchedExcludes logs each exclude= name that matches no disk QEMU
// registered, with the names that do exist (a typo must not pass
// silently).  Call with lib.mu held.
func warnUnmatchedExcludes() {
	var known []string
	matched := map[string]bool{}
	add := func(n string) {
		if n != "" && !matched[n] {
			matched[n] = true
			known = append(known, n)
		}
	}
	for i := 0; i < cshim.DiskCount(); i++ {
		d := cshim.Disk(i)
		if d.Removed {
			continue
		}
		add(d.NodeName)
		add(d.Filename)
		for _, n := range lib.diskNames[i] {
			add(n)
		}
	}
	for _, name := range lib.cfg.Exclude {
		if !matched[name] {
			lib.log.Warn().Str("exclude", name).Strs("disks", known).Msg("exclude= matches no disk (names are drive ids, device ids, node names or filenames of the disks below)")
		}
	}
}

//export nasmigRAMBlockRemove
func nasmigRAMBlockRemove(ramblock C.int) {
	if ramblock < 0 {
		return
	}
	dropped := lib.m.DropRAMBlock(uint32(ramblock))
	lib.log.Debug().Str("ramblock", cshim.RAMBlockName(int(ramblock))).Int64("dropped", dropped).Msg("RAM block removed: its mappings dropped")
}

//export nasmigBeforeBitmapSync
func nasmigBeforeBitmapSync() {
	lib.m.Sync()
}

//export nasmigSwitchoverHold
func nasmigSwitchoverHold() C.int {
	lib.mu.Lock()
	defer lib.mu.Unlock()
	if lib.holdExpired {
		return 0
	}
	if lib.holdStart.IsZero() {
		lib.holdStart = time.Now()
		lib.log.Info().Msg("first pass sent: holding the switchover until the destination's fetch has caught up")
	}
	held := time.Since(lib.holdStart)
	if lib.cfg.HoldMax == 0 || held < lib.cfg.HoldMax {
		// Pages the destination handed back wait to be sent: send while
		// that makes progress (new pages asked for, or fewer left than at
		// the last answer); a marked page QEMU sends without asking (a
		// zero page) never clears its mark, and must not keep the thread
		// from waiting.
		out := cshim.SendFullOutstanding()
		progress := out > 0 && (lib.sendFullAsked != lib.sendFullAskedSeen || out < lib.sendFullLeft)
		lib.sendFullAskedSeen, lib.sendFullLeft = lib.sendFullAsked, out
		if progress {
			return cshim.HoldSend
		}
		return cshim.HoldWait
	}
	// No new reference from now on: the fetch backlog can only shrink.
	lib.holdExpired = true
	for i := 0; i < cshim.MaxDisks; i++ {
		cshim.SetDiskOff(i, true)
	}
	st := cshim.StatsSnapshot()
	lib.log.Warn().Dur("held", held).Dur("hold_max", lib.cfg.HoldMax).Uint64("ref_pages", st.RefPages()).
		Msg("the destination's fetch did not catch up within hold-max: no more references in this migration; the fetch left joins the downtime")
	return cshim.HoldExpired
}

//export nasmigSourceCleanup
func nasmigSourceCleanup(failed C.int) {
	lib.m.SetMigrating(false)
	st := cshim.StatsSnapshot()
	ev := lib.log.Info().Bool("failed", failed != 0).Uint64("ref_pages", st.RefPages()).Uint64("ref_misses", st.RefMisses())
	lib.mu.Lock()
	if !lib.holdStart.IsZero() {
		ev = ev.Bool("switchover_held", true).Bool("hold_max_reached", lib.holdExpired)
	}
	if lib.sendFullAsked > 0 {
		ev = ev.Uint64("sent_full_asked_blocks", lib.sendFullAsked).Uint64("sent_full", st.SentFull())
	}
	if lib.resendsAsked > 0 {
		ev = ev.Uint64("pages_asked_in_full", lib.resendsAsked)
	}
	lib.mu.Unlock()
	cshim.SendFullReset()
	withFaults(ev).Msg("outgoing migration ended")
}

//export nasmigDestSetup
func nasmigDestSetup(buf *C.uint8_t, length C.uint32_t) C.int {
	lib.mu.Lock()
	defer lib.mu.Unlock()
	s, err := wire.DecodeSetup(C.GoBytes(unsafe.Pointer(buf), C.int(length)))
	if err != nil {
		cshim.SetErr(err.Error())
		return -C.EINVAL
	}
	if lib.fetcher != nil {
		lib.fetcher.Stop()
		lib.fetcher = nil
	}
	cshim.DestReset()
	cshim.StatsReset()
	// Verify with this migration's key; this side's tracking key stays its own.
	cshim.SetMigKey(cshim.ExpandKey(s.KeySeed))
	hold := s.Flags&cshim.SetupFlagHold != 0
	cshim.SetDestFillAfter(hold && s.Flags&cshim.SetupFlagAfter != 0)
	var refused []string
	for _, d := range s.Disks {
		h, track, err := cshim.AttachDisk(d.Filename, d.Size)
		if err == nil {
			cshim.SetDestDisk(int(d.Index), h, d.Size, track)
			continue
		}
		why := fmt.Sprintf("shared disk %d (%s) is not usable here: %v", d.Index, d.Filename, err)
		if !hold || lib.cfg.Strict {
			// A save file, or strict=on: nobody can send the pages instead.
			cshim.SetErr(why)
			return -C.ENODEV
		}
		// A live migration: the source sends this disk's pages in full.
		if err := cshim.SendToSource(wire.EncodeDiskOff(d.Index)); err != nil {
			cshim.SetErr(fmt.Sprintf("%s; and the source cannot be told: %v", why, err))
			return -C.ENODEV
		}
		cshim.SetDestDisk(int(d.Index), cshim.DestDiskRefused, d.Size, -1)
		refused = append(refused, d.Filename)
		lib.log.Warn().Str("disk", d.Filename).Err(err).Msg("shared disk not usable here: its pages come in full from the source")
	}
	lib.setup = s
	names := map[uint32]string{}
	for _, d := range s.Disks {
		names[uint32(d.Index)] = d.Filename
	}
	f, err := fetch.Start(lib.log, func(i uint32) string { return names[i] }, fetch.Options{Hold: hold, HandBack: lib.cfg.HandBack,
		FaultFallback: lib.cfg.FaultFallback, FillAfterMax: lib.cfg.FillAfterMax})
	if err != nil {
		cshim.SetErr(err.Error())
		return -C.EIO
	}
	lib.fetcher = f
	cshim.SetDestOn(true)
	lib.log.Info().Str("migration", s.Migration.String()).Bool("hold", hold).Bool("fill_after_switchover", s.Flags&cshim.SetupFlagAfter != 0).Int("disks", len(s.Disks)).Strs("refused", refused).Msg("incoming migration with disk references")
	return 0
}

//export nasmigDestCleanup
func nasmigDestCleanup(failed C.int) {
	lib.mu.Lock()
	defer lib.mu.Unlock()
	cshim.SetDestOn(false)
	// A fill waiting for postcopy's userfaultfd (a migration that failed
	// at the switch) gives up and writes nothing.
	cshim.CloseFills()
	var t fetch.Timings
	if lib.fetcher != nil {
		lib.fetcher.Stop()
		t = lib.fetcher.Timings()
		lib.fetcher = nil
	}
	st := cshim.StatsSnapshot()
	ev := lib.log.Info().Bool("failed", failed != 0).Uint64("fetched_pages", st.FetchedPages()).
		Uint64("verify_failures", st.VerifyFailures()).Uint64("fallbacks", st.Fallbacks()).
		Int("sync_waits", t.FlushWaits).Dur("sync_wait_total", t.FlushWaitTotal).Dur("sync_wait_max", t.FlushWaitMax).
		Int("refs_after_caught_up", t.RefsAfter)
	if t.AsksFailed > 0 {
		ev = ev.Int("asks_not_sent", t.AsksFailed)
	}
	if !t.FinishSeen.IsZero() && !t.FinishDone.IsZero() {
		ev = ev.Dur("verification_gate_wait", t.FinishDone.Sub(t.FinishSeen)).Int("fetch_pending_at_gate", t.GatePending)
	}
	if !t.FirstCaughtUp.IsZero() && !t.FinishSeen.IsZero() {
		ev = ev.Dur("caught_up_to_gate", t.FinishSeen.Sub(t.FirstCaughtUp))
	}
	if st.FilledAfterSwitchover() > 0 || st.FromSourceAfterSwitchover() > 0 {
		ev = ev.Uint64("filled_after_switchover", st.FilledAfterSwitchover()).Uint64("from_source_after_switchover", st.FromSourceAfterSwitchover()).
			Uint64("faults_from_storage", st.FaultsFromStorage()).Uint64("faults_from_source", st.FaultsFromSource()).
			Uint64("fault_latency_median_us", st.FaultLatencyMedianUS()).Uint64("fault_latency_p99_us", st.FaultLatencyP99US()).
			Int("fault_reads", t.FaultReads).Int("faults_asked_from_source", t.FaultsAsked)
	}
	if st.HandedBack() > 0 {
		ev = ev.Uint64("handed_back", st.HandedBack()).Uint64("handed_back_came_in_full", t.HandBackArrived).
			Int("handed_back_fetched_after_all", t.HandBackFetched).Uint64("handed_back_mapped", t.HandBackMapped)
	}
	withFaults(ev).Msg("incoming migration ended")
}

// withFaults adds, when faults are armed (tests), how often each fired so
// far: a test asserts that the fault it armed was really hit.
func withFaults(ev *zerolog.Event) *zerolog.Event {
	if !cshim.FaultsArmed() {
		return ev
	}
	fired := zerolog.Dict()
	for f, name := range cshim.FaultNames() {
		fired = fired.Uint64(name, cshim.FaultFired(f))
	}
	return ev.Dict("faults_fired", fired)
}

//export nasmigShutdown
func nasmigShutdown() {
	lib.mu.Lock()
	defer lib.mu.Unlock()
	if lib.stop != nil {
		close(lib.stop)
		lib.stop = nil
	}
	if lib.debugSrv != nil {
		lib.debugSrv.Close()
	}
	if lib.contentSrv != nil {
		// Closing a unix listener removes its socket file: nasmig-xl
		// finds no stale socket of a device model that is gone.
		lib.contentSrv.Close()
	}
}
