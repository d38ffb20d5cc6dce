#!/usr/bin/env python3
"""Recording proxy and final assembly for the golden vectors.

`record.py proxy --listen SOCK --upstream SOCK --out DIR` sits between a Guix
client and the real guix-daemon on Unix sockets and writes, per accepted
connection N, `DIR/conn-NNN.json`: every chunk of bytes in the order the proxy
received them, with its direction.  A chunk is recorded before it is
forwarded, so the recorded order is a causal order: nothing the peer sends in
answer can be recorded ahead of it.  On SIGTERM it stops accepting, lets open
connections finish (bounded wait) and exits.

`record.py finish --scratch DIR --wire DIR --dest DIR` turns the raw captures
and the JSON written by the Guile scripts into the committed data files:
stable formatting, a common header, wire captures cut into request/reply
exchanges, and cross-checks between client-side and daemon-side values
(a disagreement is reported and makes the command fail).
"""

import argparse
import json
import os
import signal
import socket
import sys
import threading

FORMAT_VERSION = 1
GUIX_VERSION = "1.5.0"
STORE_DIR = "/gnu/store"

# Operation codes of the 1.5.0 worker protocol, for exchange labels.
OPS = {
    1: "valid-path?", 3: "has-substitutes?", 4: "query-path-hash",
    5: "query-references", 6: "query-referrers", 7: "add-to-store",
    8: "add-text-to-store", 9: "build-paths", 10: "ensure-path",
    11: "add-temp-root", 12: "add-indirect-root", 13: "sync-with-gc",
    14: "find-roots", 16: "export-path", 18: "query-deriver",
    19: "set-options", 20: "collect-garbage",
    21: "query-substitutable-path-info", 22: "query-derivation-outputs",
    23: "query-all-valid-paths", 24: "query-failed-paths",
    25: "clear-failed-paths", 26: "query-path-info", 27: "import-paths",
    28: "query-derivation-output-names", 29: "query-path-from-hash-part",
    30: "query-substitutable-path-infos", 31: "query-valid-paths",
    32: "query-substitutable-paths", 33: "query-valid-derivers",
    34: "optimize-store", 35: "verify-store", 80: "built-in-builders",
    81: "substitute-urls",
}

STDERR_CODES = {
    0x616C7473: "last", 0x63787470: "error", 0x6F6C6D67: "next",
    0x64617461: "read", 0x64617416: "write",
}


# --------------------------------------------------------------------------
# The proxy.

class Connection:
    def __init__(self, number, client, upstream_path):
        self.number = number
        self.client = client
        self.upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.upstream.connect(upstream_path)
        self.lock = threading.Lock()
        self.chunks = []
        self.threads = [
            threading.Thread(target=self.pump, args=(client, self.upstream, "client")),
            threading.Thread(target=self.pump, args=(self.upstream, client, "daemon")),
        ]
        for t in self.threads:
            t.start()

    def pump(self, src, dst, sender):
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            with self.lock:
                if data:
                    self.chunks.append((sender, data))
                else:
                    self.chunks.append((sender, None))
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            try:
                dst.sendall(data)
            except OSError:
                # The receiver is gone; keep reading until the sender stops.
                pass

    def finished(self, timeout):
        for t in self.threads:
            t.join(timeout)
        return all(not t.is_alive() for t in self.threads)

    def dump(self, out_dir, complete):
        with self.lock:
            chunks = list(self.chunks)
        record = {
            "connection": self.number,
            "complete": complete,
            "chunks": [
                {"from": sender, "eof": True} if data is None
                else {"from": sender, "hex": data.hex()}
                for sender, data in chunks
            ],
        }
        path = os.path.join(out_dir, "conn-%03d.json" % self.number)
        with open(path, "w") as f:
            json.dump(record, f)
        for s in (self.client, self.upstream):
            s.close()


def run_proxy(args):
    if os.path.exists(args.listen):
        os.unlink(args.listen)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(args.listen)
    os.chmod(args.listen, 0o666)
    listener.listen(16)
    stopping = threading.Event()

    def on_term(signum, frame):
        stopping.set()

    signal.signal(signal.SIGTERM, on_term)
    connections = []
    listener.settimeout(0.1)
    while not stopping.is_set():
        try:
            client, _ = listener.accept()
        except socket.timeout:
            continue
        except OSError:
            break
        client.settimeout(None)
        connections.append(Connection(len(connections), client, args.upstream))
    listener.close()
    os.unlink(args.listen)
    ok = True
    for c in connections:
        complete = c.finished(timeout=10)
        ok = ok and complete
        c.dump(args.out, complete)
    return 0 if ok else 1


# --------------------------------------------------------------------------
# Final assembly.

def runs(chunks):
    """Merge consecutive chunks from the same sender."""
    merged = []
    for c in chunks:
        if "hex" not in c:
            continue
        if merged and merged[-1][0] == c["from"]:
            merged[-1][1].append(c["hex"])
        else:
            merged.append((c["from"], [c["hex"]]))
    return [(sender, "".join(parts)) for sender, parts in merged]


def u64(hexstr, offset_bytes):
    return int.from_bytes(bytes.fromhex(hexstr[2 * offset_bytes:2 * offset_bytes + 16]), "little")


