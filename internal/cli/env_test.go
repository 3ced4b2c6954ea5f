package cli

import (
	"flag"
	"strings"
	"testing"
	"time"
)

func TestApplyEnv(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	window := fs.Duration("batch-window", time.Second, "")
	addr := fs.String("addr", "a", "")
	t.Setenv("HEXT_BATCH_WINDOW", "3s")
	t.Setenv("HEXT_ADDR", "from-env")
	if err := ApplyEnv(fs, "HEXT_"); err != nil {
		t.Fatal(err)
	}
	if err := fs.Parse([]string{"-addr", "from-flag"}); err != nil {
		t.Fatal(err)
	}
	if *window != 3*time.Second || *addr != "from-flag" {
		t.Fatalf("window %v addr %q: want the env's 3s and the flag's value", *window, *addr)
	}
	t.Setenv("HEXT_BATCH_WINDOW", "soon")
	if err := ApplyEnv(fs, "HEXT_"); err == nil || !strings.Contains(err.Error(), "HEXT_BATCH_WINDOW") {
		t.Fatalf("bad value: %v, want an error naming the variable", err)
	}
}
