// Package ocihook is the OCI boundary: it reads the runtime's state on
// stdin, the bundle's config.json and its netshim/* annotations, turns them
// into an engine.Request, and has the engine set up (createRuntime) or tear
// down (poststop) the container's network.
package ocihook

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/netshim/netshim/engine"
	"github.com/netshim/netshim/firewall"
	"github.com/netshim/netshim/internal/fastio"
	"github.com/netshim/netshim/netsetup"
	"github.com/netshim/netshim/state"
)

// Stages of the hook.
const (
	StageSetup    = "createRuntime"
	StageTeardown = "poststop"
)

// InputError is bad input from the runtime (state JSON, config.json).
type InputError struct {
	What   string
	Value  string
	Reason string
}

func (e *InputError) Error() string {
	if e.Value != "" {
		return fmt.Sprintf("%s %q: %s", e.What, e.Value, e.Reason)
	}
	return fmt.Sprintf("%s: %s", e.What, e.Reason)
}

// ResolveStage maps the hook argument, or without one the state's status,
// to setup or teardown.
func ResolveStage(arg string, status specs.ContainerState) (string, error) {
	switch arg {
	case StageSetup, "prestart":
		return StageSetup, nil
	case StageTeardown:
		return StageTeardown, nil
	case "":
	default:
		return "", &InputError{What: "hook stage", Value: arg, Reason: "want createRuntime, prestart or poststop"}
	}
	switch status {
	case specs.StateCreating, specs.StateCreated:
		return StageSetup, nil
	case specs.StateStopped:
		return StageTeardown, nil
	}
	return "", &InputError{What: "state field status", Value: string(status), Reason: "cannot tell the stage: want creating, created or stopped, or name the stage"}
}

// ReadState decodes and checks the OCI state JSON.
func ReadState(r io.Reader) (*specs.State, error) {
	data, err := io.ReadAll(io.LimitReader(r, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("read state from stdin: %w", err)
	}
	var st specs.State
	if len(strings.TrimSpace(string(data))) == 0 {
		return nil, &InputError{What: "state JSON on stdin", Reason: "empty (the runtime passes it to hooks)"}
	}
	if err := json.Unmarshal(data, &st); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return nil, &InputError{What: "state field " + te.Field, Value: te.Value, Reason: "wrong type, want " + te.Type.String()}
		}
		return nil, &InputError{What: "state JSON on stdin", Reason: err.Error()}
	}
	if err := state.CheckID(st.ID); err != nil {
		return nil, &InputError{What: "state field id", Value: st.ID, Reason: "not a container id netshim can keep: " + err.Error()}
	}
	if st.Pid < 0 {
		return nil, &InputError{What: "state field pid", Value: fmt.Sprint(st.Pid), Reason: "negative"}
	}
	return &st, nil
}

