// Command ingest streams a text file into a new longctx session, one
// acknowledged segment at a time, then asks a question and prints the answer
// as it streams. After a transient failure (the server unreachable or
// restarting) it waits until GetSession answers and resends the segments from
// the first unacknowledged one; the server acknowledges any it applied anyway
// as duplicates (docs/service.md "Ingest").
//
//	longctx-go-ingest --server=localhost:50051 --file=book.txt --question="Who is it about?"
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "longctx.dev/gen/go/longctx/v1"
)

var (
	server       = flag.String("server", "localhost:50051", "longctxd address host:port")
	token        = flag.String("token", "", "bearer token")
	file         = flag.String("file", "", "UTF-8 text file to ingest (required)")
	question     = flag.String("question", "What is this text about?", "question to ask")
	maxTokens    = flag.Int("max-tokens", 64, "most answer tokens")
	segmentBytes = flag.Int("segment-bytes", 16<<10, "largest segment")
	keep         = flag.Bool("keep", false, "keep the session (default: delete it at the end)")
)

// segments cuts text at paragraph, line or word boundaries in the last three
// quarters of each window, never inside a UTF-8 character.
func segments(text string, max int) []string {
	var out []string
	for len(text) > max {
		end := max
		for end > 0 && !utf8.RuneStart(text[end]) {
			end--
		}
		window, cut := text[:end], end
		for _, sep := range []string{"\n\n", "\n", " "} {
			if at := strings.LastIndex(window, sep); at >= 0 && at >= len(window)/4 {
				cut = at + len(sep)
				break
			}
		}
		out = append(out, text[:cut])
		text = text[cut:]
	}
	if text != "" {
		out = append(out, text)
	}
	return out
}

func transient(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.Aborted, codes.Internal, codes.Unknown:
		return true
	}
	return false
}

// stream sends segs[from-1:] (segment i has seq i+1) on one Ingest stream and
// reads their acknowledgements, recording the last in *acked.
func stream(ctx context.Context, c pb.LongContextClient, id string, segs []string, from int64,
	acked *int64) error {
	s, err := c.Ingest(ctx)
	if err != nil {
		return err
	}
	go func() {
		for seq := from; seq <= int64(len(segs)); seq++ {
			seg := &pb.Segment{Seq: seq, Content: &pb.Segment_Text{Text: segs[seq-1]}}
			if s.Send(&pb.IngestRequest{SessionId: id, Segment: seg}) != nil {
				return // Recv reports the stream's error
			}
		}
		_ = s.CloseSend()
	}()
	for {
		ack, err := s.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		*acked = ack.Seq
		fmt.Fprintf(os.Stderr, "\rsegment %d/%d acknowledged, session tokens %d", ack.Seq, len(segs),
			ack.SessionTokens)
	}
}

func ingest(ctx context.Context, c pb.LongContextClient, id string, segs []string) error {
	acked, backoff := int64(0), 200*time.Millisecond
	for {
		err := stream(ctx, c, id, segs, acked+1, &acked)
		if err == nil {
			fmt.Fprintln(os.Stderr)
			return nil
		}
		if !transient(err) {
			return err
		}
		for {
			if backoff *= 2; backoff > 5*time.Second {
				backoff = 5 * time.Second
			}
			time.Sleep(backoff)
			info, gerr := c.GetSession(ctx, &pb.GetSessionRequest{SessionId: id})
			if status.Code(gerr) == codes.NotFound {
				return fmt.Errorf("session %s is gone (server restarted without a durable store?)", id)
			}
			if gerr == nil && info.NextSeq <= acked {
				return fmt.Errorf("session %s lost acknowledged segments", id)
			}
			if gerr == nil {
				break
			}
			if !transient(gerr) {
				return gerr
			}
		}
		log.Printf("reconnected: resending from segment %d", acked+1)
	}
}

func ask(ctx context.Context, c pb.LongContextClient, id string) error {
	g, err := c.Generate(ctx, &pb.GenerateRequest{SessionId: id, Prompt: *question,
		MaxTokens: int32(*maxTokens)})
	if err != nil {
		return err
	}
	for {
		r, err := g.Recv()
		if err == io.EOF {
			return errors.New("the answer ended without a completion")
		}
		if err != nil {
			return err
		}
		switch e := r.Event.(type) {
		case *pb.GenerateResponse_Chunk:
			fmt.Print(e.Chunk.Text)
		case *pb.GenerateResponse_Complete:
			fmt.Printf("\n[%s, %d tokens generated, session %d tokens]\n", e.Complete.FinishReason,
				e.Complete.Usage.GeneratedTokens, e.Complete.Usage.SessionTokens)
			return nil
		}
	}
}

func run() error {
	flag.Parse()
	if *file == "" {
		return errors.New("--file is required")
	}
	text, err := os.ReadFile(*file)
	if err != nil {
		return err
	}
	if !utf8.Valid(text) {
		return fmt.Errorf("%s is not UTF-8", *file)
	}
	conn, err := grpc.Dial(*server, grpc.WithInsecure())
	if err != nil {
		return err
	}
	defer conn.Close()
	c := pb.NewLongContextClient(conn)
	ctx := context.Background()
	if *token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+*token)
	}
	session, err := c.CreateSession(ctx, &pb.CreateSessionRequest{})
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "session %s\n", session.Id)
	if !*keep {
		defer c.DeleteSession(ctx, &pb.DeleteSessionRequest{SessionId: session.Id})
	}
	if err := ingest(ctx, c, session.Id, segments(string(text), *segmentBytes)); err != nil {
		return err
	}
	return ask(ctx, c, session.Id)
}

func main() {
	if err := run(); err != nil {
		log.Fatal(err)
	}
}
