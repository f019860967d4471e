// Package peers holds the configurations of the milters the benchmark
// (bench/cmd/opesbench) compares: opes-milter's realistic policy and the
// two MIMEDefang filters. They are plain files, embedded so the benchmark
// binary runs from anywhere.
package peers

import _ "embed"

// RealisticPolicy is peer (b): acl at every dialog stage, a tag header,
// and the attachments MIME walk.
//
//go:embed policy-realistic.toml
var RealisticPolicy string

// MIMEDefangHeader is peer (d): a MIMEDefang filter that adds one header.
//
//go:embed mimedefang-header.pl
var MIMEDefangHeader string

// MIMEDefangParts is peer (d) per part: it walks every MIME part, checks
// its file name and type, and adds one header.
//
//go:embed mimedefang-parts.pl
var MIMEDefangParts string
