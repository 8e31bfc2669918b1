"""`lvm-train`: train a small memory GRU on the synthetic world, or fit the TMD gate.

Each epoch draws fresh walks from the world (it is an unlimited data source, so there is nothing
to overfit to but the world itself) and trains on every prefix of every walk at once. Validation
is a fixed held-out set of walks; the checkpoint is rewritten whenever validation Hit@5 improves,
and training stops after `patience` epochs without improvement (the LVM project's lesson: loss
keeps falling after Hit@5 has peaked).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lvm_gateway import termout
from lvm_gateway.contract.lvm import N_LANES
from lvm_gateway.errors import CheckpointError
from lvm_gateway.lvm import gate_fit
from lvm_gateway.lvm.checkpoint import load_checkpoint, load_predictor, save_checkpoint
from lvm_gateway.lvm.evaluate import hit_rates
from lvm_gateway.lvm.gate import save_gate
from lvm_gateway.lvm.model import GRUPredictor, MemoryAugmentedGRU, delta_prediction
from lvm_gateway.lvm.world import DEFAULT_CONCEPTS, World


@dataclass(frozen=True)
class TrainConfig:
    out: Path
    # Measured best within a few CPU minutes: the output layer needs full rank (2 * 384 >= 768)
    # to cancel the previous vector in delta mode; a second layer only slowed learning down.
    context: int = 16
    hidden: int = 384
    layers: int = 1
    slots: int = 256
    epochs: int = 8
    lane: int | None = None
    patience: int = 2
    seed: int = 0
    world_seed: int = 0
    concepts: int = DEFAULT_CONCEPTS
    walks_per_epoch: int = 4096
    val_walks: int = 512
    batch: int = 16
    lr: float = 3e-3
    dropout: float = 0.1
    init: Path | None = None  # warm start from a checkpoint of the same sizes

    def problems(self) -> list[str]:
        checks = [
            (self.context >= 1, "context must be >= 1"),
            (min(self.hidden, self.layers, self.slots) >= 1, "hidden/layers/slots must be >= 1"),
            (self.epochs >= 1 and self.patience >= 1, "epochs and patience must be >= 1"),
            (self.lane is None or 0 <= self.lane < N_LANES, f"lane must be in 0..{N_LANES - 1}"),
            (self.walks_per_epoch >= self.batch >= 1, "need walks_per_epoch >= batch >= 1"),
            (self.val_walks >= 1 and self.lr > 0, "val_walks >= 1 and lr > 0"),
        ]
        return [message for ok, message in checks if not ok]


@dataclass(frozen=True)
class EpochReport:
    epoch: int
    loss: float
    hits: dict[int, float]  # validation Hit@1/5/10
    improved: bool
    seconds: float


@dataclass
class TrainResult:
    out: Path
    best_epoch: int
    best_hits: dict[int, float]
    history: list[EpochReport] = field(default_factory=list)
    stopped_early: bool = False


OnEpoch = Callable[[EpochReport], None]
OnBatch = Callable[[int, int, float], None]  # (batch index, batches per epoch, loss)


def train(
    cfg: TrainConfig, on_epoch: OnEpoch | None = None, on_batch: OnBatch | None = None
) -> TrainResult:
    if problems := cfg.problems():
        raise ValueError("; ".join(problems))
    torch.manual_seed(cfg.seed)
    world = World.build(cfg.world_seed, cfg.concepts)
    # Separate streams, so the validation walks never depend on how long training ran.
    train_rng = np.random.default_rng([cfg.seed, 1])
    val = walks(world, cfg.val_walks, cfg.context, cfg.lane, np.random.default_rng([cfg.seed, 2]))
    model = MemoryAugmentedGRU(
        hidden_dim=cfg.hidden,
        num_layers=cfg.layers,
        memory_slots=cfg.slots,
        dropout=cfg.dropout,
    )
    if cfg.init is not None:
        _warm_start(model, cfg.init)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    steps = cfg.epochs * (cfg.walks_per_epoch // cfg.batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    vectors = torch.from_numpy(world.vectors.copy())  # the world keeps its bank read-only
    result = TrainResult(cfg.out, best_epoch=0, best_hits={})
    stale = 0
    for epoch in range(1, cfg.epochs + 1):
        started = time.perf_counter()
        concepts = walks(world, cfg.walks_per_epoch, cfg.context, cfg.lane, train_rng)
        loss = _epoch(model, optimizer, schedule, vectors, concepts, cfg.batch, on_batch)
        rates = hit_rates(GRUPredictor(model, cfg.context), world, val)
        # Hit@10 only breaks Hit@5 ties, which matter early and for tiny models.
        improved = (rates[5], rates[10]) > (
            result.best_hits.get(5, -1.0),
            result.best_hits.get(10, -1.0),
        )
        if improved:
            result.best_epoch, result.best_hits, stale = epoch, rates, 0
            save_checkpoint(
                cfg.out,
                model,
                epoch=epoch,
                context_length=cfg.context,
                val_results={"loss": loss, **{f"hit@{k}": v for k, v in rates.items()}},
                args={k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
            )
        else:
            stale += 1
        report = EpochReport(epoch, loss, rates, improved, time.perf_counter() - started)
        result.history.append(report)
        if on_epoch:
            on_epoch(report)
        if stale >= cfg.patience:
            result.stopped_early = epoch < cfg.epochs
            break
    return result


def _warm_start(model: MemoryAugmentedGRU, path: Path) -> None:
    """Only the weights carry over: a longer-context model can start from a shorter one's."""
    start = load_checkpoint(path).model
    if start.sizes != model.sizes:
        raise CheckpointError(f"--init {path}: sizes {start.sizes} differ from {model.sizes}")
    model.load_state_dict(start.state_dict(), strict=True)


