// Package names validates the identifiers netshim accepts (container ids
// and names, network names, host names) with plain character checks: they
// run in every hook, where compiling regular expressions at start-up would
// cost more than the checks themselves.
package names

func alnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// Valid reports whether s starts with a letter or digit, continues with
// letters, digits and the characters of extra, and has 1 to max bytes.
func Valid(s, extra string, max int) bool {
	if len(s) == 0 || len(s) > max || !alnum(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if alnum(c) {
			continue
		}
		ok := false
		for j := 0; j < len(extra); j++ {
			ok = ok || c == extra[j]
		}
		if !ok {
			return false
		}
	}
	return true
}

// Host reports whether s is a host name for /etc/hosts: Valid with "_.-",
// at most 253 bytes, ending with a letter or digit.
func Host(s string) bool {
	return Valid(s, "_.-", 253) && alnum(s[len(s)-1])
}
