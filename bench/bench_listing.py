"""Memory of a large folder: the worker's peak RSS for 10,000 and 50,000 objects under one flag.

The plan checks every name before any byte moves; a folder larger than one listing page is
checked page by page keeping a 64-bit digest per name, then listed again while delivered
(egress/plan.py ``check_names``), so memory should not grow with the folder. This prints
the worker process's peak RSS (VmHWM) after each delivery (a route that copies S3 -> S3,
server side) and the growth per 10,000 objects between the two sizes (goal: under 5 MiB).

    python bench/bench_listing.py [--sizes 10000,50000]

Each size is a fresh worker on the same moto server (a separate process, as in
bench_worker.py). Objects are one byte: the listing and the per-object bookkeeping are what
is measured, not the data path.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_worker import FLAG, Bench, peak_rss_mib  # noqa: E402


def measure(bench: Bench, count: int) -> tuple[float, float]:
    prefix = f"folder-{count}/"
    started = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        list(
            pool.map(
                lambda i: bench.s3.put_object(
                    Bucket="src", Key=f"{prefix}d{i // 1000:03d}/o-{i:06d}", Body=b"x"
                ),
                range(count),
            )
        )
    print(f"   uploaded {count} objects in {time.monotonic() - started:.0f}s", flush=True)
    bench.route(
        source_prefix=prefix,
        pipeline_name=f"listing-{count}",
        transfer_type="S3",
        destination_bucket="dst",
        destination_prefix=prefix,
    )
    worker, log, _ = bench.start_worker()
    started = time.monotonic()
    bench.s3.put_object(Bucket="src", Key=prefix + FLAG, Body=b"")
    (line,) = bench.wait_line(log, "route_delivered", 1, timeout=3600)
    seconds = time.monotonic() - started
    rss = peak_rss_mib(worker.pid)
    worker.send_signal(signal.SIGTERM)
    worker.wait(60)
    assert line["objects"] == count, line
    return rss, seconds


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,50000")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    results: list[tuple[int, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="egress-bench-") as tmp:
        bench = Bench(Path(tmp))
        try:
            for count in sizes:
                rss, seconds = measure(bench, count)
                results.append((count, rss, seconds))
                print(
                    f"   {count} objects: worker peak RSS {rss:.1f} MiB, delivered in {seconds:.0f}s",
                    flush=True,
                )
        finally:
            bench.close()
    print("\nlarge folder, S3 -> S3 server-side copies, one flag")
    print(f"   {'objects':>8}{'peak RSS MiB':>14}{'seconds':>9}")
    for count, rss, seconds in results:
        print(f"   {count:>8}{rss:>14.1f}{seconds:>9.0f}")
    if len(results) >= 2:
        (small, small_rss, _), (large, large_rss, _) = results[0], results[-1]
        growth = (large_rss - small_rss) / ((large - small) / 10_000)
        print(f"   growth: {growth:.2f} MiB per 10,000 objects (goal: under 5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
