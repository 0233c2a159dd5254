package main

import (
	"context"
	"fmt"
	"io"

	"github.com/keyledger/keyledger/projections"
)

const viewsUsage = `Usage: keyledger views <command> [flags]

Commands:
  rebuild  rebuild the list and lookup views from the log, beside the live
           ones, and swap them in

Run 'keyledger views <command> --help' for a command's flags.
`

func viewsCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if done, err := groupHelp(args, viewsUsage, "views command", stdout); done {
		return err
	}
	if args[0] != "rebuild" {
		fmt.Fprint(stderr, viewsUsage)
		return fmt.Errorf("unknown views command %q", args[0])
	}
	cfg, err := parseCommand(command{name: "views rebuild", settings: []string{"database-url"},
		summary: `Rebuilds the list and lookup views from the event log while the service
keeps serving: the new views are built beside the live ones from one snapshot
of the log, then one short transaction applies what committed meanwhile and
swaps them in under the same names (commands and reads wait for that
transaction only). Progress goes to stderr.`}, args[1:], getenv, stderr)
	if err != nil {
		return err
	}
	pool, err := connectDatabase(ctx, cfg.DatabaseURL, toolPoolConns)
	if err != nil {
		return err
	}
	defer pool.Close()
	p := newProgress(stderr, "replayed events into the new views")
	var total int
	if err := projections.RebuildAside(ctx, pool, func(n int) { total = n; p.report(uint64(n)) }); err != nil {
		return err
	}
	p.done(uint64(total))
	fmt.Fprintf(stdout, "keyledger: the list and lookup views were rebuilt from %d events and swapped in\n", total)
	return nil
}
