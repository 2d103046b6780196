"""SecantusDB's cost per document for the shapes a flush could write.

Starts a throwaway SecantusDB per measurement (the one `scripts/secantusdb
install` put in .tally-data/venv; its cost per write drifts after ~10,000
write commands, BENCHMARKS.md), loads 2,000 documents shaped like a monthly
summary (~2.9 KB: 10 + 2 categories, 3 pockets, tally's bookkeeping), opens
a change stream on the source collections as tally does (a reader that
writes nothing), then rewrites 1,000 of them in 20 transactions of one
bulk command of 50, and prints the server's CPU per document
(/proc/<pid>/stat):

    .tally-data/venv/bin/python benches/scripts/write_shapes.py [rounds] [stream]

`stream`: `db` (default: one stream on the database, `$match` on the
source collections, as tally opens it), `collections` (one stream on each
source collection) or `none`.

- replace: the whole document, guarded by (_id, revision) — what tally sends;
- set: `$set` of five top-level fields, same guard — a field-level update;
- set_list: `$set` of three fields and the 10-entry category list;
- replace_small: the whole document without its lists (~0.4 KB).
"""
import os
import subprocess
import sys
import threading
import time
import random

from bson import Decimal128, ObjectId
from pymongo import MongoClient, ReplaceOne, UpdateOne

from server_drift import ROOT, cpu_seconds, free_port

MODES = ("replace", "set", "set_list", "replace_small")


def category(i, n):
    return {"category": f"cat{i}", "amount": Decimal128(f"{n}.{i:02d}"), "count": i, "percent": 12.5}


def summary(user, n, small=False):
    d = {"_id": ObjectId(), "user_id": user, "period": "2026-03", "revision": n,
         "income": Decimal128(f"{n}.00"), "expense": Decimal128(f"{n}.50"), "net": Decimal128("1.00"),
         "count": n, "tally": {"token": 3, "source": "live"}, "final": False}
    if not small:
        d["by_category"] = [category(i, n) for i in range(10)]
        d["income_categories"] = [category(i, n) for i in range(2)]
        d["pockets"] = [{"pocket_id": ObjectId(), "name": f"p{i}", "opening": Decimal128("10.00"),
                         "closing": Decimal128(f"{n}.00")} for i in range(3)]
    return d


def operation(mode, d, k):
    m = k + 1
    guard = {"_id": d["_id"], "revision": k}
    if mode in ("replace", "replace_small"):
        new = summary(d["user_id"], m, small=mode == "replace_small")
        new["_id"] = d["_id"]
        return ReplaceOne(guard, new)
    fields = {"revision": m, "income": Decimal128(f"{m}.00"), "count": m, "tally.token": 3}
    if mode == "set":
        fields["expense"] = Decimal128(f"{m}.50")
    else:
        fields["by_category"] = [category(i, m) for i in range(10)]
    return UpdateOne(guard, {"$set": fields})


def open_streams(db, how, stop):
    """Reader threads for the change streams `how` names."""
    if how == "db":
        streams = [lambda: db.watch([{"$match": {"ns.coll": {"$in": ["transactions", "pockets"]}}}],
                                    full_document="updateLookup")]
    elif how == "collections":
        streams = [lambda c=c: db[c].watch(full_document="updateLookup")
                   for c in ("transactions", "pockets")]
    else:
        streams = []

    def read(open_stream):
        try:
            with open_stream() as stream:
                while not stop.is_set():
                    stream.try_next()
        except Exception:
            pass  # the server is stopped under it

    for open_stream in streams:
        threading.Thread(target=read, args=(open_stream,), daemon=True).start()


def measure(mode, stream_kind, users=2000, rounds=20, per=50):
    port = free_port()
    server = subprocess.Popen(
        [os.path.join(ROOT, ".tally-data/venv/bin/secantusd-py"), "--host", "127.0.0.1",
         "--port", str(port), "--storage-path", ":memory:", "--log-level", "WARNING"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop = threading.Event()
    try:
        client = MongoClient(f"mongodb://127.0.0.1:{port}/?directConnection=true",
                             serverSelectionTimeoutMS=30000)
        db = client.shapes
        docs = [summary(u, 1, small=mode == "replace_small") for u in range(users)]
        db.monthly.insert_many(docs)
        db.monthly.create_index([("user_id", 1), ("period", 1)], unique=True)

        open_streams(db, stream_kind, stop)
        time.sleep(1)
        revision = {d["_id"]: 1 for d in docs}
        rng = random.Random(1)
        c0, n = cpu_seconds(server.pid), 0
        for _ in range(rounds):
            picked = rng.sample(docs, per)
            ops = [operation(mode, d, revision[d["_id"]]) for d in picked]
            with client.start_session() as s, s.start_transaction():
                result = db.monthly.bulk_write(ops, ordered=True, session=s)
            assert result.matched_count == per, result.bulk_api_result
            for d in picked:
                revision[d["_id"]] += 1
            n += per
        return 1000 * (cpu_seconds(server.pid) - c0) / n
    finally:
        stop.set()
        server.kill()
        server.wait()


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    stream_kind = sys.argv[2] if len(sys.argv) > 2 else "db"
    if stream_kind not in ("db", "collections", "none"):
        sys.exit("usage: write_shapes.py [rounds] [db|collections|none]")
    for r in range(rounds):
        costs = ", ".join(f"{m} {measure(m, stream_kind):.2f} ms" for m in MODES)
        print(f"round {r + 1}, stream {stream_kind}: {costs}", flush=True)


if __name__ == "__main__":
    main()
