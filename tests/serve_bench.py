#!/usr/bin/env python3
"""Throughput and time to first token of `kestrel serve`, with 1 and 4 concurrent clients.

usage: serve_bench.py KESTREL_BINARY MODEL_DIR [--requests N] [--max-tokens M]

Python standard library only. Starts the server on a free port; every client sends
streaming greedy chat requests back to back and times the first content chunk of each.
Requests run one at a time in the engine, so more clients raise time to first token
(queueing) while requests/s stays near the single-client figure.
"""
import argparse
import http.client
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time


def start(binary, model):
    env = dict(os.environ)
    env.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp())
    proc = subprocess.Popen([binary, "serve", "--model", model, "--port", "0"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)
    adapter = "?"
    for line in proc.stderr:
        if " on " in line and "context" in line:
            adapter = line.split(" on ", 1)[1].split(" via ")[0]
        if line.startswith("listening on http://"):
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, int(line.strip().rsplit(":", 1)[1]), adapter
    proc.kill()
    raise RuntimeError("kestrel serve did not start")


def one_request(port, max_tokens, i):
    """Returns (seconds to the first content chunk, total seconds, completion chunks)."""
    body = json.dumps({
        "messages": [{"role": "user", "content": f"hi {i % 7}"}],
        "max_tokens": max_tokens, "temperature": 0, "stream": True,
    })
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"status {resp.status}: {resp.read()!r}")
    first, chunks = None, 0
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        delta = json.loads(line[6:])["choices"][0]["delta"]
        if delta.get("content"):
            chunks += 1
            if first is None:
                first = time.perf_counter() - t0
    conn.close()
    total = time.perf_counter() - t0
    return (first if first is not None else total), total, chunks


def run(port, clients, requests, max_tokens):
    results, lock = [], threading.Lock()
    per_client = requests // clients

    def client(c):
        for k in range(per_client):
            r = one_request(port, max_tokens, c * per_client + k)
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {
        "clients": clients,
        "requests": len(results),
        "requests_per_s": len(results) / wall,
        "mean_ttft_ms": 1000 * statistics.mean(r[0] for r in results),
        "mean_latency_ms": 1000 * statistics.mean(r[1] for r in results),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("binary")
    p.add_argument("model")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=8)
    a = p.parse_args()
    proc, port, adapter = start(a.binary, a.model)
    try:
        one_request(port, a.max_tokens, 0)  # warm-up
        print(f"adapter: {adapter}; {a.requests} streaming chat requests of "
              f"max {a.max_tokens} tokens each")
        for clients in (1, 4):
            r = run(port, clients, a.requests, a.max_tokens)
            print(f"{clients} client(s): {r['requests_per_s']:.1f} requests/s, mean time to "
                  f"first token {r['mean_ttft_ms']:.0f} ms, mean latency "
                  f"{r['mean_latency_ms']:.0f} ms")
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
