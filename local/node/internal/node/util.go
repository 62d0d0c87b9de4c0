package node

// Small helpers of the node: waiting, the oom_score_adj probe, the default route's address.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// ---------------------------------------------------------------- helpers

// fatal marks an error that waitFor must not retry.
type fatal struct{ error }

// waitFor polls check until it succeeds, fails fatally, or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, what string, check func(context.Context) error) error {
	deadline := time.Now().Add(timeout)
	started := time.Now()
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := check(cctx)
		cancel()
		if err == nil {
			log.Printf("waited %.1f s for %s", time.Since(started).Seconds(), what)
			return nil
		}
		var f fatal
		if errors.As(err, &f) {
			return f.error
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// checkOOMScoreAdj: containerd gives pod sandboxes oom_score_adj -998. Where this container may
// not lower its score (no CAP_SYS_RESOURCE) that is refused, and every pod would fail to start:
// say so now, with the fix, unless containerd is told to keep scores at or above its own.
func checkOOMScoreAdj(restricted bool) error {
	const path = "/proc/self/oom_score_adj"
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil // not Linux as we know it: let containerd decide
	}
	current, _ := strconv.Atoi(strings.TrimSpace(string(raw)))
	if current <= -1000 {
		return nil
	}
	lower := strconv.Itoa(current - 1)
	if err := os.WriteFile(path, []byte(lower), 0o644); err != nil {
		if restricted {
			log.Printf("this container may not lower oom_score_adj (%v): containerd keeps pods at or above %d (restrict-oom-score-adj)", err, current)
			return nil
		}
		return fmt.Errorf("this container may not lower oom_score_adj (%v), so containerd could start no pod: set restrict-oom-score-adj: true (local/node/config.yaml does) or run the container privileged", err)
	}
	_ = os.WriteFile(path, []byte(strconv.Itoa(current)), 0o644)
	return nil
}

// defaultRouteIP is the IPv4 address of the interface of the default route (/proc/net/route).
func defaultRouteIP() (string, error) {
	f, err := os.Open("/proc/net/route")
	if err != nil {
		return "", err
	}
	defer f.Close()
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		if len(fields) < 2 || fields[1] != "00000000" {
			continue
		}
		iface, err := net.InterfaceByName(fields[0])
		if err != nil {
			return "", err
		}
		addrs, err := iface.Addrs()
		if err != nil {
			return "", err
		}
		for _, addr := range addrs {
			if ipnet, ok := addr.(*net.IPNet); ok && ipnet.IP.To4() != nil {
				return ipnet.IP.String(), nil
			}
		}
		return "", fmt.Errorf("interface %s of the default route has no IPv4 address", fields[0])
	}
	return "", errors.New("no default route")
}

func tail(path string, lines int) string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	all := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}
