package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"github.com/google/uuid"

	"nasmig/cshim"
)

func sampleSetup() *Setup {
	s := &Setup{Migration: uuid.MustParse("6ba7b810-9dad-11d1-80b4-00c04fd430c8")}
	for i := range s.KeySeed {
		s.KeySeed[i] = byte(i * 7)
	}
	s.Disks = []Disk{
		{Index: 0, Size: 10 << 30, Filename: "nbd+unix:///data?socket=/run/nbd.sock", NodeName: "drive0"},
		{Index: 3, Size: 4096, Filename: "/shared/images/b.raw", NodeName: ""},
		{Index: 63, Size: 1<<64 - 4096, Filename: strings.Repeat("f", MaxFilename), NodeName: strings.Repeat("n", MaxFilename)},
	}
	return s
}

func mustEncode(t testing.TB, s *Setup) []byte {
	t.Helper()
	b, err := EncodeSetup(s)
	if err != nil {
		t.Fatalf("EncodeSetup: %v", err)
	}
	return b
}

func TestSetupRoundTrip(t *testing.T) {
	for name, s := range map[string]*Setup{
		"sample":   sampleSetup(),
		"no disks": {Migration: uuid.New()},
		"64 disks": func() *Setup {
			s := &Setup{Migration: uuid.New()}
			for i := 0; i < cshim.MaxDisks; i++ {
				s.Disks = append(s.Disks, Disk{Index: uint8(cshim.MaxDisks - 1 - i), Size: uint64(i) << 20,
					Filename: "/d/" + strings.Repeat("x", i), NodeName: "n"})
			}
			return s
		}(),
	} {
		t.Run(name, func(t *testing.T) {
			b := mustEncode(t, s)
			if string(b[:4]) != Magic || binary.BigEndian.Uint16(b[4:]) != SetupVersion {
				t.Fatalf("header % x", b[:8])
			}
			got, err := DecodeSetup(b)
			if err != nil {
				t.Fatalf("DecodeSetup: %v", err)
			}
			if !reflect.DeepEqual(got, s) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, s)
			}
			// Re-encoding gives the same bytes (the format is canonical).
			if b2 := mustEncode(t, got); !bytes.Equal(b, b2) {
				t.Fatalf("re-encoding differs")
			}
		})
	}
}

func TestSetupLayout(t *testing.T) {
	s := &Setup{Flags: cshim.SetupFlagHold, Migration: uuid.UUID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}}
	s.KeySeed[0], s.KeySeed[31] = 0xaa, 0xbb
	s.Disks = []Disk{{Index: 5, Size: 0x0102030405060708, Filename: "ab", NodeName: "c"}}
	b := mustEncode(t, s)
	want := []byte("NSMG")
	want = append(want, 0, byte(SetupVersion), 0, cshim.SetupFlagHold)
	want = append(want, s.Migration[:]...)
	want = append(want, s.KeySeed[:]...)
	want = append(want, 0, 1)                      // one disk
	want = append(want, 5, 1, 2, 3, 4, 5, 6, 7, 8) // index, be64 size
	want = append(want, 0, 2, 'a', 'b', 0, 1, 'c') // filename, node name
	if !bytes.Equal(b, want) {
		t.Fatalf("layout\n got % x\nwant % x", b, want)
	}
}

func TestSetupFlags(t *testing.T) {
	for _, flags := range []uint16{0, cshim.SetupFlagHold, cshim.SetupFlagHold | cshim.SetupFlagAfter} {
		s := sampleSetup()
		s.Flags = flags
		got, err := DecodeSetup(mustEncode(t, s))
		if err != nil || got.Flags != flags {
			t.Fatalf("flags %#x: decoded %+v, %v", flags, got, err)
		}
	}
	s := sampleSetup()
	s.Flags = 0x8000
	if _, err := EncodeSetup(s); !errors.Is(err, ErrFlags) {
		t.Fatalf("encoding unknown flags: %v, want ErrFlags", err)
	}
	b := mustEncode(t, sampleSetup())
	b[7] |= 0x80 // a flag this build does not know changes meaning: refuse
	if _, err := DecodeSetup(b); !errors.Is(err, ErrFlags) {
		t.Fatalf("decoding unknown flags: %v, want ErrFlags", err)
	}
}

