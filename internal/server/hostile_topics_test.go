package server_test

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/brokerd/brokerd/subproto"
)

// touchTopics has one client per goroutine sub and unsub n never-published
// topic names each (prefix.g.i), pipelined, and waits for every answer.
func touchTopics(t *testing.T, ts *testServer, prefix string, clients, n int) {
	t.Helper()
	var wg sync.WaitGroup
	for g := range clients {
		wg.Add(1)
		c := dial(t, ts)
		go func() {
			defer wg.Done()
			var b strings.Builder
			for i := range n {
				topic := fmt.Sprintf("%s.%d.%d", prefix, g, i)
				fmt.Fprintf(&b, `{"op":"sub","topic":%q}`+"\n"+`{"op":"unsub","topic":%q}`+"\n", topic, topic)
				if (i+1)%100 == 0 || i == n-1 {
					c.send(strings.TrimSuffix(b.String(), "\n"))
					b.Reset()
				}
			}
			if r := c.do(map[string]any{"op": "ping"}); r.Op != "pong" {
				t.Errorf("after the subs: %s", r)
			}
			for _, e := range c.snapshot() {
				if e.Op == "err" {
					t.Errorf("touching topics: %s", e)
					break
				}
			}
			c.close()
		}()
	}
	wg.Wait()
}

// Row 5: one client made the store grow with every topic name it merely
// touched: 3.3k topics/s with sub + unsub alone, never reclaimed, about
// 4 KiB of disk each. Now a topic holding nothing and no subscriber is
// deleted after --topic-idle, and the file stops growing: a second wave of
// as many names reuses the pages of the first.
func TestHostileTouchedTopicsReclaimed(t *testing.T) {
	const clients, per = 4, 500
	ts := startServer(t, func(c *serverConfig) {
		c.Broker.TopicIdle = 200 * time.Millisecond
		c.Store.NoSync = true
	})
	keeper := dial(t, ts)
	kept := keeper.sub("kept.subscribed", nil) // empty, but subscribed
	keeper.pub("kept.published", `1`)          // holds a record
	waitTopics := func(what string, want int64) {
		t.Helper()
		eventually(t, 30*time.Second, what, func() bool { return ts.Store.TopicCount() == want })
	}

	touchTopics(t, ts, "wave1", clients, per)
	waitTopics("the first wave's topics to go", 2)
	size1 := ts.Store.Size()
	touchTopics(t, ts, "wave2", clients, per)
	waitTopics("the second wave's topics to go", 2)
	size2 := ts.Store.Size()
	t.Logf("file after wave 1: %d KiB, after wave 2: %d KiB (%d topics touched in each); reclaimed %d",
		size1>>10, size2>>10, clients*per, ts.Broker.Stats().TopicsReclaimed.Load())
	if size2 > size1+size1/4 {
		t.Errorf("the file grew from %d to %d bytes with names merely touched", size1, size2)
	}
	// The counter moves once a deletion has returned, a moment after the
	// store's count: wait for it too.
	eventually(t, 30*time.Second, "the reclaimed topics to be counted", func() bool {
		return ts.Broker.Stats().TopicsReclaimed.Load() >= 2*clients*per
	})
	list, err := ts.Store.Topics("", 10)
	if err != nil || len(list) != 2 || list[0].Topic != "kept.published" || list[1].Topic != "kept.subscribed" {
		t.Fatalf("topics left: %+v, %v", list, err)
	}
	// The subscribed topic kept its log and epoch: the subscription
	// gets what is published to it.
	if e := ts.topicInfo("kept.subscribed").Epoch; e != kept.str("epoch") {
		t.Fatalf("the subscribed topic's epoch changed: %s, then %s", kept.str("epoch"), e)
	}
	keeper.pub("kept.subscribed", `2`)
	keeper.waitFor("the message on the subscribed topic", func(evs []event) bool { return len(msgs(evs, "kept.subscribed")) == 1 })
}

// Row 5: a sub racing with the deletion of its idle topic must not end up
// on a deleted log (unsubbed topic_deleted, or a lost message).
func TestHostileSubRacesReclaim(t *testing.T) {
	ts := startServer(t, func(c *serverConfig) {
		c.Broker.TopicIdle = time.Millisecond // every idle topic goes at once
		c.Store.NoSync = true
	})
	c := dial(t, ts)
	deadline := time.Now().Add(3 * time.Second)
	rounds := 0
	for ; time.Now().Before(deadline) || rounds < 50; rounds++ {
		topic := fmt.Sprintf("race.%d", rounds%4)
		ok := c.sub(topic, nil)
		c.pub(topic, fmt.Sprint(rounds))
		c.waitFor("the message", func(evs []event) bool {
			for _, e := range msgs(evs, topic) {
				if string(e.data()) == fmt.Sprint(rounds) {
					return true
				}
			}
			return false
		})
		if e := ts.topicInfo(topic).Epoch; e != ok.str("epoch") {
			t.Fatalf("round %d: sub ok names epoch %s, the log has %s", rounds, ok.str("epoch"), e)
		}
		c.mustOK(map[string]any{"op": "unsub", "topic": topic})
		// Emptied, it may be reclaimed again at once.
		if _, err := ts.Store.ResetTopic(topic); err != nil {
			t.Fatal(err)
		}
	}
	for _, e := range c.snapshot() {
		if e.Op == "unsubbed" || e.Op == "err" {
			t.Fatalf("after %d rounds: %s", rounds, e)
		}
	}
	t.Logf("%d rounds, %d topics reclaimed", rounds, ts.Broker.Stats().TopicsReclaimed.Load())
}

