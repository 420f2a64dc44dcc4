#!/usr/bin/env python3
"""Aggregate tokens/s and time to first token of an OpenAI-style server under 1, 2, 4, 8 and
16 concurrent streaming greedy chat clients.

usage: serve_bench.py KESTREL_BINARY MODEL [--rounds R] [--max-tokens M] [--clients 1,2,4,8,16]
                      [-- EXTRA SERVE ARGS]
       serve_bench.py --url http://HOST:PORT [...]   (a server already running: llama-server)

Python standard library only. Every client sends R chat requests back to back, each streamed
with usage included; a request's tokens are its usage's completion_tokens. Each prompt's reply
is also run alone first (one client), and every reply under load is compared with it: the
script says how many differ (continuous batching must not change a greedy reply). A server
that sends no usage in streams has its content chunks counted as tokens.
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
import urllib.parse

PROMPTS = [
    "Write a haiku about the sea.",
    "What is the capital of France?",
    "List three colors.",
    "Explain gravity in one sentence.",
    "Say hello in Spanish.",
    "Name a famous painter.",
    "What is two plus two?",
    "Describe a cat.",
    "Give me a tip for sleeping well.",
    "What does a kestrel eat?",
    "Name a planet.",
    "Why is the sky blue?",
    "Suggest a name for a dog.",
    "What is a verb?",
    "Count from one to five.",
    "Tell me a fun fact.",
]


def start(binary, model, extra):
    env = dict(os.environ)
    env.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp())
    proc = subprocess.Popen([binary, "serve", "--model", model, "--port", "0", *extra],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)
    adapter = "?"
    for line in proc.stderr:
        if " on " in line and "context" in line:
            adapter = line.split(" on ", 1)[1].split(" via ")[0]
        if line.startswith("listening on http://"):
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, "127.0.0.1", int(line.strip().rsplit(":", 1)[1]), adapter
    proc.kill()
    raise RuntimeError("kestrel serve did not start")


def one_request(host, port, max_tokens, prompt):
    """Returns (seconds to the first content chunk, total seconds, tokens, text)."""
    body = json.dumps({
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens, "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True},
    })
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=600)
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"status {resp.status}: {resp.read()!r}")
    first, tokens, chunks, text = None, None, 0, []
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        for choice in chunk.get("choices") or []:
            content = (choice.get("delta") or {}).get("content")
            if content:
                chunks += 1
                text.append(content)
                if first is None:
                    first = time.perf_counter() - t0
    conn.close()
    total = time.perf_counter() - t0
    if tokens is None:  # a server without stream_options: one token per content chunk
        tokens = chunks
    return (first if first is not None else total), total, tokens, "".join(text)


def run(host, port, clients, rounds, max_tokens, prompts):
    results, lock = [], threading.Lock()

    def client(c):
        for k in range(rounds):
            i = (c * rounds + k) % prompts
            r = one_request(host, port, max_tokens, PROMPTS[i])
            with lock:
                results.append((i, *r))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return wall, results


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("binary", nargs="?")
    p.add_argument("model", nargs="?")
    p.add_argument("--url", help="a server already running (e.g. llama-server)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--clients", default="1,2,4,8,16")
    p.add_argument("--prompts", type=int, default=len(PROMPTS), help="how many distinct prompts")
    p.add_argument("extra", nargs="*", help="more `kestrel serve` arguments (after --)")
    a = p.parse_args()
    proc = None
    if a.url:
        u = urllib.parse.urlparse(a.url)
        host, port, adapter = u.hostname, u.port, a.url
    else:
        proc, host, port, adapter = start(a.binary, a.model, a.extra)
    try:
        alone = {}
        for i, prompt in enumerate(PROMPTS[:a.prompts]):  # warm-up, and each reply alone
            alone[i] = one_request(host, port, a.max_tokens, prompt)[3]
        print(f"server: {adapter}; streaming greedy chats of at most {a.max_tokens} tokens, "
              f"{a.rounds} per client")
        base = None
        for clients in [int(c) for c in a.clients.split(",")]:
            wall, results = run(host, port, clients, a.rounds, a.max_tokens, a.prompts)
            tokens = sum(r[3] for r in results)
            rate = tokens / wall
            base = base or rate
            differ = sum(1 for r in results if r[4] != alone[r[0]])
            print(f"{clients:>3} clients: {rate:7.2f} tokens/s together ({rate / base:.2f}x one "
                  f"client), mean time to first token {1000 * statistics.mean(r[1] for r in results):6.0f} ms, "
                  f"{len(results)} replies, {differ} differ from the reply alone")
    finally:
        if proc:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
