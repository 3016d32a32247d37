package clienttest_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/brokerd/brokerd/broker"
	client "github.com/brokerd/brokerd/clients/go"
	"github.com/brokerd/brokerd/internal/server"
	"github.com/brokerd/brokerd/store"
)

// startExampleBroker runs a brokerd in this process on a temporary data
// directory and returns its WebSocket URL. A real application dials its
// brokerd's address instead, such as ws://localhost:8080/ws.
func startExampleBroker() (url string, stop func()) {
	quiet := slog.New(slog.DiscardHandler)
	dir, err := os.MkdirTemp("", "brokerd-example")
	if err != nil {
		log.Fatal(err)
	}
	st, err := store.Open(dir, &store.Options{Logger: quiet})
	if err != nil {
		log.Fatal(err)
	}
	b, err := broker.New(broker.Config{Logger: quiet}, st)
	if err != nil {
		log.Fatal(err)
	}
	edge, err := server.New(server.Config{Logger: quiet}, b)
	if err != nil {
		log.Fatal(err)
	}
	hs := httptest.NewServer(edge.Handler())
	return "ws" + strings.TrimPrefix(hs.URL, "http") + "/ws", func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = b.Shutdown(ctx)
		hs.Close()
		_ = st.Close()
		_ = os.RemoveAll(dir)
	}
}

func Example() {
	url, stop := startExampleBroker()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	c, err := client.Dial(ctx, url)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// Publish returns once the message is stored durably.
	r, err := c.Publish(ctx, "greetings", []byte(`{"hello":"world"}`))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("stored at offset", r.Offset)

	// Read the topic from its first message on.
	got := make(chan *client.Message, 1)
	_, err = c.Subscribe(ctx, "greetings", func(m *client.Message) { got <- m }, client.SubOptions{From: client.Earliest})
	if err != nil {
		log.Fatal(err)
	}
	m := <-got
	fmt.Println(m.Topic, m.Offset, string(m.Data))
	// Output:
	// stored at offset 1
	// greetings 1 {"hello":"world"}
}

func Example_publishAsync() {
	url, stop := startExampleBroker()
	defer stop()
	ctx := context.Background()
	c, err := client.Dial(ctx, url, client.WithPublishWindow(64))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// Up to 64 publishes are in flight at once; PublishAsync blocks beyond.
	var wg sync.WaitGroup
	var mu sync.Mutex
	last := uint64(0)
	for i := range 1000 {
		wg.Add(1)
		err := c.PublishAsync(ctx, "ticks", []byte(fmt.Sprint(i)), func(r client.Result, err error) {
			defer wg.Done()
			if err != nil {
				log.Print(err)
				return
			}
			mu.Lock()
			last = max(last, r.Offset)
			mu.Unlock()
		})
		if err != nil {
			log.Fatal(err)
		}
	}
	wg.Wait()
	fmt.Println("last offset", last)
	// Output: last offset 1000
}

func Example_ack() {
	url, stop := startExampleBroker()
	defer stop()
	ctx := context.Background()
	c, err := client.Dial(ctx, url)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	for i := 1; i <= 5; i++ {
		if _, err := c.Publish(ctx, "jobs", []byte(fmt.Sprintf(`{"job":%d}`, i))); err != nil {
			log.Fatal(err)
		}
	}

	// A durable consumer: the broker keeps its acknowledged offset, so a
	// later subscription of the same consumer resumes after it.
	work := func(n int) {
		msgs := make(chan *client.Message, 16)
		sub, err := c.Subscribe(ctx, "jobs", func(m *client.Message) { msgs <- m },
			client.SubOptions{From: client.Earliest, Consumer: "worker"})
		if err != nil {
			log.Fatal(err)
		}
		var m *client.Message
		for range n {
			m = <-msgs
			fmt.Println("working on", string(m.Data))
		}
		// Acknowledge everything up to the last message handled.
		if err := sub.Ack(ctx, m.Offset); err != nil {
			log.Fatal(err)
		}
		if err := sub.Unsubscribe(ctx); err != nil {
			log.Fatal(err)
		}
	}
	work(2)
	work(3)
	// Output:
	// working on {"job":1}
	// working on {"job":2}
	// working on {"job":3}
	// working on {"job":4}
	// working on {"job":5}
}

func Example_presence() {
	url, stop := startExampleBroker()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	ada, err := client.Dial(ctx, url)
	if err != nil {
		log.Fatal(err)
	}
	defer ada.Close()
	bob, err := client.Dial(ctx, url)
	if err != nil {
		log.Fatal(err)
	}
	defer bob.Close()

	// Ada joins the room's presence and follows who comes and goes.
	seen := make(chan string, 4)
	_, err = ada.Subscribe(ctx, "chat.room-7", func(*client.Message) {}, client.SubOptions{
		Presence:     true,
		PresenceInfo: []byte(`{"name":"Ada"}`),
		OnJoin:       func(m client.Member) { seen <- "joined: " + string(m.Info) },
		OnLeave:      func(m client.Member) { seen <- "left: " + string(m.Info) },
	})
	if err != nil {
		log.Fatal(err)
	}
	// A new member is not told of those already there: it asks.
	p, err := ada.Presence(ctx, "chat.room-7")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(p.Count, "here")

	next := func() string {
		select {
		case s := <-seen:
			return s
		case <-ctx.Done():
			return "nothing: " + ctx.Err().Error()
		}
	}

	// Bob joins too, and asks who is there.
	room, err := bob.Subscribe(ctx, "chat.room-7", func(*client.Message) {}, client.SubOptions{
		Presence: true, PresenceInfo: []byte(`{"name":"Bob"}`),
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(next())
	p, err = bob.Presence(ctx, "chat.room-7")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(p.Count, "here")

	// Bob leaves.
	if err := room.Unsubscribe(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println(next())
	// Output:
	// 1 here
	// joined: {"name":"Bob"}
	// 2 here
	// left: {"name":"Bob"}
}
