// Package main is ztmesh's in-process OPA: the pinned OPA module behind a small C ABI, built with
// `go build -buildmode=c-shared` and loaded by services/policy/opa_inproc.py.
//
// Every call takes and returns JSON bytes, so one evaluation is one crossing: Python hands the
// input, Go answers the value. Returned buffers are malloc'ed and freed by the caller (ztm_free).
// A prepared query is shared by every thread: OPA's PreparedEvalQuery is safe for concurrent Eval.
package main

/*
#include <stdlib.h>
*/
import "C"

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/tester"
	"github.com/open-policy-agent/opa/v1/topdown"
	"github.com/open-policy-agent/opa/v1/util"
	"github.com/open-policy-agent/opa/v1/version"
	"github.com/valyala/fastjson"
)

// refusedBuiltins reach the network: a decision must not wait on, or leak to, a third party.
var refusedBuiltins = map[string]string{
	"http.send":          "it reaches the network",
	"net.lookup_ip_addr": "it reaches the network (DNS)",
}

type prepareRequest struct {
	Modules             map[string]string `json:"modules"`
	Data                json.RawMessage   `json:"data"`
	Query               string            `json:"query"`
	StrictBuiltinErrors bool              `json:"strict_builtin_errors"`
	// Rule: the query is one reference and the answer is its value (the decision path); otherwise
	// the answer is every result's bindings (ad hoc queries, the conformance cases).
	Rule bool `json:"rule"`
}

type prepared struct {
	query rego.PreparedEvalQuery
	rule  bool
}

type problem struct {
	Code    string `json:"code,omitempty"`
	Message string `json:"message"`
	File    string `json:"file,omitempty"`
	Row     int    `json:"row,omitempty"`
	Col     int    `json:"col,omitempty"`
}

// Kinds of failure, for the caller to classify by (never by the message, which may quote input).
const (
	kindError    = "error"    // OPA's compile or evaluation error (problems say which)
	kindTimeout  = "timeout"  // the evaluation's time limit ran out
	kindReleased = "released" // the prepared query was released
	kindInput    = "input"    // the request or input is malformed
	kindPanic    = "panic"    // OPA panicked (recovered)
)

type failure struct {
	Kind     string    `json:"kind"`
	Error    string    `json:"error"` // err.Error() as OPA prints it
	Problems []problem `json:"problems,omitempty"`
}

var (
	handles sync.Map // uint64 -> *prepared
	nextID  atomic.Uint64
	parsers fastjson.ParserPool
)

// abiVersion is the C ABI of these exports (signatures and reply shapes): bump it with any change,
// and opa_inproc.ABI_VERSION with it. A library built from older sources reports another number (or
// none) and is refused at load, before a call with the wrong arguments could crash the process.
const abiVersion = 2

// cgroupMemoryLimit is the container's memory limit (cgroup v2, else v1), or 0 when there is none.
func cgroupMemoryLimit() int64 {
	for _, path := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		bs, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(string(bs)), 10, 64)
		if err != nil || n <= 0 || n >= 1<<60 { // "max", or v1's "unlimited" (a huge number)
			return 0
		}
		return n
	}
	return 0
}

func init() {
	// Without a memory limit the Go heap grows to (1 + GOGC/100) x the live data before a collection:
	// with a large data.json and a reload (two bundles prepared) that outgrew the pod's limit. So the
	// runtime gets a soft limit: GOMEMLIMIT when set (the runtime reads it itself), else half the
	// cgroup's limit (the Python side of the process, its copy of the bundle and data included, lives
	// in the same cgroup: at 80 % the two together could pass a 512Mi pod's limit). Only under a known
	// limit does GC run less often (GOGC 400: an evaluation allocates a lot and keeps little);
	// otherwise Go's default of 100 stays. GOGC still overrides.
	limited := os.Getenv("GOMEMLIMIT") != ""
	if !limited {
		if n := cgroupMemoryLimit(); n > 0 {
			debug.SetMemoryLimit(n / 2)
			limited = true
		}
	}
	if limited && os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	gcPercent = debug.SetGCPercent(-1) // Go has no getter: read it back once, before any evaluation
	debug.SetGCPercent(gcPercent)
}

var gcPercent int // the GC percent init settled on, for ztm_version

