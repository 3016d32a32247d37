package subproto_test

import (
	"fmt"

	"github.com/brokerd/brokerd/subproto"
)

func ExampleDecodeFrame() {
	frame := []byte(`{"op":"pub","id":1,"topic":"chat.room1","data":{"text":"hi"}}` + "\n" +
		`{"op":"sub","id":2,"topic":"chat.*","from":5}` + "\n" +
		`{"op":"ping","id":3}`)
	ferr := subproto.DecodeFrame(frame, 100, func(cmd *subproto.Command, err *subproto.Error) {
		if err != nil {
			fmt.Printf("%s\n", subproto.AppendErr(nil, err, nil))
			return
		}
		fmt.Printf("%s id=%d topic=%q data=%s\n", cmd.Op, cmd.ID, cmd.Topic, cmd.Data)
	})
	if ferr != nil {
		fmt.Println("close", int(ferr.Close), ferr.Message)
	}
	// Output:
	// pub id=1 topic="chat.room1" data={"text":"hi"}
	// {"op":"err","id":2,"code":"bad_request","message":"field \"from\" is not allowed with a pattern (a pattern takes \"since\", \"positions\" and \"if_gone\")"}
	// ping id=3 topic="" data=
}

func ExampleAppendMsg() {
	// Encode once, send the same bytes to every subscriber.
	b := subproto.AppendMsg(nil, "chat.room1", 42, 1700000000000, []byte(`{"text":"hi"}`), "")
	fmt.Printf("%s\n", b)
	// Output:
	// {"op":"msg","topic":"chat.room1","offset":42,"ts":1700000000000,"data":{"text":"hi"}}
}

func ExampleAppendOK() {
	fmt.Printf("%s\n", subproto.AppendOK(nil, &subproto.OK{ID: 1, Pub: true, Topic: "t", Offset: 5}))
	fmt.Printf("%s\n", subproto.AppendOK(nil, &subproto.OK{ID: 2, Sub: true, Topic: "t", Epoch: "e1", Head: 9, From: 6, Missed: &[2]uint64{3, 5}}))
	// Output:
	// {"op":"ok","id":1,"topic":"t","offset":5}
	// {"op":"ok","id":2,"topic":"t","epoch":"e1","head":9,"from":6,"missed":[3,5]}
}

func ExampleCloseReason() {
	fmt.Printf("%s\n", subproto.CloseReason(subproto.CloseGoingAway, 2500))
	// Output:
	// {"reason":"going_away","retry_after_ms":2500}
}
