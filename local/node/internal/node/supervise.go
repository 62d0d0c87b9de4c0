package node

// Child processes. The node is PID 1 of its container, so it also reaps the orphans that are
// re-parented to it (containerd's shims daemonize): one wait4(-1) loop reaps everything and hands
// the exit status of our own children to whoever waits for them. Nothing here may use
// exec.Cmd.Wait, which would race with that loop.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

// Proc is one started child.
type Proc struct {
	Name string
	cmd  *exec.Cmd
	done chan syscall.WaitStatus
	// Status is valid once Done is closed.
	Status syscall.WaitStatus
	exited chan struct{}
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.exited }

// Signal sends sig to the process (no-op once it exited).
func (p *Proc) Signal(sig os.Signal) { _ = p.cmd.Process.Signal(sig) }

// Stop sends SIGTERM, then SIGKILL after grace; it returns when the process has exited.
func (p *Proc) Stop(grace time.Duration) {
	p.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(grace):
		p.Signal(syscall.SIGKILL)
		<-p.exited
	}
}

// Supervisor starts children and reaps every process that ends up as its child.
type Supervisor struct {
	mu    sync.Mutex
	procs map[int]*Proc
}

// NewSupervisor starts the reaper.
func NewSupervisor() *Supervisor {
	s := &Supervisor{procs: map[int]*Proc{}}
	sigs := make(chan os.Signal, 64)
	signal.Notify(sigs, syscall.SIGCHLD)
	go func() {
		tick := time.NewTicker(time.Second)
		for {
			select {
			case <-sigs:
			case <-tick.C: // SIGCHLDs coalesce; a periodic sweep misses nothing
			}
			s.reap()
		}
	}()
	return s
}

func (s *Supervisor) reap() {
	for {
		var status syscall.WaitStatus
		s.mu.Lock()
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if pid > 0 {
			if p, ok := s.procs[pid]; ok {
				delete(s.procs, pid)
				p.Status = status
				close(p.exited)
				_ = p.cmd.Process.Release()
			}
		}
		s.mu.Unlock()
		if pid <= 0 || err != nil {
			return
		}
	}
}

// Start runs argv with output going to out (a file: no copying goroutines). When the node
// stops, the container stops with it, and every child ends with it.
func (s *Supervisor) Start(name string, argv []string, env []string, out *os.File) (*Proc, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = out, out
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, cmd: cmd, exited: make(chan struct{})}
	s.procs[cmd.Process.Pid] = p
	return p, nil
}

// Run runs argv to completion (or until ctx ends) and returns its combined output.
func (s *Supervisor) Run(ctx context.Context, name string, argv []string, env []string) ([]byte, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	p, err := s.Start(name, argv, env, w)
	w.Close()
	if err != nil {
		r.Close()
		return nil, err
	}
	var buf bytes.Buffer
	copied := make(chan struct{})
	go func() { _, _ = io.Copy(&buf, r); r.Close(); close(copied) }()
	select {
	case <-p.Done():
	case <-ctx.Done():
		p.Stop(2 * time.Second)
	}
	<-copied
	if ctx.Err() != nil {
		return buf.Bytes(), fmt.Errorf("%s: %w", name, ctx.Err())
	}
	if !p.Status.Exited() || p.Status.ExitStatus() != 0 {
		return buf.Bytes(), fmt.Errorf("%s: %s", name, describe(p.Status))
	}
	return buf.Bytes(), nil
}

func describe(status syscall.WaitStatus) string {
	if status.Signaled() {
		return "killed by " + status.Signal().String()
	}
	return fmt.Sprintf("exit status %d", status.ExitStatus())
}
