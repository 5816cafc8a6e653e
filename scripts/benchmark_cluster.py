"""anomaly-predict on this machine against Ray (--cluster local) with 1, 2, ... workers.

Each setting runs the real command in a fresh process, one at a time, on two sets of the same
images (copied A and B times into a temporary folder). Reported per setting and set: the
command's wall time and images/s, and the images/s of the judging as anomaly-predict prints it
(for Ray this includes starting the cluster and its workers). From the two sets, the steady rate
(the extra images over the extra seconds) and the start-up (the wall time the steady rate does
not explain) are derived. Rates are also given as ratios to the local path measured in the same
run. The rows of every setting are checked to equal the local path's.

Example:
    python scripts/benchmark_cluster.py -p MODEL_DIR -i ../shared/data/mvtec_ad/bottle/test \
        --copies 2 6 --workers 1 2 --out docs/benchmarks
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path


def _images(folders: list[str]) -> list[Path]:
    from anomaly.data.io import is_image_file

    return sorted(p for f in folders for p in Path(f).rglob("*") if is_image_file(p))


def _predict(model: str, images: Path, out: Path, batch: int, cluster: list[str]) -> dict:
    command = [str(Path(sys.executable).with_name("anomaly-predict")), "-p", model, str(images), "-o", str(out),
               "-b", str(batch), "-q", *cluster]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    match = re.search(r"(\d+) images judged \(([\d.]+) images/s\)", proc.stdout)
    return {"images": int(match.group(1)), "wall_s": round(wall, 2), "judging_images_per_s": float(match.group(2)),
            "command_images_per_s": round(int(match.group(1)) / wall, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-p", "--model", required=True, help="a finetuned model directory")
    p.add_argument("-i", "--images", nargs="+", required=True, help="folders of images to judge")
    p.add_argument("--copies", type=int, nargs=2, default=[2, 6], metavar=("A", "B"),
                   help="copies of the images in the two sets (default 2 6)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray workers to try (default 1 2)")
    p.add_argument("-b", "--batch", type=int, default=32)
    p.add_argument("--out", default="docs/benchmarks", help="folder for the JSON result")
    p.add_argument("--name", default="cluster-predict", help="result file name after the date")
    args = p.parse_args()

    from anomaly.benchmark import machine_facts

    facts = machine_facts()
    print(json.dumps(facts))
    sources = _images(args.images)
    settings = [("local", [])] + [(f"ray, {n} worker{'s' if n > 1 else ''}", ["--cluster", "local", "--workers",
                                                                                str(n)]) for n in args.workers]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        for copies in args.copies:
            folder = Path(tmp) / f"images-{copies}"
            for copy in range(copies):
                for i, src in enumerate(sources):
                    dst = folder / f"copy{copy}" / f"{i:05d}{src.suffix}"
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, dst)
            reference = None
            for name, flags in settings:
                out = Path(tmp) / f"out-{len(rows)}"
                row = {"setting": name, "copies": copies, **_predict(args.model, folder, out, args.batch, flags)}
                text = (out / "predictions.csv").read_text()
                reference = reference or text
                row["rows_equal_local"] = text == reference
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary = []
    for name, _ in settings:
        small, large = (next(r for r in rows if r["setting"] == name and r["copies"] == c)
                        for c in (min(args.copies), max(args.copies)))
        steady = (large["images"] - small["images"]) / (large["wall_s"] - small["wall_s"])
        summary.append({"setting": name, "steady_images_per_s": round(steady, 2),
                        "startup_s": round(large["wall_s"] - large["images"] / steady, 2),
                        "command_images_per_s": large["command_images_per_s"], "images": large["images"],
                        "rows_equal_local": all(r["rows_equal_local"] for r in rows if r["setting"] == name)})
    for row in summary:
        for key in ("steady_images_per_s", "command_images_per_s"):
            row[f"{key}_ratio"] = round(row[key] / summary[0][key], 3)
        print(f"{row['setting']:>16}: steady {row['steady_images_per_s']:.1f} images/s "
              f"({row['steady_images_per_s_ratio']:.2f}x), start-up {row['startup_s']:.1f} s, whole command "
              f"on {row['images']} images {row['command_images_per_s']:.1f} images/s "
              f"({row['command_images_per_s_ratio']:.2f}x), rows equal: {row['rows_equal_local']}")
    import yaml

    detector = yaml.safe_load((Path(args.model) / "config.yaml").read_text()).get("architecture")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{date.today().isoformat()}-{args.name}-{os.cpu_count()}cpu.json"
    path.write_text(json.dumps({"machine": facts, "command": " ".join(sys.argv), "model": args.model,
                                "detector": detector, "images": args.images, "copies": args.copies,
                                "batch": args.batch, "summary": summary, "rows": rows}, indent=2))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
