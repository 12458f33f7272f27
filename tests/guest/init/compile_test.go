package main

import (
	"slices"
	"testing"
)

func TestParseRecipe(t *testing.T) {
	r, err := parseRecipe("# lua\nflags -O2 -DLUA_USE_LINUX\nsrc /src/lua/src\ncc lapi.c\ncc lua.c\nlink lua lapi.o lua.o -lm\n")
	if err != nil {
		t.Fatal(err)
	}
	if r.src != "/src/lua/src" || !slices.Equal(r.flags, []string{"-O2", "-DLUA_USE_LINUX"}) ||
		!slices.Equal(r.cc, []string{"lapi.c", "lua.c"}) || !slices.Equal(r.link, []string{"lua", "lapi.o", "lua.o", "-lm"}) {
		t.Fatalf("parseRecipe: %+v", r)
	}
	for _, bad := range []string{"", "src /a\n", "cc a.c\n", "src /a\ncc a.h\n", "src /a\ncc a.c\nlink x\n", "src /a\ncc a.c\nmake all\n"} {
		if _, err := parseRecipe(bad); err == nil {
			t.Errorf("parseRecipe(%q): no error", bad)
		}
	}
}