// bundleConfig is the part of a bundle's config.json the hook uses.
type bundleConfig struct {
	Hostname    string            `json:"hostname,omitempty"`
	Root        *specs.Root       `json:"root,omitempty"`
	Mounts      []specs.Mount     `json:"mounts,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Linux       *struct {
		Sysctl map[string]string `json:"sysctl,omitempty"`
	} `json:"linux,omitempty"`
}

// loopbackIPv6Off says the spec's sysctls turn IPv6 off on lo, by name
// with dots or slashes, as the runtime accepts either.
func (c *bundleConfig) loopbackIPv6Off() bool {
	if c.Linux == nil {
		return false
	}
	for k, v := range c.Linux.Sysctl {
		k = strings.ReplaceAll(k, "/", ".")
		if (k == "net.ipv6.conf.all.disable_ipv6" || k == "net.ipv6.conf.lo.disable_ipv6") && strings.TrimSpace(v) == "1" {
			return true
		}
	}
	return false
}

// readSpec reads <bundle>/config.json.
func readSpec(bundle string) (*bundleConfig, error) {
	if !filepath.IsAbs(bundle) {
		return nil, &InputError{What: "state field bundle", Value: bundle, Reason: "not an absolute path"}
	}
	path := filepath.Join(bundle, "config.json")
	data, err := fastio.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read bundle config %s: %w", path, err)
	}
	var spec bundleConfig
	if err := json.Unmarshal(data, &spec); err != nil {
		return nil, &InputError{What: "bundle config " + path, Reason: err.Error()}
	}
	return &spec, nil
}

// Request turns the runtime's state and the bundle's config into the
// engine's request. It also returns the bundle's annotations, to word the
// engine's errors about a field in terms of the annotation that set it.
func Request(st *specs.State) (*engine.Request, map[string]string, error) {
	spec, err := readSpec(st.Bundle)
	if err != nil {
		return nil, nil, err
	}
	opts, err := ParseAnnotations(spec.Annotations)
	if err != nil {
		return nil, nil, err
	}
	if st.Pid <= 0 {
		return nil, nil, &InputError{What: "state field pid", Value: fmt.Sprint(st.Pid), Reason: "setup needs the container's pid"}
	}
	if spec.Root == nil || spec.Root.Path == "" {
		return nil, nil, &InputError{What: "bundle config root.path", Reason: "missing"}
	}
	rootfs := spec.Root.Path
	if !filepath.IsAbs(rootfs) {
		rootfs = filepath.Join(st.Bundle, rootfs)
	}
	endpoints, err := opts.Endpoints()
	if err != nil {
		return nil, nil, err
	}
	req := &engine.Request{
		ID: st.ID, Name: opts.Name, Hostname: spec.Hostname, PID: st.Pid, Bundle: st.Bundle, Rootfs: rootfs,
		Endpoints: endpoints, Links: opts.Links,
		DNS: opts.DNS, DNSSearch: opts.DNSSearch, DNSOptions: opts.DNSOptions, AddHosts: opts.AddHosts, Ports: opts.Ports(),
		LoopbackIPv6Off: spec.loopbackIPv6Off(),
	}
	if req.Name == "" {
		req.Name = st.ID
	}
	for _, m := range spec.Mounts {
		req.Mounts = append(req.Mounts, netsetup.Mount{Destination: m.Destination, Type: m.Type, Source: m.Source, Options: m.Options})
	}
	return req, spec.Annotations, nil
}

// Reread reads a running container's request again from its bundle, as
// setup read it (engine.Engine.Reread).
func Reread(id string, pid int, bundle string) (*engine.Request, error) {
	req, _, err := Request(&specs.State{ID: id, Pid: pid, Bundle: bundle})
	return req, err
}

// annotationOf is the annotation behind each field of a request.
var annotationOf = map[string]string{
	engine.FieldIP: AnnIP, engine.FieldIP6: AnnIP6, engine.FieldLinks: AnnLinks, engine.FieldAddHosts: AnnAddHost, engine.FieldPorts: AnnPublish,
}

// Run is the hook: it reads the state from stdin and has eng set up or
// tear down. stage is the hook's argument, possibly empty. The outcome is
// logged under the state dir; the error is for the caller to print, worded
// in terms of the annotation that caused it.
func Run(eng *engine.Engine, stdin io.Reader, stage string) (err error) {
	start := time.Now()
	id, name := "", ""
	defer func() { eng.Log(id, name, stage, time.Since(start), err) }()
	if stage != "" { // a bad argument is refused before reading stdin
		if stage, err = ResolveStage(stage, ""); err != nil {
			return err
		}
	}
	st, err := ReadState(stdin)
	if err != nil {
		return err
	}
	id = st.ID
	if stage, err = ResolveStage(stage, st.Status); err != nil {
		return err
	}
	if stage == StageTeardown {
		// The teardown's slow tail is handed to a reclaimer, with the
		// netfilter sockets it opens (see engine.Reclaim).
		firewall.RetainSockets()
		name, err = eng.Teardown(st.ID)
		return err
	}
	req, ann, err := Request(st)
	if err != nil {
		return err
	}
	name = req.Name
	err = eng.Setup(req)
	var fe *engine.FieldError
	if errors.As(err, &fe) {
		key := annotationOf[fe.Field]
		if k := PerNetworkKey(fe.Network, fe.Field); fe.Network != "" && ann[k] != "" {
			key = k // the network's own option, not the first network's
		}
		if key != "" {
			return &AnnotationError{Key: key, Value: ann[key], Reason: fe.Reason}
		}
	}
	return err
}
