"""Where DoLa's scoring time goes at Gemma 3's shapes: the layer-logit matmul against the divergence and contrast.

    python bench/dola_scoring_bench.py [--vocab 262144 --hidden 640 --layers 5 --threads 1]

Times, on random data of the given shapes, one chunk of `dola.LOGIT_ROWS` layer-logit rows
((rows x hidden) @ (hidden x vocab), the FLOP rate it reaches) and the per-position JSD, choice
and contrast over that chunk exactly as `dola._score` runs them, and prints the matmul's share.
"""

from __future__ import annotations

import argparse
import time

import torch

from pytest_steer.methods.dola import LOGIT_ROWS, contrast, jsd
from pytest_steer.methods.settings import DolaSettings


def seconds(run: object, repeats: int) -> float:
    run()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - started) / repeats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=262144)
    parser.add_argument("--hidden", type=int, default=640)
    parser.add_argument("--layers", type=int, default=5, help="candidate layers of one bucket")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (an xdist worker has one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    positions = max(1, LOGIT_ROWS // args.layers)
    unembed = torch.randn(args.vocab, args.hidden) * 0.05
    states = torch.randn(args.layers, positions, args.hidden)
    mature = torch.randn(positions, args.vocab) * 3
    settings = DolaSettings(bucket="lower")
    matmul = seconds(lambda: states @ unembed.T, 3)
    premature = states @ unembed.T
    rows = torch.arange(1)

    def score() -> None:
        for r in range(positions):
            m, p = mature[r : r + 1], premature[:, r : r + 1]
            choice = jsd(m.unsqueeze(0), p).argmax(dim=0)
            torch.log_softmax(m, dim=-1)
            contrast(m, p[choice, rows], settings)

    divergence = seconds(score, 1)
    flops = 2 * args.layers * positions * args.hidden * args.vocab
    print(f"{positions} positions x {args.layers} layers, vocabulary {args.vocab}, hidden {args.hidden}, "
          f"{args.threads} thread(s)")
    print(f"layer-logit matmul     {matmul:7.3f} s  ({flops / matmul / 1e9:.1f} GFLOP/s)")
    print(f"divergence + contrast  {divergence:7.3f} s")
    print(f"matmul share           {matmul / (matmul + divergence):7.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
