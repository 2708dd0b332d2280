#!/usr/bin/env python3
"""An example hedui source adapter in Python: the District Disabled Persons'
Federation serves its disability certificates to the broker.

The department keeps its register in its own system; here, a CSV export of
it (``--data``) with the columns

    record_no, id_no, category, grade, allowance_yuan

The adapter serves ``hedui.v1.AdapterService`` (``proto/hedui/v1/adapter.proto``)
with grpcio. It generates the Python stubs from the proto files when it
starts (``--proto``, the repository's ``proto/`` directory), so the contract
it speaks is always the one in the repository. It follows the contract that
``docs/adapters.md`` describes:

* every person asked about is answered exactly once; a person without a
  certificate is answered with no facts (a definite "no record");
* money in integer fen (the register's yuan are converted exactly, never
  through floating point), facts typed, every fact with its record id and
  as-of time;
* a request it cannot read is refused with ``INVALID_ARGUMENT`` naming the
  field; the broker's deadline (``grpc-timeout``) is honoured;
* ``Check`` says whether it serves and which fact kinds.

For testing, ``--fault-file`` names a file whose content, when it exists,
makes every lookup fail the way a real outage would: ``unavailable``,
``internal`` or ``hang``. The conformance kit uses it to check that outages
come back as the errors the broker expects.

Run it (``scripts/tools`` installs grpcio into ``.venv``)::

    .venv/bin/python adapters/examples/python/adapter.py \\
        --proto proto --data register.csv --port 7018

It prints one JSON line, ``{"listening": "127.0.0.1:7018"}``, when ready, and
stops on SIGTERM, Ctrl-C or when its standard input closes.
"""

import argparse
import atexit
import csv
import decimal
import importlib.resources
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from concurrent import futures

import grpc
from grpc_tools import protoc

SOURCE_ID = "disabled-federation"
MAX_PERSONS = 100
RESIDENT_ID = re.compile(r"^[0-9]{17}[0-9X]$")


def generate_stubs(proto_dir):
    """Generates the hedui.v1 stubs into a temporary directory and imports
    them."""
    out = tempfile.mkdtemp(prefix="hedui-stubs-")
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    args = [
        "protoc",
        f"-I{proto_dir}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        "hedui/v1/facts.proto",
        "hedui/v1/adapter.proto",
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"cannot generate stubs from {proto_dir}")
    sys.path.insert(0, out)
    from hedui.v1 import adapter_pb2, adapter_pb2_grpc, facts_pb2  # noqa: E402

    return adapter_pb2, adapter_pb2_grpc, facts_pb2


def fen(yuan_text):
    """Yuan written as text to integer fen, exactly."""
    amount = decimal.Decimal(yuan_text.strip()) * 100
    if amount != amount.to_integral_value():
        raise ValueError(f"{yuan_text!r} yuan is not a whole number of fen")
    if amount < 0:
        raise ValueError(f"{yuan_text!r} yuan is negative")
    return int(amount)


def load_register(path):
    """The register: person id -> list of rows."""
    register = {}
    with open(path, newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.DictReader(f), start=2):
            try:
                grade = int(row["grade"])
                allowance = fen(row["allowance_yuan"])
            except (KeyError, ValueError) as e:
                raise SystemExit(f"{path}:{n}: {e}")
            register.setdefault(row["id_no"], []).append(
                (row["record_no"], row["category"], grade, allowance)
            )
    return register


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--proto", required=True, help="the repository's proto/ directory")
    parser.add_argument("--data", required=True, help="the register, as CSV")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--fault-file", help="a file whose content injects a fault")
    args = parser.parse_args()

    adapter_pb2, adapter_pb2_grpc, facts_pb2 = generate_stubs(args.proto)
    register = load_register(args.data)
    loaded_at = facts_pb2.google_dot_protobuf_dot_timestamp__pb2.Timestamp()
    loaded_at.GetCurrentTime()
    disability = facts_pb2.FactKind.Value("FACT_KIND_DISABILITY")

    def fault():
        if not args.fault_file or not os.path.exists(args.fault_file):
            return None
        with open(args.fault_file, encoding="utf-8") as f:
            return f.read().strip() or None

    class Federation(adapter_pb2_grpc.AdapterServiceServicer):
        def Lookup(self, request, context):
            if request.source_id not in ("", SOURCE_ID):
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"source_id: {request.source_id!r} is not served here; served: {SOURCE_ID}",
                )
            if not request.person_ids:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "person_ids: must not be empty")
            if len(request.person_ids) > MAX_PERSONS:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"person_ids: {len(request.person_ids)} persons, at most {MAX_PERSONS}",
                )
            for i, p in enumerate(request.person_ids):
                if not RESIDENT_ID.match(p):
                    context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"person_ids[{i}]: not a resident identity number",
                    )
            what = fault()
            if what == "unavailable":
                context.abort(grpc.StatusCode.UNAVAILABLE, "register offline for maintenance")
            if what == "internal":
                context.abort(grpc.StatusCode.INTERNAL, "register query failed")
            if what == "hang":
                # A register that does not answer; the broker gives up at
                # its deadline and so, a little later, do we.
                left = context.time_remaining()
                time.sleep(min(30.0, (left if left is not None else 30.0) + 1.0))
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no answer in time")
            left = context.time_remaining()
            if left is not None and left <= 0:
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no answer in time")
            wanted = set(request.fact_kinds)
            answer = adapter_pb2.LookupResponse()
            answer.as_of.CopyFrom(loaded_at)
            for p in dict.fromkeys(request.person_ids):
                person = answer.answers.add(person_id=p)
                if wanted and disability not in wanted:
                    continue
                for record_no, category, grade, allowance in register.get(p, []):
                    fact = person.facts.add(record_id=record_no)
                    fact.as_of.CopyFrom(loaded_at)
                    fact.disability.category = category
                    fact.disability.grade = grade
                    fact.disability.monthly_allowance_fen = allowance
            return answer

        def Check(self, request, context):
            if request.source_id not in ("", SOURCE_ID):
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"source_id: {request.source_id!r} is not served here",
                )
            down = fault() == "unavailable"
            return adapter_pb2.CheckResponse(
                serving=not down,
                fact_kinds=[disability],
                detail="register offline for maintenance" if down else "",
            )

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    adapter_pb2_grpc.add_AdapterServiceServicer_to_server(Federation(), server)
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    if port == 0:
        raise SystemExit(f"cannot listen on {args.host}:{args.port}")
    server.start()
    print(json.dumps({"listening": f"{args.host}:{port}"}), flush=True)
    print(
        f"serving {SOURCE_ID} ({sum(map(len, register.values()))} certificates) on port {port}",
        file=sys.stderr,
        flush=True,
    )

    def stop_when_stdin_closes():
        while sys.stdin.read(1024):
            pass
        server.stop(grace=1)

    threading.Thread(target=stop_when_stdin_closes, daemon=True).start()
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop(grace=1)


if __name__ == "__main__":
    main()
