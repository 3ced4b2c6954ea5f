package main

import (
	"math/rand/v2"
	"time"
)

// faultKind names a fault the soak injects.
type faultKind string

const (
	// workerKill: kill -9 one worker process; it is restarted once the
	// survivors own every partition again.
	workerKill faultKind = "worker_kill"
	// redisRestart: kill -9 redis-server, keep it down for a while, start
	// it again on the same port and AOF directory.
	redisRestart faultKind = "redis_restart"
	// brokerPause: SIGSTOP the devbroker for a while, then SIGCONT.
	brokerPause faultKind = "broker_pause"
)

// plannedFault is one entry of the schedule.
type plannedFault struct {
	Kind   faultKind
	At     time.Duration // from the start of the fault phase
	Down   time.Duration // redis_restart and broker_pause: how long the outage lasts
	Worker int           // worker_kill: the slot to kill
}

// scheduleConfig shapes the schedule.
type scheduleConfig struct {
	Phase      time.Duration    // length of the fault phase
	Every      time.Duration    // one fault per slot of this length
	Workers    int              // worker slots to pick victims from
	RedisDown  [2]time.Duration // outage length, uniform in [lo, hi]
	BrokerDown [2]time.Duration
	Seed       uint64
}

// plan returns the fault schedule: floor(Phase/Every) faults, one per
// slot, at a seeded random point of the slot's first quarter, so there is
// room to recover before the next. Kinds come in blocks of four, shuffled
// per block (two worker kills, one Redis restart, one broker pause): over
// any run every kind occurs in fixed proportion. Victims rotate through
// the worker slots. The same config gives the same schedule.
func plan(c scheduleConfig) []plannedFault {
	if c.Every <= 0 || c.Phase < c.Every || c.Workers < 1 {
		return nil
	}
	rng := rand.New(rand.NewPCG(c.Seed, 0xc4a05))
	n := int(c.Phase / c.Every)
	out := make([]plannedFault, 0, n)
	var block []faultKind
	kills := 0
	between := func(r [2]time.Duration) time.Duration {
		if r[1] <= r[0] {
			return r[0]
		}
		return r[0] + time.Duration(rng.Int64N(int64(r[1]-r[0])+1))
	}
	for i := range n {
		if len(block) == 0 {
			block = []faultKind{workerKill, workerKill, redisRestart, brokerPause}
			rng.Shuffle(len(block), func(a, b int) { block[a], block[b] = block[b], block[a] })
		}
		f := plannedFault{Kind: block[0], At: time.Duration(i)*c.Every + time.Duration(rng.Int64N(int64(c.Every/4)+1))}
		block = block[1:]
		switch f.Kind {
		case workerKill:
			f.Worker = kills % c.Workers
			kills++
		case redisRestart:
			f.Down = between(c.RedisDown)
		case brokerPause:
			f.Down = between(c.BrokerDown)
		}
		out = append(out, f)
	}
	return out
}
