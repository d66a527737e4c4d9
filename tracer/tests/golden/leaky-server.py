"""A server on 127.0.0.1 and [::1] that leaks: per family one connection behaves, and of
three whose clients close, it reads the end of stream on two and keeps them, and closes the
third late without reading it. Usage: leaky-server.py PORT"""
import socket
import sys
import time

port = int(sys.argv[1])
start = time.monotonic()
keep, late = [], []
for family, addr in [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]:
    listener = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    listener.bind((addr, port))
    listener.listen(8)
    for i in range(4):
        client = socket.create_connection((addr, port))
        server, _ = listener.accept()
        server.sendall(b"hi")
        assert client.recv(2) == b"hi"
        client.close()
        if i == 0:  # behaves: reads the end of stream and closes
            assert server.recv(16) == b""
            server.close()
        elif i < 3:  # leaks: reads the end of stream and keeps the socket
            assert server.recv(16) == b""
            keep.append(server)
        else:  # closes late, never having read the end of stream
            assert server.recv(16, socket.MSG_PEEK) == b""
            late.append(server)
    listener.close()
time.sleep(max(0.0, start + 2.5 - time.monotonic()))
for s in late:
    s.close()
# Hold the leaks until the recording has ended.
time.sleep(max(0.0, start + 8 - time.monotonic()))
