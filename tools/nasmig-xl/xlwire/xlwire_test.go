package xlwire

import (
	"bytes"
	"errors"
	"testing"
)

func twoPages(head []byte) (int, error)   { return 2, nil }
func threePages(head []byte) (int, error) { return 3, nil }

func TestFramesRoundTrip(t *testing.T) {
	var b []byte
	b = AppendHello(b, Hello{KeySeed: [32]byte{9}, Disks: []Disk{{ID: 3, Size: 1 << 40, Path: "/srv/a.img"}}})
	var pw PagesWriter
	pw.Begin(7, []byte("head"))
	pw.Page(bytes.Repeat([]byte{5}, PageSize))
	pw.Ref(Ref{Disk: 3, Block: 1 << 30, Hash: [2]uint64{11, 12}})
	pw.Zero()
	b = append(b, pw.Bytes()...)
	b = AppendNeed(b, 7, []uint32{1})
	b = AppendFill(b, 7, []uint32{1}, [][]byte{bytes.Repeat([]byte{6}, PageSize)})
	b = AppendSeq(b, TFill, 7)
	b = AppendHelloAck(b, []uint8{3})
	r := NewReader(bytes.NewReader(b))

	f, _ := r.Next()
	h, err := ParseHello(f.Payload)
	if err != nil || h.KeySeed[0] != 9 || len(h.Disks) != 1 || h.Disks[0] != (Disk{ID: 3, Size: 1 << 40, Path: "/srv/a.img"}) {
		t.Fatalf("hello %+v %v", h, err)
	}
	f, _ = r.Next()
	seq, head, ents, err := ParsePages(f.Payload, threePages, nil)
	if err != nil || seq != 7 || string(head) != "head" || len(ents) != 3 || ents[0].IsRef || ents[0].Page[0] != 5 ||
		ents[2].IsRef || len(ents[2].Page) != PageSize || !IsZero(ents[2].Page) ||
		!ents[1].IsRef || ents[1].Ref != (Ref{Disk: 3, Block: 1 << 30, Hash: [2]uint64{11, 12}}) {
		t.Fatalf("pages %d %q %+v %v", seq, head, ents, err)
	}
	f, _ = r.Next()
	if seq, idx, err := ParseNeed(f.Payload); err != nil || seq != 7 || len(idx) != 1 || idx[0] != 1 {
		t.Fatalf("need %d %v %v", seq, idx, err)
	}
	f, _ = r.Next()
	if seq, idx, pages, err := ParseFill(f.Payload); err != nil || seq != 7 || idx[0] != 1 || pages[0][0] != 6 {
		t.Fatalf("fill %d %v %v", seq, idx, err)
	}
	f, _ = r.Next()
	if seq, err := ParseSeq(f.Payload); err != nil || seq != 7 || f.Type != TFill {
		t.Fatalf("ack %d %v", seq, err)
	}
	f, _ = r.Next()
	if ids, err := ParseHelloAck(f.Payload); err != nil || len(ids) != 1 || ids[0] != 3 {
		t.Fatalf("hello ack %v %v", ids, err)
	}
	if _, err := r.Next(); err == nil {
		t.Fatal("frame after the last")
	}
	// A bad header is refused.
	if _, err := NewReader(bytes.NewReader([]byte{9, 0, 0, 0, 0, 0, 0, 0})).Next(); !errors.Is(err, ErrProto) {
		t.Fatalf("type 9: %v", err)
	}
}

// FuzzParse: no payload makes a decoder panic or read past its end.
func FuzzParse(f *testing.F) {
	var pw PagesWriter
	pw.Begin(1, []byte("h"))
	pw.Ref(Ref{Disk: 1})
	pw.Page(make([]byte, PageSize))
	f.Add(pw.Bytes()[HeaderLen:])
	f.Add(AppendHello(nil, Hello{Disks: []Disk{{Path: "x"}}})[HeaderLen:])
	f.Add(AppendFill(nil, 1, []uint32{0}, [][]byte{make([]byte, PageSize)})[HeaderLen:])
	f.Fuzz(func(t *testing.T, p []byte) {
		ParseHello(p)
		ParseHelloAck(p)
		ParseNeed(p)
		ParseFill(p)
		ParseSeq(p)
		ParsePages(p, twoPages, nil)
	})
}