def exchanges(chunks):
    """Cut a connection into request/reply exchanges."""
    out = []
    for sender, data in runs(chunks):
        if sender == "daemon" and out and not out[-1]["daemon_hex"]:
            out[-1]["daemon_hex"] = data
        elif sender == "daemon":
            out.append({"client_hex": "", "daemon_hex": data})
        else:
            out.append({"client_hex": data, "daemon_hex": ""})
    for i, e in enumerate(out):
        if i == 0:
            label, op = "handshake: client magic", None
        elif i == 1:
            label, op = "handshake: client version, cpu affinity, reserve space", None
        elif len(e["client_hex"]) >= 16:
            op = u64(e["client_hex"], 0)
            label = OPS.get(op, "op %d" % op)
        else:
            label, op = "(no request)", None
        reply = None
        if len(e["daemon_hex"]) >= 16:
            first = u64(e["daemon_hex"], 0)
            reply = STDERR_CODES.get(first)
        e_out = {"label": label, "op": op}
        e_out.update(e)
        e_out["reply_starts_with"] = reply
        out[i] = e_out
    return out


def header(kind):
    return {
        "format": FORMAT_VERSION,
        "kind": kind,
        "guix_version": GUIX_VERSION,
        "store_dir": STORE_DIR,
    }


def write(dest, name, obj):
    with open(os.path.join(dest, name), "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_captures(wire_dir):
    files = sorted(f for f in os.listdir(wire_dir) if f.startswith("conn-"))
    return [load(os.path.join(wire_dir, f)) for f in files]


def check_agreement(name, items, problems):
    for item in items:
        daemon = item.get("daemon_path")
        if daemon is not None and daemon != item["path"]:
            problems.append("%s: %s: client %s, daemon %s"
                            % (name, item.get("name"), item["path"], daemon))


def run_finish(args):
    problems = []
    scratch = args.scratch

    enc = load(os.path.join(scratch, "encodings.json"))
    write(args.dest, "encodings.json", {**header("encodings"), **enc})

    paths = load(os.path.join(scratch, "store-paths.json"))
    if paths.get("store_dir") != STORE_DIR:
        problems.append("store dir is %r" % paths.get("store_dir"))
    for section in ("text", "source", "fixed"):
        check_agreement(section, paths[section], problems)
    write(args.dest, "store-paths.json", {**header("store-paths"), **paths})

    nar = load(os.path.join(scratch, "nar.json"))
    for case in nar["cases"]:
        if not case["daemon"]["agrees"]:
            problems.append("nar: %s: daemon disagrees" % case["name"])
    write(args.dest, "nar.json", {**header("nar"), **nar})

    drvs = load(os.path.join(scratch, "derivations.json"))
    for d in drvs["derivations"]:
        if d["drv_path"] != d["daemon_drv_path"]:
            problems.append("derivation %s: client %s, daemon %s"
                            % (d["name"], d["drv_path"], d["daemon_drv_path"]))
    write(args.dest, "derivations.json", {**header("derivations"), **drvs})

    errs = load(os.path.join(scratch, "errors.json"))
    captures = load_captures(args.wire_errors)
    if len(captures) != len(errs["cases"]):
        problems.append("errors: %d connections captured, %d cases"
                        % (len(captures), len(errs["cases"])))
    for case, raw in zip(errs["cases"], captures):
        if not raw["complete"]:
            problems.append("errors: %s: capture did not finish" % case["name"])
        # The two handshake exchanges are the same for every case.
        case["exchanges"] = exchanges(raw["chunks"])[2:]
    write(args.dest, "errors.json", {**header("errors"), **errs})

    plan = load(os.path.join(scratch, "wire-plan.json"))
    captures = load_captures(args.wire)
    if len(captures) != len(plan["connections"]):
        problems.append("wire: %d connections captured, %d planned"
                        % (len(captures), len(plan["connections"])))
    connections = []
    for raw, planned in zip(captures, plan["connections"]):
        if not raw["complete"]:
            problems.append("wire: %s did not finish" % planned["label"])
        ex = exchanges(raw["chunks"])
        labels = [e["label"] for e in ex]
        if labels != planned["expected_labels"]:
            problems.append("wire: %s: exchanges %s, expected %s"
                            % (planned["label"], labels, planned["expected_labels"]))
        connections.append({
            "label": planned["label"],
            "description": planned["description"],
            "steps": planned["steps"],
            "exchanges": ex,
        })
    write(args.dest, "wire.json", {
        **header("wire"),
        "notes": plan["notes"],
        "connections": connections,
    })

    for p in problems:
        print("golden: PROBLEM: " + p, file=sys.stderr)
    return 1 if problems else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("proxy")
    p.add_argument("--listen", required=True)
    p.add_argument("--upstream", required=True)
    p.add_argument("--out", required=True)
    f = sub.add_parser("finish")
    f.add_argument("--scratch", required=True)
    f.add_argument("--wire", required=True)
    f.add_argument("--wire-errors", required=True)
    f.add_argument("--dest", required=True)
    args = parser.parse_args()
    if args.command == "proxy":
        return run_proxy(args)
    return run_finish(args)


if __name__ == "__main__":
    sys.exit(main())
