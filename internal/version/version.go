// Package version reports what build of backbone is running.
package version

import (
	"runtime"
	"runtime/debug"
)

// Version is set at link time: -ldflags "-X github.com/backbone-mesh/backbone/internal/version.Version=v0.1.0".
var Version = "dev"

// Info describes a build.
type Info struct {
	Version   string `json:"version"`
	GitCommit string `json:"gitCommit"`
	GitDirty  bool   `json:"gitDirty"`
	BuildTime string `json:"buildTime,omitempty"`
	GoVersion string `json:"goVersion"`
	Platform  string `json:"platform"`
}

// Get returns the running binary's build information; the commit comes
// from the VCS stamp the Go toolchain embeds.
func Get() Info {
	info := Info{
		Version:   Version,
		GitCommit: "unknown",
		GoVersion: runtime.Version(),
		Platform:  runtime.GOOS + "/" + runtime.GOARCH,
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				info.GitCommit = s.Value
			case "vcs.modified":
				info.GitDirty = s.Value == "true"
			case "vcs.time":
				info.BuildTime = s.Value
			}
		}
		if info.Version == "dev" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			info.Version = bi.Main.Version
		}
	}
	return info
}
