//go:build !linux

package dispatch

import (
	"errors"
	"syscall"
)

// parker needs epoll: elsewhere every connection keeps its reader
// goroutine (see park_linux.go).
type parker struct{}

func newParker() (*parker, error) {
	return nil, errors.New("parking idle connections needs Linux epoll")
}

func (p *parker) add(func()) uint64                       { return 0 }
func (p *parker) forget(uint64)                           {}
func (p *parker) arm(syscall.RawConn, uint64, bool) error { return errors.ErrUnsupported }
func (p *parker) run() error                              { return nil }
func (p *parker) stop() []func()                          { return nil }

// armFailed is never called here: without a parker nothing is armed.
func armFailed(error) bool { return false }
