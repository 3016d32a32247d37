package broker

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/brokerd/brokerd/subproto"
	"golang.org/x/time/rate"
)

// storageHealth follows the store's writes: a failed one (a full disk, an
// I/O error) is counted, logged at ERROR at most once per
// storageLogEvery with the number left unlogged, and makes StorageFailing
// report it until a write succeeds, or storageStale passes without another
// failure (a server nobody writes to any more is given the benefit of the
// doubt: /readyz turns 200, and the next write tells).
type storageHealth struct {
	failedAt   atomic.Int64 // UnixNano of the last failure since the last success; 0 when healthy
	lastErr    atomic.Value // string
	unlogged   atomic.Int64
	logLimiter *rate.Limiter
}

const (
	storageLogEvery = 10 * time.Second
	storageStale    = 30 * time.Second
)

// isStorageFailure reports whether err, from a store write, is the
// storage failing rather than a refusal of the request.
func isStorageFailure(err error) bool {
	return err != nil && !errors.Is(err, ErrTooLarge) && !errors.Is(err, ErrTooManyTopics) && !errors.Is(err, ErrUnavailable) &&
		!errors.Is(err, ErrClosed) && !errors.Is(err, ErrTopicNotFound)
}

// wrote records the outcome of a store write.
func (srv *Server) wrote(err error) {
	h := &srv.storage
	if err == nil {
		if h.failedAt.Load() != 0 {
			h.failedAt.Store(0)
			srv.log.Warn("the store takes writes again")
		}
		return
	}
	if !isStorageFailure(err) {
		return
	}
	srv.stats.StorageErrors.Add(1)
	h.lastErr.Store(err.Error())
	h.failedAt.Store(time.Now().UnixNano())
	if !h.logLimiter.Allow() {
		h.unlogged.Add(1)
		return
	}
	srv.log.Error("the store refuses writes; clients get unavailable and retry", "err", err, "unlogged_since_last", h.unlogged.Swap(0))
}

// StorageFailing returns the last write error of the store while it
// refuses writes (see storageHealth), nil otherwise.
func (srv *Server) StorageFailing() error {
	at := srv.storage.failedAt.Load()
	if at == 0 || time.Since(time.Unix(0, at)) > storageStale {
		return nil
	}
	msg, _ := srv.storage.lastErr.Load().(string)
	return fmt.Errorf("the store refuses writes: %s", msg)
}

// retryCtx is the context of an err: unavailable carries retry_after_ms.
func (srv *Server) retryCtx(e *subproto.Error, ctx *subproto.ErrContext) *subproto.ErrContext {
	if e.Code != subproto.CodeUnavailable || ctx != nil {
		return ctx
	}
	return &subproto.ErrContext{RetryAfterMs: srv.RetryAfter()}
}

func (h *storageHealth) init() { h.logLimiter = rate.NewLimiter(rate.Every(storageLogEvery), 1) }
