package main

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
)

// lowerPriority makes every thread of this process nicer by n (Linux
// keeps the nice value per thread; threads the runtime starts later are
// cloned from these and inherit it), so that on a machine it shares with
// the engine the load generator gives way. Processes started before keep
// their priority; ones started after inherit the lower one. restore puts
// the threads back where they were, which needs CAP_SYS_NICE (root) or a
// matching RLIMIT_NICE; when it fails, later engines of the same run
// inherit the lower priority, and restore says so.
func lowerPriority(n int) (restore func() error, err error) {
	tids, err := threads()
	if err != nil {
		return nil, err
	}
	was := map[int]int{}
	for _, tid := range tids {
		// getpriority returns 20 - nice for the raw system call (see
		// getpriority(2)); syscall.Getpriority is that raw call.
		p, err := syscall.Getpriority(syscall.PRIO_PROCESS, tid)
		if err != nil {
			continue // the thread ended meanwhile
		}
		nice := 20 - p
		if err := syscall.Setpriority(syscall.PRIO_PROCESS, tid, min(nice+n, 19)); err != nil {
			continue
		}
		was[tid] = nice
	}
	if len(was) == 0 {
		return nil, fmt.Errorf("-nice: could not lower the priority of any thread")
	}
	return func() error {
		tids, err := threads()
		if err != nil {
			return err
		}
		var failed error
		for _, tid := range tids {
			nice, ok := was[tid]
			if !ok { // started since: it was cloned at the lower priority
				nice = was[os.Getpid()]
			}
			if err := syscall.Setpriority(syscall.PRIO_PROCESS, tid, nice); err != nil && failed == nil {
				failed = fmt.Errorf("-nice: restoring the priority of thread %d: %w (later engines of this run inherit the lower priority)", tid, err)
			}
		}
		return failed
	}, nil
}

// threads lists the IDs of this process's threads.
func threads() ([]int, error) {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return nil, fmt.Errorf("-nice: listing this process's threads (Linux only): %w", err)
	}
	var tids []int
	for _, t := range tasks {
		if tid, err := strconv.Atoi(t.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	return tids, nil
}
