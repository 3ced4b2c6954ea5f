// Package cli holds what the project's commands share about their command
// lines.
package cli

import (
	"flag"
	"fmt"
	"os"
	"strings"
)

// ApplyEnv sets every flag of fs that has a <prefix><FLAG> variable in the
// environment (prefix "HEXD_" and flag -batch-window read HEXD_BATCH_WINDOW).
// Call it before fs.Parse, so the command line wins over the environment.
// The first value a flag refuses is the error, naming the variable.
func ApplyEnv(fs *flag.FlagSet, prefix string) error {
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		name := prefix + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(name); ok && err == nil {
			if e := f.Value.Set(v); e != nil {
				err = fmt.Errorf("%s=%q: %w", name, v, e)
			}
		}
	})
	return err
}