// jsonToValue converts JSON straight to an ast.Value (OPA's ast.ValueFromReader decodes into Go
// maps first, then converts: a third of an evaluation of the default pack). Numbers keep their text.
func jsonToValue(bs []byte) (ast.Value, error) {
	p := parsers.Get()
	defer parsers.Put(p)
	v, err := p.ParseBytes(bs)
	if err != nil {
		return nil, err
	}
	return fastValue(v), nil
}

func fastValue(v *fastjson.Value) ast.Value {
	switch v.Type() {
	case fastjson.TypeNull:
		return ast.Null{}
	case fastjson.TypeTrue:
		return ast.Boolean(true)
	case fastjson.TypeFalse:
		return ast.Boolean(false)
	case fastjson.TypeNumber:
		return ast.Number(v.String())
	case fastjson.TypeString:
		return ast.String(string(v.GetStringBytes()))
	case fastjson.TypeArray:
		items := v.GetArray()
		terms := make([]*ast.Term, len(items))
		for i, item := range items {
			terms[i] = ast.NewTerm(fastValue(item))
		}
		return ast.NewArray(terms...)
	default: // object; a repeated key keeps its last value, as encoding/json does
		obj := v.GetObject()
		out := ast.NewObject()
		obj.Visit(func(key []byte, item *fastjson.Value) {
			out.Insert(ast.StringTerm(string(key)), ast.NewTerm(fastValue(item)))
		})
		return out
	}
}

// capabilities: this OPA's builtins and features minus the refused builtins; no host is reachable.
func capabilities() *ast.Capabilities {
	caps := ast.CapabilitiesForThisVersion()
	kept := caps.Builtins[:0]
	for _, b := range caps.Builtins {
		if _, refused := refusedBuiltins[b.Name]; !refused {
			kept = append(kept, b)
		}
	}
	caps.Builtins = kept
	caps.AllowNet = []string{}
	return caps
}

func describe(err error) failure {
	out := failure{Kind: kindError, Error: err.Error()}
	var astErrs ast.Errors
	var topErr *topdown.Error
	switch { // a builtin error may wrap a parse error (rego.parse_module): the outer one is the error
	case errors.As(err, &topErr) && !isASTErrors(err):
		p := problem{Code: topErr.Code, Message: topErr.Message}
		if topErr.Location != nil {
			p.File, p.Row, p.Col = topErr.Location.File, topErr.Location.Row, topErr.Location.Col
		}
		out.Problems = append(out.Problems, p)
	case errors.As(err, &astErrs):
		for _, e := range astErrs {
			p := problem{Code: e.Code, Message: e.Message}
			if e.Location != nil {
				p.File, p.Row, p.Col = e.Location.File, e.Location.Row, e.Location.Col
			}
			out.Problems = append(out.Problems, refusal(p))
		}
	case errors.As(err, &topErr):
		p := problem{Code: topErr.Code, Message: topErr.Message}
		if topErr.Location != nil {
			p.File, p.Row, p.Col = topErr.Location.File, topErr.Location.Row, topErr.Location.Col
		}
		out.Problems = append(out.Problems, p)
	}
	return out
}

func isASTErrors(err error) bool {
	_, ok := err.(ast.Errors)
	return ok
}

// refusal names a refused builtin and why, where OPA's compiler only says "undefined function".
func refusal(p problem) problem {
	if name, ok := strings.CutPrefix(p.Message, "undefined function "); ok {
		if why, refused := refusedBuiltins[name]; refused {
			p.Message = fmt.Sprintf("builtin %s is refused by ztmesh: %s", name, why)
		}
	}
	return p
}

// survive turns a panic inside OPA into an error answer: a Go panic crossing into C would abort
// the whole service. Deferred by every export that returns an answer.
func survive(out **C.char, outLen *C.int, rc *C.int) {
	if p := recover(); p != nil {
		reply(out, outLen, failure{Kind: kindPanic, Error: fmt.Sprintf("OPA panicked: %v", p)})
		*rc = 1
	}
}

func reply(out **C.char, outLen *C.int, v any) {
	bs, err := json.Marshal(v)
	if err != nil {
		bs, _ = json.Marshal(failure{Kind: kindError, Error: "cannot encode the answer: " + err.Error()})
	}
	*out = (*C.char)(C.CBytes(bs))
	*outLen = C.int(len(bs))
}

func replyRaw(out **C.char, outLen *C.int, bs []byte) {
	*out = (*C.char)(C.CBytes(bs))
	*outLen = C.int(len(bs))
}

