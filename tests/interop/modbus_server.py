#!/usr/bin/env python3
"""A Modbus slave (server) for the agent's Modbus master tests (tests/system/modbus.rs).

It is pymodbus's TCP or RTU server with a data model of its own, so that what a
test reads back is encoded here by Python's `struct`, independently of the Rust
code under test.

Usage:
    modbus_server.py --tcp PORT [options]
    modbus_server.py --serial DEVICE [--baud 19200] [--parity N|E|O] [options]

Options:
    --units 1,2,3          unit ids answered (default 1). A request to any other
                           unit gets no answer at all, as an absent slave on an
                           RS-485 line: the master must time out.
    --load FILE.json       typed values to preload (format below).
    --delay ADDRESS:SECS   repeatable: a read (FC03, or FC23's read part) whose
                           range covers holding register ADDRESS is answered only
                           after SECS seconds. The whole server waits meanwhile
                           (on TCP the other connections too).

--tcp binds 127.0.0.1; PORT 0 lets the kernel choose. Once it listens, the
server prints `ready port=NNNN` (TCP, the bound port) or `ready` (serial).

Data model: every unit has coils, discrete inputs, holding registers and input
registers of 1000 entries each, at protocol addresses 0..999 (the address in
the request frame, 0-based: a read of holding address 100 returns what the
load file puts at "address": 100). Everything is 0/false unless loaded. Any
request touching an address above 999 answers exception 02 (illegal data
address). Writes (FC05, FC06, FC15, FC16, FC23) change the tables.

Every request received is logged on stdout, one line, flushed at once, also
for units that are not answered:
    request unit=1 fc=3 address=100 count=10
    request unit=1 fc=5 address=3 count=1 values=[true]
    request unit=2 fc=16 address=10 count=2 values=[1, 2]
(values are the bools, as true/false, or the registers written).

Load file: a JSON object keyed by unit id, each a list of entries:
    {"1": [{"table": "holding", "address": 100, "type": "f32", "order": "ABCD", "value": 1.5},
           {"table": "coil", "address": 3, "value": true},
           {"table": "input", "address": 7, "type": "u16", "value": 513}]}
table: coil | discrete | holding | input. type: bool (the default for coil and
discrete, the only type there), u16, i16, u32, i32, f32, u64, i64, f64 (u16 is
the default for holding and input). order (default ABCD) applies to the 32-
and 64-bit types:

    ABCD  registers most significant first, bytes big-endian within each
          register: Modbus's natural order.
    CDAB  register order reversed (least significant register first), bytes
          big-endian within each register ("word swap").
    BADC  registers most significant first, the two bytes swapped within each
          register ("byte swap").
    DCBA  register order reversed and bytes swapped within each register: the
          whole value little-endian.

For 32-bit types the letters are literally the bytes, A the most significant.
For 64-bit types they generalise as said above: the letters name the order of
registers (first half of the letters = most significant register first or
not) and of bytes within a register, not 4 bytes. The registers, in address
order:

    u32 0x11223344          u64 0x1122334455667788
    ABCD  0x1122 0x3344     ABCD  0x1122 0x3344 0x5566 0x7788
    CDAB  0x3344 0x1122     CDAB  0x7788 0x5566 0x3344 0x1122
    BADC  0x2211 0x4433     BADC  0x2211 0x4433 0x6655 0x8877
    DCBA  0x4433 0x2211     DCBA  0x8877 0x6655 0x4433 0x2211

What pymodbus 3.16.1 itself does, below this script's data model:
  - Unit ids are taken as they come: 0 is no broadcast (broadcast is off) and
    255 is no "any unit" on TCP; both are silent unless listed in --units. On
    TCP a silent request leaves the connection open and usable.
  - A request pymodbus cannot decode (a read count of 0 or over 125 registers
    or 2000 bits, an unknown function code) is answered with function byte
    0x80 (not fc | 0x80) and exception 01, even to a unit not served, and is
    not logged, since it never becomes a request.
  - Linux pseudo-terminals here refuse parity E and O (termios EINVAL), so
    over a socat pty pair use parity N.

Exits 0 on SIGTERM or SIGINT. Never reads stdin.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import struct
import sys
import time

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer

SIZE = 1000

# struct format (big-endian) and register count of each type.
TYPES = {
    "u16": (">H", 1),
    "i16": (">h", 1),
    "u32": (">I", 2),
    "i32": (">i", 2),
    "f32": (">f", 2),
    "u64": (">Q", 4),
    "i64": (">q", 4),
    "f64": (">d", 4),
}
ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")

# Function code -> table, as pymodbus's datastores map them.
FC_TABLE = {1: "coil", 5: "coil", 15: "coil", 2: "discrete", 4: "input"}
FC_TABLE.update((fc, "holding") for fc in (3, 6, 16, 22, 23))


def encode(kind: str, order: str, value) -> list[int]:
    """The registers, in address order, that hold `value` as `kind` in `order`."""
    fmt, nregs = TYPES[kind]
    if kind[0] == "f":
        data = struct.pack(fmt, float(value))
    else:
        data = struct.pack(fmt, int(value))
    regs = [data[i : i + 2] for i in range(0, len(data), 2)]  # most significant first
    if nregs > 1:
        if order not in ORDERS:
            raise ValueError(f"order {order!r} is not one of {ORDERS}")
        if order in ("CDAB", "DCBA"):
            regs.reverse()
        if order in ("BADC", "DCBA"):
            regs = [r[::-1] for r in regs]
    return [int.from_bytes(r, "big") for r in regs]


class Unit:
    """The four tables of one unit, indexed by protocol address."""

    def __init__(self):
        self.tables = {
            "coil": [False] * SIZE,
            "discrete": [False] * SIZE,
            "holding": [0] * SIZE,
            "input": [0] * SIZE,
        }


class Store(ModbusServerContext):
    """The server's data: answers the configured units, raises
    NoSuchIdException for the others (which the server, built with
    ignore_missing_devices=True, then leaves unanswered).

    Subclasses pymodbus's ModbusServerContext only so that the server accepts
    it (pymodbus 3.16 passes such a context with `old_simulator` set straight
    to the request handlers, which call async_getValues/async_setValues)."""

    def __init__(self, units: dict[int, Unit], delays: dict[int, float]):  # pylint: disable=super-init-not-called
        self.units = units
        self.delays = delays
        self.old_simulator = True
        self.simdevices = []

    def device_ids(self):
        return list(self.units)

    def _unit(self, device_id: int) -> Unit:
        unit = self.units.get(device_id)
        if unit is None:
            raise NoSuchIdException(f"unit {device_id} is not served")
        return unit

    async def async_getValues(self, device_id, func_code, address, count=1):
        table = self._unit(device_id).tables[FC_TABLE[func_code]]
        if address < 0 or count < 0 or address + count > SIZE:
            return ExcCodes.ILLEGAL_ADDRESS
        if func_code in (3, 23):
            for at, seconds in self.delays.items():
                if address <= at < address + count:
                    # Blocking on purpose: pymodbus's handler keeps the
                    # request being answered in per-connection state that a
                    # request arriving during an await would overwrite.
                    time.sleep(seconds)
                    break
        return list(table[address : address + count])

    async def async_setValues(self, device_id, func_code, address, values):
        table = self._unit(device_id).tables[FC_TABLE[func_code]]
        values = list(values)
        if address < 0 or address + len(values) > SIZE:
            return ExcCodes.ILLEGAL_ADDRESS
        table[address : address + len(values)] = values
        return None


def load(path: str, units: dict[int, Unit]) -> None:
    with open(path, encoding="utf-8") as file:
        spec = json.load(file)
    for unit_id, entries in spec.items():
        unit = units.get(int(unit_id))
        if unit is None:
            raise SystemExit(f"load: unit {unit_id} is not in --units")
        for entry in entries:
            table = entry["table"]
            if table not in unit.tables:
                raise SystemExit(f"load: unknown table {table!r}")
            address = int(entry["address"])
            if table in ("coil", "discrete"):
                kind = entry.get("type", "bool")
                if kind != "bool":
                    raise SystemExit(f"load: {table} holds bool, not {kind}")
                values = [bool(entry["value"])]
            else:
                kind = entry.get("type", "u16")
                if kind not in TYPES:
                    raise SystemExit(f"load: unknown type {kind!r}")
                values = encode(kind, entry.get("order", "ABCD"), entry["value"])
            if not 0 <= address <= SIZE - len(values):
                raise SystemExit(f"load: address {address} out of 0..{SIZE - 1}")
            unit.tables[table][address : address + len(values)] = values


def log_request(sending: bool, pdu):
    """pymodbus's trace_pdu hook: logs each request decoded, before the datastore
    sees it, so requests to units not served are logged too."""
    if not sending:
        fc = pdu.function_code
        line = f"request unit={pdu.dev_id} fc={fc}"
        if fc in (1, 2, 3, 4):
            line += f" address={pdu.address} count={pdu.count}"
        elif fc in (5, 15):
            bits = list(pdu.bits)
            line += f" address={pdu.address} count={len(bits)} values={json.dumps(bits)}"
        elif fc in (6, 16):
            regs = list(pdu.registers)
            line += f" address={pdu.address} count={len(regs)} values={json.dumps(regs)}"
        elif fc == 23:
            regs = list(pdu.write_registers)
            line += (
                f" address={pdu.read_address} count={pdu.read_count}"
                f" write_address={pdu.write_address} values={json.dumps(regs)}"
            )
        print(line, flush=True)
    return pdu


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    link = parser.add_mutually_exclusive_group(required=True)
    link.add_argument("--tcp", type=int, metavar="PORT", help="listen on 127.0.0.1:PORT (0: any free port)")
    link.add_argument("--serial", metavar="DEVICE", help="serve Modbus RTU on this serial device")
    parser.add_argument("--baud", type=int, default=19200)
    parser.add_argument("--parity", choices=("N", "E", "O"), default="N")
    parser.add_argument("--units", default="1", help="comma-separated unit ids answered (default 1)")
    parser.add_argument("--load", metavar="FILE.json")
    parser.add_argument("--delay", action="append", default=[], metavar="ADDRESS:SECONDS")
    args = parser.parse_args(argv)
    try:
        args.units = [int(u) for u in args.units.split(",") if u.strip()]
    except ValueError:
        parser.error("--units: comma-separated integers")
    if not args.units or not all(0 <= u <= 255 for u in args.units):
        parser.error("--units: ids in 0..255")
    delays = {}
    for item in args.delay:
        try:
            at, seconds = item.split(":")
            delays[int(at)] = float(seconds)
        except ValueError:
            parser.error(f"--delay {item!r}: ADDRESS:SECONDS")
    args.delay = delays
    return args


async def serve(args) -> None:
    units = {u: Unit() for u in args.units}
    if args.load:
        load(args.load, units)
    store = Store(units, args.delay)
    common = {"ignore_missing_devices": True, "trace_pdu": log_request}
    if args.tcp is not None:
        server = ModbusTcpServer(store, framer=FramerType.SOCKET, address=("127.0.0.1", args.tcp), **common)
    else:
        server = ModbusSerialServer(
            store,
            framer=FramerType.RTU,
            port=args.serial,
            baudrate=args.baud,
            parity=args.parity,
            bytesize=8,
            stopbits=1,
            **common,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.serve_forever(background=True)
    if args.tcp is not None:
        port = server.transport.sockets[0].getsockname()[1]
        print(f"ready port={port}", flush=True)
    else:
        print("ready", flush=True)
    await stop.wait()
    await server.shutdown()


def main(argv=None) -> int:
    args = parse_args(argv)
    # pymodbus logs its own warnings (deprecations, decode errors) on stderr.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
