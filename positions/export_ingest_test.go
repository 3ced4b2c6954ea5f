package positions

// ResetPending drops a publisher's pending events as if they had been sent
// (benchmarks of Publish alone, without Kafka).
func ResetPending(p *Publisher) {
	p.mu.Lock()
	p.pending = p.pending[:0]
	p.gen++
	p.mu.Unlock()
}

// TakePending returns and clears a publisher's pending events in send
// order, as the sender would take them.
func TakePending(p *Publisher) (evs []Event, parts []Partition) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pe := range p.pending {
		evs = append(evs, pe.ev)
		parts = append(parts, pe.part)
	}
	p.pending = p.pending[:0]
	p.gen++
	return evs, parts
}
