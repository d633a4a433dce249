#!/usr/bin/env python3
"""Third-party Majordomo and bus peers for the interop tests.

Clients print one JSON object on stdout: {"partials": [[frame, ...], ...], "final": [frame, ...]}
and exit 0, or exit 3 on timeout. Workers echo each request (optionally streaming every frame
back as a PARTIAL first) until killed.

Bus roles: `publish` waits (XPUB) until a subscription covers --topic, then sends --count messages
{"seq": i} in --framing one|two; `subscribe` prints one JSON line {"topic", "payload"} per message
(either layout) until --count.

With --cert and --server-cert (certificate files as pyzmq's zmq.auth writes and reads them),
every socket is a CURVE client (not the majortomo classes, which make their own sockets).
`certs --dir D --name N` makes a pair with zmq.auth.create_certificates and prints both paths.

Dialects:
  majortomo  the majortomo package's own Client and Worker classes (PyPI majortomo==0.2.0)
  rfc7       written here from RFC 7: REQ client, DEALER worker
  plantd     written here from plantd's Go code: MDP/0.2 headers with word commands
"""

import argparse
import json
import sys
import time

import zmq

HEARTBEAT_INTERVAL = 2.5


def text(frames):
    return [f.decode("utf-8", "replace") for f in frames]


def done(partials, final):
    print(json.dumps({"partials": partials, "final": final}), flush=True)
    sys.exit(0)


def timeout():
    print("timeout", file=sys.stderr, flush=True)
    sys.exit(3)


ARGS = None


def socket(kind):
    """A socket of `kind`, a CURVE client when --cert and --server-cert are given."""
    sock = zmq.Context.instance().socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if ARGS.cert:
        from zmq import auth
        public, secret = auth.load_certificate(ARGS.cert)
        server, _ = auth.load_certificate(ARGS.server_cert)
        sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = public, secret, server
    return sock


def certs(args):
    from zmq import auth
    public, secret = auth.create_certificates(args.dir, args.name)
    print(public, flush=True)
    print(secret, flush=True)


# ---- clients ---------------------------------------------------------------

def client_majortomo(args, body):
    from majortomo import Client
    from majortomo.error import Timeout

    with Client(args.broker) as client:
        client.send(args.service.encode(), *body)
        parts = []
        try:
            for part in client.recv_all(timeout=args.timeout):
                parts.append(text(part))
        except Timeout:
            timeout()
        done(parts[:-1], parts[-1] if parts else [])


def client_rfc7(args, body):
    sock = socket(zmq.REQ)
    sock.connect(args.broker)
    # REQ adds the empty delimiter frame itself.
    sock.send_multipart([b"MDPC01", args.service.encode()] + body)
    if not sock.poll(int(args.timeout * 1000)):
        timeout()
    reply = sock.recv_multipart()
    assert reply[0] == b"MDPC01", reply
    assert reply[1] == args.service.encode(), reply
    done([], text(reply[2:]))


def client_plantd(args, body):
    sock = socket(zmq.DEALER)
    sock.connect(args.broker)
    sock.send_multipart([b"", b"MDPC02", b"REQUEST", args.service.encode()] + body)
    partials = []
    while True:
        if not sock.poll(int(args.timeout * 1000)):
            timeout()
        reply = sock.recv_multipart()
        assert reply[0] == b"MDPC02", reply
        assert reply[2] == args.service.encode(), reply
        if reply[1] == b"PARTIAL":
            partials.append(text(reply[3:]))
        elif reply[1] == b"FINAL":
            done(partials, text(reply[3:]))
        else:
            raise AssertionError("unexpected command %r" % reply[1])


# ---- workers ---------------------------------------------------------------

def worker_majortomo(args):
    from majortomo import Worker, WorkerRequestsIterator

    worker = Worker(args.broker, args.service.encode(), heartbeat_interval=HEARTBEAT_INTERVAL)
    requests = WorkerRequestsIterator(worker)
    print("ready", flush=True)
    for request in requests:
        if args.stream:
            for frame in request:
                requests.send_reply_partial([frame])
        requests.send_reply_final(request)


