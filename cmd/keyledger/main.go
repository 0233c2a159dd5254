// Command keyledger is the event-sourced ledger of API keys: one binary that
// serves the HTTP API and runs the ledger's tools. It is the one place that
// reads flags and KEYLEDGER_* environment variables and wires the parts
// together.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `keyledger: an event-sourced ledger of API keys.

Usage:
  keyledger <command> [flags]

Commands:
  serve               run the HTTP API (generate, list, revoke, verify keys), relay
                      the ledger's events to NATS as notices, seal the audit log
  gateway             reverse proxy that forwards only requests whose x-api-key is
                      valid for their x-organization-id (cached, revocations via NATS)
  notices republish   publish the ledger again to the notices stream, from a position
  audit               public-key, export, verify, replay: the audit log, for security
                      teams ('keyledger audit --help')
  views rebuild       rebuild the list and lookup views from the log

Every flag can also be set by the KEYLEDGER_* environment variable named in
its help; a flag given on the command line wins. Run 'keyledger <command>
--help' for a command's flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "keyledger:", err)
		os.Exit(1)
	}
}

// run dispatches a command. It is main without the process: tests call it.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if done, err := groupHelp(args, usage, "command", stdout); done {
		return err
	}
	switch args[0] {
	case "serve":
		return serve(ctx, args[1:], getenv, stdout, stderr)
	case "gateway":
		return gateway(ctx, args[1:], getenv, stdout, stderr)
	case "notices":
		return noticesCmd(ctx, args[1:], getenv, stdout, stderr)
	case "audit":
		return auditCommand(ctx, args[1:], getenv, stdout, stderr)
	case "views":
		return viewsCommand(ctx, args[1:], getenv, stdout, stderr)
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", args[0])
	}
}

// groupHelp answers a command group (the binary, audit, views) called with
// no command, which is an error, or with a request for help, printing its
// usage; done says whether it did.
func groupHelp(args []string, usage, what string, stdout io.Writer) (done bool, err error) {
	if len(args) > 0 && args[0] != "-h" && args[0] != "--help" && args[0] != "help" {
		return false, nil
	}
	fmt.Fprint(stdout, usage)
	if len(args) == 0 {
		return true, fmt.Errorf("no %s given", what)
	}
	return true, flag.ErrHelp
}