func goBytes(p *C.char, n C.int) []byte {
	if n == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(p)), int(n))
}

func parseModules(sources map[string]string) (map[string]*ast.Module, error) {
	names := make([]string, 0, len(sources))
	for name := range sources {
		names = append(names, name)
	}
	sort.Strings(names)
	modules := map[string]*ast.Module{}
	var errs ast.Errors
	opts := ast.ParserOptions{RegoVersion: ast.RegoV1, Capabilities: capabilities(), ProcessAnnotation: true}
	for _, name := range names {
		m, err := ast.ParseModuleWithOpts(name, sources[name], opts)
		if err != nil {
			var e ast.Errors
			if errors.As(err, &e) {
				errs = append(errs, e...)
				continue
			}
			return nil, err
		}
		modules[name] = m
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return modules, nil
}

func newStore(data json.RawMessage) (storage.Store, error) {
	doc := map[string]any{}
	if len(bytes.TrimSpace(data)) > 0 && !bytes.Equal(bytes.TrimSpace(data), []byte("null")) {
		if err := util.UnmarshalJSON(data, &doc); err != nil {
			return nil, fmt.Errorf("data is not a JSON object: %w", err)
		}
	}
	return inmem.NewFromObjectWithOpts(doc, inmem.OptRoundTripOnWrite(false)), nil
}

// ztm_prepare compiles modules + data + query once; returns a handle (>0), or 0 with the
// compile errors (file:row each) in *out.
//
//export ztm_prepare
func ztm_prepare(req *C.char, reqLen C.int, out **C.char, outLen *C.int) (handle C.ulonglong) {
	defer func() {
		if p := recover(); p != nil {
			reply(out, outLen, failure{Kind: kindPanic, Error: fmt.Sprintf("OPA panicked: %v", p)})
			handle = 0
		}
	}()
	var r prepareRequest
	if err := json.Unmarshal(goBytes(req, reqLen), &r); err != nil {
		reply(out, outLen, failure{Kind: kindInput, Error: "bad prepare request: " + err.Error()})
		return 0
	}
	modules, err := parseModules(r.Modules)
	if err != nil {
		reply(out, outLen, describe(err))
		return 0
	}
	store, err := newStore(r.Data)
	if err != nil {
		reply(out, outLen, failure{Kind: kindInput, Error: err.Error()})
		return 0
	}
	opts := []func(*rego.Rego){
		rego.Query(r.Query),
		rego.Store(store),
		rego.Capabilities(capabilities()),
		rego.StrictBuiltinErrors(r.StrictBuiltinErrors),
		rego.SetRegoVersion(ast.RegoV1),
	}
	for _, m := range modules {
		opts = append(opts, rego.ParsedModule(m))
	}
	pq, err := rego.New(opts...).PrepareForEval(context.Background())
	if err != nil {
		reply(out, outLen, describe(err))
		return 0
	}
	id := nextID.Add(1)
	handles.Store(id, &prepared{query: pq, rule: r.Rule})
	reply(out, outLen, map[string]uint64{"handle": id})
	return C.ulonglong(id)
}

// Input kinds of ztm_eval.
const (
	inputNone = 0
	inputJSON = 1
	inputTerm = 2 // Rego term syntax (sets, ...): only the conformance cases need it
)

// ztm_eval evaluates a prepared query for at most timeoutMs (0: no limit): returns 0 with the
// answer in *out ({"value": v}, or {} when a rule is undefined; {"results": [bindings...]} for a
// query), or 1 with the error in *out.
//
//export ztm_eval
func ztm_eval(handle C.ulonglong, input *C.char, inputLen C.int, kind C.int, timeoutMs C.int, out **C.char, outLen *C.int) (rc C.int) {
	defer survive(out, outLen, &rc)
	v, ok := handles.Load(uint64(handle))
	if !ok {
		reply(out, outLen, failure{Kind: kindReleased, Error: fmt.Sprintf("no prepared query %d (released)", uint64(handle))})
		return 1
	}
	p := v.(*prepared)
	var evalOpts []rego.EvalOption
	switch kind {
	case inputJSON:
		value, err := jsonToValue(goBytes(input, inputLen))
		if err != nil {
			reply(out, outLen, failure{Kind: kindInput, Error: "input is not JSON: " + err.Error()})
			return 1
		}
		evalOpts = append(evalOpts, rego.EvalParsedInput(value))
	case inputTerm:
		term, err := ast.ParseTerm(string(goBytes(input, inputLen)))
		if err != nil {
			reply(out, outLen, failure{Kind: kindInput, Error: "input is not a Rego term: " + err.Error()})
			return 1
		}
		evalOpts = append(evalOpts, rego.EvalParsedInput(term.Value))
	}
	ctx := context.Background()
	if timeoutMs > 0 { // OPA checks the context as it evaluates: a runaway policy ends with an error
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(timeoutMs)*time.Millisecond)
		defer cancel()
	}
	rs, err := p.query.Eval(ctx, evalOpts...)
	if err != nil {
		f := describe(err)
		var topErr *topdown.Error
		if timeoutMs > 0 && (errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil ||
			(errors.As(err, &topErr) && topErr.Code == topdown.CancelErr)) {
			f.Kind = kindTimeout
		}
		reply(out, outLen, f)
		return 1
	}
	if p.rule {
		if len(rs) == 0 || len(rs[0].Expressions) == 0 {
			replyRaw(out, outLen, []byte("{}"))
			return 0
		}
		bs, err := json.Marshal(rs[0].Expressions[0].Value)
		if err != nil {
			reply(out, outLen, failure{Kind: kindError, Error: "cannot encode the value: " + err.Error()})
			return 1
		}
		answer := make([]byte, 0, len(bs)+10)
		answer = append(append(append(answer, `{"value":`...), bs...), '}')
		replyRaw(out, outLen, answer)
		return 0
	}
	results := make([]map[string]any, 0, len(rs))
	for _, r := range rs {
		results = append(results, r.Bindings)
	}
	reply(out, outLen, map[string]any{"results": results})
	return 0
}

