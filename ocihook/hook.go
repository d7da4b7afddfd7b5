// Package ocihook is the OCI hook: it reads the runtime's state on stdin and
// sets up (createRuntime) or tears down (poststop) a container's network.
package ocihook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/netshim/netshim/config"
	"github.com/netshim/netshim/internal/fastio"
	"github.com/netshim/netshim/state"
)

// Stages of the hook.
const (
	StageSetup    = "createRuntime"
	StageTeardown = "poststop"
)

// Env is what the hook works with: the config and the state directory.
type Env struct {
	Config *config.Config
	Store  *state.Store
	// Defs are the networks made with `netshim network create`.
	Defs *state.Defs
	// LockTimeout bounds the wait for the host lock.
	LockTimeout time.Duration
	// Debug adds detail to the log: when each step ended.
	Debug bool

	marks sync.Mutex // setup marks steps from several goroutines
	steps []string
	start time.Time
	// reclaim, when set, collects what teardowns leave to the reclaimer.
	reclaim *Reclaim
	// Worker, when set, runs the work a hook does beside its own (see
	// Worker); Run lets it go when it returns.
	Worker *Worker
}

// mark notes, with Debug, when the step that just ended did, as the time
// since the hook started: steps run on several goroutines at once, and
// what ends last is what a setup waits for.
func (env *Env) mark(step string) {
	if !env.Debug {
		return
	}
	env.marks.Lock()
	defer env.marks.Unlock()
	env.steps = append(env.steps, fmt.Sprintf("%s@%s", step, time.Since(env.start).Round(time.Microsecond)))
}

// DefaultLockTimeout is how long a hook waits for the host lock.
const DefaultLockTimeout = 30 * time.Second

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
		return nil, &InputError{What: "state field id", Value: st.ID, Reason: "not a valid container id"}
	}
	if st.Pid < 0 {
		return nil, &InputError{What: "state field pid", Value: fmt.Sprint(st.Pid), Reason: "negative"}
	}
	return &st, nil
}

// bundleConfig is the part of a bundle's config.json the hook uses. The
// rest (process, linux, seccomp...) is skipped by the decoder rather than
// decoded into runtime-spec types the hook never reads.
type bundleConfig struct {
	Hostname    string            `json:"hostname,omitempty"`
	Root        *specs.Root       `json:"root,omitempty"`
	Mounts      []specs.Mount     `json:"mounts,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
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

// codecWarmers are the steps of the warm-up a hook's worker does (see
// Worker) as the hook starts: encoding/json builds a type's decoder or
// encoder by reflection the first time the type is used, ~0.1 ms for a
// record. In the order the hook needs them: the decoders of its input
// first (the state on stdin, read as soon as the config is loaded; the
// bundle's config.json, which a teardown does not read), then the state
// files' codecs (see state.CodecWarmers), which the work it hands over
// needs.
func codecWarmers(stage string) []func() {
	steps := []func(){func() { json.Unmarshal([]byte(`{}`), &specs.State{}) }}
	if stage != StageTeardown {
		steps = append(steps, func() {
			json.Unmarshal([]byte(`{"root":{},"mounts":[{}],"annotations":{}}`), &bundleConfig{})
		})
	}
	return append(steps, state.CodecWarmers(stage != StageTeardown)...)
}

// Run is the hook: it reads the state from stdin and sets up or tears down.
// stage is the hook's argument, possibly empty. The outcome is logged
// under the state dir; the error is for the caller to print.
func Run(ctx context.Context, env *Env, stdin io.Reader, stage string) (err error) {
	start := time.Now()
	env.start = start
	defer env.Worker.Done()
	var st *specs.State
	var name string
	defer func() {
		id := "-"
		if st != nil {
			id = st.ID
		}
		env.logLine(id, name, stage, time.Since(start), err)
	}()
	if stage != "" { // a bad argument is refused before reading stdin
		if stage, err = ResolveStage(stage, ""); err != nil {
			return err
		}
	}
	st, err = ReadState(stdin)
	if err != nil {
		return err
	}
	stage, err = ResolveStage(stage, st.Status)
	if err != nil {
		return err
	}
	if stage == StageTeardown {
		name, err = env.Teardown(ctx, st.ID)
		return err
	}
	name, err = env.Setup(ctx, st)
	return err
}

// logLine appends one line per hook invocation to <state>/hook.log. Logging
// never fails the hook.
func (env *Env) logLine(id, name, stage string, d time.Duration, err error) {
	outcome := "ok"
	if err != nil {
		outcome = "error: " + err.Error()
	}
	if name == "" {
		name = "-"
	}
	if stage == "" {
		stage = "-"
	}
	steps := ""
	if len(env.steps) > 0 {
		steps = " steps: " + strings.Join(env.steps, " ")
	}
	line := fmt.Sprintf("%s id=%s name=%s stage=%s duration=%s %s%s\n",
		time.Now().UTC().Format(time.RFC3339Nano), id, name, stage, d.Round(time.Microsecond), outcome, steps)
	// One write with O_APPEND: lines of concurrent hooks do not interleave.
	fastio.Create(filepath.Join(env.Store.Dir, "hook.log"), unix.O_APPEND, []byte(line), 0o600, false)
}
