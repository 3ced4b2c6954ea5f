package clock

import (
	"context"
	"slices"
	"testing"
	"time"
)

func TestVirtualRunsTimersInDeadlineOrder(t *testing.T) {
	start := time.Date(2014, 4, 30, 0, 0, 0, 0, time.UTC)
	v := NewVirtual(start)
	var moves []time.Duration
	v.OnMove(func(at time.Time) { moves = append(moves, at.Sub(start)) })
	var got []string
	at := func(name string) func() {
		return func() { got = append(got, name+"@"+v.Now().Sub(start).String()) }
	}
	v.AfterFunc(3*time.Second, at("c"))
	v.AfterFunc(time.Second, at("a"))
	stopped := v.AfterFunc(2*time.Second, at("never"))
	v.AfterFunc(time.Second, func() {
		at("b")()
		v.AfterFunc(500*time.Millisecond, at("set-by-b")) // due before c
	})
	if !stopped.Stop() || stopped.Stop() {
		t.Fatal("Stop: want true once, then false")
	}
	if n, ok := v.Next(); !ok || n.Sub(start) != time.Second {
		t.Fatalf("Next = %v, %v; want 1s", n.Sub(start), ok)
	}
	v.Advance(start.Add(2 * time.Second))
	want := []string{"a@1s", "b@1s", "set-by-b@1.5s"}
	if !slices.Equal(got, want) {
		t.Fatalf("after Advance(2s): %v, want %v", got, want)
	}
	if v.Now().Sub(start) != 2*time.Second {
		t.Fatalf("Now = %v, want 2s", v.Now().Sub(start))
	}
	if !v.Fire(start.Add(time.Hour)) || v.Fire(start.Add(time.Hour)) {
		t.Fatal("Fire: want one timer (c), then none")
	}
	if got[len(got)-1] != "c@3s" {
		t.Fatalf("last = %s, want c@3s", got[len(got)-1])
	}
	if want := []time.Duration{time.Second, 1500 * time.Millisecond, 2 * time.Second, 3 * time.Second}; !slices.Equal(moves, want) {
		t.Fatalf("OnMove saw %v, want %v", moves, want)
	}
	v.Advance(start) // backwards: stays
	if v.Now().Sub(start) != 3*time.Second {
		t.Fatalf("Now moved back to %v", v.Now().Sub(start))
	}
}

func TestWithTimeoutOnVirtual(t *testing.T) {
	v := NewVirtual(time.Unix(0, 0))
	ctx, cancel := WithTimeout(context.Background(), v, time.Minute)
	defer cancel()
	v.Advance(time.Unix(59, 0))
	if ctx.Err() != nil {
		t.Fatal("ended before its virtual deadline")
	}
	v.Advance(time.Unix(60, 0))
	if ctx.Err() == nil {
		t.Fatal("did not end at its virtual deadline")
	}
	ctx2, cancel2 := WithTimeout(context.Background(), v, time.Second)
	cancel2()
	if ctx2.Err() == nil {
		t.Fatal("cancel did not end it")
	}
	if _, ok := v.Next(); ok {
		t.Fatal("cancel left its timer pending")
	}
}

func TestWallWithTimeoutHasDeadline(t *testing.T) {
	ctx, cancel := WithTimeout(context.Background(), Or(nil), time.Hour)
	defer cancel()
	if _, ok := ctx.Deadline(); !ok {
		t.Fatal("a wall timeout must carry its deadline")
	}
}
