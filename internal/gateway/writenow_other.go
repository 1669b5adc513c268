//go:build !unix

package gateway

import "io"

// sinkSocket: the inbound server's frame reader writes to sockets itself
// on unix only.
type sinkSocket struct{}

func newSinkSocket(io.Writer) *sinkSocket { return nil }

func (*sinkSocket) writeNow([]byte) int { return 0 }

// sourceSocket: reads wait for the socket before taking a buffer on unix
// only.
type sourceSocket struct{}

func newSourceSocket(io.Reader) *sourceSocket { return nil }

func (*sourceSocket) read() (*chunk, int, error) { return nil, 0, io.EOF }
