#!/usr/bin/env python3
"""A Modbus master (client) for the agent's Modbus tests (tests/system/modbus.rs):
reads or writes one range on a slave, such as the agent's or modbus_server.py.

Usage:
    modbus_client.py (--tcp HOST:PORT | --serial DEVICE [--baud 19200] [--parity N|E|O])
                     [--unit 1] COMMAND

Commands:
    read TABLE ADDRESS COUNT         TABLE: coil | discrete | holding | input
                                     (FC01, FC02, FC03, FC04)
    write coil ADDRESS true|false    FC05
    write holding ADDRESS V          FC06 (one value)
    write holding ADDRESS V1 V2...   FC16 (several values)

ADDRESS is the 0-based protocol address. Prints one line and exits:
    0  a JSON list: the registers (ints) or bools read, or the values written
    2  `exception N`: the slave answered Modbus exception code N
    3  `timeout`: no answer within 2 s
    4  `error ...`: could not connect or open the device, or a request pymodbus
       refuses to send (such as a count over 125 registers)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from pymodbus.client import ModbusSerialClient, ModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.framer import FramerType

TIMEOUT = 2.0


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    link = parser.add_mutually_exclusive_group(required=True)
    link.add_argument("--tcp", metavar="HOST:PORT")
    link.add_argument("--serial", metavar="DEVICE")
    parser.add_argument("--baud", type=int, default=19200)
    parser.add_argument("--parity", choices=("N", "E", "O"), default="N")
    parser.add_argument("--unit", type=int, default=1)
    sub = parser.add_subparsers(dest="command", required=True)
    read = sub.add_parser("read")
    read.add_argument("table", choices=("coil", "discrete", "holding", "input"))
    read.add_argument("address", type=int)
    read.add_argument("count", type=int)
    write = sub.add_parser("write")
    write.add_argument("table", choices=("coil", "holding"))
    write.add_argument("address", type=int)
    write.add_argument("values", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "write":
        if args.table == "coil":
            if len(args.values) != 1 or args.values[0] not in ("true", "false"):
                parser.error("write coil ADDRESS true|false")
            args.values = [args.values[0] == "true"]
        else:
            try:
                args.values = [int(v, 0) for v in args.values]
            except ValueError:
                parser.error("write holding ADDRESS V1 [V2...]: integers")
    return args


def client_for(args):
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        return ModbusTcpClient(host or "127.0.0.1", port=int(port), timeout=TIMEOUT, retries=0)
    return ModbusSerialClient(
        args.serial,
        framer=FramerType.RTU,
        baudrate=args.baud,
        parity=args.parity,
        bytesize=8,
        stopbits=1,
        timeout=TIMEOUT,
        retries=0,
    )


def request(client, args):
    unit = args.unit
    if args.command == "read":
        call = {
            "coil": client.read_coils,
            "discrete": client.read_discrete_inputs,
            "holding": client.read_holding_registers,
            "input": client.read_input_registers,
        }[args.table]
        return call(args.address, count=args.count, device_id=unit)
    if args.table == "coil":
        return client.write_coil(args.address, args.values[0], device_id=unit)
    if len(args.values) == 1:
        return client.write_register(args.address, args.values[0], device_id=unit)
    return client.write_registers(args.address, args.values, device_id=unit)


def main(argv=None) -> int:
    args = parse_args(argv)
    # pymodbus logs timeouts and the like itself; keep stdout to our one line.
    logging.basicConfig(stream=sys.stderr, level=logging.CRITICAL)
    client = client_for(args)
    try:
        if not client.connect():
            print("error cannot connect", flush=True)
            return 4
        try:
            response = request(client, args)
        except (ConnectionException, ValueError) as exc:
            print(f"error {exc}", flush=True)
            return 4
        except ModbusIOException as exc:
            # pymodbus raises this when no (valid) answer came within the timeout.
            print("timeout", flush=True)
            print(exc, file=sys.stderr)
            return 3
        if response.isError():
            print(f"exception {response.exception_code}", flush=True)
            return 2
        if args.command == "read":
            if args.table in ("coil", "discrete"):
                values = [bool(b) for b in response.bits[: args.count]]
            else:
                values = list(response.registers)
        else:
            values = args.values
        print(json.dumps(values), flush=True)
        return 0
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
