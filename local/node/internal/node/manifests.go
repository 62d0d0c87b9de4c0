package node

// The manifests folder, kept applied as k3s's deploy controller keeps it: every *.yaml, *.yml and
// *.json file under <data-dir>/server/manifests (subfolders too; dot files and files with a
// ".skip" twin are left out) is applied with server-side apply when the node starts and whenever
// its content changes; the objects of a file that disappears are deleted. Polled every few
// seconds, so a file that a bind mount replaces (rename into the folder) is seen too.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"log"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

const fieldManager = "airflow-k3s-node"

// manifestFiles lists the files to apply under dir, sorted.
func manifestFiles(dir string) ([]string, error) {
	var files []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == dir && os.IsNotExist(err) {
				return filepath.SkipAll
			}
			return err
		}
		name := d.Name()
		if strings.HasPrefix(name, ".") && path != dir {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			return nil
		}
		switch filepath.Ext(name) {
		case ".yaml", ".yml", ".json":
		default:
			return nil
		}
		if _, err := os.Stat(path + ".skip"); err == nil {
			return nil
		}
		files = append(files, path)
		return nil
	})
	sort.Strings(files)
	return files, err
}

// Applier applies what changed since its last pass.
type Applier struct {
	Dir     string
	Kubectl func(ctx context.Context, args ...string) ([]byte, error)
	applied map[string]applied
}

type applied struct {
	digest  string
	content []byte
}

// Pass applies new and changed files, deletes the objects of removed ones. A file that fails is
// retried at the next pass; the error is logged with kubectl's message.
func (a *Applier) Pass(ctx context.Context) (changed int, failed int) {
	if a.applied == nil {
		a.applied = map[string]applied{}
	}
	files, err := manifestFiles(a.Dir)
	if err != nil {
		log.Printf("manifests: cannot list %s: %v", a.Dir, err)
		return 0, 1
	}
	present := map[string]bool{}
	for _, file := range files {
		present[file] = true
		content, err := os.ReadFile(file)
		if err != nil {
			log.Printf("manifests: %s: %v", file, err)
			failed++
			continue
		}
		sum := sha256.Sum256(content)
		digest := hex.EncodeToString(sum[:])
		if a.applied[file].digest == digest {
			continue
		}
		out, err := a.Kubectl(ctx, "apply", "--server-side", "--force-conflicts",
			"--field-manager="+fieldManager, "-f", file)
		if err != nil {
			log.Printf("manifests: applying %s failed (retried in a few seconds): %v: %s", file, err, strings.TrimSpace(string(out)))
			failed++
			continue
		}
		log.Printf("manifests: applied %s: %s", file, oneLine(out))
		a.applied[file] = applied{digest: digest, content: content}
		changed++
	}
	for file, last := range a.applied {
		if present[file] {
			continue
		}
		tmp, err := os.CreateTemp("", "removed-manifest-*"+filepath.Ext(file))
		if err == nil {
			_, _ = tmp.Write(last.content)
			tmp.Close()
			out, err := a.Kubectl(ctx, "delete", "--ignore-not-found", "--wait=false", "-f", tmp.Name())
			os.Remove(tmp.Name())
			if err != nil {
				log.Printf("manifests: deleting the objects of removed %s failed: %v: %s", file, err, oneLine(out))
				failed++
				continue
			}
			log.Printf("manifests: %s was removed: deleted its objects: %s", file, oneLine(out))
		}
		delete(a.applied, file)
		changed++
	}
	return changed, failed
}

// Loop runs Pass every interval until ctx ends.
func (a *Applier) Loop(ctx context.Context, interval time.Duration) {
	for {
		a.Pass(ctx)
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
	}
}

func oneLine(out []byte) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(string(out), "\n", "; ")), " ")
}
