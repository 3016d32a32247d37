package subproto

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestDecodeValid(t *testing.T) {
	long := strings.Repeat("a", 255)
	tests := []struct {
		name string
		in   string
		want Command
	}{
		{"ping", `{"op":"ping"}`, Command{Op: OpPing}},
		{"ping id", `{"op":"ping","id":7}`, Command{Op: OpPing, ID: 7}},
		{"id first", `{"id":7,"op":"ping"}`, Command{Op: OpPing, ID: 7}},
		{"max id", `{"op":"ping","id":9007199254740991}`, Command{Op: OpPing, ID: MaxInteger}},
		{"whitespace", " \t{ \"op\" : \"ping\" , \"id\" : 1 }\r\n ", Command{Op: OpPing, ID: 1}},
		{"auth", `{"op":"auth","id":1,"token":"eyJ.x.y"}`, Command{Op: OpAuth, ID: 1, Token: "eyJ.x.y"}},
		{"auth escaped token", `{"op":"auth","token":"a\"b\\c\u00e9\ud83d\ude00"}`, Command{Op: OpAuth, Token: "a\"b\\cé😀"}},
		{"pub", `{"op":"pub","id":2,"topic":"a.b","data":{"x":1}}`, Command{Op: OpPub, ID: 2, Topic: "a.b", Data: []byte(`{"x":1}`)}},
		{"pub null", `{"op":"pub","topic":"a","data":null}`, Command{Op: OpPub, Topic: "a", Data: []byte(`null`)}},
		{"pub string", `{"op":"pub","topic":"a","data":"h\u00e9\n"}`, Command{Op: OpPub, Topic: "a", Data: []byte(`"h\u00e9\n"`)}},
		{"pub number", `{"op":"pub","topic":"a","data":-1.5e+3}`, Command{Op: OpPub, Topic: "a", Data: []byte(`-1.5e+3`)}},
		{"pub false", `{"op":"pub","topic":"a","data":false}`, Command{Op: OpPub, Topic: "a", Data: []byte(`false`)}},
		{"pub spaced data", `{"op":"pub","topic":"a","data": [ 1 , {"b" : [ ] } ] ,"id":3}`, Command{Op: OpPub, ID: 3, Topic: "a", Data: []byte(`[ 1 , {"b" : [ ] } ]`)}},
		{"pub key", `{"op":"pub","topic":"a","data":1,"key":"order-42:x"}`, Command{Op: OpPub, Topic: "a", Data: []byte(`1`), Key: "order-42:x"}},
		{"pub key 255", `{"op":"pub","topic":"a","data":1,"key":"` + long + `"}`, Command{Op: OpPub, Topic: "a", Data: []byte(`1`), Key: long}},
		{"pub escaped topic", `{"op":"pub","topic":"a\u002eb","data":1}`, Command{Op: OpPub, Topic: "a.b", Data: []byte(`1`)}},
		{"escaped member name", `{"\u006fp":"ping","i\u0064":4}`, Command{Op: OpPing, ID: 4}},
		{"escaped op", `{"op":"p\u0069ng"}`, Command{Op: OpPing}},
		{"pub topic 255", `{"op":"pub","topic":"` + long + `","data":1}`, Command{Op: OpPub, Topic: long, Data: []byte(`1`)}},
		{"pub all chars", `{"op":"pub","topic":"AZ.az.09._-","data":1}`, Command{Op: OpPub, Topic: "AZ.az.09._-", Data: []byte(`1`)}},
		{"sub", `{"op":"sub","id":1,"topic":"a.b"}`, Command{Op: OpSub, ID: 1, Topic: "a.b"}},
		{"sub from offset", `{"op":"sub","topic":"a","from":42}`, Command{Op: OpSub, Topic: "a", From: From{FromOffset, 42}}},
		{"sub from earliest", `{"op":"sub","topic":"a","from":"earliest"}`, Command{Op: OpSub, Topic: "a", From: From{Kind: FromEarliest}}},
		{"sub from latest", `{"op":"sub","topic":"a","from":"latest"}`, Command{Op: OpSub, Topic: "a", From: From{Kind: FromLatest}}},
		{"sub full", `{"op":"sub","id":9,"topic":"a","from":5,"epoch":"e-1","if_gone":"earliest","consumer":"w.1_A-z","max_inflight":10000}`,
			Command{Op: OpSub, ID: 9, Topic: "a", From: From{FromOffset, 5}, Epoch: "e-1", IfGone: "earliest", Consumer: "w.1_A-z", MaxInflight: 10000}},
		{"sub consumer", `{"op":"sub","topic":"a","consumer":"c","max_inflight":1}`, Command{Op: OpSub, Topic: "a", Consumer: "c", MaxInflight: 1}},
		{"sub pattern star", `{"op":"sub","topic":"a.*.c"}`, Command{Op: OpSub, Topic: "a.*.c", Pattern: true}},
		{"sub pattern gt", `{"op":"sub","topic":"a.>"}`, Command{Op: OpSub, Topic: "a.>", Pattern: true}},
		{"sub pattern all", `{"op":"sub","topic":">"}`, Command{Op: OpSub, Topic: ">", Pattern: true}},
		{"sub pattern since", `{"op":"sub","topic":"a.>","since":5,"if_gone":"earliest"}`, Command{Op: OpSub, Topic: "a.>", Pattern: true, Since: 5, HasSince: true, IfGone: "earliest"}},
		{"sub pattern positions", `{"op":"sub","topic":"a.*","positions":{"a.b":{"from":3,"epoch":"e1"}, "a.c" : { "epoch" : "e\u0032" , "from" : 9007199254740991 },"a.d":{"from":1}},"since":0}`,
			Command{Op: OpSub, Topic: "a.*", Pattern: true, Since: 0, HasSince: true, Positions: []Position{{"a.b", 3, "e1"}, {"a.c", MaxInteger, "e2"}, {"a.d", 1, ""}}}},
		{"sub pattern positions empty", `{"op":"sub","topic":"a.*","positions":{}}`, Command{Op: OpSub, Topic: "a.*", Pattern: true}},
		{"unsub", `{"op":"unsub","id":4,"topic":"a.b"}`, Command{Op: OpUnsub, ID: 4, Topic: "a.b"}},
		{"unsub pattern", `{"op":"unsub","topic":"*.b"}`, Command{Op: OpUnsub, Topic: "*.b", Pattern: true}},
		{"ack", `{"op":"ack","id":5,"topic":"a","consumer":"c","offset":17}`, Command{Op: OpAck, ID: 5, Topic: "a", Consumer: "c", Offset: 17}},
		{"sub last", `{"op":"sub","id":1,"topic":"a","last":50}`, Command{Op: OpSub, ID: 1, Topic: "a", Last: 50}},
		{"sub last max", `{"op":"sub","topic":"a","last":10000,"epoch":"e"}`, Command{Op: OpSub, Topic: "a", Last: 10000, Epoch: "e"}},
		{"sub since", `{"op":"sub","topic":"a","since":1733598120000,"if_gone":"earliest"}`, Command{Op: OpSub, Topic: "a", Since: 1733598120000, HasSince: true, IfGone: "earliest"}},
		{"sub since 0", `{"op":"sub","topic":"a","since":0}`, Command{Op: OpSub, Topic: "a", HasSince: true}},
		{"sub consumer last", `{"op":"sub","topic":"a","consumer":"c","last":3}`, Command{Op: OpSub, Topic: "a", Consumer: "c", Last: 3}},
		{"ack epoch", `{"op":"ack","id":5,"topic":"a","consumer":"c","offset":17,"epoch":"e-1"}`, Command{Op: OpAck, ID: 5, Topic: "a", Consumer: "c", Offset: 17, Epoch: "e-1"}},
		{"ack max offset", `{"op":"ack","topic":"a","consumer":"c","offset":9007199254740991}`, Command{Op: OpAck, Topic: "a", Consumer: "c", Offset: MaxInteger}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode([]byte(tt.in))
			if err != nil {
				t.Fatalf("Decode(%s): %v", tt.in, err)
			}
			if !reflect.DeepEqual(*got, tt.want) {
				t.Errorf("Decode(%s)\n got %+v\nwant %+v", tt.in, *got, tt.want)
			}
			if got.Data != nil && !bytes.Contains([]byte(tt.in), got.Data) {
				t.Errorf("data %q is not a slice of the input", got.Data)
			}
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	long := strings.Repeat("a", 256)
	tests := []struct {
		name string
		in   string
		code Code
		id   uint64
		msg  string // a substring of the message
	}{
		// Not a command.
		{"array", `[1,2]`, CodeBadRequest, 0, "JSON object"},
		{"string", `"ping"`, CodeBadRequest, 0, "JSON object"},
		{"null", `null`, CodeBadRequest, 0, "JSON object"},
		{"number", `12`, CodeBadRequest, 0, "JSON object"},
		{"empty object", `{}`, CodeBadRequest, 0, `missing field "op"`},
		// op.
		{"no op", `{"id":3}`, CodeBadRequest, 3, `missing field "op"`},
		{"op number", `{"op":1,"id":3}`, CodeBadRequest, 3, `field "op" must be a string`},
		{"op null", `{"op":null}`, CodeBadRequest, 0, `field "op" must be a string`},
		{"unknown op", `{"op":"publish","id":3}`, CodeUnknownOp, 3, `unknown op "publish"`},
		{"op case", `{"op":"PUB","id":3}`, CodeUnknownOp, 3, `unknown op "PUB"`},
		{"event op", `{"op":"welcome","id":3}`, CodeUnknownOp, 3, "an event"},
		{"empty op", `{"op":""}`, CodeUnknownOp, 0, `unknown op ""`},
		{"unknown op bad id", `{"op":"x","id":0}`, CodeUnknownOp, 0, "unknown op"},
		// id.
		{"id string", `{"op":"ping","id":"1"}`, CodeBadRequest, 0, `field "id" must be an integer`},
		{"id fraction", `{"op":"ping","id":1.5}`, CodeBadRequest, 0, `field "id"`},
		{"id 1.0", `{"op":"ping","id":1.0}`, CodeBadRequest, 0, `field "id"`},
		{"id exponent", `{"op":"ping","id":1e3}`, CodeBadRequest, 0, `field "id"`},
		{"id negative", `{"op":"ping","id":-1}`, CodeBadRequest, 0, `field "id"`},
		{"id zero", `{"op":"ping","id":0}`, CodeBadRequest, 0, `field "id"`},
		{"id minus zero", `{"op":"ping","id":-0}`, CodeBadRequest, 0, `field "id"`},
		{"id 2^53", `{"op":"ping","id":9007199254740992}`, CodeBadRequest, 0, `field "id"`},
		{"id huge", `{"op":"ping","id":123456789012345678901234567890}`, CodeBadRequest, 0, `field "id"`},
		{"id null", `{"op":"ping","id":null}`, CodeBadRequest, 0, `field "id"`},
		{"id bool", `{"op":"ping","id":true}`, CodeBadRequest, 0, `field "id"`},
		{"id object", `{"op":"ping","id":{}}`, CodeBadRequest, 0, `field "id"`},
		// Strictness.
		{"unknown field", `{"op":"sub","id":3,"topic":"a","form":1}`, CodeBadRequest, 3, `unknown field "form"`},
		{"unknown field first", `{"form":1,"op":"sub","id":3,"topic":"a"}`, CodeBadRequest, 3, `unknown field "form"`},
		{"unknown field long", `{"op":"ping","id":3,"` + long + `":1}`, CodeBadRequest, 3, `unknown field "aaaa`},
		{"field case", `{"op":"ping","ID":3}`, CodeBadRequest, 0, `unknown field "ID"`},
		{"duplicate", `{"op":"pub","id":3,"topic":"a","topic":"b","data":1}`, CodeBadRequest, 3, `duplicate field "topic"`},
		{"duplicate op", `{"op":"ping","op":"ping"}`, CodeBadRequest, 0, `duplicate field "op"`},
		{"duplicate escaped", `{"op":"ping","id":1,"\u0069d":2}`, CodeBadRequest, 1, `duplicate field "id"`},
		{"duplicate unknown", `{"op":"ping","x":1,"x":1}`, CodeBadRequest, 0, `unknown field "x"`},
		{"not allowed", `{"op":"ping","id":3,"topic":"a"}`, CodeBadRequest, 3, `field "topic" is not allowed in "ping"`},
		{"token in sub", `{"op":"sub","id":3,"topic":"a","token":"t"}`, CodeBadRequest, 3, `field "token" is not allowed in "sub"`},
		{"from in unsub", `{"op":"unsub","id":3,"topic":"a","from":1}`, CodeBadRequest, 3, `field "from" is not allowed in "unsub"`},
		{"key in sub", `{"op":"sub","topic":"a","key":"k"}`, CodeBadRequest, 0, `field "key" is not allowed in "sub"`},
		{"data in ack", `{"op":"ack","topic":"a","consumer":"c","offset":1,"data":1}`, CodeBadRequest, 0, `field "data" is not allowed in "ack"`},
		// auth.
		{"auth no token", `{"op":"auth","id":3}`, CodeBadRequest, 3, `missing field "token" in "auth"`},
		{"auth empty token", `{"op":"auth","id":3,"token":""}`, CodeBadRequest, 3, `field "token" must not be empty`},
		{"auth token number", `{"op":"auth","id":3,"token":5}`, CodeBadRequest, 3, `field "token" must be a string`},
		{"auth token surrogate", `{"op":"auth","id":3,"token":"\ud800"}`, CodeBadRequest, 3, `lone surrogate`},
		{"auth token low surrogate", `{"op":"auth","id":3,"token":"\udc00\ud800"}`, CodeBadRequest, 3, `lone surrogate`},
		{"auth token two high", `{"op":"auth","id":3,"token":"\ud800\ud800"}`, CodeBadRequest, 3, `lone surrogate`},
		// pub.
		{"pub no topic", `{"op":"pub","id":3,"data":1}`, CodeBadRequest, 3, `missing field "topic" in "pub"`},
		{"pub no data", `{"op":"pub","id":3,"topic":"a"}`, CodeBadRequest, 3, `missing field "data" in "pub"`},
		{"pub topic number", `{"op":"pub","id":3,"topic":1,"data":1}`, CodeBadRequest, 3, `field "topic" must be a string`},
		{"pub topic null", `{"op":"pub","id":3,"topic":null,"data":1}`, CodeBadRequest, 3, `field "topic" must be a string`},
		{"pub empty topic", `{"op":"pub","id":3,"topic":"","data":1}`, CodeInvalidTopic, 3, "empty topic"},
		{"pub topic 256", `{"op":"pub","id":3,"topic":"` + long + `","data":1}`, CodeInvalidTopic, 3, "256 bytes"},
		{"pub topic space", `{"op":"pub","id":3,"topic":"a b","data":1}`, CodeInvalidTopic, 3, `invalid character ' ' at byte 1`},
		{"pub topic empty segment", `{"op":"pub","id":3,"topic":"a..b","data":1}`, CodeInvalidTopic, 3, "empty segment"},
		{"pub topic trailing dot", `{"op":"pub","id":3,"topic":"a.","data":1}`, CodeInvalidTopic, 3, "empty segment"},
		{"pub topic unicode", `{"op":"pub","id":3,"topic":"caf\u00e9","data":1}`, CodeInvalidTopic, 3, "invalid character 'é'"},
		{"pub topic nul", `{"op":"pub","id":3,"topic":"a\u0000","data":1}`, CodeInvalidTopic, 3, `invalid character '\x00'`},
		{"pub pattern star", `{"op":"pub","id":3,"topic":"a.*","data":1}`, CodeInvalidTopic, 3, "allowed only in sub and unsub"},
		{"pub pattern gt", `{"op":"pub","id":3,"topic":">","data":1}`, CodeInvalidTopic, 3, "allowed only in sub and unsub"},
		{"pub bad pattern", `{"op":"pub","id":3,"topic":"a*","data":1}`, CodeInvalidTopic, 3, "where a topic name is needed"},
		{"pub key empty", `{"op":"pub","id":3,"topic":"a","data":1,"key":""}`, CodeBadRequest, 3, `field "key" must be 1 to 255 bytes`},
		{"pub key long", `{"op":"pub","id":3,"topic":"a","data":1,"key":"` + long + `"}`, CodeBadRequest, 3, `field "key"`},
		{"pub key space", `{"op":"pub","id":3,"topic":"a","data":1,"key":"a b"}`, CodeBadRequest, 3, `field "key"`},
		{"pub key unicode", `{"op":"pub","id":3,"topic":"a","data":1,"key":"é"}`, CodeBadRequest, 3, `field "key"`},
		{"pub key number", `{"op":"pub","id":3,"topic":"a","data":1,"key":1}`, CodeBadRequest, 3, `field "key" must be a string`},
		{"pub deep data", `{"op":"pub","id":3,"topic":"a","data":` + strings.Repeat("[", MaxDepth+1) + strings.Repeat("]", MaxDepth+1) + `}`, CodeBadRequest, 3, "deeper than 128"},
		// sub.
		{"sub no topic", `{"op":"sub","id":3}`, CodeBadRequest, 3, `missing field "topic" in "sub"`},
		{"sub bad topic", `{"op":"sub","id":3,"topic":"a.>.b"}`, CodeInvalidTopic, 3, "'>' must be the last segment"},
		{"sub bad star", `{"op":"sub","id":3,"topic":"a*"}`, CodeInvalidTopic, 3, "whole segment"},
		{"sub bad gt", `{"op":"sub","id":3,"topic":"a>"}`, CodeInvalidTopic, 3, "whole segment"},
		{"sub from 0", `{"op":"sub","id":3,"topic":"a","from":0}`, CodeBadRequest, 3, `field "from" must be an offset`},
		{"sub from negative", `{"op":"sub","id":3,"topic":"a","from":-5}`, CodeBadRequest, 3, `field "from"`},
		{"sub from fraction", `{"op":"sub","id":3,"topic":"a","from":1.5}`, CodeBadRequest, 3, `field "from"`},
		{"sub from big", `{"op":"sub","id":3,"topic":"a","from":9007199254740992}`, CodeBadRequest, 3, `field "from"`},
		{"sub from word", `{"op":"sub","id":3,"topic":"a","from":"oldest"}`, CodeBadRequest, 3, `field "from"`},
		{"sub from numeric string", `{"op":"sub","id":3,"topic":"a","from":"5"}`, CodeBadRequest, 3, `field "from"`},
		{"sub from null", `{"op":"sub","id":3,"topic":"a","from":null}`, CodeBadRequest, 3, `field "from"`},
		{"sub from surrogate", `{"op":"sub","id":3,"topic":"a","from":"\udc00"}`, CodeBadRequest, 3, `field "from"`},
		{"sub epoch empty", `{"op":"sub","id":3,"topic":"a","epoch":""}`, CodeBadRequest, 3, `field "epoch" must be 1 to 255 bytes`},
		{"sub epoch long", `{"op":"sub","id":3,"topic":"a","epoch":"` + long + `"}`, CodeBadRequest, 3, `field "epoch"`},
		{"sub epoch number", `{"op":"sub","id":3,"topic":"a","epoch":1}`, CodeBadRequest, 3, `field "epoch" must be a string`},
		{"sub if_gone latest", `{"op":"sub","id":3,"topic":"a","if_gone":"latest"}`, CodeBadRequest, 3, `field "if_gone" must be "earliest"`},
		{"sub if_gone empty", `{"op":"sub","id":3,"topic":"a","if_gone":""}`, CodeBadRequest, 3, `field "if_gone"`},
		{"sub if_gone true", `{"op":"sub","id":3,"topic":"a","if_gone":true}`, CodeBadRequest, 3, `field "if_gone"`},
		{"sub consumer empty", `{"op":"sub","id":3,"topic":"a","consumer":""}`, CodeBadRequest, 3, `field "consumer" must be 1 to 255 bytes`},
		{"sub consumer slash", `{"op":"sub","id":3,"topic":"a","consumer":"a/b"}`, CodeBadRequest, 3, `field "consumer"`},
		{"sub consumer star", `{"op":"sub","id":3,"topic":"a","consumer":"*"}`, CodeBadRequest, 3, `field "consumer"`},
		{"sub consumer long", `{"op":"sub","id":3,"topic":"a","consumer":"` + long + `"}`, CodeBadRequest, 3, `field "consumer"`},
		{"sub consumer number", `{"op":"sub","id":3,"topic":"a","consumer":7}`, CodeBadRequest, 3, `field "consumer" must be a string`},
		{"sub max_inflight 0", `{"op":"sub","id":3,"topic":"a","consumer":"c","max_inflight":0}`, CodeBadRequest, 3, `field "max_inflight" must be an integer from 1 to 10000`},
		{"sub max_inflight big", `{"op":"sub","id":3,"topic":"a","consumer":"c","max_inflight":10001}`, CodeBadRequest, 3, `field "max_inflight"`},
		{"sub max_inflight string", `{"op":"sub","id":3,"topic":"a","consumer":"c","max_inflight":"5"}`, CodeBadRequest, 3, `field "max_inflight"`},
		{"sub max_inflight alone", `{"op":"sub","id":3,"topic":"a","max_inflight":5}`, CodeBadRequest, 3, `needs a "consumer"`},
		{"sub last 0", `{"op":"sub","id":3,"topic":"a","last":0}`, CodeBadRequest, 3, `field "last" must be an integer from 1 to 10000`},
		{"sub last big", `{"op":"sub","id":3,"topic":"a","last":10001}`, CodeBadRequest, 3, `field "last"`},
		{"sub last negative", `{"op":"sub","id":3,"topic":"a","last":-1}`, CodeBadRequest, 3, `field "last"`},
		{"sub last fraction", `{"op":"sub","id":3,"topic":"a","last":1.5}`, CodeBadRequest, 3, `field "last"`},
		{"sub last string", `{"op":"sub","id":3,"topic":"a","last":"5"}`, CodeBadRequest, 3, `field "last"`},
		{"sub last null", `{"op":"sub","id":3,"topic":"a","last":null}`, CodeBadRequest, 3, `field "last"`},
		{"sub since negative", `{"op":"sub","id":3,"topic":"a","since":-1}`, CodeBadRequest, 3, `field "since" must be an integer from 0`},
		{"sub since fraction", `{"op":"sub","id":3,"topic":"a","since":1.5}`, CodeBadRequest, 3, `field "since"`},
		{"sub since exponent", `{"op":"sub","id":3,"topic":"a","since":1e12}`, CodeBadRequest, 3, `field "since"`},
		{"sub since big", `{"op":"sub","id":3,"topic":"a","since":9007199254740992}`, CodeBadRequest, 3, `field "since"`},
		{"sub since string", `{"op":"sub","id":3,"topic":"a","since":"2024-12-07"}`, CodeBadRequest, 3, `field "since"`},
		{"sub last and from", `{"op":"sub","id":3,"topic":"a","from":1,"last":5}`, CodeBadRequest, 3, `exclude each other`},
		{"sub since and from", `{"op":"sub","id":3,"topic":"a","from":"earliest","since":5}`, CodeBadRequest, 3, `exclude each other`},
		{"sub since and last", `{"op":"sub","id":3,"topic":"a","since":5,"last":5}`, CodeBadRequest, 3, `exclude each other`},
		{"ack epoch empty", `{"op":"ack","id":3,"topic":"a","consumer":"c","offset":1,"epoch":""}`, CodeBadRequest, 3, `field "epoch" must be 1 to 255 bytes`},
		{"ack epoch number", `{"op":"ack","id":3,"topic":"a","consumer":"c","offset":1,"epoch":7}`, CodeBadRequest, 3, `field "epoch" must be a string`},
		{"pattern last", `{"op":"sub","id":3,"topic":"a.*","last":1}`, CodeBadRequest, 3, `field "last" is not allowed with a pattern`},
		{"pattern from", `{"op":"sub","id":3,"topic":"a.*","from":1}`, CodeBadRequest, 3, `field "from" is not allowed with a pattern`},
		{"pattern from latest", `{"op":"sub","id":3,"topic":">","from":"latest"}`, CodeBadRequest, 3, `a pattern takes "since", "positions" and "if_gone"`},
		{"pattern positions not object", `{"op":"sub","id":3,"topic":"a.>","positions":[]}`, CodeBadRequest, 3, `field "positions" must be an object`},
		{"pattern position not object", `{"op":"sub","id":3,"topic":"a.>","positions":{"a.b":5}}`, CodeBadRequest, 3, `each position must be`},
		{"pattern position no from", `{"op":"sub","id":3,"topic":"a.>","positions":{"a.b":{"epoch":"e"}}}`, CodeBadRequest, 3, `each position must be`},
		{"pattern position from 0", `{"op":"sub","id":3,"topic":"a.>","positions":{"a.b":{"from":0}}}`, CodeBadRequest, 3, `each position must be`},
		{"pattern position from string", `{"op":"sub","id":3,"topic":"a.>","positions":{"a.b":{"from":"1"}}}`, CodeBadRequest, 3, `each position must be`},
		{"pattern position epoch empty", `{"op":"sub","id":3,"topic":"a.>","positions":{"a.b":{"from":1,"epoch":""}}}`, CodeBadRequest, 3, `each position must be`},
		{"pattern position epoch number", `{"op":"sub","id":3,"topic":"a.>","positions":{"a.b":{"from":1,"epoch":3}}}`, CodeBadRequest, 3, `each position must be`},
		{"pattern position duplicate from", `{"op":"sub","id":3,"topic":"a.>","positions":{"a.b":{"from":1,"from":2}}}`, CodeBadRequest, 3, `each position must be`},
		{"pattern position unknown", `{"op":"sub","id":3,"topic":"a.>","positions":{"a.b":{"from":1,"x":2}}}`, CodeBadRequest, 3, `unknown field "x" in a position`},
		{"pattern position not matching", `{"op":"sub","id":3,"topic":"a.>","positions":{"b.c":{"from":1}}}`, CodeBadRequest, 3, `does not match the pattern`},
		{"pattern position bad topic", `{"op":"sub","id":3,"topic":"a.>","positions":{"a..b":{"from":1}}}`, CodeInvalidTopic, 3, `field "positions": topic`},
		{"pattern position pattern", `{"op":"sub","id":3,"topic":"a.>","positions":{"a.*":{"from":1}}}`, CodeInvalidTopic, 3, `field "positions": topic`},
		{"pattern position duplicate", `{"op":"sub","id":3,"topic":"a.>","positions":{"a.b":{"from":1},"a\u002eb":{"from":2}}}`, CodeBadRequest, 3, `duplicate topic "a.b"`},
		{"pattern since negative", `{"op":"sub","id":3,"topic":"a.>","since":-1}`, CodeBadRequest, 3, `field "since"`},
		{"positions without pattern", `{"op":"sub","id":3,"topic":"a.b","positions":{}}`, CodeBadRequest, 3, `allowed only with a pattern`},
		{"pattern consumer", `{"op":"sub","id":3,"topic":"a.>","consumer":"c"}`, CodeBadRequest, 3, `field "consumer" is not allowed with a pattern`},
		{"pattern epoch", `{"op":"sub","id":3,"topic":"a.>","epoch":"e"}`, CodeBadRequest, 3, `field "epoch" is not allowed with a pattern`},
		{"pattern max_inflight", `{"op":"sub","id":3,"topic":"a.>","max_inflight":2}`, CodeBadRequest, 3, `field "max_inflight" is not allowed with a pattern`},
		// unsub.
		{"unsub no topic", `{"op":"unsub","id":3}`, CodeBadRequest, 3, `missing field "topic" in "unsub"`},
		{"unsub bad topic", `{"op":"unsub","id":3,"topic":"a.>.b"}`, CodeInvalidTopic, 3, `field "topic"`},
		// ack.
		{"ack no consumer", `{"op":"ack","id":3,"topic":"a","offset":1}`, CodeBadRequest, 3, `missing field "consumer" in "ack"`},
		{"ack no offset", `{"op":"ack","id":3,"topic":"a","consumer":"c"}`, CodeBadRequest, 3, `missing field "offset" in "ack"`},
		{"ack no topic", `{"op":"ack","id":3,"consumer":"c","offset":1}`, CodeBadRequest, 3, `missing field "topic" in "ack"`},
		{"ack offset 0", `{"op":"ack","id":3,"topic":"a","consumer":"c","offset":0}`, CodeBadRequest, 3, `field "offset" must be an integer from 1`},
		{"ack offset string", `{"op":"ack","id":3,"topic":"a","consumer":"c","offset":"1"}`, CodeBadRequest, 3, `field "offset"`},
		{"ack offset big", `{"op":"ack","id":3,"topic":"a","consumer":"c","offset":9007199254740992}`, CodeBadRequest, 3, `field "offset"`},
		{"ack pattern", `{"op":"ack","id":3,"topic":"a.*","consumer":"c","offset":1}`, CodeInvalidTopic, 3, "allowed only in sub and unsub"},
		{"ack bad consumer", `{"op":"ack","id":3,"topic":"a","consumer":"c d","offset":1}`, CodeBadRequest, 3, `field "consumer"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd, err := Decode([]byte(tt.in))
			if err == nil {
				t.Fatalf("Decode(%s) = %+v, want error %s", tt.in, *cmd, tt.code)
			}
			if cmd != nil {
				t.Errorf("Decode returned a command with an error")
			}
			if err.Close != 0 {
				t.Fatalf("Decode(%s): closing error %v, want err event", tt.in, err)
			}
			if err.Code != tt.code || err.ID != tt.id || !strings.Contains(err.Message, tt.msg) {
				t.Errorf("Decode(%s)\n got %s id=%d %q\nwant %s id=%d containing %q", tt.in, err.Code, err.ID, err.Message, tt.code, tt.id, tt.msg)
			}
			if err.Code.Description() == "" {
				t.Errorf("code %q is not in the table", err.Code)
			}
		})
	}
}

func TestDecodeInvalidJSON(t *testing.T) {
	tests := []struct {
		in  string
		msg string
	}{
		{``, "unexpected end of input"},
		{`   `, "unexpected end of input"},
		{`{`, "unexpected end"},
		{`{"op":"ping"`, "unexpected end"},
		{`{"op":"ping",}`, "expected a string"},
		{`{"op":"ping"}}`, "expected end of input"},
		{`{"op":"ping"} {"op":"ping"}`, "one object per line"},
		{`{"op":"ping"}x`, "expected end of input"},
		{`{'op':'ping'}`, "unexpected '''"},
		{`{op:"ping"}`, "unexpected 'o'"},
		{`{"op" "ping"}`, "expected ':'"},
		{`{"op":"ping" "id":1}`, "expected ',' or '}'"},
		{`{"op":"pub","topic":"a","data":[1,]}`, "expected a value"},
		{`{"op":"pub","topic":"a","data":[1 2]}`, "expected ',' or ']'"},
		{`{"op":"pub","topic":"a","data":{"a" 1}}`, "expected ':'"},
		{`{"op":"pub","topic":"a","data":{"a":1,}}`, "expected a string"},
		{`{"op":"pub","topic":"a","data":{1:1}}`, "expected a string"},
		{`{"op":"pub","topic":"a","data":[}`, "expected a value"},
		{`{"op":"pub","topic":"a","data":]}`, "expected a value"},
		{`{"op":"pub","topic":"a","data":}`, "expected a value"},
		{`{"op":"pub","topic":"a","data":01}`, "expected ',' or '}'"},
		{`{"op":"pub","topic":"a","data":1.}`, "digit after '.'"},
		{`{"op":"pub","topic":"a","data":.5}`, "expected a value"},
		{`{"op":"pub","topic":"a","data":1e}`, "exponent"},
		{`{"op":"pub","topic":"a","data":-}`, "expected a digit"},
		{`{"op":"pub","topic":"a","data":+1}`, "expected a value"},
		{`{"op":"pub","topic":"a","data":NaN}`, "expected a value"},
		{`{"op":"pub","topic":"a","data":Infinity}`, "expected a value"},
		{`{"op":"pub","topic":"a","data":tru}`, "expected true"},
		{`{"op":"pub","topic":"a","data":nul}`, "expected null"},
		{`{"op":"pub","topic":"a","data":True}`, "expected a value"},
		{`{"op":"pub","topic":"a","data":"\x"}`, "invalid escape"},
		{`{"op":"pub","topic":"a","data":"\u12"}`, `invalid \u escape`},
		{`{"op":"pub","topic":"a","data":"\u12G4"}`, `invalid \u escape`},
		{"{\"op\":\"pub\",\"topic\":\"a\",\"data\":\"a\tb\"}", "control character"},
		{"{\"op\":\"pub\",\"topic\":\"a\",\"data\":\"\xff\"}", "invalid UTF-8"},
		{"{\"op\":\"pub\",\"topic\":\"a\",\"data\":\"\xed\xa0\x80\"}", "invalid UTF-8"}, // UTF-8 encoded surrogate
		{"{\"op\":\"pub\",\"topic\":\"a\",\"data\":\"\xc0\xaf\"}", "invalid UTF-8"},     // overlong
		{"{\"op\":\"ping\",\"\xff\":1}", "invalid UTF-8"},
		{"\xef\xbb\xbf{\"op\":\"ping\"}", "unexpected byte 0xef"}, // BOM
		{`{"op":"ping","id":1` + "\x00" + `}`, "unexpected byte 0x0"},
		{`{"op":"pub","topic":"a","data":"unterminated}`, "unterminated string"},
		{`{"op":"pub","topic":"a","data":"\`, "unterminated string"},
		// Invalid JSON wins over field errors found before it.
		{`{"op":"nope","id":"x","topic":"a b","data":[1,2}`, "expected ',' or ']'"},
		{`[1,2`, "unexpected end"},
		{`"abc`, "unterminated"},
		{`1 2`, "expected end of input"},
		{strings.Repeat("[", 200000), "unexpected end"},
	}
	for i, tt := range tests {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			cmd, err := Decode([]byte(tt.in))
			if err == nil {
				t.Fatalf("Decode(%q) = %+v, want invalid JSON", tt.in, *cmd)
			}
			if err.Close != CloseInvalidData || err.Code != CodeBadRequest || err.ID != 0 {
				t.Errorf("Decode(%q) = %v, want close 1007", tt.in, err)
			}
			if !strings.Contains(err.Message, tt.msg) || !strings.HasPrefix(err.Message, "invalid JSON at byte ") {
				t.Errorf("Decode(%q): message %q, want it to contain %q", tt.in, err.Message, tt.msg)
			}
			if len(tt.in) < 1000 && json.Valid([]byte(tt.in)) && !strings.Contains(tt.msg, "UTF-8") {
				t.Errorf("encoding/json finds %q valid", tt.in)
			}
		})
	}
}

// TestDecodeAgreesWithEncodingJSON checks that the scanner accepts exactly
// the JSON encoding/json accepts (for valid UTF-8).
func TestDecodeAgreesWithEncodingJSON(t *testing.T) {
	values := []string{
		`0`, `-0`, `-0.0e-0`, `1E+9`, `123.456e789`, `1e-400`, `"\ud800"`, `"\udc00\ud800"`, `"\/"`,
		`"\u0000"`, `"€𝄞"`, `""`, `[]`, `{}`, `[[]]`, `[{}]`, `{"":{}}`, `{"a":1,"a":2}`, " [ 1 ,\t2 ] ",
		`[1,]`, `[,1]`, `{,}`, `{"a":}`, `{"a"}`, `00`, `-`, `1.e1`, `1e+`, `0x1`, `"\U0041"`, `"\'"`,
		`[1]]`, `[[1]`, `{"a":[}]}`, `truefalse`, `[true false]`, `"a" "b"`, "\"\x7f\"", `[-]`, `[--1]`,
		`{"a":1}}`, `{"a" :1 , "b": [ ] }`, `9999999999999999999999999999`, `[1e2,-1E-2,0.5]`,
	}
	for _, v := range values {
		obj := `{"op":"pub","topic":"a","data":` + v + `}`
		_, err := Decode([]byte(obj))
		valid := err == nil || err.Close == 0
		if want := json.Valid([]byte(obj)); valid != want {
			t.Errorf("data %s: decoder valid=%v, encoding/json valid=%v (%v)", v, valid, want, err)
		}
	}
}

func TestDecodeDeep(t *testing.T) {
	// 1 MiB of nested arrays: refused in linear time without recursion.
	n := 1 << 19
	obj := `{"op":"pub","id":5,"topic":"a","data":` + strings.Repeat("[", n) + strings.Repeat("]", n) + `}`
	start := time.Now()
	_, err := Decode([]byte(obj))
	if err == nil || err.Close != 0 || err.Code != CodeBadRequest || err.ID != 5 || !strings.Contains(err.Message, "deeper") {
		t.Fatalf("deep data: %v", err)
	}
	t.Logf("%d levels refused in %v", n, time.Since(start))

	// Deep and broken: invalid JSON, found past the depth limit.
	broken := obj[:len(obj)-2] + "}}"
	if _, err := Decode([]byte(broken)); err == nil || err.Close != CloseInvalidData {
		t.Fatalf("deep broken data: %v", err)
	}
	mixed := `{"op":"pub","topic":"a","data":` + strings.Repeat(`{"a":[`, n/2) + strings.Repeat(`]}`, n/2) + `}`
	if _, err := Decode([]byte(mixed)); err == nil || err.Close != 0 || !strings.Contains(err.Message, "deeper") {
		t.Fatalf("deep mixed data: %v", err)
	}

	// Exactly MaxDepth is fine.
	ok := `{"op":"pub","topic":"a","data":` + strings.Repeat(`{"a":[`, MaxDepth/2) + strings.Repeat(`]}`, MaxDepth/2) + `}`
	if _, err := Decode([]byte(ok)); err != nil {
		t.Fatalf("depth %d: %v", MaxDepth, err)
	}
	// Depth counts per value, not across siblings.
	siblings := `{"op":"pub","topic":"a","data":[` + strings.Repeat(strings.Repeat("[", MaxDepth-1)+strings.Repeat("]", MaxDepth-1)+",", 3) + `1]}`
	if _, err := Decode([]byte(siblings)); err != nil {
		t.Fatalf("siblings: %v", err)
	}
	// A deep value in an unknown field is refused too, as unknown.
	if _, err := Decode([]byte(`{"op":"ping","x":` + strings.Repeat("[", 300) + strings.Repeat("]", 300) + `}`)); err == nil || !strings.Contains(err.Message, `unknown field "x"`) {
		t.Fatalf("deep unknown: %v", err)
	}
}

// TestDataByteForByte checks that data is the exact slice of the input.
func TestDataByteForByte(t *testing.T) {
	for _, data := range []string{
		`{"b":2,"a":1}`, `{"a":1,"a":2}`, `1.000e+00`, `-0`, `"\u00e9\/é"`, `[ 1,2 ,  3 ]`,
		`{"nested":{"deep":[[[[null]]]]},"s":"\"}"}`, `"` + strings.Repeat("x", 1<<16) + `"`, `"\ud800"`,
	} {
		in := []byte(`{"op":"pub","topic":"t","data":` + data + `}`)
		cmd, err := Decode(in)
		if err != nil {
			t.Fatalf("%s: %v", data, err)
		}
		if string(cmd.Data) != data {
			t.Errorf("data %q, want %q", cmd.Data, data)
		}
		if &cmd.Data[0] != &in[len(`{"op":"pub","topic":"t","data":`)] {
			t.Errorf("data is not a slice of the input")
		}
		if cap(cmd.Data) != len(cmd.Data) {
			t.Errorf("data has spare capacity into the frame")
		}
	}
}

type frameItem struct {
	cmd *Command
	err *Error
}

func decodeFrame(t *testing.T, frame string, max int) ([]frameItem, *Error) {
	t.Helper()
	var items []frameItem
	ferr := DecodeFrame([]byte(frame), max, func(cmd *Command, err *Error) {
		if (cmd == nil) == (err == nil) {
			t.Fatalf("fn got cmd=%v err=%v: want exactly one", cmd, err)
		}
		if cmd != nil {
			c := *cmd
			items = append(items, frameItem{cmd: &c})
		} else {
			items = append(items, frameItem{err: err})
		}
	})
	return items, ferr
}

func TestDecodeFrame(t *testing.T) {
	t.Run("batch", func(t *testing.T) {
		frame := `{"op":"pub","id":1,"topic":"a","data":1}` + "\n" +
			`{"op":"nope","id":2}` + "\n" +
			"\n" +
			"  \t\r\n" +
			`{"op":"sub","id":3,"topic":"b.*"}` + "\r\n" +
			`{"op":"ping","id":4,"x":1}` + "\n" +
			`{"op":"ping"}` + "\n"
		items, ferr := decodeFrame(t, frame, 5)
		if ferr != nil {
			t.Fatal(ferr)
		}
		if len(items) != 5 {
			t.Fatalf("got %d items, want 5", len(items))
		}
		if c := items[0].cmd; c == nil || c.Op != OpPub || c.ID != 1 || string(c.Data) != "1" {
			t.Errorf("item 0: %+v", items[0])
		}
		if e := items[1].err; e == nil || e.Code != CodeUnknownOp || e.ID != 2 {
			t.Errorf("item 1: %+v", items[1])
		}
		if c := items[2].cmd; c == nil || c.Op != OpSub || !c.Pattern || c.ID != 3 {
			t.Errorf("item 2: %+v", items[2])
		}
		if e := items[3].err; e == nil || e.Code != CodeBadRequest || e.ID != 4 {
			t.Errorf("item 3: %+v", items[3])
		}
		if c := items[4].cmd; c == nil || c.Op != OpPing || c.ID != 0 {
			t.Errorf("item 4: %+v", items[4])
		}
	})
	t.Run("empty", func(t *testing.T) {
		for _, frame := range []string{"", "\n", "\r\n\r\n", " \n\t\n"} {
			items, ferr := decodeFrame(t, frame, 1)
			if ferr != nil || len(items) != 0 {
				t.Errorf("%q: %v %v", frame, items, ferr)
			}
		}
	})
	t.Run("many", func(t *testing.T) {
		var b strings.Builder
		for i := 1; i <= 1000; i++ {
			b.WriteString(`{"op":"pub","id":` + strconv.Itoa(i) + `,"topic":"t.` + strconv.Itoa(i) + `","data":[` + strconv.Itoa(i) + `]}` + "\n")
		}
		items, ferr := decodeFrame(t, b.String(), 1000)
		if ferr != nil || len(items) != 1000 {
			t.Fatalf("%d items, %v", len(items), ferr)
		}
		for i, it := range items {
			n := strconv.Itoa(i + 1)
			if it.cmd == nil || it.cmd.ID != uint64(i+1) || it.cmd.Topic != "t."+n || string(it.cmd.Data) != "["+n+"]" {
				t.Fatalf("item %d: %+v", i, it)
			}
		}
	})
	t.Run("limit", func(t *testing.T) {
		three := `{"op":"ping","id":1}` + "\n" + `{"op":"ping","id":2}` + "\n\n" + `{"op":"ping","id":3}` + "\n"
		if items, ferr := decodeFrame(t, three, 3); ferr != nil || len(items) != 3 {
			t.Errorf("limit 3: %d items, %v", len(items), ferr)
		}
		if items, ferr := decodeFrame(t, three, 0); ferr != nil || len(items) != 3 {
			t.Errorf("no limit: %d items, %v", len(items), ferr)
		}
		items, ferr := decodeFrame(t, three, 2)
		if ferr == nil || ferr.Close != CloseTooBig || ferr.Code != CodeMessageTooLarge || len(items) != 0 {
			t.Fatalf("limit 2: %d items, %v", len(items), ferr)
		}
		if !strings.Contains(ferr.Message, "at most 2 commands") {
			t.Errorf("message %q", ferr.Message)
		}
		// Blank lines do not count.
		if items, ferr := decodeFrame(t, "\n\n\n"+`{"op":"ping"}`+"\n\n\n", 1); ferr != nil || len(items) != 1 {
			t.Errorf("blank lines: %d items, %v", len(items), ferr)
		}
	})
	t.Run("invalid JSON stops", func(t *testing.T) {
		frame := `{"op":"ping","id":1}` + "\n" + `{"op":"ping","id":2` + "\n" + `{"op":"ping","id":3}`
		items, ferr := decodeFrame(t, frame, 10)
		if ferr == nil || ferr.Close != CloseInvalidData {
			t.Fatalf("got %v, want close 1007", ferr)
		}
		if len(items) != 1 || items[0].cmd == nil || items[0].cmd.ID != 1 {
			t.Errorf("items before the bad line: %+v", items)
		}
		// The position is in the frame.
		if want := "at byte " + strconv.Itoa(len(`{"op":"ping","id":1}`)+1+len(`{"op":"ping","id":2`)); !strings.Contains(ferr.Message, want) {
			t.Errorf("message %q, want %q", ferr.Message, want)
		}
	})
	t.Run("pretty printed", func(t *testing.T) {
		_, ferr := decodeFrame(t, "{\n\"op\":\"ping\"\n}", 10)
		if ferr == nil || ferr.Close != CloseInvalidData {
			t.Fatalf("got %v, want close 1007", ferr)
		}
	})
	t.Run("data aliases frame", func(t *testing.T) {
		frame := []byte(`{"op":"pub","topic":"a","data":"x"}` + "\n" + `{"op":"pub","topic":"a","data":"y"}`)
		var datas [][]byte
		DecodeFrame(frame, 0, func(cmd *Command, err *Error) { datas = append(datas, cmd.Data) })
		if len(datas) != 2 || &datas[1][0] != &frame[len(frame)-4] {
			t.Fatalf("data does not alias the frame")
		}
	})
}

func TestDecodeFrameAllocs(t *testing.T) {
	frame := []byte(`{"op":"pub","id":1,"topic":"chat.room1","data":{"text":"hello"}}` + "\n" + `{"op":"ping","id":2}`)
	allocs := testing.AllocsPerRun(100, func() {
		DecodeFrame(frame, 10, func(*Command, *Error) {})
	})
	// The decoder state and the topic string.
	if allocs > 3 {
		t.Errorf("%v allocations per frame", allocs)
	}
}
