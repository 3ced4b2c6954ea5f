package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/internal/engine"
)

// runToken implements `hexdispatch token`: it mints a bearer token with the
// server's secret (-secret or HEXD_TOKEN_SECRET, else the dev secret a
// flagless start wrote).
func runToken(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("hexdispatch token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	role := fs.String("role", "", "driver | rider | ops")
	sub := fs.String("sub", "", "subject: the driver, rider or ops user ID")
	ttl := fs.Duration("ttl", 24*time.Hour, "how long the token is valid")
	secret := fs.String("secret", os.Getenv("HEXD_TOKEN_SECRET"), "token secret of the server (default: HEXD_TOKEN_SECRET, else the dev secret)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("token: unexpected argument %q", fs.Arg(0))
	}
	if *ttl <= 0 || *ttl > 366*24*time.Hour {
		return fmt.Errorf("token: -ttl %v must be in (0, 366 days]", *ttl)
	}
	s, _, err := engine.TokenSecret(*secret)
	if err != nil {
		return err
	}
	signer, err := dispatch.NewSigner(s)
	if err != nil {
		return fmt.Errorf("token: %w", err)
	}
	tok, err := signer.Mint(dispatch.Claims{Subject: *sub, Role: dispatch.Role(*role), Expires: time.Now().Add(*ttl)})
	if err != nil {
		return fmt.Errorf("token: %w (use -role driver|rider|ops -sub ID)", err)
	}
	fmt.Fprintln(stdout, tok)
	return nil
}
