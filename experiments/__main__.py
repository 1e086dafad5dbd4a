"""Command line: ``python -m experiments linreg|demo|sweep [options]``.

``linreg`` runs :func:`experiments.experiment.run_linreg` with the options given and prints the
comparison table; ``demo`` runs it on mnist5k with the demo defaults (about 1 minute of CPU
time, 58 s measured) and prints where the figures are; ``sweep`` runs a hyperparameter sweep as
independent tasks (:mod:`experiments.sweep`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

__all__ = ["build_parser", "main"]


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .data import DATASETS
    from .experiment import LinregConfig

    defaults = LinregConfig()
    parser = argparse.ArgumentParser(prog="python -m experiments",
                                     description="Theory-versus-SGD experiments.")
    sub = parser.add_subparsers(dest="command", required=True)
    lin = sub.add_parser("linreg", help="linear regression: the seven comparisons")
    lin.add_argument("--dataset", choices=DATASETS, default=defaults.dataset)
    lin.add_argument("--data-dir", default=None,
                     help="directory of the CIFAR-10 python batches (for --dataset cifar10)")
    lin.add_argument("--num-samples", type=_positive_int, default=None,
                     help="use only this many (shuffled) samples")
    lin.add_argument("--eta", type=float, default=None,
                     help=f"learning rate (default: {defaults.eta_fraction} of the stability "
                          "edge 2(1+beta)/h_max)")
    lin.add_argument("--beta", type=float, default=defaults.beta, help="momentum")
    lin.add_argument("--transient-betas", type=float, nargs="+",
                     default=list(defaults.transient_betas),
                     help="momenta of the mean-trajectory runs (Fig. 2)")
    lin.add_argument("--lam", type=float, default=defaults.lam, help="weight decay")
    lin.add_argument("--batch-size", type=_positive_int, default=defaults.batch_size)
    lin.add_argument("--steps", type=_positive_int, default=defaults.steps,
                     help="stationary window length in steps (after the burn-in)")
    lin.add_argument("--sweep-steps", type=_positive_int, default=defaults.sweep_steps,
                     help="stationary window of each run of the learning-rate sweep")
    lin.add_argument("--sweep-fractions", type=float, nargs="+",
                     default=list(defaults.sweep_fractions),
                     help="learning rates of the sweep, as fractions of the stability edge")
    lin.add_argument("--seeds", type=_positive_int, default=defaults.seeds,
                     help="independent runs per phase (batched), >= 2")
    lin.add_argument("--seed", type=int, default=defaults.seed, help="base random seed")
    lin.add_argument("--directions", type=_positive_int, default=defaults.num_directions,
                     help="top Hessian eigenvectors recorded every step")
    lin.add_argument("--noise", choices=("minibatch", "gaussian"), default=defaults.noise)
    lin.add_argument("--device", choices=("cpu", "cuda"), default=None,
                     help="cpu: NumPy; cuda: Torch on the GPU (default: cuda if available)")
    lin.add_argument("--out", default=None, help="output folder (default runs/linreg-...)")
    lin.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo = sub.add_parser("demo", help="linreg on mnist5k with the demo defaults")
    demo.add_argument("--out", default=None)
    demo.add_argument("--no-progress", action="store_true")
    from .sweep import add_arguments as add_sweep_arguments

    sweep = sub.add_parser("sweep", help="a hyperparameter sweep as independent tasks (Fig. 6); "
                                         "options after the sweep's go to the experiment")
    add_sweep_arguments(sweep)
    from .resnet18 import add_arguments as add_resnet18_arguments

    resnet = sub.add_parser("resnet18", help="ResNet-18 limiting dynamics: pretrain, resume "
                                             "with the recorder, Figs. 1, 3, 4, 5, 7")
    add_resnet18_arguments(resnet)
    return parser


def _config_from_args(args):
    from .experiment import LinregConfig

    device = args.device
    if device is None:
        try:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            device = "cpu"
    return LinregConfig(
        dataset=args.dataset, data_dir=args.data_dir, num_samples=args.num_samples,
        eta=args.eta, beta=args.beta, transient_betas=tuple(args.transient_betas),
        lam=args.lam, batch_size=args.batch_size, steps=args.steps, seeds=args.seeds,
        seed=args.seed, num_directions=args.directions, sweep_steps=args.sweep_steps,
        sweep_fractions=tuple(args.sweep_fractions), noise=args.noise,
        backend="torch" if device == "cuda" else "numpy",
        device="cuda" if device == "cuda" else None)


def main(argv=None) -> int:
    from .experiment import DEMO_CONFIG, run_linreg
    from .report import format_table

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "sweep":
        from .sweep import SweepMismatchError
        from .sweep import main as sweep_main

        try:
            return sweep_main(args, extra)
        except (ValueError, FileNotFoundError, FloatingPointError, SweepMismatchError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    if args.command == "resnet18":
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        import os

        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
            # started by torchrun: the resumed phase trains on every rank with DDP
            from .distributed import main as distributed_main

            return distributed_main(["resnet18", *(argv if argv is not None else
                                                   sys.argv[1:])[1:]])
        from .resnet18 import cli_main

        return cli_main(args)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "demo":
        config = dataclasses.replace(DEMO_CONFIG)
    else:
        config = _config_from_args(args)
    try:
        summary = run_linreg(config, args.out, progress=not args.no_progress)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(summary["comparisons"]))
    out = summary["settings"]["out_dir"]
    print(f"\nfigures, arrays, summary.json and report.md in {out}/")
    for name in summary["figures"]:
        print(f"  {out}/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
