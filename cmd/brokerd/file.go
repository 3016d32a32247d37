package main

import (
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// readConfigFile reads a YAML mapping whose keys are flag names and
// returns each value as the string the flag would take. Lists become
// comma-separated (allowed-origins: [a, b]). Unknown keys are errors, so a
// typo does not pass silently.
//
// The key policies is the exception: its value is returned as it is, for
// parsePolicies.
func readConfigFile(path string, fs *flag.FlagSet) (map[string]string, any, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("config file: %w", err)
	}
	var raw map[string]any
	if err := yaml.Unmarshal(b, &raw); err != nil {
		return nil, nil, fmt.Errorf("config file %s: not a YAML mapping of flag names to values: %v", path, err)
	}
	out := make(map[string]string, len(raw))
	var unknown []string
	var policies any
	for k, v := range raw {
		if k == "policies" {
			policies = v
			continue
		}
		if fs.Lookup(k) == nil || k == "config" {
			unknown = append(unknown, k)
			continue
		}
		switch x := v.(type) {
		case nil:
			out[k] = ""
		case []any:
			parts := make([]string, len(x))
			for i, p := range x {
				parts[i] = fmt.Sprint(p)
			}
			out[k] = strings.Join(parts, ",")
		case map[string]any:
			return nil, nil, fmt.Errorf("config file %s: %s: a value, not a mapping, is expected", path, k)
		default:
			out[k] = fmt.Sprint(x)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return nil, nil, fmt.Errorf("config file %s: unknown option(s) %s (keys are flag names or policies, see brokerd --help)", path, strings.Join(unknown, ", "))
	}
	return out, policies, nil
}
