package subproto

import (
	"bytes"
	"encoding/json"
	"os"
	"reflect"
	"testing"
)

// vectors are the wire vectors of testdata/vectors.json, the one
// description of the wire that subproto, clients/go and clients/js are
// all checked against.
type vectors struct {
	Commands []struct {
		Name    string `json:"name"`
		Frame   string `json:"frame"`
		Results []struct {
			Cmd map[string]any `json:"cmd"`
			Err *struct {
				Code Code   `json:"code"`
				ID   uint64 `json:"id"`
			} `json:"err"`
		} `json:"results"`
		Close CloseCode `json:"close"`
	} `json:"commands"`
	Events []struct {
		Name string `json:"name"`
		Line string `json:"line"`
		Bad  bool   `json:"bad"`
	} `json:"events"`
	Topics []struct {
		S       string `json:"s"`
		Topic   bool   `json:"topic"`
		Pattern bool   `json:"pattern"`
	} `json:"topics"`
	Matches []struct {
		Pattern string `json:"pattern"`
		Topic   string `json:"topic"`
		Match   bool   `json:"match"`
	} `json:"matches"`
}

func loadVectors(t *testing.T) *vectors {
	t.Helper()
	b, err := os.ReadFile("testdata/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v vectors
	if err := d.Decode(&v); err != nil {
		t.Fatal(err)
	}
	return &v
}

// canonical is cmd as the JSON object of its wire fields.
func canonical(cmd *Command) map[string]any {
	m := map[string]any{"op": string(cmd.Op)}
	set := func(k string, v any, ok bool) {
		if ok {
			m[k] = v
		}
	}
	set("id", cmd.ID, cmd.ID != 0)
	set("topic", cmd.Topic, cmd.Topic != "")
	set("pattern", true, cmd.Pattern)
	set("data", json.RawMessage(cmd.Data), cmd.Data != nil)
	set("key", cmd.Key, cmd.Key != "")
	switch cmd.From.Kind {
	case FromOffset:
		m["from"] = cmd.From.Offset
	case FromEarliest, FromLatest:
		m["from"] = cmd.From.Kind.String()
	}
	set("epoch", cmd.Epoch, cmd.Epoch != "")
	set("if_gone", cmd.IfGone, cmd.IfGone != "")
	set("consumer", cmd.Consumer, cmd.Consumer != "")
	set("max_inflight", cmd.MaxInflight, cmd.MaxInflight != 0)
	set("last", cmd.Last, cmd.Last != 0)
	set("since", cmd.Since, cmd.HasSince)
	if cmd.Positions != nil {
		pos := map[string]any{}
		for _, p := range cmd.Positions {
			e := map[string]any{"from": p.From}
			if p.Epoch != "" {
				e["epoch"] = p.Epoch
			}
			pos[p.Topic] = e
		}
		m["positions"] = pos
	}
	set("offset", cmd.Offset, cmd.Offset != 0)
	set("token", cmd.Token, cmd.Token != "")
	return m
}

// normal round-trips v through JSON, so that values compare by meaning.
func normal(t *testing.T, v any) any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var out any
	if err := d.Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestVectorsCommands(t *testing.T) {
	for _, c := range loadVectors(t).Commands {
		t.Run(c.Name, func(t *testing.T) {
			var got []any
			ferr := DecodeFrame([]byte(c.Frame), 1000, func(cmd *Command, e *Error) {
				if e != nil {
					got = append(got, map[string]any{"err": map[string]any{"code": string(e.Code), "id": e.ID}})
					return
				}
				got = append(got, map[string]any{"cmd": canonical(cmd)})
			})
			var want []any
			for _, r := range c.Results {
				if r.Err != nil {
					want = append(want, map[string]any{"err": map[string]any{"code": string(r.Err.Code), "id": r.Err.ID}})
				} else {
					want = append(want, map[string]any{"cmd": r.Cmd})
				}
			}
			if g, w := normal(t, got), normal(t, want); !reflect.DeepEqual(g, w) {
				t.Errorf("DecodeFrame(%q):\n got %v\nwant %v", c.Frame, g, w)
			}
			switch {
			case c.Close == 0 && ferr != nil:
				t.Errorf("DecodeFrame(%q) closes with %v", c.Frame, ferr)
			case c.Close != 0 && (ferr == nil || ferr.Close != c.Close):
				t.Errorf("DecodeFrame(%q) = %v, want close %d", c.Frame, ferr, c.Close)
			}
		})
	}
}

// eventJSON is an event as encoding/json decodes it: DecodeEvent must
// agree with it on every vector.
type eventJSON struct {
	Op        Op              `json:"op"`
	ID        uint64          `json:"id"`
	Topic     string          `json:"topic"`
	Sub       string          `json:"sub"`
	Offset    uint64          `json:"offset"`
	TS        int64           `json:"ts"`
	Data      json.RawMessage `json:"data"`
	Dup       bool            `json:"dup"`
	Epoch     string          `json:"epoch"`
	Head      uint64          `json:"head"`
	From      uint64          `json:"from"`
	Missed    *[2]uint64      `json:"missed"`
	Code      Code            `json:"code"`
	Message   string          `json:"message"`
	Earliest  *uint64         `json:"earliest"`
	Latest    *uint64         `json:"latest"`
	Session   string          `json:"session"`
	Node      string          `json:"node"`
	Version   string          `json:"version"`
	Heartbeat int             `json:"heartbeat"`
	Features  []string        `json:"features"`
	Member    *memberJSON     `json:"member"`
	Members   []memberJSON    `json:"members"`
	Count     *int            `json:"count"`
}

type memberJSON struct {
	Session string          `json:"session"`
	User    string          `json:"user"`
	Node    string          `json:"node"`
	Info    json.RawMessage `json:"info"`
}

func (m memberJSON) member() Member {
	out := Member{Session: m.Session, User: m.User, Node: m.Node}
	if len(m.Info) > 0 {
		out.Info = []byte(m.Info)
	}
	return out
}

func TestVectorsEvents(t *testing.T) {
	for _, c := range loadVectors(t).Events {
		t.Run(c.Name, func(t *testing.T) {
			var ev Event
			err := DecodeEvent([]byte(c.Line), &ev)
			if c.Bad {
				if err == nil {
					t.Fatalf("DecodeEvent(%s) = %+v, want an error", c.Line, ev)
				}
				return
			}
			if err != nil {
				t.Fatalf("DecodeEvent(%s): %v", c.Line, err)
			}
			var j eventJSON
			if err := json.Unmarshal([]byte(c.Line), &j); err != nil {
				t.Fatalf("encoding/json: %v", err)
			}
			want := Event{Op: j.Op, ID: j.ID, Topic: j.Topic, Sub: j.Sub, Offset: j.Offset, TS: j.TS, Data: []byte(j.Data), Dup: j.Dup,
				Epoch: j.Epoch, Head: j.Head, From: j.From, Missed: j.Missed, Code: j.Code, Message: j.Message,
				HasRange: j.Earliest != nil || j.Latest != nil, Session: j.Session, Node: j.Node, Version: j.Version,
				Heartbeat: j.Heartbeat, Features: j.Features}
			if j.Earliest != nil {
				want.Earliest = *j.Earliest
			}
			if j.Latest != nil {
				want.Latest = *j.Latest
			}
			if len(want.Data) == 0 {
				want.Data = nil
			}
			if j.Member != nil {
				m := j.Member.member()
				want.Member = &m
			}
			if j.Members != nil {
				want.Members = []Member{}
				for _, m := range j.Members {
					want.Members = append(want.Members, m.member())
				}
			}
			if j.Count != nil {
				want.Count, want.HasCount = *j.Count, true
			}
			if !reflect.DeepEqual(ev, want) {
				t.Errorf("DecodeEvent(%s)\n = %+v\nwant %+v", c.Line, ev, want)
			}
		})
	}
}

func TestVectorsTopics(t *testing.T) {
	v := loadVectors(t)
	for _, c := range v.Topics {
		if ValidTopic(c.S) != c.Topic || ValidPattern(c.S) != (c.Topic || c.Pattern) || (ValidPattern(c.S) && IsPattern(c.S)) != c.Pattern {
			t.Errorf("%q: topic %v, pattern %v; vectors say topic %v, pattern %v", c.S, ValidTopic(c.S), ValidPattern(c.S) && IsPattern(c.S), c.Topic, c.Pattern)
		}
	}
	for _, c := range v.Matches {
		if Match(c.Pattern, c.Topic) != c.Match {
			t.Errorf("Match(%q, %q) = %v, want %v", c.Pattern, c.Topic, !c.Match, c.Match)
		}
	}
}

// Every event the encoders produce decodes to what was encoded.
func TestEncodeDecodeEvent(t *testing.T) {
	missed := &[2]uint64{3, 11}
	cases := []struct {
		b    []byte
		want Event
	}{
		{AppendMsg(nil, "a.b", 7, 99, []byte(`{"x":1}`), "a.*"), Event{Op: OpMsg, Topic: "a.b", Offset: 7, TS: 99, Data: []byte(`{"x":1}`), Sub: "a.*"}},
		{AppendWelcome(nil, "s", "n", "v", 25, []string{"last"}), Event{Op: OpWelcome, Session: "s", Node: "n", Version: "v", Heartbeat: 25, Features: []string{"last"}}},
		{AppendOK(nil, &OK{ID: 3, Topic: "t", Sub: true, Epoch: "e", Head: 9, From: 4, Missed: missed}), Event{Op: OpOK, ID: 3, Topic: "t", Epoch: "e", Head: 9, From: 4, Missed: missed}},
		{AppendErr(nil, &Error{Code: CodeEpochMismatch, ID: 2, Message: "m\n"}, &ErrContext{Epoch: "e", Earliest: 1, Latest: 2, HasRange: true}), Event{Op: OpErr, ID: 2, Code: CodeEpochMismatch, Message: "m\n", Epoch: "e", Earliest: 1, Latest: 2, HasRange: true}},
		{AppendTopic(nil, &Topic{Sub: "a.*", Topic: "a.b", Epoch: "e", From: 12, Missed: missed}), Event{Op: OpTopic, Sub: "a.*", Topic: "a.b", Epoch: "e", From: 12, Missed: missed}},
		{AppendUnsubbed(nil, "a", CodeTakenOver), Event{Op: OpUnsubbed, Topic: "a", Code: CodeTakenOver}},
		{AppendPong(nil, 5), Event{Op: OpPong, ID: 5}},
		{AppendPresence(nil, OpJoin, "r", &Member{Session: "s1", User: "u\"1", Node: "n1", Info: []byte(`{"n":[1]}`)}), Event{Op: OpJoin, Topic: "r", Member: &Member{Session: "s1", User: "u\"1", Node: "n1", Info: []byte(`{"n":[1]}`)}}},
		{AppendPresence(nil, OpLeave, "r", &Member{Session: "s2", Node: "n2"}), Event{Op: OpLeave, Topic: "r", Member: &Member{Session: "s2", Node: "n2"}}},
		{AppendPresenceMuted(nil, "r"), Event{Op: OpPresenceMuted, Topic: "r"}},
		{AppendOK(nil, &OK{ID: 4, Topic: "r", Presence: true, Members: []Member{{Session: "a", Node: "n"}, {Session: "b", User: "u", Node: "n", Info: []byte("null")}}, Count: 1200}),
			Event{Op: OpOK, ID: 4, Topic: "r", Members: []Member{{Session: "a", Node: "n"}, {Session: "b", User: "u", Node: "n", Info: []byte("null")}}, Count: 1200, HasCount: true}},
		{AppendOK(nil, &OK{ID: 5, Topic: "r", Presence: true}), Event{Op: OpOK, ID: 5, Topic: "r", Members: []Member{}, HasCount: true}},
	}
	for _, c := range cases {
		var ev Event
		if err := DecodeEvent(c.b, &ev); err != nil || !reflect.DeepEqual(ev, c.want) {
			t.Errorf("DecodeEvent(%s) = %+v, %v; want %+v", c.b, ev, err, c.want)
		}
	}
}

func FuzzDecodeEvent(f *testing.F) {
	f.Add([]byte(`{"op":"msg","topic":"a","offset":1,"ts":2,"data":{"x":[1]}}`))
	f.Add([]byte(`{"op":"ok","missed":[1,2],"features":["a"]}`))
	f.Add([]byte(`{"op":"join","topic":"r","member":{"session":"s","user":"u","node":"n","info":{"a":[1,{"b":2}]},"later":true}}`))
	f.Add([]byte(`{"op":"ok","id":1,"topic":"r","members":[{"session":"s","node":"n"},{"session":"t","node":"n","info":"x"}],"count":2}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var ev Event
		if DecodeEvent(b, &ev) == nil && !json.Valid(b) {
			t.Fatalf("DecodeEvent accepted invalid JSON %q", b)
		}
	})
}