func TestEncodeSetupLimits(t *testing.T) {
	s := &Setup{}
	for i := 0; i <= cshim.MaxDisks; i++ {
		s.Disks = append(s.Disks, Disk{Index: uint8(i), Filename: "f"})
	}
	if _, err := EncodeSetup(s); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("%d disks: %v", len(s.Disks), err)
	}
	for _, d := range []Disk{
		{Filename: strings.Repeat("f", MaxFilename+1)},
		{Filename: "f", NodeName: strings.Repeat("n", MaxFilename+1)},
	} {
		if _, err := EncodeSetup(&Setup{Disks: []Disk{d}}); !errors.Is(err, ErrTooLarge) {
			t.Fatalf("long name: %v", err)
		}
	}
}

func TestDecodeSetupBadMagic(t *testing.T) {
	good := mustEncode(t, sampleSetup())
	for _, m := range []string{"NSMH", "nsmg", "\x00\x00\x00\x00", "GMSN", "QEVM"} {
		b := append([]byte(m), good[4:]...)
		if _, err := DecodeSetup(b); !errors.Is(err, ErrBadMagic) {
			t.Errorf("magic %q: %v", m, err)
		}
	}
}

func TestDecodeSetupBadVersions(t *testing.T) {
	good := mustEncode(t, sampleSetup())
	for _, v := range []uint16{0, SetupVersion + 1, SetupVersion + 2, 0x0100, 0x7fff, 0x8000, 0xffff} {
		if v == SetupVersion {
			continue
		}
		b := bytes.Clone(good)
		binary.BigEndian.PutUint16(b[4:], v)
		_, err := DecodeSetup(b)
		if !errors.Is(err, ErrVersion) {
			t.Errorf("version %d: %v", v, err)
			continue
		}
		if !strings.Contains(err.Error(), "unsupported") {
			t.Errorf("version %d: message %q", v, err)
		}
	}
}

func TestDecodeSetupTruncated(t *testing.T) {
	good := mustEncode(t, sampleSetup())
	for n := 0; n < len(good); n++ {
		s, err := DecodeSetup(good[:n])
		if err == nil {
			t.Fatalf("truncated to %d of %d bytes: decoded %+v", n, len(good), s)
		}
		// Past the magic, a cut is reported as truncation.
		if n >= 4 && !errors.Is(err, ErrTruncated) {
			t.Fatalf("truncated to %d bytes: %v", n, err)
		}
	}
	if _, err := DecodeSetup(append(bytes.Clone(good), 0)); err == nil {
		t.Fatalf("trailing byte accepted")
	}
}

