package client_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"sync"
	"time"

	client "github.com/brokerd/brokerd/clients/go"
)

// brokerURL is the WebSocket address of a running brokerd. These examples
// are compiled with the package's tests but not run, since this module does
// not include the server: internal/clienttest in the brokerd repository runs
// the same code, with its output checked, against a brokerd in the process.
const brokerURL = "ws://localhost:8080/ws"

func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	c, err := client.Dial(ctx, brokerURL)
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
}

func ExampleClient_PublishAsync() {
	ctx := context.Background()
	c, err := client.Dial(ctx, brokerURL, client.WithPublishWindow(64))
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
}

func ExampleSubscription_Ack() {
	ctx := context.Background()
	c, err := client.Dial(ctx, brokerURL)
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
}

func ExampleClient_Presence() {
	ctx := context.Background()
	c, err := client.Dial(ctx, brokerURL, client.WithToken("token-of-ada"))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// Join the room's presence, and follow who comes and goes.
	_, err = c.Subscribe(ctx, "chat.room-7", func(m *client.Message) { fmt.Println(string(m.Data)) }, client.SubOptions{
		Presence:     true,
		PresenceInfo: json.RawMessage(`{"name":"Ada"}`),
		OnJoin:       func(m client.Member) { fmt.Println("joined:", m.User, string(m.Info)) },
		OnLeave:      func(m client.Member) { fmt.Println("left:", m.User) },
	})
	if err != nil {
		log.Fatal(err) // errors.Is(err, client.ErrUnsupported) on a broker without presence
	}
	// Who was there already.
	p, err := c.Presence(ctx, "chat.room-7")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(p.Count, "here")
	for _, m := range p.Members {
		fmt.Println(m.User, m.Node)
	}
}
