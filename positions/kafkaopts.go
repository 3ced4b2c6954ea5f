package positions

import (
	"math/rand/v2"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// Retry pacing of every Kafka client of the engine (RetryOpts).
const (
	RetryBackoffMin = 100 * time.Millisecond
	RetryBackoffMax = time.Second
	// MetadataMinAge is how soon after a failure a client may refresh
	// its view of the brokers. kgo's default, 5 s, made every produce
	// retry after a dropped connection wait 5 s: three drops cost 15 s of
	// GPS, six drops 30 s (TestIngestSurvivesKafkaFaults).
	MetadataMinAge = 500 * time.Millisecond
)

// RetryBackoff is a jittered exponential backoff: 100 ms doubling to 1 s,
// each wait drawn uniformly from [d/2, d] so that clients that failed
// together do not retry together.
func RetryBackoff(tries int) time.Duration {
	d := RetryBackoffMin << min(max(tries-1, 0), 10)
	d = min(d, RetryBackoffMax)
	return d/2 + rand.N(d/2+1)
}

// RetryOpts are the kgo options every engine client uses: the backoff
// above and a short metadata age, so a broker restart or a dropped
// connection costs about a second rather than tens of seconds. GPS older
// than the TTL is worthless, so recovering fast matters more than sparing
// the broker a few metadata requests.
func RetryOpts() []kgo.Opt {
	return []kgo.Opt{kgo.RetryBackoffFn(RetryBackoff), kgo.MetadataMinAge(MetadataMinAge)}
}
