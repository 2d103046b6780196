"""SecantusDB's cost per write over the commands since it started.

Starts a throwaway SecantusDB (the one `scripts/secantusdb install` put in
.tally-data/venv), then sends blocks of 1,000 single-document writes and
prints the server's CPU per write of each block (from /proc/<pid>/stat).

    .tally-data/venv/bin/python benches/scripts/server_drift.py insert [server flags...]
    .tally-data/venv/bin/python benches/scripts/server_drift.py update [server flags...]

`insert`: bare inserts into one collection; `update`: `$set` of one field
of 500 documents in turn. Why it is here: the cost per write jumps about
5x after ~10,000 write commands (BENCHMARKS.md, "The server's cost drifts"),
so `benches/tail.rs` runs every phase on a server of its own.
"""
import os
import socket
import subprocess
import sys
import time

from bson import Decimal128, ObjectId
from pymongo import MongoClient

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "insert"
    if mode not in ("insert", "update"):
        sys.exit("usage: server_drift.py insert|update [server flags...]")
    port = free_port()
    server = subprocess.Popen(
        [os.path.join(ROOT, ".tally-data/venv/bin/secantusd-py"), "--port", str(port),
         "--storage-path", ":memory:", *sys.argv[2:]],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        db = MongoClient(f"mongodb://127.0.0.1:{port}/?directConnection=true",
                         serverSelectionTimeoutMS=30000).drift
        docs = [ObjectId() for _ in range(500)]
        db.pockets.insert_many([{"_id": d, "balance": Decimal128("0")} for d in docs])
        for block in range(14):
            c0, t0 = cpu_seconds(server.pid), time.time()
            for i in range(1000):
                if mode == "insert":
                    db.transactions.insert_one({"n": i})
                else:
                    db.pockets.update_one({"_id": docs[i % 500]},
                                          {"$set": {"balance": Decimal128(str(i))}})
            ms = cpu_seconds(server.pid) - c0  # seconds per 1,000 = ms per write
            print(f"{mode}: writes {block * 1000:>6}–{block * 1000 + 999:>6}: "
                  f"server cpu {ms:.2f} ms per write, {1000 / (time.time() - t0):.0f} writes/s",
                  flush=True)
    finally:
        server.kill()


if __name__ == "__main__":
    main()
