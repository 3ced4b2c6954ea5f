package positions

import (
	"context"
	"errors"
	"fmt"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hexdispatch/hexdispatch/geo"
)

// Partitioner maps positions and cells to partitions of the positions
// topic: partition = fmix64(shard cell) % Partitions, where the shard cell
// is the parent at ShardRes of the res-7 search cell. The hash is fixed
// forever (gateways, workers and matchers of different builds must agree);
// changing it, ShardRes or Partitions is a re-partitioning, done by draining
// one topic into a new one, never in place.
type Partitioner struct {
	ShardRes   int
	Partitions int32
}

// Validate checks p.
func (p Partitioner) Validate() error {
	switch {
	case p.ShardRes < 0 || p.ShardRes > geo.SearchRes:
		return fmt.Errorf("%w: ShardRes %d is outside [0, %d]", ErrInvalidConfig, p.ShardRes, geo.SearchRes)
	case p.Partitions < 1 || p.Partitions > 1<<16:
		return fmt.Errorf("%w: Partitions %d is outside [1, 65536]", ErrInvalidConfig, p.Partitions)
	}
	return nil
}

// ForPos returns the partition and shard cell of pos.
func (p Partitioner) ForPos(pos geo.LatLng) (Partition, geo.Cell, error) {
	c, err := geo.ShardCell(pos, p.ShardRes)
	if err != nil {
		return 0, 0, err
	}
	return p.forShard(c), c, nil
}

// ForCell returns the partition that owns cell c, a cell at ShardRes or
// finer (a matcher passes its search cells).
func (p Partitioner) ForCell(c geo.Cell) (Partition, error) {
	if err := geo.CheckCell(c); err != nil {
		return 0, err
	}
	if c.Resolution() > p.ShardRes {
		sc, err := geo.Parent(c, p.ShardRes)
		if err != nil {
			return 0, err
		}
		c = sc
	} else if c.Resolution() < p.ShardRes {
		return 0, fmt.Errorf("%w: cell resolution %d is coarser than the shard resolution %d", geo.ErrInvalidResolution, c.Resolution(), p.ShardRes)
	}
	return p.forShard(c), nil
}

func (p Partitioner) forShard(c geo.Cell) Partition {
	return Partition(hashCell(uint64(c)) % uint64(p.Partitions))
}

// hashCell is the MurmurHash3 64-bit finalizer (fmix64). Plain FNV-1a is
// not used: modulo a power of two its low bits depend only on the low bits
// of each input byte, and the bytes of nearby H3 cells differ mostly in
// their high bits, so neighbouring shards landed on one partition.
func hashCell(v uint64) uint64 {
	v ^= v >> 33
	v *= 0xff51afd7ed558ccd
	v ^= v >> 33
	v *= 0xc4ceb9fe1a85ec53
	v ^= v >> 33
	return v
}

// Topic names of the ingest path.
const (
	DefaultTopic    = "driver-positions"
	DefaultDLQTopic = "driver-positions.dlq"
)

// EnsureTopic creates topic with partitions partitions if it does not
// exist, and fails if it exists with another partition count: a gateway
// hashing over P partitions and a topic with another count would scatter
// drivers over shards no worker expects. With partitions < 1 any existing
// count is accepted and a missing topic gets one partition (the
// dead-letter topic, whose partitioning does not matter).
func EnsureTopic(ctx context.Context, cl *kgo.Client, topic string, partitions int32) error {
	adm := kadm.NewClient(cl)
	tds, err := adm.ListTopics(ctx, topic)
	if err != nil {
		return fmt.Errorf("list topic %s: %w", topic, err)
	}
	if td, ok := tds[topic]; ok && td.Err == nil {
		if got := int32(len(td.Partitions)); partitions >= 1 && got != partitions {
			return fmt.Errorf("%w: topic %s has %d partitions, want %d", ErrInvalidConfig, topic, got, partitions)
		}
		return nil
	}
	resp, err := adm.CreateTopic(ctx, max(partitions, 1), -1, nil, topic)
	if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		return fmt.Errorf("create topic %s: %w", topic, err)
	}
	if err == nil && resp.Err != nil && !errors.Is(resp.Err, kerr.TopicAlreadyExists) {
		return fmt.Errorf("create topic %s: %w", topic, resp.Err)
	}
	return nil
}
