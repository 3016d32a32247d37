package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/brokerd/brokerd/broker"
	"github.com/brokerd/brokerd/subproto"
)

// The HTTP API: publish, read history, list topics. Errors are JSON
// objects {"code","message",...} with the protocol's codes.

const (
	defaultPageLimit = 100
	maxPageLimit     = 1000
	maxTopicsLimit   = 1000
)

type apiError struct {
	status int
	code   subproto.Code
	msg    string
	extra  map[string]any
}

func httpStatus(code subproto.Code) int {
	switch code {
	case subproto.CodeBadRequest, subproto.CodeInvalidTopic:
		return http.StatusBadRequest
	case subproto.CodeUnauthorized:
		return http.StatusUnauthorized
	case subproto.CodeForbidden:
		return http.StatusForbidden
	case subproto.CodeNotFound:
		return http.StatusNotFound
	case subproto.CodeMessageTooLarge:
		return http.StatusRequestEntityTooLarge
	case subproto.CodeOffsetOutOfRange, subproto.CodeEpochMismatch:
		return http.StatusConflict
	case subproto.CodeRateLimited:
		return http.StatusTooManyRequests
	case subproto.CodeUnavailable:
		return http.StatusServiceUnavailable
	case subproto.CodeTooManyTopics:
		return http.StatusInsufficientStorage
	}
	return http.StatusInternalServerError
}

