package config

import (
	"crypto/sha256"
	"encoding/hex"
)

// NetworkID derives the 64-hex id of a network defined in the config file
// from its name, so that the id (and so its bridge name) is stable across
// loads without being stored.
func NetworkID(name string) string {
	sum := sha256.Sum256([]byte("netshim-network:" + name))
	return hex.EncodeToString(sum[:])
}

// BridgeNameFor is Docker's bridge device name for a network id:
// br-<first 12 hex>.
func BridgeNameFor(id string) string {
	if len(id) > 12 {
		id = id[:12]
	}
	return "br-" + id
}
