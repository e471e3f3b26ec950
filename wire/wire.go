// Package wire encodes and decodes hpfeeds frames.
//
// A frame is a big-endian uint32 length (counting the whole frame), one
// opcode byte and a body. The package holds no I/O policy: Split finds frames
// in a caller's buffer, the Append functions write frames into a caller's
// buffer, and decoded fields alias the input without copying.
package wire

import (
	"crypto/sha1"
	"encoding/binary"
	"errors"
	"fmt"
)

// Op is a frame's opcode.
type Op uint8

// The opcodes of the hpfeeds protocol.
const (
	OpError       Op = 0
	OpInfo        Op = 1
	OpAuth        Op = 2
	OpPublish     Op = 3
	OpSubscribe   Op = 4
	OpUnsubscribe Op = 5
)

func (o Op) String() string {
	switch o {
	case OpError:
		return "ERROR"
	case OpInfo:
		return "INFO"
	case OpAuth:
		return "AUTH"
	case OpPublish:
		return "PUBLISH"
	case OpSubscribe:
		return "SUBSCRIBE"
	case OpUnsubscribe:
		return "UNSUBSCRIBE"
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Valid reports whether o is one of the six opcodes.
func (o Op) Valid() bool { return o <= OpUnsubscribe }

const (
	// HeaderLen is the size of the length and opcode prefix.
	HeaderLen = 5
	// HashLen is the size of the SHA1 digest an AUTH carries.
	HashLen = sha1.Size
	// NonceLen is the size of the nonce in INFO; the C client reads it as a
	// 32-bit integer, so it is always exactly four bytes.
	NonceLen = 4
	// MaxStr8 is the longest ident, channel or broker name a str8 can carry.
	MaxStr8 = 255
	// MaxFrameLen is the largest frame that may ever be sent: the Python,
	// Ruby and JS clients read the length as a signed 32-bit integer.
	MaxFrameLen = 1<<31 - 1
	// PreAuthMaxLen bounds any frame before authentication: an AUTH with the
	// longest ident and a SHA1 digest (5 + 256 + 20).
	PreAuthMaxLen = HeaderLen + 256 + HashLen
)

// Decoding errors. Each means the stream cannot be trusted any more.
var (
	ErrShortLength = errors.New("hpfeeds: frame length under 5")
	ErrTooLarge    = errors.New("hpfeeds: frame larger than allowed")
	ErrUnknownOp   = errors.New("hpfeeds: unknown opcode")
	ErrBadBody     = errors.New("hpfeeds: frame body too short for its fields")
)

// Limits is the largest frame length accepted for each opcode.
type Limits [OpUnsubscribe + 1]int

// UniformLimits allows every opcode up to n bytes.
func UniformLimits(n int) Limits {
	var l Limits
	for i := range l {
		l[i] = n
	}
	return l
}

// Header validates a frame header against limits and returns the total frame
// length and opcode. b must hold at least HeaderLen bytes.
func Header(b []byte, limits *Limits) (int, Op, error) {
	n := binary.BigEndian.Uint32(b)
	op := Op(b[4])
	if n < HeaderLen {
		return 0, op, ErrShortLength
	}
	if !op.Valid() {
		return 0, op, ErrUnknownOp
	}
	if n > uint32(limits[op]) || n > MaxFrameLen {
		return 0, op, ErrTooLarge
	}
	return int(n), op, nil
}

// Split looks for one whole frame at the start of b. It returns the frame
// (aliasing b) and its length; a length of 0 with a nil error means b does
// not hold a whole frame yet. want is the length of the frame in progress
// once its header is known, so a reader can grow its buffer in one step.
func Split(b []byte, limits *Limits) (f Frame, n, want int, err error) {
	n, want, err = f.split(b, limits)
	return f, n, want, err
}

// split is Split decoding into f, which it leaves alone unless a whole
// frame (or a header it refuses) is there.
func (f *Frame) split(b []byte, limits *Limits) (n, want int, err error) {
	if len(b) < HeaderLen {
		return 0, HeaderLen, nil
	}
	size, op, err := Header(b, limits)
	if err != nil {
		*f = Frame{Op: op}
		return 0, 0, err
	}
	if len(b) < size {
		return 0, size, nil
	}
	return size, size, f.decode(op, b[:size])
}

// Frame is a decoded frame. Its slices alias the buffer it was decoded from.
type Frame struct {
	Op Op
	// Raw is the whole frame, header included.
	Raw []byte
	// Ident is the sender's ident (AUTH, PUBLISH, SUBSCRIBE, UNSUBSCRIBE) or
	// the broker name (INFO).
	Ident []byte
	// Channel is set for PUBLISH, SUBSCRIBE and UNSUBSCRIBE.
	Channel []byte
	// Payload is the PUBLISH payload, the AUTH hash, the INFO nonce or the
	// ERROR text.
	Payload []byte
}

// Decode parses the body of a whole frame raw whose opcode is op.
func Decode(op Op, raw []byte) (Frame, error) {
	var f Frame
	err := f.decode(op, raw)
	return f, err
}

// decode is Decode into f. Every field is set, by plain stores: a
// composite literal assigned through the pointer is built aside and
// copied, which took as long as the parsing.
func (f *Frame) decode(op Op, raw []byte) error {
	body := raw[HeaderLen:]
	var ident, channel, payload []byte
	var err error
	ok := true
	switch op {
	case OpError:
		payload = body
	case OpInfo, OpAuth:
		ident, payload, ok = str8(body)
	case OpPublish:
		if ident, body, ok = str8(body); ok {
			channel, payload, ok = str8(body)
		}
	case OpSubscribe, OpUnsubscribe:
		ident, channel, ok = str8(body)
	default:
		err = ErrUnknownOp
	}
	if !ok {
		err = ErrBadBody
	}
	f.Op, f.Raw, f.Ident, f.Channel, f.Payload = op, raw, ident, channel, payload
	return err
}

// PublishHead returns the ident and channel of a PUBLISH from the start of
// the frame (header included) once both have arrived, so a receiver can
// check them before buffering the body. ok is false until then.
func PublishHead(b []byte) (ident, channel []byte, ok bool) {
	if len(b) < HeaderLen || Op(b[4]) != OpPublish {
		return nil, nil, false
	}
	if n := binary.BigEndian.Uint32(b); uint64(n) < uint64(len(b)) {
		b = b[:n] // the start of the next frame is not this one's body
	}
	if ident, b, ok = str8(b[HeaderLen:]); !ok {
		return nil, nil, false
	}
	channel, _, ok = str8(b)
	return ident, channel, ok
}

func str8(b []byte) (s, rest []byte, ok bool) {
	if len(b) == 0 || int(b[0]) > len(b)-1 {
		return nil, nil, false
	}
	n := int(b[0]) + 1
	return b[1:n], b[n:], true
}

func appendHeader(dst []byte, op Op, bodyLen int) []byte {
	return append(binary.BigEndian.AppendUint32(dst, uint32(HeaderLen+bodyLen)), byte(op))
}

func appendStr8(dst, s []byte) []byte {
	return append(append(dst, byte(len(s))), s...)
}

func checkStr8(what string, s []byte) error {
	if len(s) > MaxStr8 {
		return fmt.Errorf("hpfeeds: %s is %d bytes, over the 255 a str8 holds", what, len(s))
	}
	return nil
}

func checkLen(n int) error {
	if n > MaxFrameLen {
		return fmt.Errorf("hpfeeds: frame of %d bytes is over the 2^31-1 clients accept", n)
	}
	return nil
}

// AppendError appends an ERROR frame carrying msg.
func AppendError(dst []byte, msg string) []byte {
	dst = appendHeader(dst, OpError, len(msg))
	return append(dst, msg...)
}

// AppendInfo appends an INFO frame with the broker name and nonce.
func AppendInfo(dst []byte, name string, nonce [NonceLen]byte) ([]byte, error) {
	if err := checkStr8("broker name", []byte(name)); err != nil {
		return dst, err
	}
	dst = appendHeader(dst, OpInfo, 1+len(name)+NonceLen)
	dst = appendStr8(dst, []byte(name))
	return append(dst, nonce[:]...), nil
}

// AppendAuth appends an AUTH frame answering nonce with ident and secret.
func AppendAuth(dst []byte, nonce []byte, ident, secret string) ([]byte, error) {
	if err := checkStr8("ident", []byte(ident)); err != nil {
		return dst, err
	}
	h := Hash(nonce, []byte(secret))
	dst = appendHeader(dst, OpAuth, 1+len(ident)+HashLen)
	dst = appendStr8(dst, []byte(ident))
	return append(dst, h[:]...), nil
}

// AppendPublish appends a PUBLISH frame.
func AppendPublish(dst, ident, channel, payload []byte) ([]byte, error) {
	if err := checkStr8("ident", ident); err != nil {
		return dst, err
	}
	if err := checkStr8("channel", channel); err != nil {
		return dst, err
	}
	body := 2 + len(ident) + len(channel) + len(payload)
	if err := checkLen(HeaderLen + body); err != nil {
		return dst, err
	}
	dst = appendHeader(dst, OpPublish, body)
	dst = appendStr8(dst, ident)
	dst = appendStr8(dst, channel)
	return append(dst, payload...), nil
}

// AppendSubscribe appends a SUBSCRIBE frame.
func AppendSubscribe(dst, ident, channel []byte) ([]byte, error) {
	return appendSub(dst, OpSubscribe, ident, channel)
}

// AppendUnsubscribe appends an UNSUBSCRIBE frame.
func AppendUnsubscribe(dst, ident, channel []byte) ([]byte, error) {
	return appendSub(dst, OpUnsubscribe, ident, channel)
}

func appendSub(dst []byte, op Op, ident, channel []byte) ([]byte, error) {
	if err := checkStr8("ident", ident); err != nil {
		return dst, err
	}
	body := 1 + len(ident) + len(channel)
	if err := checkLen(HeaderLen + body); err != nil {
		return dst, err
	}
	dst = appendHeader(dst, op, body)
	dst = appendStr8(dst, ident)
	return append(dst, channel...), nil
}

// Hash is SHA1(nonce ‖ secret), the proof an AUTH carries.
func Hash(nonce, secret []byte) [HashLen]byte {
	h := sha1.New()
	h.Write(nonce)
	h.Write(secret)
	var out [HashLen]byte
	h.Sum(out[:0])
	return out
}
