// kimi-device-plugin advertises simulated GPUs to the test bed's real kubelet through the kubelet device plugin
// API (v1beta1): it registers a resource (nvidia.com/gpu), lists N healthy devices, and answers Allocate with the
// NVIDIA_VISIBLE_DEVICES the container would get from NVIDIA's plugin. There is no GPU behind the IDs: a TEST
// DOUBLE for the node side of scheduling and allocation, so that an over-request is refused by the real kubelet.
//
// The kubelet removes the plugin sockets when it restarts; the plugin then serves and registers again.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

var errStopped = errors.New("stopped before registering")

type plugin struct {
	pluginapi.UnimplementedDevicePluginServer
	devices []*pluginapi.Device
	done    chan struct{}
}

func (p *plugin) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{}, nil
}

// ListAndWatch sends the device list once; the devices never change health, so the stream then stays open
// until the kubelet hangs up or the plugin stops.
func (p *plugin) ListAndWatch(_ *pluginapi.Empty, stream grpc.ServerStreamingServer[pluginapi.ListAndWatchResponse]) error {
	if err := stream.Send(&pluginapi.ListAndWatchResponse{Devices: p.devices}); err != nil {
		return err
	}
	log.Printf("ListAndWatch: sent %d healthy devices", len(p.devices))
	select {
	case <-stream.Context().Done():
	case <-p.done:
	}
	return nil
}

func (p *plugin) Allocate(_ context.Context, req *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	resp := &pluginapi.AllocateResponse{}
	for _, c := range req.ContainerRequests {
		ids := strings.Join(c.DevicesIds, ",")
		log.Printf("Allocate: %s", ids)
		resp.ContainerResponses = append(resp.ContainerResponses, &pluginapi.ContainerAllocateResponse{
			Envs: map[string]string{"NVIDIA_VISIBLE_DEVICES": ids},
		})
	}
	return resp, nil
}

func (p *plugin) PreStartContainer(context.Context, *pluginapi.PreStartContainerRequest) (*pluginapi.PreStartContainerResponse, error) {
	return &pluginapi.PreStartContainerResponse{}, nil
}

func (p *plugin) GetPreferredAllocation(context.Context, *pluginapi.PreferredAllocationRequest) (*pluginapi.PreferredAllocationResponse, error) {
	return &pluginapi.PreferredAllocationResponse{}, nil
}

// serve listens on the plugin socket and registers it with the kubelet, retrying until the kubelet answers.
// The kubelet's device manager empties the directory when it starts, so the plugin listens only once the
// kubelet's own socket is there, and listens again if its socket disappears before registration succeeds.
func serve(p *plugin, dir, socket, resource string, stop <-chan os.Signal) (*grpc.Server, error) {
	path := filepath.Join(dir, socket)
	kubelet := filepath.Join(dir, "kubelet.sock")
	wait := func() error {
		select {
		case <-stop:
			return errStopped
		case <-time.After(250 * time.Millisecond):
			return nil
		}
	}
	for waited := 0; ; waited++ {
		if _, err := os.Stat(kubelet); err == nil {
			break
		}
		if waited%40 == 0 {
			log.Printf("waiting for the kubelet's %s", kubelet)
		}
		if err := wait(); err != nil {
			return nil, err
		}
	}
	for attempt := 1; ; attempt++ {
		_ = os.Remove(path)
		lis, err := net.Listen("unix", path)
		if err != nil {
			return nil, err
		}
		srv := grpc.NewServer()
		pluginapi.RegisterDevicePluginServer(srv, p)
		go func() { _ = srv.Serve(lis) }()
		err = register(kubelet, socket, resource)
		if _, statErr := os.Stat(path); err == nil && statErr == nil {
			log.Printf("registered %s (%d devices) on %s", resource, len(p.devices), path)
			return srv, nil
		}
		srv.Stop()
		if attempt == 1 || attempt%20 == 0 {
			log.Printf("registering with %s: %v (retrying)", kubelet, err)
		}
		if err := wait(); err != nil {
			return nil, err
		}
	}
}

func register(kubelet, socket, resource string) error {
	conn, err := grpc.NewClient("unix://"+kubelet, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version:      pluginapi.Version,
		Endpoint:     socket,
		ResourceName: resource,
		Options:      &pluginapi.DevicePluginOptions{},
	})
	return err
}

func main() {
	resource := flag.String("resource", "nvidia.com/gpu", "extended resource name to advertise")
	count := flag.Int("count", 8, "number of simulated devices")
	dir := flag.String("dir", pluginapi.DevicePluginPath, "the kubelet's device plugin directory")
	socket := flag.String("socket", "kimi-testbed-gpu.sock", "socket file name inside -dir")
	_ = flag.String("testbed-dir", "", "unused: names the test bed's cluster dir so it recognises its own process")
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)

	devices := make([]*pluginapi.Device, *count)
	for i := range devices {
		devices[i] = &pluginapi.Device{ID: fmt.Sprintf("GPU-5171ab00-0000-4000-8000-%012d", i), Health: pluginapi.Healthy}
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	path := filepath.Join(*dir, *socket)
	for {
		p := &plugin{devices: devices, done: make(chan struct{})}
		srv, err := serve(p, *dir, *socket, *resource, stop)
		if errors.Is(err, errStopped) {
			log.Printf("%v", err)
			_ = os.Remove(path)
			return
		}
		if err != nil {
			log.Fatalf("serving %s: %v", path, err)
		}
		// the kubelet deletes plugin sockets when it restarts: serve again and re-register when ours is gone
		for restart := false; !restart; {
			select {
			case <-stop:
				close(p.done)
				srv.Stop()
				_ = os.Remove(path)
				log.Printf("stopped")
				return
			case <-time.After(time.Second):
				if _, err := os.Stat(path); err != nil {
					log.Printf("socket %s is gone (kubelet restarted?): serving again", path)
					restart = true
				}
			}
		}
		close(p.done)
		srv.Stop()
	}
}
