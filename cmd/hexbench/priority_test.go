package main

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// niceOf reads thread tid's nice value from /proc (field 19 of stat).
func niceOf(t *testing.T, tid int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/task/" + strconv.Itoa(tid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	n, err := strconv.Atoi(f[16]) // fields from state (3) on: nice is 19
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestLowerPriority(t *testing.T) {
	pid := os.Getpid()
	before := niceOf(t, pid)
	if before > 14 {
		t.Skipf("already at nice %d", before)
	}
	restore, err := lowerPriority(5)
	if err != nil {
		t.Fatal(err)
	}
	if got := niceOf(t, pid); got != before+5 {
		t.Errorf("main thread at nice %d after lowerPriority(5), want %d", got, before+5)
	}
	switch err := restore(); {
	case errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM):
		t.Logf("restore needs CAP_SYS_NICE here: %v", err)
	case err != nil:
		t.Fatal(err)
	default:
		if got := niceOf(t, pid); got != before {
			t.Errorf("main thread at nice %d after restore, want %d", got, before)
		}
	}
}
