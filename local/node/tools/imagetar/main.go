// Command imagetar writes a one-layer container image as a docker-archive tarball (the format
// `docker save` writes and `ctr images import` reads), from files on disk. The node image's build
// uses it for the images the node imports at start (pause, CoreDNS): no registry and no Docker
// daemon needed. Output is reproducible: fixed timestamps and owners, sorted entries.
//
//	imagetar -o pause.tar -tag airflow-k3s/pause:catatonit-local \
//	    -entrypoint /pause,-P -user 65535:65535 -add /usr/bin/catatonit=/pause
package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path"
	"sort"
	"strings"
	"time"
)

type addList []string

func (a *addList) String() string     { return strings.Join(*a, " ") }
func (a *addList) Set(v string) error { *a = append(*a, v); return nil }

var epoch = time.Unix(0, 0).UTC()

func main() {
	out := flag.String("o", "", "output tarball")
	tag := flag.String("tag", "", "image name:tag")
	entrypoint := flag.String("entrypoint", "", "entrypoint, comma-separated")
	user := flag.String("user", "", "user[:group] the image runs as")
	var adds addList
	flag.Var(&adds, "add", "SRC=DEST: a file of this machine at DEST in the image (repeatable)")
	flag.Parse()
	if *out == "" || *tag == "" || len(adds) == 0 {
		fmt.Fprintln(os.Stderr, "imagetar: -o, -tag and at least one -add are required")
		os.Exit(2)
	}
	if err := write(*out, *tag, strings.Split(*entrypoint, ","), *user, adds); err != nil {
		fmt.Fprintln(os.Stderr, "imagetar:", err)
		os.Exit(1)
	}
}

func write(out, tag string, entrypoint []string, user string, adds []string) error {
	layer, err := layerTar(adds)
	if err != nil {
		return err
	}
	layerSum := sha256.Sum256(layer)
	layerHex := hex.EncodeToString(layerSum[:])
	config, err := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"created":      epoch.Format(time.RFC3339),
		"config": map[string]any{
			"Entrypoint": entrypoint,
			"User":       user,
			"Env":        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			"Labels":     map[string]string{"org.opencontainers.image.vendor": "airflow-k3s (local image source)"},
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + layerHex}},
	})
	if err != nil {
		return err
	}
	configSum := sha256.Sum256(config)
	configName := hex.EncodeToString(configSum[:]) + ".json"
	manifest, err := json.Marshal([]map[string]any{{
		"Config":   configName,
		"RepoTags": []string{tag},
		"Layers":   []string{layerHex + "/layer.tar"},
	}})
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, entry := range []struct {
		name string
		data []byte
	}{
		{layerHex + "/layer.tar", layer},
		{configName, config},
		{"manifest.json", manifest},
	} {
		if err := addFile(tw, entry.name, entry.data, 0o644); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return os.WriteFile(out, buf.Bytes(), 0o644)
}

// layerTar: the files, with every parent directory, owned by root, at the epoch.
func layerTar(adds []string) ([]byte, error) {
	files := map[string]string{}
	dirs := map[string]bool{}
	for _, add := range adds {
		src, dest, ok := strings.Cut(add, "=")
		if !ok || !strings.HasPrefix(dest, "/") {
			return nil, fmt.Errorf("-add %q: want SRC=/DEST", add)
		}
		files[strings.TrimPrefix(dest, "/")] = src
		for dir := path.Dir(strings.TrimPrefix(dest, "/")); dir != "." && dir != "/"; dir = path.Dir(dir) {
			dirs[dir] = true
		}
	}
	var names []string
	for dir := range dirs {
		names = append(names, dir+"/")
	}
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, name := range names {
		if strings.HasSuffix(name, "/") {
			hdr := &tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX}
			if err := tw.WriteHeader(hdr); err != nil {
				return nil, err
			}
			continue
		}
		data, err := os.ReadFile(files[name])
		if err != nil {
			return nil, err
		}
		info, err := os.Stat(files[name])
		if err != nil {
			return nil, err
		}
		if err := addFile(tw, name, data, int64(info.Mode().Perm())); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func addFile(tw *tar.Writer, name string, data []byte, mode int64) error {
	hdr := &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(data)), ModTime: epoch, Format: tar.FormatPAX}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	_, err := tw.Write(data)
	return err
}
