"""Label fetch time for N features, cold and cached, against a local fake Neuronpedia.

    python benchmarks/bench_labels.py [--features 50] [--latency 0.05] [--workers 8] [--repeats 5]

The fake server (tests/fake_neuronpedia_features.py) answers in the real feature API's shape after
`--latency` seconds per request. "cold" asks every feature of an empty cache over HTTP; "cached"
is the same call again (the disk cache's answers, held in memory); "from disk" is a fresh
process's first call (a copy of the cache folder, so nothing is in memory yet). Each is the median
of `--repeats` runs, on fresh caches for "cold".
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fake_neuronpedia_features import FakeNeuronpedia
from token_trace.explanations import Neuronpedia, explanations

NID = "gpt2-small/6-res-jb"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    keys = [(NID, 1000 + i) for i in range(args.features)]
    served = {key: [f"explanation of feature {key[1]}"] for key in keys}
    cold, cached, disk = [], [], []
    with (
        FakeNeuronpedia(served, latency=args.latency) as server,
        tempfile.TemporaryDirectory() as tmp,
    ):
        for run in range(args.repeats):
            folder = Path(tmp) / f"cache-{run}"
            source = Neuronpedia(base_url=server.url, cache_dir=folder, workers=args.workers)
            cold.append(_timed(keys, source, len(keys)))
            cached.append(_timed(keys, source, len(keys)))
            shutil.copytree(folder, Path(tmp) / f"copy-{run}")
            fresh = Neuronpedia(base_url=server.url, cache_dir=Path(tmp) / f"copy-{run}")
            disk.append(_timed(keys, fresh, len(keys)))
        requests = len(server.requests)
    cold_s, cached_s, disk_s = map(statistics.median, (cold, cached, disk))
    serial = args.features * args.latency
    print(
        f"{args.features} features, {args.latency * 1000:.0f} ms per request, "
        f"{args.workers} workers, median of {args.repeats}:"
    )
    print(f"  cold      {cold_s * 1000:8.1f} ms  (one at a time would be {serial * 1000:.0f} ms)")
    print(f"  cached    {cached_s * 1000:8.2f} ms  (cold / cached = {cold_s / cached_s:,.0f}x)")
    print(f"  from disk {disk_s * 1000:8.2f} ms  (cold / from disk = {cold_s / disk_s:,.0f}x)")
    print(f"  requests  {requests} (= {args.repeats} x {args.features}: none after the cold call)")


def _timed(keys: list[tuple[str, int]], source: Neuronpedia, expected: int) -> float:
    start = time.perf_counter()
    found = explanations(keys, online=True, neuronpedia=source)
    seconds = time.perf_counter() - start
    assert len(found.labels) == expected, found
    return seconds


if __name__ == "__main__":
    main()
