package store

import (
	"fmt"
	"testing"
)

func TestAllConsumersPages(t *testing.T) {
	db, _ := openTest(t, nil)
	want := 0
	for c := range 3 {
		for tp := range 5 {
			commit(t, db, fmt.Sprintf("c%d", c), fmt.Sprintf("t.%d", tp), "e1", uint64(c*10+tp+1))
			want++
		}
	}
	var got []string
	after := [2]string{}
	for {
		list, err := db.AllConsumers(after[0], after[1], 4)
		if err != nil {
			t.Fatal(err)
		}
		for _, co := range list {
			got = append(got, fmt.Sprintf("%s/%s=%d", co.Consumer, co.Topic, co.Offset))
		}
		if len(list) < 4 {
			break
		}
		after = [2]string{list[len(list)-1].Consumer, list[len(list)-1].Topic}
	}
	if len(got) != want || got[0] != "c0/t.0=1" || got[want-1] != "c2/t.4=25" {
		t.Fatalf("got %d positions %v, want %d from c0/t.0=1 to c2/t.4=25", len(got), got, want)
	}
	for i := 1; i < len(got); i++ {
		if got[i] <= got[i-1] {
			t.Fatalf("out of order or repeated at %d: %v", i, got)
		}
	}
}
