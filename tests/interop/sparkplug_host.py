"""A Sparkplug B host application for tests/system/sparkplug.rs.

Subscribes to every message of one group on an MQTT broker, decodes each
payload with message classes built at start from the Sparkplug B schema
(Eclipse Tahu's sparkplug_b.proto, written out below with protobuf's
descriptor API: no protoc, no generated file), checks the rules a host relies
on, and prints one JSON line per message on stdout:

  {"topic", "kind", "node", "device", "has_seq", "seq", "timestamp",
   "metrics": [{"name", "alias", "datatype", "value", "is_historical", "unit"}],
   "violations": [...]}

The checks: NBIRTH first in a session, with seq 0 and a bdSeq metric equal
to the last will's; seq continuous (0-255, wrapping) from the NBIRTH on; a
device's DDATA only after its DBIRTH in the session; an alias in DATA known
from a birth; NDEATH without seq and with the session's bdSeq.

Commands on stdin, one JSON object per line:
  {"state": true|false, "host": "scada", "timestamp": ms}  publish STATE (retained, QoS 1)
  {"rebirth": true, "node": "hub-1"}                      NCMD Node Control/Rebirth
  {"dcmd": "pump-1", "node": "hub-1", "metric": "valve", "value": true}
  {"stop": true}

Usage: sparkplug_host.py HOST PORT GROUP_ID
"""

import json
import sys
import threading
import time

import paho.mqtt.client as mqtt
from google.protobuf import descriptor_pb2 as d
from google.protobuf import descriptor_pool, message_factory

F = d.FieldDescriptorProto
PACKAGE = "org.eclipse.tahu.protobuf"


def payload_class():
    fdp = d.FileDescriptorProto(name="sparkplug_b.proto", package=PACKAGE, syntax="proto2")
    payload = fdp.message_type.add(name="Payload")
    metric = payload.nested_type.add(name="Metric")
    metric.oneof_decl.add(name="value")
    props = payload.nested_type.add(name="PropertySet")
    pvalue = payload.nested_type.add(name="PropertyValue")
    pvalue.oneof_decl.add(name="value")

    def add(m, name, number, kind, repeated=False, type_name=None, oneof=None):
        label = F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL
        f = m.field.add(name=name, number=number, type=kind, label=label)
        if type_name:
            f.type_name = type_name
        if oneof is not None:
            f.oneof_index = oneof

    for name, number, kind in [("type", 1, F.TYPE_UINT32), ("is_null", 2, F.TYPE_BOOL)]:
        add(pvalue, name, number, kind)
    for name, number, kind in [
        ("int_value", 3, F.TYPE_UINT32), ("long_value", 4, F.TYPE_UINT64), ("float_value", 5, F.TYPE_FLOAT),
        ("double_value", 6, F.TYPE_DOUBLE), ("boolean_value", 7, F.TYPE_BOOL), ("string_value", 8, F.TYPE_STRING),
    ]:
        add(pvalue, name, number, kind, oneof=0)
    add(props, "keys", 1, F.TYPE_STRING, repeated=True)
    add(props, "values", 2, F.TYPE_MESSAGE, True, f".{PACKAGE}.Payload.PropertyValue")
    for name, number, kind in [
        ("name", 1, F.TYPE_STRING), ("alias", 2, F.TYPE_UINT64), ("timestamp", 3, F.TYPE_UINT64),
        ("datatype", 4, F.TYPE_UINT32), ("is_historical", 5, F.TYPE_BOOL), ("is_transient", 6, F.TYPE_BOOL),
        ("is_null", 7, F.TYPE_BOOL),
    ]:
        add(metric, name, number, kind)
    add(metric, "properties", 9, F.TYPE_MESSAGE, type_name=f".{PACKAGE}.Payload.PropertySet")
    for name, number, kind in [
        ("int_value", 10, F.TYPE_UINT32), ("long_value", 11, F.TYPE_UINT64), ("float_value", 12, F.TYPE_FLOAT),
        ("double_value", 13, F.TYPE_DOUBLE), ("boolean_value", 14, F.TYPE_BOOL), ("string_value", 15, F.TYPE_STRING),
        ("bytes_value", 16, F.TYPE_BYTES),
    ]:
        add(metric, name, number, kind, oneof=0)
    add(payload, "timestamp", 1, F.TYPE_UINT64)
    add(payload, "metrics", 2, F.TYPE_MESSAGE, True, f".{PACKAGE}.Payload.Metric")
    add(payload, "seq", 3, F.TYPE_UINT64)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.Payload"))


Payload = payload_class()
INT64, UINT64, DOUBLE, BOOLEAN, STRING = 4, 8, 10, 11, 12
out_lock = threading.Lock()


def emit(obj):
    with out_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def metric_value(m):
    kind = m.WhichOneof("value")
    if kind is None:
        return None
    v = getattr(m, kind)
    if kind == "long_value" and m.datatype == INT64 and v >= 2**63:
        v -= 2**64
    return v