class WireWorker:
    """A worker written from the spec: READY, requests, heartbeats both ways."""

    def __init__(self, args, header, commands, delimited_reply):
        self.args = args
        self.header = header
        self.cmd = commands
        self.delimited_reply = delimited_reply
        self.sock = socket(zmq.DEALER)
        self.sock.connect(args.broker)

    def send(self, command, *frames):
        self.sock.send_multipart([b"", self.header, command] + list(frames))

    def reply(self, command, client, body):
        sep = [b""] if self.delimited_reply else []
        self.send(command, client, *(sep + body))

    def run(self, parse):
        self.send(self.cmd["READY"], self.args.service.encode())
        print("ready", flush=True)
        next_heartbeat = time.time() + HEARTBEAT_INTERVAL
        while True:
            if self.sock.poll(100):
                command, rest = parse(self.sock.recv_multipart())
                if command == self.cmd["REQUEST"]:
                    client, empty, body = rest[0], rest[1], rest[2:]
                    assert empty == b"", rest
                    if self.args.stream:
                        for frame in body:
                            self.reply(self.cmd["PARTIAL"], client, [frame])
                    self.reply(self.cmd["FINAL"], client, body)
                elif command == self.cmd["DISCONNECT"]:
                    print("disconnected", flush=True)
                    return
            if time.time() >= next_heartbeat:
                self.send(self.cmd["HEARTBEAT"])
                next_heartbeat = time.time() + HEARTBEAT_INTERVAL


def worker_rfc7(args):
    commands = {"READY": b"\x01", "REQUEST": b"\x02", "FINAL": b"\x03", "PARTIAL": None,
                "HEARTBEAT": b"\x04", "DISCONNECT": b"\x05"}
    if args.stream:
        sys.exit("RFC 7 has no partial replies")

    def parse(msg):
        assert msg[0] == b"" and msg[1] == b"MDPW01", msg
        return msg[2], msg[3:]

    WireWorker(args, b"MDPW01", commands, delimited_reply=True).run(parse)


def worker_plantd(args):
    commands = {w: w.encode() for w in ["READY", "REQUEST", "PARTIAL", "FINAL", "HEARTBEAT", "DISCONNECT"]}

    def parse(msg):
        # plantd's broker writes no leading empty frame to workers.
        assert msg[0] == b"MDPW02", msg
        return msg[1], msg[2:]

    # plantd puts the reply body right after the client address.
    WireWorker(args, b"MDPW02", commands, delimited_reply=False).run(parse)


# ---- bus peers --------------------------------------------------------------

def publish(args):
    sock = socket(zmq.XPUB)
    sock.setsockopt(zmq.LINGER, 5000)
    sock.connect(args.broker)
    deadline = time.time() + args.timeout
    while True:
        left = deadline - time.time()
        if left <= 0 or not sock.poll(int(left * 1000)):
            timeout()
        sub = sock.recv()
        if sub[:1] == b"\x01" and args.topic.encode().startswith(sub[1:]):
            break
    for i in range(args.count):
        payload = json.dumps({"seq": i}).encode()
        if args.framing == "one":
            sock.send(args.topic.encode() + payload)
        else:
            sock.send_multipart([args.topic.encode(), payload])
    print("sent", flush=True)


def subscribe(args):
    sock = socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, args.topic.encode())
    sock.connect(args.broker)
    print("ready", flush=True)
    for _ in range(args.count):
        if not sock.poll(int(args.timeout * 1000)):
            timeout()
        frames = sock.recv_multipart()
        if len(frames) >= 2:
            topic, payload = frames[0], frames[1]
        else:
            cut = min([i for i in (frames[0].find(b"{"), frames[0].find(b"[")) if i >= 0] or [len(frames[0])])
            topic, payload = frames[0][:cut], frames[0][cut:]
        print(json.dumps({"topic": topic.decode(), "payload": json.loads(payload)}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", choices=["client", "worker", "publish", "subscribe", "certs"])
    parser.add_argument("--dialect", choices=["majortomo", "rfc7", "plantd"])
    parser.add_argument("--broker", help="broker endpoint, or the bus endpoint for bus roles")
    parser.add_argument("--cert", help="this peer's secret certificate: be a CURVE client")
    parser.add_argument("--server-cert", help="the server's public certificate")
    parser.add_argument("--dir", help="certs: directory to write into")
    parser.add_argument("--name", help="certs: the pair's name")
    parser.add_argument("--service")
    parser.add_argument("--topic", default="", help="bus roles: topic (publish) or prefix (subscribe)")
    parser.add_argument("--framing", choices=["one", "two"], default="two")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=5.0, help="client: seconds to wait per reply part")
    parser.add_argument("--stream", action="store_true", help="worker: send each frame as a PARTIAL first")
    parser.add_argument("frames", nargs="*", help="client: request body frames")
    args = parser.parse_intermixed_args()
    global ARGS
    ARGS = args
    body = [f.encode() for f in args.frames]
    if args.role == "certs":
        certs(args)
    elif args.role == "publish":
        publish(args)
    elif args.role == "subscribe":
        subscribe(args)
    elif args.role == "client":
        {"majortomo": client_majortomo, "rfc7": client_rfc7, "plantd": client_plantd}[args.dialect](args, body)
    else:
        {"majortomo": worker_majortomo, "rfc7": worker_rfc7, "plantd": worker_plantd}[args.dialect](args)


if __name__ == "__main__":
    main()
