//go:build !linux

package broker

// Off Linux every write goes through the writer goroutine.
const inlineFlush = false

type nonBlockingWrite struct{}

func (q *sendQueue) writeNow([][]byte) (int64, error) { return 0, nil }
