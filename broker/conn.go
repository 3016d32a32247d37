package broker

// Conn is the broker's view of one client connection. The transport (the
// WebSocket layer) implements it; the broker never sees framing.
type Conn interface {
	// WriteFrame writes parts, concatenated, as one text message. The
	// broker calls it from one goroutine at a time. It returns an error
	// wrapping os.ErrDeadlineExceeded when the peer did not drain the write
	// within the transport's write timeout, or another error when the
	// connection failed.
	WriteFrame(parts [][]byte) error
	// WritePing sends a transport-level ping. Called from the same
	// goroutine as WriteFrame.
	WritePing() error
	// Close closes the connection with a close code and reason. It is safe
	// to call concurrently and more than once, and must not block for long
	// even when the peer has stopped reading.
	Close(code uint16, reason []byte)
}

// ConnInfo describes a connection to the broker.
type ConnInfo struct {
	Remote string // the peer's address, for logs
	Token  string // bearer token from the handshake (header or query), "" if none
	// OnAuthenticated, when set, is called once when a connection that
	// was not authenticated at connect authenticates with auth (the edge
	// moves it from its slots for unauthenticated connections to the
	// others). false refuses it: the connection is closed with 1013.
	OnAuthenticated func() bool
}
