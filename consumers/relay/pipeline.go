package relay

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go/jetstream"
)

// pipeline is the relay's JetStream publisher, a watermill
// message.Publisher: it sends each message without waiting for the
// acknowledgement of the one before, and JetStream still stores them in the
// order sent, or not at all.
//
// Waiting for each acknowledgement, as watermill-nats' publisher does, costs
// a round trip through NATS per event, and the write and read system calls
// at each end of it: in the generate benchmark, 130 µs of CPU per key against
// 45 µs pipelined.
//
// Order holds because every message but the first after a Settle carries
// Nats-Expected-Last-Msg-Id, the Nats-Msg-Id of the message sent before it:
// JetStream stores it only if that one is the last it stored. So once one
// message is not stored (a lost connection, a timeout, the stream gone),
// none sent after it is, and the relay sends again from it. A message that
// JetStream already holds is acknowledged as a duplicate of its Nats-Msg-Id
// before the expectation is checked, so a relay that starts again behind
// what the stream holds goes through as before.
//
// Pipelining is for a stream of one replica, which is what keyledger makes.
// On a replicated stream, nats-server (2.15) checks the expectation only as
// each replica applies the message, and a refusal there is a write error
// that stops the stream until its servers are repaired (seen with a 3-node
// embedded cluster): one refused message would end every notice. So on a
// replicated stream the pipeline sends one message
// at a time, each once the one before is stored, as watermill-nats'
// publisher does, without the header. It learns the replicas from the
// stream's configuration (follow), read when the relay makes the stream and
// at each heartbeat; a change takes effect at the next run.
//
// Messages are marshaled with watermill-nats' NATSMarshaler, as its
// publisher would: the watermill metadata become headers.
type pipeline struct {
	js     jetstream.JetStream // with PublishAsyncTimeout set
	stream string
	// replicated is what follow last learned: the stream has more than one
	// replica.
	replicated atomic.Bool

	mu      sync.Mutex
	sent    []jetstream.PubAckFuture // since the last Settle, in order
	lastID  string                   // Nats-Msg-Id of the last one sent
	serial  bool                     // this run sends one message at a time
	stored  int                      // by this run, if serial
	marshal wmnats.NATSMarshaler
}

// newPipeline returns a pipeline publishing to stream through js, whose
// async publications must time out (jetstream.WithPublishAsyncTimeout).
func newPipeline(js jetstream.JetStream, stream string) *pipeline {
	return &pipeline{js: js, stream: stream}
}

// follow takes note of the stream's configuration.
func (p *pipeline) follow(cfg jetstream.StreamConfig) { p.replicated.Store(cfg.Replicas > 1) }

// Publish sends messages to subject (watermill's topic) with Nats-Msg-Id =
// the message UUID; it returns once they are sent (on a replicated stream:
// once they are stored). An error means the message it names was not sent
// (nor any after it), as when NATS is unreachable, or on a replicated
// stream not stored.
func (p *pipeline) Publish(subject string, messages ...*message.Message) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, msg := range messages {
		m, err := p.marshal.Marshal(subject, msg)
		if err != nil {
			return err
		}
		if len(p.sent) == 0 && p.stored == 0 { // a new run
			p.serial = p.replicated.Load()
		}
		opts := []jetstream.PublishOpt{jetstream.WithMsgID(msg.UUID), jetstream.WithExpectStream(p.stream)}
		if len(p.sent) > 0 && !p.serial {
			opts = append(opts, jetstream.WithExpectLastMsgID(p.lastID))
		}
		f, err := p.js.PublishMsgAsync(m, opts...)
		if err != nil {
			return err
		}
		if p.serial {
			select {
			case <-f.Ok():
				p.stored++
				continue
			case err := <-f.Err(): // it times out after PublishTimeout
				return err
			}
		}
		p.sent = append(p.sent, f)
		p.lastID = msg.UUID
	}
	return nil
}

// Close does nothing: the connection is the caller's.
func (p *pipeline) Close() error { return nil }

// Settle waits until every message sent since the last Settle is
// acknowledged or has failed, and reports how many of them, from the first,
// JetStream stored before the first that it did not, and why that one was
// not. Every message of the run is settled when it returns, unless ctx ended
// first; the next message sent starts a new run. While it waits, it calls
// onTick at each tick.
func (p *pipeline) Settle(ctx context.Context, tick <-chan time.Time, onTick func()) (stored int, err error) {
	p.mu.Lock()
	sent, before := p.sent, p.stored
	p.sent, p.stored = nil, 0
	p.mu.Unlock()
	defer func() { stored += before }()
	stored = len(sent)
	for i, f := range sent {
		var ferr error
	wait:
		for {
			// An answer already there is taken before a tick: each tick's
			// work can take a while when NATS is down (a heartbeat waits
			// up to PublishTimeout), and a random choice among ready cases
			// would spend one per message.
			select {
			case <-f.Ok():
				break wait
			case ferr = <-f.Err():
				break wait
			default:
			}
			select {
			case <-f.Ok():
				break wait
			case ferr = <-f.Err():
				break wait
			case <-ctx.Done():
				return min(stored, i), ctx.Err()
			case <-tick:
				onTick()
			}
		}
		if ferr != nil && i < stored {
			stored, err = i, ferr
		}
	}
	return stored, err
}

// wrongLastMsgID is the JetStream error code of a message refused because
// the stream's last message is not the one it expected (nats-server's
// JSStreamWrongLastMsgIDErrF): a message before it in the run was not
// stored, or another publisher (a republish, a relay losing the lead)
// stored one in between.
const wrongLastMsgID jetstream.ErrorCode = 10070

// outOfTurn tells whether err only says that a message was refused for
// following one that was not stored or another publisher's: sending it again
// at once, first of a run, is the remedy.
func outOfTurn(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == wrongLastMsgID
}
