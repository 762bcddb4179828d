"""A TCP forwarder from a loopback port inside a network namespace to a loopback port of the host's namespace.

    python hack/cluster/nsforward.py --netns /run/netns/shoprank-node --listen 127.0.0.1:6443 \
        --connect 127.0.0.1:PORT

Why: the local control plane listens on the host's 127.0.0.1 only, and the real node (kubelet, containerd,
metrics-server, the object store) lives in a network namespace of its own (hack/cluster/node.py), whose
127.0.0.1 is a different interface. Rather than binding the API server to a non-loopback address, this process
opens its listening socket inside the node's namespace (setns on one thread, for the socket() call only) and
connects out from the host's namespace: the kubelet reaches https://127.0.0.1:6443 in its namespace and the
bytes arrive at the API server's loopback port. TLS passes through untouched (the API server's certificate
names 127.0.0.1).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import sys
import threading

CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def listen_in(netns: str, host: str, port: int) -> socket.socket:
    """A listening socket that belongs to the network namespace `netns`; the calling thread returns to its
    own namespace before this returns (sockets keep the namespace they were created in)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(netns, os.O_RDONLY)
    try:
        _setns(target)
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)
    return sock


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
            try:
                sock.shutdown(how)
            except OSError:
                pass


def _serve(client: socket.socket, target: tuple[str, int]) -> None:
    try:
        upstream = socket.create_connection(target, timeout=10)
    except OSError:
        client.close()
        return
    upstream.settimeout(None)
    back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
    back.start()
    _pipe(client, upstream)
    back.join()
    client.close()
    upstream.close()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--netns", required=True, help="path of the network namespace (/run/netns/NAME)")
    parser.add_argument("--listen", required=True, help="HOST:PORT inside that namespace")
    parser.add_argument("--connect", required=True, help="HOST:PORT in this process's namespace")
    args = parser.parse_args(argv)
    listen_host, listen_port = _address(args.listen)
    target = _address(args.connect)
    server = listen_in(args.netns, listen_host, listen_port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"forwarding {args.netns} {args.listen} -> {args.connect}", flush=True)
    while True:
        client, _ = server.accept()
        threading.Thread(target=_serve, args=(client, target), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
