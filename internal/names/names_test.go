package names

import "testing"

func TestValid(t *testing.T) {
	for s, want := range map[string]bool{"web": true, "db_wordpress": true, "a.b-c": true, "-x": false, "": false, "a b": false, "é": false, "x/y": false, "0": true} {
		if got := Valid(s, "_.-", 64); got != want {
			t.Errorf("Valid(%q) = %v", s, got)
		}
	}
	if Valid("a+b", "_.-", 64) || !Valid("a+b", "_.+-", 64) || Valid("abcd", "", 3) {
		t.Error("extra or max not honoured")
	}
	if Host("db.") || !Host("db.test") || Host("-a") {
		t.Error("Host")
	}
}
