#!/usr/bin/env python3
"""kestrel serve through the official `openai` Python client.

usage: serve_openai.py KESTREL_BINARY MODEL_DIR

Starts `kestrel serve` on a free port, lists models, runs chat completions (whole and
streamed), a text completion and a refused request, and exits non-zero on any failure.
"""
import os
import subprocess
import sys
import tempfile
import threading

import openai
from openai import OpenAI


def start(binary, model):
    env = dict(os.environ)
    xdg = env.get("XDG_RUNTIME_DIR") or tempfile.mkdtemp()
    env["XDG_RUNTIME_DIR"] = xdg
    proc = subprocess.Popen(
        [binary, "serve", "--model", model, "--port", "0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, env=env,
    )
    seen = []
    for line in proc.stderr:
        if line.startswith("listening on http://"):
            port = int(line.strip().rsplit(":", 1)[1])
            # Keep reading so the server never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, port
        seen.append(line)
    proc.kill()
    raise RuntimeError("kestrel serve did not start:\n" + "".join(seen))


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def run(client):
    models = client.models.list()
    ids = [m.id for m in models.data]
    check(len(ids) == 1, f"one model listed, got {ids}")
    model = ids[0]

    messages = [{"role": "user", "content": "hi"}]
    whole = client.chat.completions.create(
        model=model, messages=messages, max_tokens=8, temperature=0)
    content = whole.choices[0].message.content
    check(whole.object == "chat.completion", whole.object)
    check(content, "a non-empty reply")
    check(whole.choices[0].finish_reason in ("stop", "length"), whole.choices[0].finish_reason)
    check(0 < whole.usage.completion_tokens <= 8, whole.usage)
    check(whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens,
          whole.usage)

    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=8, temperature=0, stream=True,
        stream_options={"include_usage": True})
    parts, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    check("".join(parts) == content, f"streamed {''.join(parts)!r} != whole {content!r}")
    check(finish == whole.choices[0].finish_reason, finish)
    check(usage is not None and usage.completion_tokens == whole.usage.completion_tokens, usage)

    text = client.completions.create(model=model, prompt="Once upon", max_tokens=5, temperature=0)
    check(text.object == "text_completion", text.object)
    check(text.usage.completion_tokens <= 5, text.usage)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=model, prompt="Once upon", max_tokens=5, temperature=0, stream=True) if c.choices)
    check(streamed == text.choices[0].text, f"{streamed!r} != {text.choices[0].text!r}")

    try:
        client.chat.completions.create(
            model=model, messages=messages, max_tokens=4, extra_body={"bogus_field": 1})
    except openai.BadRequestError as e:
        check("bogus_field" in str(e), str(e))
    else:
        raise AssertionError("an unknown field was accepted")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    proc, port = start(sys.argv[1], sys.argv[2])
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0,
                        timeout=60)
        run(client)
    finally:
        proc.kill()
        proc.wait()
    print("serve_openai.py: all checks passed")


if __name__ == "__main__":
    main()
