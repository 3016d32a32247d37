package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// rawDial opens a WebSocket connection by hand: it keeps no goroutine and
// no buffer once set up, so that thousands of idle connections cost the
// load generator next to nothing and a measurement of the broker's memory
// in the same process is not distorted by client-side state.
func rawDial(rawURL, subprotocol string) (net.Conn, *bufio.Reader, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, nil, err
	}
	c, err := net.DialTimeout("tcp", u.Host, 10*time.Second)
	if err != nil {
		return nil, nil, err
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	var key [16]byte
	_, _ = rand.Read(key[:])
	path := u.RequestURI()
	req := "GET " + path + " HTTP/1.1\r\nHost: " + u.Host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + base64.StdEncoding.EncodeToString(key[:]) + "\r\nSec-WebSocket-Version: 13\r\n"
	if subprotocol != "" {
		req += "Sec-WebSocket-Protocol: " + subprotocol + "\r\n"
	}
	req += "\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		c.Close()
		return nil, nil, err
	}
	br := bufio.NewReaderSize(c, 4096)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		c.Close()
		return nil, nil, fmt.Errorf("upgrade refused: %s", resp.Status)
	}
	return c, br, nil
}

// rawWrite writes one masked text frame.
func rawWrite(c net.Conn, payload []byte) error {
	var hdr [14]byte
	hdr[0] = 0x81
	n := 2
	switch l := len(payload); {
	case l < 126:
		hdr[1] = 0x80 | byte(l)
	case l < 1<<16:
		hdr[1] = 0x80 | 126
		binary.BigEndian.PutUint16(hdr[2:], uint16(l))
		n = 4
	default:
		hdr[1] = 0x80 | 127
		binary.BigEndian.PutUint64(hdr[2:], uint64(l))
		n = 10
	}
	var mask [4]byte
	_, _ = rand.Read(mask[:])
	copy(hdr[n:], mask[:])
	n += 4
	buf := append(hdr[:n:n], payload...)
	for i := range payload {
		buf[n+i] ^= mask[i%4]
	}
	_, err := c.Write(buf)
	return err
}

// rawRead reads one unmasked server frame.
func rawRead(br *bufio.Reader) (opcode byte, payload []byte, err error) {
	var h [2]byte
	if _, err = io.ReadFull(br, h[:]); err != nil {
		return 0, nil, err
	}
	opcode = h[0] & 0x0f
	l := uint64(h[1] & 0x7f)
	switch l {
	case 126:
		var b [2]byte
		if _, err = io.ReadFull(br, b[:]); err != nil {
			return 0, nil, err
		}
		l = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err = io.ReadFull(br, b[:]); err != nil {
			return 0, nil, err
		}
		l = binary.BigEndian.Uint64(b[:])
	}
	if l > 16<<20 {
		return 0, nil, errors.New("frame too large")
	}
	payload = make([]byte, l)
	_, err = io.ReadFull(br, payload)
	return opcode, payload, err
}

// rawReadUntil reads frames until one contains want.
func rawReadUntil(br *bufio.Reader, want []byte) error {
	for {
		op, p, err := rawRead(br)
		if err != nil {
			return err
		}
		if op == 0x8 {
			return fmt.Errorf("closed by the server: %q", p)
		}
		if bytes.Contains(p, want) {
			return nil
		}
	}
}