func TestDecodeSetupBadDisks(t *testing.T) {
	enc := func(disks ...Disk) []byte { return mustEncode(t, &Setup{Disks: disks}) }
	for name, b := range map[string][]byte{
		"index 64":       enc(Disk{Index: 64, Filename: "f"}),
		"index 255":      enc(Disk{Index: 255, Filename: "f"}),
		"duplicate":      enc(Disk{Index: 1, Filename: "f"}, Disk{Index: 1, Filename: "g"}),
		"empty filename": enc(Disk{Index: 1}),
	} {
		if _, err := DecodeSetup(b); !errors.Is(err, ErrBadDisk) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// A disk count over the limit is refused before reading entries.
	b := enc()
	binary.BigEndian.PutUint16(b[len(b)-2:], cshim.MaxDisks+1)
	if _, err := DecodeSetup(b); !errors.Is(err, ErrTooLarge) {
		t.Errorf("65 disks: %v", err)
	}
	// Oversized input is refused whatever it holds.
	if _, err := DecodeSetup(make([]byte, cshim.SetupMaxBytes+1)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversized: %v", err)
	}
	// A name longer than the encoder allows is malformed.
	long := make([]byte, 0, 64+MaxFilename+1)
	long = append(long, enc()[:len(enc())-2]...)
	long = binary.BigEndian.AppendUint16(long, 1)
	long = append(long, 0)
	long = binary.BigEndian.AppendUint64(long, 4096)
	long = binary.BigEndian.AppendUint16(long, MaxFilename+1)
	long = append(long, strings.Repeat("f", MaxFilename+1)...)
	long = binary.BigEndian.AppendUint16(long, 0)
	if s, err := DecodeSetup(long); !errors.Is(err, ErrTooLarge) {
		t.Errorf("filename of %d bytes: %v (%+v); the encoder refuses it", MaxFilename+1, err, s)
	}
}

// checkReencodable is the property every successful decode must have: the
// value encodes again and decodes to itself.
func checkReencodable(t *testing.T, s *Setup) {
	t.Helper()
	b, err := EncodeSetup(s)
	if err != nil {
		t.Fatalf("decoded setup does not encode: %v (%+v)", err, s)
	}
	s2, err := DecodeSetup(b)
	if err != nil {
		t.Fatalf("re-encoded setup does not decode: %v", err)
	}
	if !reflect.DeepEqual(s, s2) {
		t.Fatalf("re-encoded setup decodes differently:\n%+v\n%+v", s, s2)
	}
}

func TestDecodeSetupFlippedByte(t *testing.T) {
	// Short names, so that most flips hit structure rather than text.
	good := mustEncode(t, &Setup{Migration: uuid.New(), Disks: []Disk{
		{Index: 0, Size: 1 << 30, Filename: "/a", NodeName: "d0"},
		{Index: 7, Size: 4096, Filename: "nbd://h/x", NodeName: ""},
		{Index: 9, Size: 1 << 40, Filename: "f", NodeName: "node"},
	}})
	seed := uint64(20260101)
	r := rand.New(rand.NewPCG(seed, 1))
	accepted := 0
	for i := 0; i < 20000; i++ {
		b := bytes.Clone(good)
		off := r.IntN(len(b))
		if i < len(b) {
			off = i // every byte at least once
		}
		b[off] ^= byte(1 + r.IntN(255))
		s, err := DecodeSetup(b)
		if err != nil {
			continue
		}
		accepted++
		checkReencodable(t, s)
		if off < 6 {
			t.Fatalf("seed %d: flipped header byte %d accepted", seed, off)
		}
	}
	t.Logf("seed %d: %d of 20000 one-byte corruptions decode (payload: UUID, key, sizes, names, reserved u16)", seed, accepted)
}

func FuzzDecodeSetup(f *testing.F) {
	f.Add(mustEncode(f, sampleSetup()))
	f.Add(mustEncode(f, &Setup{}))
	f.Add(mustEncode(f, &Setup{Disks: []Disk{{Index: 1, Size: 4096, Filename: "f", NodeName: "n"}}}))
	f.Add([]byte("NSMG"))
	f.Add([]byte{})
	f.Add([]byte("NSMG\x00\x01\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := DecodeSetup(b)
		if err != nil {
			if s != nil {
				t.Fatalf("error %v with a result", err)
			}
			return
		}
		checkReencodable(t, s)
		if len(s.Disks) > cshim.MaxDisks {
			t.Fatalf("%d disks", len(s.Disks))
		}
	})
}

func TestRefRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 1000; i++ {
		ref := Ref{Disk: uint8(r.IntN(256)), Offset: r.Uint64() &^ (cshim.PageSize - 1), Hash: [2]uint64{r.Uint64(), r.Uint64()}}
		b := EncodeRef(ref)
		if len(b) != cshim.RefWireSize || b[0] != cshim.RefWireVersion || b[1] != ref.Disk {
			t.Fatalf("EncodeRef(%+v) = % x", ref, b)
		}
		got, err := DecodeRef(b)
		if err != nil || got != ref {
			t.Fatalf("DecodeRef(EncodeRef(%+v)) = %+v, %v", ref, got, err)
		}
		// Bytes after the record are QEMU's, not ours.
		if got, err := DecodeRef(append(b, 0xff)); err != nil || got != ref {
			t.Fatalf("with a trailing byte: %+v, %v", got, err)
		}
	}
	// The layout of nasmig.h, byte by byte.
	b := EncodeRef(Ref{Disk: 2, Offset: 0x1122334455667000, Hash: [2]uint64{0x0102030405060708, 0x1112131415161718}})
	want := []byte{cshim.RefWireVersion, 2, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x70, 0x00,
		1, 2, 3, 4, 5, 6, 7, 8, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18}
	if !bytes.Equal(b, want) {
		t.Fatalf("layout\n got % x\nwant % x", b, want)
	}
}

func TestDecodeRefErrors(t *testing.T) {
	good := EncodeRef(Ref{Disk: 1, Offset: 8192, Hash: [2]uint64{1, 2}})
	for n := 0; n < len(good); n++ {
		if _, err := DecodeRef(good[:n]); !errors.Is(err, ErrTruncated) {
			t.Errorf("%d bytes: %v", n, err)
		}
	}
	for _, v := range []byte{0, cshim.RefWireVersion + 1, 0x7f, 0x80, 0xff} {
		b := bytes.Clone(good)
		b[0] = v
		if _, err := DecodeRef(b); !errors.Is(err, ErrRefVersion) {
			t.Errorf("version %d: %v", v, err)
		}
	}
	for _, off := range []uint64{1, 512, 4095, 4097, 1<<64 - 1} {
		b := EncodeRef(Ref{Offset: off})
		if _, err := DecodeRef(b); err == nil || !strings.Contains(err.Error(), "unaligned") {
			t.Errorf("offset %#x: %v", off, err)
		}
	}
}

