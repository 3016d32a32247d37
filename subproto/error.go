package subproto

import "strconv"

// Error is a protocol error. With Close == 0 it concerns one command and is
// sent to the client as an err event (see [AppendErr]); the connection stays
// open. With Close != 0 the connection must be closed with that close code:
// the frame was not valid JSON or UTF-8 (1007) or held too many commands
// (1009); Message is then suitable for the close reason.
type Error struct {
	Code    Code
	Message string    // for humans; names the offending field
	ID      uint64    // the command's id when it could be read, else 0
	Close   CloseCode // 0, or the close code the connection must end with
}

// Error returns "subproto: <code>: <message>", with the id when there is one.
func (e *Error) Error() string {
	s := "subproto: " + string(e.Code)
	if e.ID != 0 {
		s += " (id " + strconv.FormatUint(e.ID, 10) + ")"
	}
	if e.Close != 0 {
		s += " (close " + strconv.Itoa(int(e.Close)) + ")"
	}
	return s + ": " + e.Message
}

// ErrContext is the context an err event may carry beside code and
// message: offset_out_of_range carries earliest and latest, epoch_mismatch
// epoch, earliest and latest, unavailable retry_after_ms.
type ErrContext struct {
	Epoch        string // sent as "epoch" when not empty
	Earliest     uint64 // sent as "earliest" when HasRange
	Latest       uint64 // sent as "latest" when HasRange (the last stored offset, 0 when empty)
	HasRange     bool
	RetryAfterMs int // sent as "retry_after_ms" when > 0
}
