package subproto

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

var (
	benchPub = []byte(`{"op":"pub","id":12345,"topic":"chat.room-42.messages","key":"msg-7f3a9c","data":{"user":"alice","text":"hello, world \u00e9","ts":1700000000000,"tags":["a","b"],"n":3.5}}`)
	benchSub = []byte(`{"op":"sub","id":12346,"topic":"chat.room-42.messages","from":1024,"epoch":"01HF7Y3K8Q","consumer":"worker-1","max_inflight":100}`)
	// A 4 KiB payload, for throughput.
	benchBigPub = []byte(`{"op":"pub","id":1,"topic":"logs.app","data":{"lines":["` + strings.Repeat(`GET /index.html 200 0.003s \"Mozilla/5.0\"`, 100) + `"]}}`)
)

func benchDecodeFrame(b *testing.B, frame []byte) {
	b.ReportAllocs()
	b.SetBytes(int64(len(frame)))
	fn := func(cmd *Command, err *Error) {
		if err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		if err := DecodeFrame(frame, 100, fn); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodePub(b *testing.B)    { benchDecodeFrame(b, benchPub) }
func BenchmarkDecodeSub(b *testing.B)    { benchDecodeFrame(b, benchSub) }
func BenchmarkDecodeBigPub(b *testing.B) { benchDecodeFrame(b, benchBigPub) }

// BenchmarkDecodeBatch decodes a frame of 10 pubs.
func BenchmarkDecodeBatch(b *testing.B) {
	frame := []byte(strings.Repeat(string(benchPub)+"\n", 10))
	benchDecodeFrame(b, frame)
}

// The baseline: encoding/json into a struct, with unknown fields refused
// and data kept raw. It checks less than Decode (no duplicate keys, no
// exact id type, no topic or field rules) and is still the comparison
// the decoder has to beat.
type stdCommand struct {
	Op          string          `json:"op"`
	ID          *uint64         `json:"id"`
	Topic       string          `json:"topic"`
	Data        json.RawMessage `json:"data"`
	Key         string          `json:"key"`
	From        json.RawMessage `json:"from"`
	Epoch       string          `json:"epoch"`
	IfGone      string          `json:"if_gone"`
	Consumer    string          `json:"consumer"`
	MaxInflight int             `json:"max_inflight"`
	Offset      uint64          `json:"offset"`
	Token       string          `json:"token"`
}

func benchStd(b *testing.B, obj []byte) {
	b.ReportAllocs()
	b.SetBytes(int64(len(obj)))
	for b.Loop() {
		var c stdCommand
		dec := json.NewDecoder(strings.NewReader(string(obj)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&c); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStdUnmarshal is json.Unmarshal alone (unknown fields ignored).
func benchStdUnmarshal(b *testing.B, obj []byte) {
	b.ReportAllocs()
	b.SetBytes(int64(len(obj)))
	for b.Loop() {
		var c stdCommand
		if err := json.Unmarshal(obj, &c); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkStdDecodePub(b *testing.B)       { benchStd(b, benchPub) }
func BenchmarkStdDecodeSub(b *testing.B)       { benchStd(b, benchSub) }
func BenchmarkStdDecodeBigPub(b *testing.B)    { benchStd(b, benchBigPub) }
func BenchmarkStdUnmarshalPub(b *testing.B)    { benchStdUnmarshal(b, benchPub) }
func BenchmarkStdUnmarshalBigPub(b *testing.B) { benchStdUnmarshal(b, benchBigPub) }

// BenchmarkStdValidBigPub is json.Valid alone: the floor for any decoder
// built on encoding/json.
func BenchmarkStdValidBigPub(b *testing.B) {
	b.ReportAllocs()
	b.SetBytes(int64(len(benchBigPub)))
	for b.Loop() {
		if !json.Valid(benchBigPub) {
			b.Fatal(errors.New("invalid"))
		}
	}
}

func BenchmarkAppendMsg(b *testing.B) {
	data := []byte(`{"user":"alice","text":"hello, world \u00e9","ts":1700000000000,"tags":["a","b"],"n":3.5}`)
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendMsg(buf[:0], "chat.room-42.messages", 123456789, 1700000000000, data, "")
	}
	b.SetBytes(int64(len(buf)))
}

func BenchmarkAppendMsgPattern(b *testing.B) {
	data := []byte(`{"user":"alice"}`)
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendMsg(buf[:0], "chat.room-42.messages", 123456789, 1700000000000, data, "chat.*.messages")
	}
	b.SetBytes(int64(len(buf)))
}

// BenchmarkStdMarshalMsg is the same msg through encoding/json.
func BenchmarkStdMarshalMsg(b *testing.B) {
	type msg struct {
		Op     string          `json:"op"`
		Topic  string          `json:"topic"`
		Offset uint64          `json:"offset"`
		TS     int64           `json:"ts"`
		Data   json.RawMessage `json:"data"`
	}
	m := msg{"msg", "chat.room-42.messages", 123456789, 1700000000000,
		json.RawMessage(`{"user":"alice","text":"hello, world \u00e9","ts":1700000000000,"tags":["a","b"],"n":3.5}`)}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := json.Marshal(&m); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendOK(b *testing.B) {
	buf := make([]byte, 0, 256)
	ok := &OK{ID: 12345, Pub: true, Topic: "chat.room-42.messages", Offset: 99}
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendOK(buf[:0], ok)
	}
}