// ztm_release forgets a prepared query (a replaced bundle).
//
//export ztm_release
func ztm_release(handle C.ulonglong) {
	handles.Delete(uint64(handle))
}

type testRequest struct {
	Modules map[string]string `json:"modules"` // policies and tests together, as `opa test DIR`
	Data    json.RawMessage   `json:"data"`
	Timeout float64           `json:"timeout"` // seconds per test; `opa test`'s default is 5
}

type testResult struct {
	Package string `json:"package"`
	Name    string `json:"name"`
	File    string `json:"file"`
	Row     int    `json:"row"`
	Fail    bool   `json:"fail"`
	Skip    bool   `json:"skip"`
	Error   string `json:"error,omitempty"`
	Output  string `json:"output,omitempty"`
}

// ztm_test runs the `test_` rules with OPA's own tester (what `opa test` runs): returns 0 with
// {"results": [...]}, or 1 with the compile errors.
//
//export ztm_test
func ztm_test(req *C.char, reqLen C.int, out **C.char, outLen *C.int) (rc C.int) {
	defer survive(out, outLen, &rc)
	var r testRequest
	if err := json.Unmarshal(goBytes(req, reqLen), &r); err != nil {
		reply(out, outLen, failure{Kind: kindInput, Error: "bad test request: " + err.Error()})
		return 1
	}
	modules, err := parseModules(r.Modules)
	if err != nil {
		reply(out, outLen, describe(err))
		return 1
	}
	store, err := newStore(r.Data)
	if err != nil {
		reply(out, outLen, failure{Kind: kindInput, Error: err.Error()})
		return 1
	}
	timeout := 5 * time.Second
	if r.Timeout > 0 {
		timeout = time.Duration(r.Timeout * float64(time.Second))
	}
	ctx := context.Background()
	var results []testResult
	err = storage.Txn(ctx, store, storage.WriteParams, func(txn storage.Transaction) error {
		compiler := ast.NewCompiler().
			WithPathConflictsCheck(storage.NonEmpty(ctx, store, txn)).
			WithEnablePrintStatements(true).
			WithCapabilities(capabilities()).
			WithUseTypeCheckAnnotations(true)
		ch, err := tester.NewRunner().
			SetCompiler(compiler).
			SetStore(store).
			CapturePrintOutput(true).
			SetModules(modules).
			SetTimeout(timeout).
			RunTests(ctx, txn)
		if err != nil {
			return err
		}
		for res := range ch {
			tr := testResult{Package: res.Package, Name: res.Name, Fail: res.Fail, Skip: res.Skip, Output: string(res.Output)}
			if res.Location != nil {
				tr.File, tr.Row = res.Location.File, res.Location.Row
			}
			if res.Error != nil {
				tr.Error = res.Error.Error()
			}
			results = append(results, tr)
		}
		return nil
	})
	if err != nil {
		reply(out, outLen, describe(err))
		return 1
	}
	reply(out, outLen, map[string]any{"results": results})
	return 0
}

