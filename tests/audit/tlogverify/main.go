// tlogverify checks ztmesh's audit checkpoints and proofs with code nobody at ztmesh wrote:
// golang.org/x/mod/sumdb/note (signed notes), golang.org/x/mod/sumdb/tlog and
// github.com/transparency-dev/merkle (RFC 6962/9162 inclusion and consistency proofs).
//
// It reads one JSON document on stdin and prints one JSON result per check on stdout.
package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type inclusion struct {
	Index    int64    `json:"index"`
	LeafHash string   `json:"leaf_hash"`
	Proof    []string `json:"proof"`
}

type consistency struct {
	OldNote string   `json:"old_checkpoint"`
	Proof   []string `json:"proof"`
}

type input struct {
	VerifierKey string        `json:"verifier_key"`
	Checkpoint  string        `json:"checkpoint"`
	Inclusions  []inclusion   `json:"inclusions"`
	Consistency []consistency `json:"consistency"`
}

type result struct {
	Check string `json:"check"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

type head struct {
	origin string
	size   int64
	root   []byte
}

func openCheckpoint(verifiers note.Verifiers, text string) (head, error) {
	n, err := note.Open([]byte(text), verifiers)
	if err != nil {
		return head{}, err
	}
	lines := strings.Split(n.Text, "\n")
	if len(lines) < 4 {
		return head{}, fmt.Errorf("checkpoint has %d lines", len(lines))
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		return head{}, err
	}
	root, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil {
		return head{}, err
	}
	return head{lines[0], size, root}, nil
}

func decode(items []string) ([][]byte, error) {
	out := make([][]byte, len(items))
	for i, s := range items {
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return nil, err
		}
		out[i] = b
	}
	return out, nil
}

func hashes(raw [][]byte) []tlog.Hash {
	out := make([]tlog.Hash, len(raw))
	for i, b := range raw {
		copy(out[i][:], b)
	}
	return out
}

func toHash(b []byte) (h tlog.Hash) {
	copy(h[:], b)
	return h
}

func main() {
	var in input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fmt.Fprintln(os.Stderr, "tlogverify: bad input:", err)
		os.Exit(2)
	}
	verifier, err := note.NewVerifier(in.VerifierKey)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tlogverify: bad verifier key:", err)
		os.Exit(2)
	}
	verifiers := note.VerifierList(verifier)
	results := []result{}
	report := func(check string, err error) {
		r := result{Check: check, OK: err == nil}
		if err != nil {
			r.Error = err.Error()
		}
		results = append(results, r)
	}
	latest, err := openCheckpoint(verifiers, in.Checkpoint)
	report("note", err)
	if err == nil {
		for _, inc := range in.Inclusions {
			leaf, err1 := base64.StdEncoding.DecodeString(inc.LeafHash)
			p, err2 := decode(inc.Proof)
			if err1 != nil || err2 != nil {
				report(fmt.Sprintf("inclusion %d", inc.Index), fmt.Errorf("bad base64"))
				continue
			}
			report(fmt.Sprintf("merkle inclusion %d", inc.Index),
				proof.VerifyInclusion(rfc6962.DefaultHasher, uint64(inc.Index), uint64(latest.size), leaf, p, latest.root))
			report(fmt.Sprintf("tlog inclusion %d", inc.Index),
				tlog.CheckRecord(tlog.RecordProof(hashes(p)), latest.size, toHash(latest.root), inc.Index, toHash(leaf)))
		}
		for _, c := range in.Consistency {
			old, err := openCheckpoint(verifiers, c.OldNote)
			if err != nil {
				report("consistency: old checkpoint", err)
				continue
			}
			p, err := decode(c.Proof)
			if err != nil {
				report("consistency", err)
				continue
			}
			name := fmt.Sprintf("%d -> %d", old.size, latest.size)
			report("merkle consistency "+name,
				proof.VerifyConsistency(rfc6962.DefaultHasher, uint64(old.size), uint64(latest.size), p, old.root, latest.root))
			report("tlog consistency "+name,
				tlog.CheckTree(tlog.TreeProof(hashes(p)), latest.size, toHash(latest.root), old.size, toHash(old.root)))
		}
	}
	_ = json.NewEncoder(os.Stdout).Encode(results)
}
