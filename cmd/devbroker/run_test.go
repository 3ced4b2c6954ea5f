package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hexdispatch/hexdispatch/positions"
)

// syncBuffer is a bytes.Buffer safe for one writer and one reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func TestRunServesKafka(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	var stderr syncBuffer
	done := make(chan error, 1)
	go func() {
		err := run(ctx, []string{"-ports", "0", "-partitions", "3"}, pw, &stderr)
		pw.Close()
		done <- err
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the address line: %v", err)
	}
	go io.Copy(io.Discard, pr)
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "devbroker listening on ")
	if !ok || !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Fatalf("first line %q: want the loopback address", line)
	}

	cl, err := kgo.NewClient(kgo.SeedBrokers(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	qctx, qcancel := context.WithTimeout(ctx, 10*time.Second)
	defer qcancel()
	tds, err := kadm.NewClient(cl).ListTopics(qctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(tds[positions.DefaultTopic].Partitions); got != 3 {
		t.Errorf("%s has %d partitions, want 3", positions.DefaultTopic, got)
	}
	if _, ok := tds[positions.DefaultDLQTopic]; !ok {
		t.Errorf("no %s topic", positions.DefaultDLQTopic)
	}
	if err := cl.ProduceSync(qctx, &kgo.Record{Topic: positions.DefaultTopic, Value: []byte("x")}).FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}
}

func TestRunPersists(t *testing.T) {
	dir := t.TempDir()
	start := func() (string, func()) {
		ctx, cancel := context.WithCancel(context.Background())
		pr, pw := io.Pipe()
		done := make(chan error, 1)
		go func() {
			err := run(ctx, []string{"-ports", "0", "-partitions", "2", "-data-dir", dir}, pw, io.Discard)
			pw.Close()
			done <- err
		}()
		line, err := bufio.NewReader(pr).ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		go io.Copy(io.Discard, pr)
		return strings.TrimPrefix(strings.TrimSpace(line), "devbroker listening on "), func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("run: %v", err)
			}
		}
	}
	addr, stop := start()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: positions.DefaultTopic, Partition: 0, Value: []byte("kept")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	cl.Close()
	stop()

	addr, stop = start()
	defer stop()
	cl, err = kgo.NewClient(kgo.SeedBrokers(addr), kgo.ConsumeTopics(positions.DefaultTopic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatal("the record did not survive a restart")
		}
		if it := fs.RecordIter(); !it.Done() {
			if r := it.Next(); string(r.Value) != "kept" {
				t.Fatalf("got %q", r.Value)
			}
			return
		}
	}
}

func TestParseFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		ok   bool
	}{
		{nil, true},
		{[]string{"-ports", "9092,9093"}, true},
		{[]string{"-ports", "x"}, false},
		{[]string{"-partitions", "0"}, false},
		{[]string{"-min-session-timeout", "0s"}, false},
		{[]string{"extra"}, false},
	} {
		_, err := parseFlags(tc.args, io.Discard)
		if (err == nil) != tc.ok {
			t.Errorf("parseFlags(%q) = %v, want ok=%v", tc.args, err, tc.ok)
		}
	}
}