def walks(
    world: World, n: int, context: int, lane: int | None, rng: np.random.Generator
) -> np.ndarray:
    """(n, context + 1) concept indexes: a context and the concept that follows it."""
    return np.stack([s.concepts for s in world.sequences(n, context + 1, lane, rng)])


def _epoch(
    model: MemoryAugmentedGRU,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    vectors: torch.Tensor,
    concepts: np.ndarray,
    batch: int,
    on_batch: OnBatch | None,
) -> float:
    model.train()
    order = torch.from_numpy(concepts)[torch.randperm(len(concepts))]
    n_batches = len(order) // batch
    total = 0.0
    for i in range(n_batches):
        seq = vectors[order[i * batch : (i + 1) * batch]]
        x, y = seq[:, :-1], seq[:, 1:]
        # Every prefix predicts its next concept, in the same delta mode the server uses.
        predicted = delta_prediction(x, model.forward_steps(x))
        loss = (1.0 - F.cosine_similarity(predicted, y, dim=-1)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        value = loss.item()
        total += value
        if on_batch:
            on_batch(i + 1, n_batches, value)
    return total / n_batches


def expert_paths(items: list[str]) -> list[Path]:
    """Files as given, and each directory's *.pt files in name order (expert i = i-th path)."""
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        paths.extend(sorted(p.glob("*.pt")) if p.is_dir() else [p])
    return paths


def _parser() -> argparse.ArgumentParser:
    p = termout.parser("lvm-train", __doc__.splitlines()[0])
    d = TrainConfig(out=Path())
    p.add_argument("--out", required=True, type=Path, help="checkpoint (or gate) file to write")
    p.add_argument("--context", type=int, default=d.context, help="context vectors per example")
    p.add_argument("--hidden", type=int, default=d.hidden)
    p.add_argument("--layers", type=int, default=d.layers)
    p.add_argument("--slots", type=int, default=d.slots, help="memory slots")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lane", type=int, help="train on one lane's walks only (a lane expert)")
    p.add_argument("--patience", type=int, default=d.patience, help="epochs without Hit@5 gain")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--world-seed", type=int, default=d.world_seed, help="the world lvm-serve uses")
    p.add_argument("--walks", type=int, default=d.walks_per_epoch, help="fresh walks per epoch")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--init", type=Path, help="warm start from this checkpoint (same sizes)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--gate", action="store_true", help="fit the TMD gate instead of a model")
    p.add_argument("--experts", nargs="+", default=[], help="16 expert checkpoints (or a dir)")
    p.add_argument("--top-k", type=int, default=2, help="experts per request (--gate)")
    p.add_argument("--walks-per-lane", type=int, default=64, help="validation walks (--gate)")
    return p


def main(argv: list[str] | None = None) -> None:
    p = _parser()
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be >= 1")
    torch.set_num_threads(args.threads)
    console = Console(stderr=True)
    try:
        if args.gate:
            _fit_gate(args, p, console)
        else:
            _train(args, p, console)
    except CheckpointError as exc:
        raise SystemExit(f"lvm-train: {exc}") from None


def _train(args: argparse.Namespace, p: argparse.ArgumentParser, console: Console) -> None:
    if args.experts:
        p.error("--experts needs --gate")
    cfg = TrainConfig(
        out=args.out,
        context=args.context,
        hidden=args.hidden,
        layers=args.layers,
        slots=args.slots,
        epochs=args.epochs,
        lane=args.lane,
        patience=args.patience,
        seed=args.seed,
        world_seed=args.world_seed,
        walks_per_epoch=args.walks,
        lr=args.lr,
        init=args.init,
    )
    if problems := cfg.problems():
        p.error("; ".join(problems))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("epoch 1", total=None)
        epoch = 1

        def on_batch(i: int, n: int, loss: float) -> None:
            progress.update(
                task,
                completed=i,
                total=n,
                description=f"epoch {epoch}/{cfg.epochs} loss {loss:.4f}",
            )

        def on_epoch(r: EpochReport) -> None:
            nonlocal epoch
            epoch = r.epoch + 1
            saved = "  [green]saved[/]" if r.improved else ""
            progress.console.print(
                f"epoch {r.epoch}: loss {r.loss:.4f}  val Hit@1 {r.hits[1]:.1%}  "
                f"Hit@5 {r.hits[5]:.1%}  Hit@10 {r.hits[10]:.1%}  ({r.seconds:.0f}s){saved}"
            )

        result = train(cfg, on_epoch, on_batch)
    stop = "early stop" if result.stopped_early else "done"
    console.print(
        f"{stop}: best epoch {result.best_epoch}, val Hit@5 {result.best_hits[5]:.1%} -> {cfg.out}"
    )


def _fit_gate(args: argparse.Namespace, p: argparse.ArgumentParser, console: Console) -> None:
    paths = expert_paths(args.experts)
    if len(paths) != gate_fit.N_EXPERTS:
        p.error(f"--gate needs {gate_fit.N_EXPERTS} expert checkpoints, got {len(paths)}")
    if not 1 <= args.top_k <= gate_fit.N_EXPERTS or args.walks_per_lane < 1:
        p.error("--top-k must be in 1..16 and --walks-per-lane >= 1")
    experts = [load_predictor(str(path)) for path in paths]
    world = World.build(args.world_seed)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console) as progress:
        evals = []
        for purpose, stream in (("fit", 3), ("held-out", 4)):
            task = progress.add_task(f"{purpose}: expert predictions", total=len(experts))
            evals.append(
                gate_fit.lane_eval(
                    experts,
                    world,
                    args.walks_per_lane,
                    args.context,
                    np.random.default_rng([args.seed, stream]),
                    on_expert=lambda _, task=task: progress.advance(task),
                )
            )
    fit = gate_fit.fit_gate(evals[0], k=args.top_k)
    scores = gate_fit.baselines(evals[1], fit.gate, args.top_k)
    save_gate(
        args.out,
        fit.gate,
        meta={
            "temperature": fit.temperature,
            "top_k": args.top_k,
            "experts": [str(path) for path in paths],
            "quality": fit.quality.tolist(),
            "held_out_hit5": scores,
        },
    )
    console.print(f"held-out Hit@5 of the top-{args.top_k} mixture (same walks for every gate):")
    table = Table()
    table.add_column("gate")
    table.add_column("Hit@5", justify="right")
    for name, value in scores.items():
        table.add_row(name, f"{value:.1%}")
    console.print(table)
    console.print(f"gate (temperature {fit.temperature}) -> {args.out}")