class Host:
    def __init__(self, group):
        self.group = group
        self.next_seq = {}   # node -> expected seq
        self.born = {}       # node -> set of devices born this session
        self.aliases = {}    # (node, device) -> {alias: name}
        self.bd_seq = {}     # node -> the bdSeq of its last NBIRTH
        self.in_session = {}

    def check(self, kind, node, device, p):
        v = []
        has_seq = p.HasField("seq")
        if kind == "NDEATH":
            if has_seq:
                v.append("NDEATH carries a seq")
            bd = [metric_value(m) for m in p.metrics if m.name == "bdSeq"]
            if not bd:
                v.append("NDEATH without bdSeq")
            elif node in self.bd_seq and bd[0] != self.bd_seq[node]:
                v.append(f"NDEATH bdSeq {bd[0]} is not the session's {self.bd_seq[node]}")
            self.in_session[node] = False
            return v
        if kind in ("NCMD", "DCMD"):
            return v
        if not has_seq:
            v.append(f"{kind} without seq")
            return v
        seq = p.seq
        if kind == "NBIRTH":
            if seq != 0:
                v.append(f"NBIRTH seq {seq}, not 0")
            bd = [metric_value(m) for m in p.metrics if m.name == "bdSeq"]
            if not bd or [m for m in p.metrics if m.name == "bdSeq"][0].datatype != INT64:
                v.append("NBIRTH without an Int64 bdSeq")
            else:
                self.bd_seq[node] = bd[0]
            rebirth = [m for m in p.metrics if m.name == "Node Control/Rebirth"]
            if not rebirth or rebirth[0].datatype != BOOLEAN or rebirth[0].HasField("alias"):
                v.append("NBIRTH without a Boolean Node Control/Rebirth free of alias")
            self.in_session[node] = True
            self.born[node] = set()
            self.next_seq[node] = 1
            return v
        if not self.in_session.get(node):
            v.append(f"{kind} outside a session (no NBIRTH)")
        expected = self.next_seq.get(node)
        if expected is not None and seq != expected:
            v.append(f"{kind} seq {seq}, expected {expected}")
        self.next_seq[node] = (seq + 1) % 256
        if kind == "DBIRTH":
            self.born.setdefault(node, set()).add(device)
            table = {}
            for m in p.metrics:
                if not m.name or not m.HasField("datatype"):
                    v.append("DBIRTH metric without name or datatype")
                if m.HasField("alias"):
                    table[m.alias] = m.name
            self.aliases[(node, device)] = table
        elif kind == "DDATA":
            if device not in self.born.get(node, set()):
                v.append(f"DDATA for {device} before its DBIRTH")
            table = self.aliases.get((node, device), {})
            for m in p.metrics:
                if not m.name and m.alias not in table:
                    v.append(f"DDATA alias {m.alias} unknown")
        elif kind == "DDEATH":
            self.born.get(node, set()).discard(device)
        return v

    def describe(self, topic, raw):
        parts = topic.split("/")
        if parts[1] == "STATE":
            return None
        kind, node = parts[2], parts[3]
        device = parts[4] if len(parts) > 4 else None
        p = Payload()
        p.ParseFromString(raw)
        violations = self.check(kind, node, device, p)
        table = self.aliases.get((node, device), {})
        metrics = []
        for m in p.metrics:
            unit = None
            if m.HasField("properties"):
                for k, pv in zip(m.properties.keys, m.properties.values):
                    if k == "engUnit":
                        unit = pv.string_value
            metrics.append({
                "name": m.name if m.HasField("name") else table.get(m.alias),
                "alias": m.alias if m.HasField("alias") else None,
                "datatype": m.datatype if m.HasField("datatype") else None,
                "value": metric_value(m),
                "is_historical": m.is_historical,
                "timestamp": m.timestamp if m.HasField("timestamp") else None,
                "unit": unit,
            })
        return {
            "topic": topic, "kind": kind, "node": node, "device": device,
            "has_seq": p.HasField("seq"), "seq": p.seq if p.HasField("seq") else None,
            "timestamp": p.timestamp, "metrics": metrics, "violations": violations,
        }


def metric(name, datatype, value):
    p = Payload()
    m = p.metrics.add()
    m.name = name
    m.datatype = datatype
    if datatype == BOOLEAN:
        m.boolean_value = bool(value)
    elif datatype == DOUBLE:
        m.double_value = float(value)
    else:
        m.string_value = str(value)
    p.timestamp = int(time.time() * 1000)
    return p.SerializeToString()


def main():
    host, port, group = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    state = Host(group)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-host-{port}")

    def on_connect(c, userdata, flags, reason, props):
        c.subscribe(f"spBv1.0/{group}/#", qos=1)

    def on_subscribe(c, userdata, mid, reasons, props):
        emit({"ready": True})

    def on_message(c, userdata, msg):
        try:
            described = state.describe(msg.topic, msg.payload)
        except Exception as e:  # a payload that does not decode is a finding, not a crash
            described = {"topic": msg.topic, "violations": [f"undecodable: {e}"]}
        if described is not None:
            emit(described)

    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    client.connect(host, port, keepalive=10)
    client.loop_start()
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("stop"):
            break
        if "state" in cmd:
            body = json.dumps({"online": cmd["state"], "timestamp": cmd["timestamp"]})
            info = client.publish(f"spBv1.0/STATE/{cmd['host']}", body, qos=1, retain=True)
        elif cmd.get("rebirth"):
            info = client.publish(f"spBv1.0/{group}/NCMD/{cmd['node']}", metric("Node Control/Rebirth", BOOLEAN, True), qos=0)
        elif "dcmd" in cmd:
            value = cmd["value"]
            kind = BOOLEAN if isinstance(value, bool) else DOUBLE if isinstance(value, (int, float)) else STRING
            info = client.publish(f"spBv1.0/{group}/DCMD/{cmd['node']}/{cmd['dcmd']}", metric(cmd["metric"], kind, value), qos=0)
        else:
            continue
        info.wait_for_publish(timeout=5)
        emit({"sent": cmd})
    client.loop_stop()
    client.disconnect()


if __name__ == "__main__":
    main()
