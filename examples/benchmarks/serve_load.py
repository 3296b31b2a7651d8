"""``ift serve`` under concurrent load: latency percentiles and throughput, batched against one at a time.

    python examples/benchmarks/serve_load.py [--run RUN_DIR] [--clients 16] [--requests 4] [--max-tokens 32]

Without ``--run`` it trains the tiny recipe's model (examples/tiny.toml's [model] table, random
weights, 2 steps: enough to serve, not to answer well) in a temporary folder. The server runs in this process
on 127.0.0.1 (a free port; nothing else is contacted). Each configuration (``--max-batch`` values, default 1
and 8) is measured ``--repeats`` times in turn (A B A B ...), so a machine shared with other work disturbs
both alike; every request is a greedy completion of ``--max-tokens`` tokens with a prompt of its own. It
stops by itself: clients x requests per configuration and repeat, each request timing out after 120 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TINY = Path(__file__).resolve().parents[1] / "tiny.toml"


def train_tiny(folder: Path) -> Path:
    import tomllib

    from ift.cli import main

    model = tomllib.loads(TINY.read_text())["model"]
    rows = [
        {"instruction": f"Uppercase: {w}", "input": "", "output": w.upper()}
        for w in ["abc", "dog", "cat", "xyz", "sun", "map", "red", "toy", "fig", "jam"]
    ]
    (folder / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "r.toml").write_text(f"""
[run]
cache = false
[[data]]
source = "jsonl"
path = "d.jsonl"
[template]
name = "alpaca"
[model]
adapter = "causal-lm"
tokenizer = "byte-level"
from_config = {{ {", ".join(f"{k} = {json.dumps(v)}" for k, v in model["from_config"].items())} }}
[trainer]
name = "sft"
max_steps = 2
batch_size = 4
[eval]
fraction = 0.2
metrics = ["loss"]
baseline = false
""")
    assert main(["run", str(folder / "r.toml"), "--output-dir", str(folder / "run")]) == 0
    return folder / "run"


def post(url: str, body: dict) -> tuple[int, float, int]:
    started = time.perf_counter()
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            reply = json.loads(response.read())
            return response.status, time.perf_counter() - started, reply["usage"]["completion_tokens"]
    except urllib.error.HTTPError as exc:
        return exc.code, time.perf_counter() - started, 0


def measure(served: object, max_batch: int, args: argparse.Namespace) -> dict:
    from ift.builtin_plugins.serving.server import ServerOptions, make_server

    server = make_server(
        served,
        ServerOptions(model_id="m", max_batch=max_batch, max_queue=1024, max_tokens_cap=args.max_tokens),
        "127.0.0.1",
        0,
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1/completions"
    # min_tokens is not an OpenAI field: every answer is max_tokens long only if EOS never comes first, so
    # the generated token count is measured and reported rather than assumed
    bodies = [
        {"model": "m", "prompt": f"word{i} says:", "max_tokens": args.max_tokens, "temperature": 0}
        for i in range(args.clients)
    ]
    post(url, bodies[0])  # warm up
    started = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        results = list(pool.map(lambda b: [post(url, b) for _ in range(args.requests)], bodies))
    wall = time.perf_counter() - started
    server.shutdown()
    server.server_close()
    flat = [r for rs in results for r in rs]
    latencies = sorted(seconds for _, seconds, _ in flat)
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "max_batch": max_batch,
        "requests": len(flat),
        "ok": sum(1 for s, _, _ in flat if s == 200),
        "p50": cuts[49],
        "p90": cuts[89],
        "p99": cuts[98],
        "requests_per_s": len(flat) / wall,
        "tokens_per_s": sum(t for _, _, t in flat) / wall,
        "largest_batch": server.engine.largest_batch,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a run directory to serve (default: train the tiny recipe's model)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=4, help="requests per client, one after another")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from ift.builtin_plugins.serving.model import ServedModel
    from ift.host import PluginHost

    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or train_tiny(Path(tmp))
        served = ServedModel(run, PluginHost(entry_points=False), device=args.device)
        rows = [measure(served, b, args) for _ in range(args.repeats) for b in args.max_batch]
    print(f"{args.clients} clients x {args.requests} requests, max_tokens {args.max_tokens}, device {args.device}")
    print("max_batch  ok/requests  p50 s   p90 s   p99 s   req/s   tokens/s  largest batch")
    for r in rows:
        print(
            f"{r['max_batch']:>9}  {r['ok']:>4}/{r['requests']:<6}  {r['p50']:6.3f}  {r['p90']:6.3f}  "
            f"{r['p99']:6.3f}  {r['requests_per_s']:6.1f}  {r['tokens_per_s']:8.1f}  {r['largest_batch']:>5}"
        )


if __name__ == "__main__":
    main()