type inputPathsRequest struct {
	Modules map[string]string `json:"modules"`
}

// inputReads collects the input paths x reads (string-keyed prefixes of every `input...` ref);
// unbounded when some read has no such prefix (bare `input`, `input[x]`).
func inputReads(x any, paths map[string][]string, unbounded *bool) {
	ast.NewGenericVisitor(func(node any) bool {
		switch t := node.(type) {
		case ast.Ref:
			if len(t) == 0 || !t[0].Equal(ast.InputRootDocument) {
				return false
			}
			var prefix []string
			for _, seg := range t[1:] {
				s, ok := seg.Value.(ast.String)
				if !ok {
					break
				}
				prefix = append(prefix, string(s))
			}
			if len(prefix) == 0 {
				*unbounded = true
			} else {
				key, _ := json.Marshal(prefix)
				paths[string(key)] = prefix
			}
			for _, seg := range t[1:] { // a dynamic index may itself read input
				inputReads(seg, paths, unbounded)
			}
			return true
		case ast.Var:
			if t.Equal(ast.InputRootDocument.Value) {
				*unbounded = true
			}
		}
		return false
	}).Walk(x)
}

// ztm_input_paths returns 0 with {"paths": [[segment...]...]} (null: the whole input may be read),
// or 1 with the parse errors.
//
//export ztm_input_paths
func ztm_input_paths(req *C.char, reqLen C.int, out **C.char, outLen *C.int) (rc C.int) {
	defer survive(out, outLen, &rc)
	var r inputPathsRequest
	if err := json.Unmarshal(goBytes(req, reqLen), &r); err != nil {
		reply(out, outLen, failure{Kind: kindInput, Error: "bad input-paths request: " + err.Error()})
		return 1
	}
	modules, err := parseModules(r.Modules)
	if err != nil {
		reply(out, outLen, describe(err))
		return 1
	}
	paths := map[string][]string{}
	unbounded := false
	for _, m := range modules {
		inputReads(m, paths, &unbounded)
	}
	if unbounded {
		reply(out, outLen, map[string]any{"paths": nil})
		return 0
	}
	list := make([][]string, 0, len(paths))
	for _, p := range paths {
		list = append(list, p)
	}
	reply(out, outLen, map[string]any{"paths": list})
	return 0
}

// ztm_free releases a buffer this library returned.
//
//export ztm_free
func ztm_free(p *C.char) {
	C.free(unsafe.Pointer(p))
}

// ztm_version is the OPA version compiled in and the ABI of the exports, to check the library
// matches the pin and the caller; also the Go heap's limit and GC percent in effect.
//
//export ztm_version
func ztm_version(out **C.char, outLen *C.int) {
	reply(out, outLen, map[string]any{
		"opa":          version.Version,
		"abi":          abiVersion,
		"memory_limit": debug.SetMemoryLimit(-1),
		"gc_percent":   gcPercent,
	})
}

type packagesRequest struct {
	Modules map[string]string `json:"modules"`
}

// ztm_packages returns 0 with {"packages": {file: ["a", "b"]}} (package a.b: the path under data)
// from OPA's own parse (what OPA will load, however the source is laid out), or 1 with the parse errors.
//
//export ztm_packages
func ztm_packages(req *C.char, reqLen C.int, out **C.char, outLen *C.int) (rc C.int) {
	defer survive(out, outLen, &rc)
	var r packagesRequest
	if err := json.Unmarshal(goBytes(req, reqLen), &r); err != nil {
		reply(out, outLen, failure{Kind: kindInput, Error: "bad packages request: " + err.Error()})
		return 1
	}
	modules, err := parseModules(r.Modules)
	if err != nil {
		reply(out, outLen, describe(err))
		return 1
	}
	packages := make(map[string][]string, len(modules))
	for name, m := range modules {
		segments := []string{}
		for _, term := range m.Package.Path[1:] { // [0] is data
			if s, ok := term.Value.(ast.String); ok {
				segments = append(segments, string(s))
			} else {
				segments = append(segments, term.String())
			}
		}
		packages[name] = segments
	}
	reply(out, outLen, map[string]any{"packages": packages})
	return 0
}

func main() {}