func (s *Server) writeErr(w http.ResponseWriter, code subproto.Code, msg string, extra map[string]any) {
	body := map[string]any{"code": code, "message": msg}
	for k, v := range extra {
		body[k] = v
	}
	s.broker.Stats().CountError(code)
	if code == subproto.CodeUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="brokerd"`)
	}
	if code == subproto.CodeUnavailable {
		ms := s.broker.RetryAfter()
		body["retry_after_ms"] = ms
		w.Header().Set("Retry-After", strconv.Itoa((ms+999)/1000))
	}
	writeJSON(w, httpStatus(code), body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	// Messages quote patterns such as chat.>: the body is JSON, not HTML,
	// so > stays > instead of \u003e.
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

// bearer returns the request's token: the Authorization header, else the
// token query parameter.
func bearer(r *http.Request) string {
	if h := r.Header.Get("Authorization"); h != "" {
		if scheme, tok, ok := strings.Cut(h, " "); ok && strings.EqualFold(scheme, "Bearer") {
			return strings.TrimSpace(tok)
		}
		return ""
	}
	return r.URL.Query().Get("token")
}

// grant authenticates an API request. With auth off it returns nil and
// true. On failure it has answered (401) and returns false.
func (s *Server) grant(w http.ResponseWriter, r *http.Request) (*broker.Grant, bool) {
	auth := s.broker.Config().Auth
	if auth == nil {
		return nil, true
	}
	tok := bearer(r)
	if tok == "" {
		s.writeErr(w, subproto.CodeUnauthorized, "a bearer token is required (Authorization: Bearer …)", nil)
		return nil, false
	}
	g, err := auth.Verify(tok)
	if err != nil {
		s.writeErr(w, subproto.CodeUnauthorized, broker.TokenRefusal(err), nil)
		return nil, false
	}
	return g, true
}

func (s *Server) topicParam(w http.ResponseWriter, r *http.Request) (string, bool) {
	topic := r.PathValue("topic")
	if !subproto.ValidTopic(topic) {
		s.writeErr(w, subproto.CodeInvalidTopic, fmt.Sprintf("%q is not a topic name: 1-255 bytes of [A-Za-z0-9_-] segments joined by '.'", topic), nil)
		return "", false
	}
	return topic, true
}

// topicRequest authenticates a request on /v1/topics/{topic}, checks the
// topic name and that the grant allows the action (what names it in the
// refusal). On failure it has answered.
func (s *Server) topicRequest(w http.ResponseWriter, r *http.Request, allows func(*broker.Grant, string) bool, what string) (string, *broker.Grant, bool) {
	g, ok := s.grant(w, r)
	if !ok {
		return "", nil, false
	}
	topic, ok := s.topicParam(w, r)
	if !ok {
		return "", nil, false
	}
	if g != nil && !allows(g, topic) {
		s.writeErr(w, subproto.CodeForbidden, "the token does not allow you to "+what+" "+topic, nil)
		return "", nil, false
	}
	return topic, g, true
}

// limitParam reads the limit query parameter: default defaultPageLimit,
// values above max taken as max. On a bad value it has answered.
func (s *Server) limitParam(w http.ResponseWriter, q url.Values, max int) (int, bool) {
	v := q.Get("limit")
	if v == "" {
		return defaultPageLimit, true
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		s.writeErr(w, subproto.CodeBadRequest, "limit must be a positive integer", nil)
		return 0, false
	}
	return min(n, max), true
}

// servePublish: POST /v1/topics/{topic} with the data JSON as body.
func (s *Server) servePublish(w http.ResponseWriter, r *http.Request) {
	// A browser page of another origin must not publish through a user's
	// browser (a no-CORS form or fetch): the WebSocket Origin rules apply.
	if !s.checkOrigin(r) {
		s.writeErr(w, subproto.CodeForbidden, "origin not allowed: "+r.Header.Get("Origin"), nil)
		return
	}
	topic, g, ok := s.topicRequest(w, r, (*broker.Grant).CanPublish, "publish to")
	if !ok {
		return
	}
	key := r.Header.Get("Idempotency-Key")
	if key != "" && !subproto.ValidKey(key) {
		s.writeErr(w, subproto.CodeBadRequest, fmt.Sprintf("Idempotency-Key must be 1-%d printable ASCII characters without spaces", subproto.MaxKeyLen), nil)
		return
	}
	limit := s.broker.Config().MaxMessageBytes
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(limit)))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			s.writeErr(w, subproto.CodeMessageTooLarge, fmt.Sprintf("the body is larger than %d bytes", limit), nil)
			return
		}
		s.writeErr(w, subproto.CodeBadRequest, "reading the body: "+err.Error(), nil)
		return
	}
	data, perr := validData(body)
	if perr != "" {
		s.writeErr(w, subproto.CodeBadRequest, perr, nil)
		return
	}
	a, err := s.broker.PublishAs(r.Context(), g, topic, data, key)
	if err != nil {
		code, msg := publishErr(err)
		s.writeErr(w, code, msg, nil)
		return
	}
	resp := map[string]any{"topic": topic, "offset": a.Offset}
	if a.Dup {
		resp["dup"] = true
	}
	writeJSON(w, http.StatusOK, resp)
}

func publishErr(err error) (subproto.Code, string) {
	switch {
	case errors.Is(err, broker.ErrTooLarge):
		return subproto.CodeMessageTooLarge, err.Error()
	case errors.Is(err, broker.ErrTooManyTopics):
		return subproto.CodeTooManyTopics, "no new topic can be created: " + err.Error()
	case errors.Is(err, broker.ErrUnavailable):
		return subproto.CodeUnavailable, "unavailable now; retry with the same Idempotency-Key"
	case errors.Is(err, broker.ErrClosed):
		return subproto.CodeUnavailable, "the broker is shutting down; retry with the same Idempotency-Key"
	}
	// The storage failed (a full disk, an I/O error).
	return subproto.CodeUnavailable, "storage error, retry later with the same Idempotency-Key: " + err.Error()
}

// validData checks an HTTP body as message data by the same rules as a
// WebSocket pub (one JSON value, valid UTF-8, nesting depth). Whitespace
// between tokens is removed first: a stored message must not hold a line
// feed, which would break the newline framing of msg events.
func validData(body []byte) ([]byte, string) {
	body = trimJSONSpace(body)
	if len(body) == 0 {
		return nil, "the body must be one JSON value (the message data)"
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, body); err != nil {
		return nil, "the body is not valid JSON: " + err.Error()
	}
	data := buf.Bytes()
	cmd := make([]byte, 0, len(data)+40)
	cmd = append(cmd, `{"op":"pub","topic":"t","data":`...)
	cmd = append(cmd, data...)
	cmd = append(cmd, '}')
	if _, e := subproto.Decode(cmd); e != nil {
		return nil, "the body is not valid message data: " + e.Message
	}
	return data, ""
}

func trimJSONSpace(b []byte) []byte {
	isSpace := func(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }
	for len(b) > 0 && isSpace(b[0]) {
		b = b[1:]
	}
	for len(b) > 0 && isSpace(b[len(b)-1]) {
		b = b[:len(b)-1]
	}
	return b
}

// historyStart reads where a history page starts: from (default
// earliest), last or since, at most one of them, and epoch. msg is the
// bad_request message when the query is invalid.
func historyStart(q url.Values) (req broker.StartRequest, msg string) {
	n := 0
	for _, k := range [...]string{"from", "last", "since"} {
		if q.Has(k) {
			n++
		}
	}
	if n > 1 {
		return req, "from, last and since exclude each other: give at most one"
	}
	req.Epoch = q.Get("epoch")
	req.From.Kind = subproto.FromEarliest
	switch {
	case q.Has("last"):
		v, err := strconv.ParseUint(q.Get("last"), 10, 64)
		if err != nil || v == 0 || v > subproto.MaxLast {
			return req, "last must be an integer from 1 to " + strconv.Itoa(subproto.MaxLast)
		}
		req.Last = int(v)
	case q.Has("since"):
		v, err := strconv.ParseUint(q.Get("since"), 10, 64)
		if err != nil || v > subproto.MaxInteger {
			return req, "since must be an integer from 0 to " + strconv.Itoa(subproto.MaxInteger) + " (milliseconds since the Unix epoch)"
		}
		req.Since, req.HasSince = int64(v), true
	case q.Has("from"):
		switch v := q.Get("from"); v {
		case "", "earliest":
		case "latest":
			req.From.Kind = subproto.FromLatest
		default:
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil || n == 0 || n > subproto.MaxInteger {
				return req, `from must be a positive offset, "earliest" or "latest"`
			}
			req.From = subproto.From{Kind: subproto.FromOffset, Offset: n}
		}
	}
	return req, ""
}

// servePresence: GET /v1/topics/{topic}/presence, the members of the
// topic's presence on every node (at most 1,000) and their count.
func (s *Server) servePresence(w http.ResponseWriter, r *http.Request) {
	topic, _, ok := s.topicRequest(w, r, (*broker.Grant).CanSubscribe, "read")
	if !ok {
		return
	}
	members, count := []subproto.Member{}, 0
	if !s.broker.Policy(topic).NoPresence {
		members, count = s.broker.Presence(topic)
	}
	out := make([]byte, 0, 256)
	out = append(out, `{"topic":`...)
	out = strconv.AppendQuote(out, topic) // topic names are plain ASCII
	out = subproto.AppendMembers(append(out, `,"members":`...), members)
	out = append(out, `,"count":`...)
	out = strconv.AppendInt(out, int64(count), 10)
	out = append(out, "}\n"...)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(out)
}

// serveMessages: GET /v1/topics/{topic}/messages?from=N&limit=M, or
// ?last=N, or ?since=T.
func (s *Server) serveMessages(w http.ResponseWriter, r *http.Request) {
	topic, _, ok := s.topicRequest(w, r, (*broker.Grant).CanSubscribe, "read")
	if !ok {
		return
	}
	q := r.URL.Query()
	limit, ok := s.limitParam(w, q, maxPageLimit)
	if !ok {
		return
	}
	st := s.broker.Store()
	info, exists, err := st.Topic(topic)
	if err != nil {
		code, msg := publishErr(err)
		s.writeErr(w, code, msg, nil)
		return
	}
	if !exists {
		s.writeErr(w, subproto.CodeNotFound, "topic "+topic+" has no messages", nil)
		return
	}
	rangeCtx := map[string]any{"epoch": info.Epoch, "earliest": info.Earliest, "latest": info.Head}
	req, msg := historyStart(q)
	if msg != "" {
		s.writeErr(w, subproto.CodeBadRequest, msg, nil)
		return
	}
	start, serr, err := s.broker.StartAt(topic, info, req)
	if err != nil {
		code, msg := publishErr(err)
		s.writeErr(w, code, msg, nil)
		return
	}
	if serr != nil {
		s.writeErr(w, serr.Code, serr.Message, rangeCtx)
		return
	}
	from := start.Offset
	s.streamPage(w, topic, info, from, limit)
}

// pageChunkBytes bounds the message data read and held at once while a
// history page is written.
const pageChunkBytes = 256 << 10

// streamPage writes a history page of at most limit records and about
// MaxPageBytes of data, reading and writing it piece by piece: a client
// that does not read holds one piece in memory, and only until the write
// deadline (HTTPWriteTimeout per piece) closes its connection. The page is
// built by hand so that each data is written byte for byte (an
// encoding/json RawMessage would be compacted and HTML-escaped).
//
// The status is sent before the records are read: a storage error met
// after the first piece cuts the answer short (the client sees a broken
// body, never a well-formed partial page).
func (s *Server) streamPage(w http.ResponseWriter, topic string, info broker.TopicInfo, from uint64, limit int) {
	st := s.broker.Store()
	var recs []broker.Record
	if from <= info.Head {
		var err error
		recs, err = st.Read(topic, from, limit, min(pageChunkBytes, s.cfg.MaxPageBytes))
		if err != nil && !errors.Is(err, broker.ErrTopicNotFound) {
			code, msg := publishErr(err)
			s.writeErr(w, code, msg, nil)
			return
		}
	}
	out := make([]byte, 0, 256)
	out = append(out, `{"topic":`...)
	out = strconv.AppendQuote(out, topic) // topic names are plain ASCII
	out = append(out, `,"epoch":`...)
	out, _ = appendJSON(out, info.Epoch)
	out = append(out, `,"earliest":`...)
	out = strconv.AppendUint(out, info.Earliest, 10)
	out = append(out, `,"head":`...)
	out = strconv.AppendUint(out, info.Head, 10)
	out = append(out, `,"messages":[`...)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	next, n, budget := from, 0, s.cfg.MaxPageBytes
	for {
		for _, rec := range recs {
			if rec.Offset != next || n == limit || (n > 0 && len(rec.Data) > budget) {
				recs = nil // retention moved the log on, or the page is full
				break
			}
			if n > 0 {
				out = append(out, ',')
			}
			out = append(out, `{"offset":`...)
			out = strconv.AppendUint(out, rec.Offset, 10)
			out = append(out, `,"ts":`...)
			out = strconv.AppendInt(out, rec.Time, 10)
			out = append(out, `,"data":`...)
			out = append(out, rec.Data...)
			out = append(out, '}')
			next, n, budget = rec.Offset+1, n+1, budget-len(rec.Data)
		}
		s.writeDeadline(w)
		if _, err := w.Write(out); err != nil {
			if isTimeout(err) {
				s.http.writeTimeouts.Add(1)
			}
			return
		}
		out = out[:0]
		if len(recs) == 0 || n == limit || budget <= 0 || next > info.Head {
			break
		}
		var err error
		recs, err = st.Read(topic, next, limit-n, min(pageChunkBytes, budget))
		if err != nil && !errors.Is(err, broker.ErrTopicNotFound) {
			s.log.Warn("reading a history page", "topic", topic, "err", err)
			panic(http.ErrAbortHandler)
		}
	}
	out = append(out, `],"next":`...)
	out = strconv.AppendUint(out, next, 10)
	out = append(out, "}\n"...)
	s.writeDeadline(w)
	if _, err := w.Write(out); err != nil && isTimeout(err) {
		s.http.writeTimeouts.Add(1)
	}
}

func appendJSON(dst []byte, v any) ([]byte, error) {
	b, err := json.Marshal(v)
	return append(dst, b...), err
}

type apiTopic struct {
	Topic       string `json:"topic"`
	Epoch       string `json:"epoch"`
	Earliest    uint64 `json:"earliest"`
	Head        uint64 `json:"head"`
	Count       int64  `json:"count"`
	Bytes       int64  `json:"bytes"`
	Subscribers int    `json:"subscribers"`
	Policy      string `json:"policy"`
}

// serveTopics: GET /v1/topics?after=name&limit=M.
func (s *Server) serveTopics(w http.ResponseWriter, r *http.Request) {
	g, ok := s.grant(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	limit, ok := s.limitParam(w, q, maxTopicsLimit)
	if !ok {
		return
	}
	after := q.Get("after")
	out := make([]apiTopic, 0, min(limit, 64))
	// With a grant, topics it may not read are skipped. Scan a bounded
	// number of store pages; "next" is the cursor to continue from.
	more := false
scan:
	for pages := 0; pages < 10; pages++ {
		more = false
		list, err := s.broker.Store().Topics(after, limit)
		if err != nil {
			code, msg := publishErr(err)
			s.writeErr(w, code, msg, nil)
			return
		}
		for _, ti := range list {
			if len(out) == limit {
				more = true
				break scan
			}
			after = ti.Topic
			if g != nil && !g.CanSubscribe(ti.Topic) {
				continue
			}
			out = append(out, apiTopic{Topic: ti.Topic, Epoch: ti.Epoch, Earliest: ti.Earliest, Head: ti.Head,
				Count: ti.Count, Bytes: ti.Bytes, Subscribers: s.broker.Subscribers(ti.Topic), Policy: s.broker.Policy(ti.Topic).Name})
		}
		if len(list) < limit {
			break
		}
		more = true // the store may hold more after this page
	}
	resp := map[string]any{"topics": out}
	if more {
		resp["next"] = after
	}
	writeJSON(w, http.StatusOK, resp)
}
