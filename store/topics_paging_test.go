package store

import (
	"fmt"
	"testing"
)

// TestTopicsPagingAcrossTail pages through topics one at a time while
// some are only in the log's tail and others in bbolt.
func TestTopicsPagingAcrossTail(t *testing.T) {
	db, _ := openTest(t, nil)
	names := []string{"a.1", "slow.a", "small.a", "z.9"} // in name order
	for i, n := range names {
		if _, err := db.Append(t.Context(), n, []byte(fmt.Sprint(i)), ""); err != nil {
			t.Fatal(err)
		}
		if i == 1 {
			if err := db.catchUp(); err != nil { // the first two reach bbolt
				t.Fatal(err)
			}
		}
	}
	var got []string
	after := ""
	for range 10 {
		page, err := db.Topics(after, 1)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		got = append(got, page[0].Topic)
		after = page[0].Topic
	}
	if fmt.Sprint(got) != fmt.Sprint(names) {
		t.Fatalf("paged %v, want %v", got, names)
	}
}
