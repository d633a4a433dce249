"""A historian writer: every durable sample the hub accepted, appended to a
CSV file, acknowledged only once written. Killed and started again, it
resumes where it stopped. Usage: historian.py BROKER NAME FILE [COUNT]"""
import json, os, sys, zmq

broker, name, path = sys.argv[1:4]
stop_after = int(sys.argv[4]) if len(sys.argv) > 4 else None
sock = zmq.Context().socket(zmq.REQ)  # MDP/0.1 (RFC 7) client: REQ adds the empty frame
sock.connect(broker)

def ask(command, **args):
    sock.send_multipart([b"MDPC01", b"org.plantd.Consumer", command, json.dumps(args).encode()])
    if not sock.poll(10_000):
        sys.exit("no answer from the hub")
    _, _, answer, *samples = sock.recv_multipart()
    answer = json.loads(answer)
    if "error" in answer:
        sys.exit(answer["error"])
    return answer, samples

if name not in [c["name"] for c in ask(b"list")[0]["consumers"]]:
    ask(b"create", name=name, prefixes=["org.plantd.Metric."])
written = 0
with open(path, "a") as out:
    while stop_after is None or written < stop_after:
        fetched, samples = ask(b"fetch", name=name, max=500, wait_ms=1000)
        for line in (samples[0].splitlines() if samples else []):
            s = json.loads(line)["sample"]
            out.write(f'{s["agent"]},{s["channel"]},{s["epoch"]},{s["seq"]},{s["ts"]},{s["value"]}\n')
            written += 1
        out.flush(); os.fsync(out.fileno())  # on disk before the hub may forget them
        ask(b"ack", name=name, pos=fetched["next"])