// Row 5: one client could create any number of topics. Past --max-topics
// a pub or sub that would create one gets too_many_topics (HTTP 507);
// existing topics go on working, and nothing counts as a storage error.
func TestHostileTopicCap(t *testing.T) {
	const max = 50
	ts := startServer(t, func(c *serverConfig) {
		c.Store.MaxTopics = max
		c.Store.NoSync = true
	})
	c := dial(t, ts)
	for i := range max / 2 {
		c.sub(fmt.Sprintf("cap.sub.%d", i), nil)
	}
	for i := range max - max/2 {
		c.pub(fmt.Sprintf("cap.pub.%d", i), `1`)
	}
	c.mustErr(map[string]any{"op": "pub", "topic": "cap.one.more", "data": 1}, subproto.CodeTooManyTopics)
	c.mustErr(map[string]any{"op": "sub", "topic": "cap.one.more"}, subproto.CodeTooManyTopics)
	resp, err := http.Post("http://"+ts.Host+"/v1/topics/cap.one.more", "application/json", strings.NewReader(`1`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusInsufficientStorage {
		t.Fatalf("HTTP publish to a new topic past the limit: %s", resp.Status)
	}
	if _, ok, _ := ts.Store.Topic("cap.one.more"); ok || ts.Store.TopicCount() != max {
		t.Fatalf("a refused topic was created: %d topics", ts.Store.TopicCount())
	}
	c.pub("cap.pub.0", `2`)
	c.sub("cap.pub.1", nil)
	if n := ts.Broker.Stats().StorageErrors.Load(); n != 0 {
		t.Fatalf("%d storage errors", n)
	}
}

// Row 5, per user: with auth on, one user may create at most its token's
// max_topics, or the server's MaxTopicsPerUser, topics. Pipelined
// publishes to new topics stop exactly at the bound; topics that exist
// (another user's) stay usable; a sub or an HTTP publish that would
// create one more is refused too; other users are not affected; an idle
// topic deleted gives its place back.
func TestHostileTopicsPerUser(t *testing.T) {
	all := []string{">"}
	ts := startServer(t, func(c *serverConfig) {
		c.Broker.Auth = staticAuth{
			"alice": {Subject: "alice", Publish: all, Subscribe: all, MaxTopics: 5},
			"bob":   {Subject: "bob", Publish: all, Subscribe: all},
			"carol": {Subject: "carol", Publish: all, Subscribe: all},
		}
		c.Broker.MaxTopicsPerUser = 3
		c.Broker.TopicIdle = 200 * time.Millisecond
		c.Store.NoSync = true
	})
	bob := dial(t, ts, withToken("bob"))
	bob.pub("shared.1", `1`)

	alice := dial(t, ts, withToken("alice"))
	var b strings.Builder
	for i := 1; i <= 20; i++ {
		fmt.Fprintf(&b, `{"op":"pub","id":%d,"topic":"a.%d","data":1}`+"\n", 1000+i, i)
	}
	alice.send(strings.TrimSuffix(b.String(), "\n"))
	replies := alice.waitFor("20 replies", func(evs []event) bool {
		n := 0
		for _, e := range evs {
			if e.Op == "ok" || e.Op == "err" {
				n++
			}
		}
		return n == 20
	})
	ok, refused := 0, 0
	for _, e := range replies {
		switch {
		case e.Op == "ok":
			ok++
		case e.Op == "err" && e.str("code") == string(subproto.CodeTooManyTopics):
			refused++
		case e.Op == "err":
			t.Fatalf("a pipelined publish: %s", e)
		}
	}
	if ok != 5 || refused != 15 || ts.Broker.TopicsCreatedBy("alice") != 5 {
		t.Fatalf("20 pipelined publishes to new topics: %d stored, %d refused, %d counted; want 5, 15, 5", ok, refused, ts.Broker.TopicsCreatedBy("alice"))
	}
	alice.pub("shared.1", `2`) // bob's topic
	alice.pub("a.1", `2`)      // her own
	alice.mustErr(map[string]any{"op": "sub", "topic": "a.sub"}, subproto.CodeTooManyTopics)
	if code, m := ts.post("/v1/topics/a.http", `1`, http.Header{"Authorization": {"Bearer alice"}}); code != http.StatusInsufficientStorage {
		t.Fatalf("an HTTP publish past the bound: %d %v", code, m)
	}
	if code, m := ts.post("/v1/topics/shared.1", `3`, http.Header{"Authorization": {"Bearer alice"}}); code != http.StatusOK {
		t.Fatalf("an HTTP publish to an existing topic at the bound: %d %v", code, m)
	}

	// The server's bound for bob (3), carol untouched by either.
	bob.pub("b.2", `1`)
	bob.pub("b.3", `1`)
	bob.mustErr(map[string]any{"op": "pub", "topic": "b.4", "data": 1}, subproto.CodeTooManyTopics)
	carol := dial(t, ts, withToken("carol"))
	for i := 1; i <= 3; i++ {
		topic := fmt.Sprintf("c.%d", i)
		carol.sub(topic, nil)
		carol.mustOK(map[string]any{"op": "unsub", "topic": topic})
	}
	carol.mustErr(map[string]any{"op": "sub", "topic": "c.4"}, subproto.CodeTooManyTopics)
	// Her three topics hold nothing: deleted as idle, they free her places.
	eventually(t, 30*time.Second, "carol's idle topics deleted, freeing her places", func() bool {
		return ts.Broker.TopicsCreatedBy("carol") == 0
	})
	carol.sub("c.4", nil)
}
