"""Nearest-neighbour search for PatchCore: which exact (or approximate) search is fastest here.

Queries are one test image's patch features (stride-4 grid of a 256 px image: 64 x 64 = 4096
rows of 384 dims for efficientnet_lite0's default layers), the bank a coreset of a given size.
Each method's time per image is the median over repeats after a warm-up; approximate methods
also report recall@1 against the exact search.

    python scripts/benchmark_nn.py [--bank 1540] [--dim 384] [--queries 4096] [--batch 8]
                                   [--out docs/benchmarks/nn.csv]

faiss-cpu is used when importable (it is not a dependency of the package).
"""

from __future__ import annotations

import argparse
import csv
import platform
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from anomaly.detectors.patchcore import augmented_bank, nearest_distances


def _time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bank", type=int, default=1540)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=4096, help="patches per image")
    p.add_argument("--batch", type=int, default=8, help="images per search call")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", help="CSV file to write the table to")
    args = p.parse_args(argv)

    rng = np.random.default_rng(0)
    # ReLU features are non-negative and skewed; a squared normal imitates that well enough.
    bank = (rng.standard_normal((args.bank, args.dim)) ** 2).astype(np.float32)
    queries = (rng.standard_normal((args.batch * args.queries, args.dim)) ** 2).astype(np.float32)
    exact = np.argmin(((queries[:2000, None] - bank[None]) ** 2).sum(-1), axis=1)
    rows = []

    def record(name, fn, indices=None):
        seconds = _time(fn, args.repeats) / args.batch
        recall = None if indices is None else float(np.mean(indices()[:2000] == exact))
        rows.append({"method": name, "ms_per_image": round(seconds * 1000, 2),
                     "recall_at_1": "" if recall is None else round(recall, 4)})
        print(f"{name:38s} {seconds * 1000:8.2f} ms/image" + ("" if recall is None else f"  recall@1 {recall:.4f}"))

    tq, tb = tf.constant(queries), tf.constant(bank)
    tb_aug = tf.constant(augmented_bank(bank))
    search = tf.function(lambda q: nearest_distances(q, tb_aug, 1))
    record("tf matmul, augmented bank (ours)", lambda: search(tq)[0].numpy(), lambda: search(tq)[1].numpy()[:, 0])
    bank_sq = tf.reduce_sum(tb * tb, axis=1)

    @tf.function
    def three_pass(q):
        d2 = tf.reduce_sum(q * q, 1, keepdims=True) - 2.0 * tf.matmul(q, tb, transpose_b=True) + bank_sq[None]
        return tf.argmin(d2, axis=1)

    record("tf matmul, |q|^2 - 2 q.b + |b|^2", lambda: three_pass(tq).numpy(), lambda: three_pass(tq).numpy())
    record("numpy matmul", lambda: np.argmin(-2.0 * queries @ bank.T + (bank ** 2).sum(1), axis=1))
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=1, algorithm="brute").fit(bank)
    record("scikit-learn brute", lambda: nn.kneighbors(queries), lambda: nn.kneighbors(queries)[1][:, 0])
    try:
        import faiss
    except ImportError:
        print("faiss-cpu not installed: skipped")
    else:
        flat = faiss.IndexFlatL2(args.dim)
        flat.add(bank)
        record("faiss IndexFlatL2", lambda: flat.search(queries, 1), lambda: flat.search(queries, 1)[1][:, 0])
        nlist = max(1, int(np.sqrt(args.bank)))
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(args.dim), args.dim, nlist)
        ivf.train(bank)
        ivf.add(bank)
        for nprobe in (1, 4):
            ivf.nprobe = nprobe
            record(f"faiss IVF{nlist} nprobe {nprobe} (approximate)", lambda: ivf.search(queries, 1),
                   lambda: ivf.search(queries, 1)[1][:, 0])
        hnsw = faiss.IndexHNSWFlat(args.dim, 32)
        hnsw.add(bank)
        record("faiss HNSW32 (approximate)", lambda: hnsw.search(queries, 1), lambda: hnsw.search(queries, 1)[1][:, 0])

    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["method", "ms_per_image", "recall_at_1", "bank", "dim",
                                                   "queries", "cpu", "cores"], lineterminator="\n")
            writer.writeheader()
            import os

            for row in rows:
                writer.writerow({**row, "bank": args.bank, "dim": args.dim, "queries": args.queries,
                                 "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()})
        print(f"saved: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
