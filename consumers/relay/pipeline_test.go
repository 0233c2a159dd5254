package relay

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/internal/natstest"
)

// pipelineStream makes a stream of the test's own, which refuses messages
// over 200 bytes, and a pipeline that publishes to it.
func pipelineStream(t *testing.T) (jetstream.JetStream, *pipeline, string) {
	t.Helper()
	nc := natstest.Connect(t, natstest.URL())
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(5*time.Second))
	require.NoError(t, err)
	t.Cleanup(js.CleanupPublisher)
	name := "PIPE_" + natstest.Random(10)
	subject := "pipe" + natstest.Random(10)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{subject}, MaxMsgSize: 200,
		Storage: jetstream.MemoryStorage})
	require.NoError(t, err, natstest.Hint)
	t.Cleanup(func() { _ = js.DeleteStream(context.Background(), name) })
	return js, newPipeline(js, name), subject
}

func storedIDs(t *testing.T, js jetstream.JetStream, stream string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	require.NoError(t, err)
	var ids []string
	for seq := uint64(1); seq <= s.CachedInfo().State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		require.NoError(t, err)
		ids = append(ids, m.Header.Get(jetstream.MsgIDHeader))
	}
	return ids
}

// waitStored waits until the stream holds n messages.
func waitStored(t *testing.T, js jetstream.JetStream, stream string, n uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		s, err := js.Stream(ctx, stream)
		cancel()
		require.NoError(t, err)
		if s.CachedInfo().State.Msgs >= n {
			return
		}
		require.True(t, time.Now().Before(deadline), "the stream holds %d messages, not %d", s.CachedInfo().State.Msgs, n)
		time.Sleep(5 * time.Millisecond)
	}
}

func settle(t *testing.T, p *pipeline) (int, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return p.Settle(ctx, nil, nil)
}

func TestPipelineStoresNothingAfterAMessageItCouldNotStore(t *testing.T) {
	t.Parallel()
	js, p, subject := pipelineStream(t)
	for _, m := range []*message.Message{
		message.NewMessage("a", []byte("first")),
		message.NewMessage("b", []byte(strings.Repeat("x", 500))), // over the stream's limit
		message.NewMessage("c", []byte("third")),
		message.NewMessage("d", []byte("fourth")),
	} {
		require.NoError(t, p.Publish(subject, m))
	}
	stored, err := settle(t, p)
	require.Equal(t, 1, stored)
	require.ErrorContains(t, err, "message size exceeds maximum")
	require.False(t, outOfTurn(err), "the first failure is the cause, not the refusals that follow it")
	require.Equal(t, []string{"a"}, storedIDs(t, js, p.stream), "c and d must not be stored after b, which was not")

	// Sent again from the first not stored (without b, which can never
	// be), the rest goes through, first of a new run.
	for _, m := range []*message.Message{message.NewMessage("c", []byte("third")), message.NewMessage("d", []byte("fourth"))} {
		require.NoError(t, p.Publish(subject, m))
	}
	stored, err = settle(t, p)
	require.NoError(t, err)
	require.Equal(t, 2, stored)
	require.Equal(t, []string{"a", "c", "d"}, storedIDs(t, js, p.stream))
}

func TestPipelineRefusesToInterleaveWithAnotherPublisher(t *testing.T) {
	t.Parallel()
	js, p, subject := pipelineStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, p.Publish(subject, message.NewMessage("a", []byte("1")), message.NewMessage("b", []byte("2"))))
	waitStored(t, js, p.stream, 2)
	_, err := js.Publish(ctx, subject, []byte("other"), jetstream.WithMsgID("x"))
	require.NoError(t, err)
	require.NoError(t, p.Publish(subject, message.NewMessage("c", []byte("3"))))
	stored, err := settle(t, p)
	require.Equal(t, 2, stored)
	require.True(t, outOfTurn(err), "c expected b as the last message: %v", err)

	// Sent again, first of a new run, c expects nothing.
	require.NoError(t, p.Publish(subject, message.NewMessage("c", []byte("3"))))
	stored, err = settle(t, p)
	require.NoError(t, err)
	require.Equal(t, 1, stored)

	// A message already stored is acknowledged as a duplicate whatever it
	// expects, so a run that starts behind the stream (a relay that
	// restarted from an older checkpoint) goes through.
	require.NoError(t, p.Publish(subject, message.NewMessage("b", []byte("2")), message.NewMessage("c", []byte("3")),
		message.NewMessage("d", []byte("4"))))
	stored, err = settle(t, p)
	require.NoError(t, err)
	require.Equal(t, 3, stored)
	require.Equal(t, []string{"a", "b", "x", "c", "d"}, storedIDs(t, js, p.stream))
}

// On a replicated stream a refused expectation would stop the stream, so
// there the pipeline sends one message at a time, without the header: a
// message stored by another publisher in between does not stop the next.
func TestPipelineSendsOneAtATimeToAReplicatedStream(t *testing.T) {
	t.Parallel()
	js, p, subject := pipelineStream(t)
	p.follow(jetstream.StreamConfig{Replicas: 3}) // the test's stream has one; the pipeline goes by what it is told
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, p.Publish(subject, message.NewMessage("a", []byte("1"))))
	require.Len(t, storedIDs(t, js, p.stream), 1, "stored when Publish returned")
	_, err := js.Publish(ctx, subject, []byte("other"), jetstream.WithMsgID("x"))
	require.NoError(t, err)
	require.NoError(t, p.Publish(subject, message.NewMessage("b", []byte("2"))))
	require.ErrorContains(t, p.Publish(subject, message.NewMessage("c", []byte(strings.Repeat("x", 500)))),
		"message size exceeds maximum", "a message not stored is Publish's error")
	stored, err := settle(t, p)
	require.NoError(t, err)
	require.Equal(t, 2, stored)
	require.Equal(t, []string{"a", "x", "b"}, storedIDs(t, js, p.stream))
}