func FuzzDecodeRef(f *testing.F) {
	f.Add(EncodeRef(Ref{Disk: 0, Offset: 0}))
	f.Add(EncodeRef(Ref{Disk: 63, Offset: 1 << 40, Hash: [2]uint64{^uint64(0), 1}}))
	f.Add(EncodeRef(Ref{Offset: 512}))
	f.Add([]byte{2})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeRef(b)
		if err != nil {
			return
		}
		if r.Offset%cshim.PageSize != 0 {
			t.Fatalf("unaligned offset %#x accepted", r.Offset)
		}
		if e := EncodeRef(r); !bytes.Equal(e, b[:cshim.RefWireSize]) {
			t.Fatalf("re-encoding differs:\n% x\n% x", e, b[:cshim.RefWireSize])
		}
	})
}

func TestSourceMsgRoundTrip(t *testing.T) {
	b, err := EncodeResend(3, 0x1000, 0x7000, "pc.ram")
	if err != nil {
		t.Fatal(err)
	}
	m, err := DecodeSourceMsg(b)
	if err != nil || m != (SourceMsg{Kind: cshim.RPResend, Disk: 3, DiskOffset: 0x1000, RAMOffset: 0x7000, RAMBlock: "pc.ram"}) {
		t.Fatalf("RESEND round trip: %+v, %v", m, err)
	}
	if m, err := DecodeSourceMsg(EncodeDiskOff(5)); err != nil || m.Kind != cshim.RPDiskOff || m.Disk != 5 {
		t.Fatalf("DISK_OFF round trip: %+v, %v", m, err)
	}
	full := EncodeSendFull(2, 0x5000, 300)
	if m, err := DecodeSourceMsg(full); err != nil || m != (SourceMsg{Kind: cshim.RPSendFull, Disk: 2, DiskOffset: 0x5000, Blocks: 300}) {
		t.Fatalf("SEND_FULL round trip: %+v, %v", m, err)
	}
	if n, err := DecodeCaughtUp(EncodeCaughtUp(1<<40 + 7)); err != nil || n != 1<<40+7 {
		t.Fatalf("CAUGHT_UP round trip: %d, %v", n, err)
	}
	for _, bad := range [][]byte{nil, {cshim.RPCaughtUp}, EncodeCaughtUp(1)[:8], append(EncodeCaughtUp(1), 0), EncodeSendFull(2, 0x5000, 300)[:9]} {
		if _, err := DecodeCaughtUp(bad); !errors.Is(err, ErrSourceMsg) {
			t.Errorf("CAUGHT_UP % x: %v, want ErrSourceMsg", bad, err)
		}
	}
	for name, bad := range map[string][]byte{
		"empty":           nil,
		"kind only":       {cshim.RPResend},
		"unknown kind":    {99, 0},
		"disk too large":  {cshim.RPDiskOff, cshim.MaxDisks},
		"short resend":    b[:18],
		"unaligned":       append([]byte{cshim.RPResend, 0, 0, 0, 0, 0, 0, 0, 0, 1}, b[10:]...),
		"long disk off":   {cshim.RPDiskOff, 1, 2},
		"short send full": full[:13],
		"unaligned full":  EncodeSendFull(0, 0x5001, 1),
	} {
		if _, err := DecodeSourceMsg(bad); !errors.Is(err, ErrSourceMsg) {
			t.Errorf("%s: %v, want ErrSourceMsg", name, err)
		}
	}
	if _, err := EncodeResend(0, 0, 0, strings.Repeat("r", cshim.RPMaxBytes)); err == nil {
		t.Errorf("an over-long RAM block name was encoded")
	}
}

func FuzzDecodeSourceMsg(f *testing.F) {
	b, _ := EncodeResend(1, 4096, 8192, "pc.ram")
	f.Add(b)
	f.Add(EncodeDiskOff(2))
	f.Add(EncodeSendFull(1, 8192, 64))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := DecodeSourceMsg(data)
		if err != nil {
			return
		}
		var again []byte
		switch m.Kind {
		case cshim.RPDiskOff:
			again = EncodeDiskOff(m.Disk)
		case cshim.RPSendFull:
			again = EncodeSendFull(m.Disk, m.DiskOffset, m.Blocks)
		default:
			if again, err = EncodeResend(m.Disk, m.DiskOffset, m.RAMOffset, m.RAMBlock); err != nil {
				t.Fatalf("decoded %+v does not re-encode: %v", m, err)
			}
		}
		if !bytes.Equal(again, data) {
			t.Fatalf("re-encoding differs:\n% x\n% x", again, data)
		}
	})
}
