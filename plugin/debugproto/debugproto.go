// Package debugproto is the protocol of the library's debug socket
// (plugin argument debug-socket=PATH), read by nasmig-inspect map: its one
// home, imported by both ends.
//
// A client connects and may send one request line within RequestWait:
// nothing (or an empty line) asks for the Report alone; RequestDump asks
// for the Report followed by one Entry per mapping. Each is one JSON value
// on its own line; the library then closes the connection.
package debugproto

import (
	"time"

	"nasmig/cshim"
)

// Requests a client may send, one line each.
const (
	RequestReport = ""     // the report alone (what a client that sends nothing gets)
	RequestDump   = "dump" // the report, then every mapping
)

// RequestWait is how long the library waits for a request line; a client
// that sends none gets the report after it.
const RequestWait = 100 * time.Millisecond

// Report is the first answer: the library's counters by C name, the
// mapped pages of each RAM block, and the tracked disks.
type Report struct {
	Stats     map[string]uint64 `json:"stats"`
	RAMBlocks []RAMBlock        `json:"ramblocks"`
	Disks     []cshim.DiskInfo  `json:"disks"`
}

// RAMBlock counts the mapped pages of one RAM block.
type RAMBlock struct {
	Name   string `json:"name"`
	Pages  uint64 `json:"pages"`
	Mapped uint64 `json:"mapped"`
}

// Entry is one mapping of a dump: the page (index in its RAM block) holds
// the disk's block (index of 4 KiB blocks).
type Entry struct {
	RAMBlock string `json:"ramblock"`
	Page     uint64 `json:"page"`
	Disk     int    `json:"disk"`
	Block    uint64 `json:"block"`
}
