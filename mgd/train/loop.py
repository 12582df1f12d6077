"""The one training loop every method runs through.

SGD with momentum (no weight decay on norm layers and biases), poly learning-rate decay per
iteration, a labeled batch and (for semi-supervised and distillation methods) two unlabeled batches
per step, mixed precision (bf16 autocast on CUDA by default, fp16 with a gradient scaler on GPUs
without bf16), channels_last on CUDA, gradient accumulation, optional torch.compile, atomic
checkpoints every N iterations and resume from the last one, CSV + TensorBoard scalars, tqdm
progress, and DistributedDataParallel when launched by torchrun (WORLD_SIZE > 1).

The loop never waits for the device inside a step: loss terms stay on the device and are copied
to the host every ``runtime.log_every`` steps (and before each checkpoint), where they are
written to log.csv and checked to be finite; a checkpoint therefore never holds diverged weights.

Gradient accumulation (``optim.accumulate: K``) splits each process's share of the global batch
into K micro-batches and averages their gradients before the one optimiser step, so the effective
batch and learning rate are those of the config; DDP all-reduces only on the last micro-batch.
Batch-norm statistics are those of a micro-batch (as they are per GPU without SyncBatchNorm).

Multi-process recipe: the configured batches are global; each of the N processes takes 1/N of them
and DDP averages gradients, so a recipe gives the same effective learning rate on 1 or N processes
(the public CPS/MGD code instead keeps the per-GPU batch and divides each loss by the world size,
which is why its scripts scale the learning rate by the number of GPUs).
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from mgd.data import build_dataset
from mgd.data.streams import TrainBatch, UnlabeledView, ViewKeys, stream_loader
from mgd.data.transforms import cutmix_box_masks, images_to_device, train_transform
from mgd.device import autocast_dtype, init_distributed, memory_format, needs_grad_scaler, select_device
from mgd.errors import CheckpointError, ConfigError, MgdError
from mgd.io import atomic_path, torch_save_atomic, write_json_atomic
from mgd.models import save_model, sync_batchnorm
from mgd.progress import progress as progress_bar
from mgd.seeds import derive_seed
from mgd.splits import read_split
from mgd.train import CHECKPOINT_NAME, LOG_NAME, SUMMARY_NAME
from mgd.train.config import config_hash, method_params
from mgd.train.objectives import objective_class
from mgd.train.stop import StopRequested, StopSignals

MODEL_NAME = "model.pt"


#: what a checkpoint must hold for a run to resume from it
CHECKPOINT_KEYS = ("iteration", "config_hash", "split_hash", "elapsed_s", "trainable", "objective", "optimizer",
                   "scheduler", "scaler", "torch_rng", "cuda_rng")


class NonFiniteLossError(MgdError, FloatingPointError):
    """The loss became NaN or infinite (names the iteration and the loss terms)."""


#: the cuBLAS workspace setting deterministic matrix products need (read when CUDA initialises)
DETERMINISTIC_CUBLAS_WORKSPACE = ":4096:8"


def set_determinism(deterministic: bool, device: torch.device) -> None:
    """``deterministic: true``: strict on the CPU (an op without a deterministic kernel raises,
    and none the training uses lacks one); on CUDA every op with a deterministic kernel uses it
    and the three families without one (bilinear ``interpolate`` backward, adaptive average
    pooling backward, ``nll_loss`` forward, all atomic-add reductions) run with a warning, so a
    CUDA run repeats only up to their floating-point summation order (config/README.md)."""
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def sgd_param_groups(modules: list[nn.Module], weight_decay: float) -> list[dict]:
    """Weight decay on convolution/linear weights only, not on norm layers and biases."""
    decayed, not_decayed = [], []
    for module in modules:
        for parameter in module.parameters():
            if parameter.requires_grad:
                (decayed if parameter.ndim > 1 else not_decayed).append(parameter)
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": not_decayed, "weight_decay": 0.0}]


def poly_schedule(optimizer: torch.optim.Optimizer, iterations: int, power: float) -> torch.optim.lr_scheduler.LambdaLR:
    """lr = base * (1 - it / iterations) ** power at iteration ``it`` (0 from ``iterations`` on), in
    closed form as the public code computes it (furnace/engine/lr_policy.py), so a resumed run
    (its ``last_epoch`` restored) continues exactly. Not ``torch.optim.lr_scheduler.PolynomialLR``:
    it multiplies the previous lr by a ratio each step, which drifts from the closed form (up to
    1.4e-14 relative by 80k iterations; tests/test_train.py::test_poly_schedule_is_the_closed_form)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: (1.0 - min(it, iterations) / iterations) ** power)


class Trainer:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.output_dir = Path(cfg["output_dir"])
        if cfg["deterministic"]:  # before init_distributed / select_device initialise CUDA
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", DETERMINISTIC_CUBLAS_WORKSPACE)
        self.rank, self.world_size = init_distributed(cfg["runtime"]["device"])
        self.device = select_device(cfg["runtime"]["device"])
        self.is_main = self.rank == 0
        data_cfg, runtime = cfg["data"], cfg["runtime"]
        self.accumulate = cfg["optim"]["accumulate"]
        shares = self.world_size * self.accumulate
        for key in ("batch_labeled", "batch_unlabeled"):
            if data_cfg[key] % shares:
                raise ConfigError(f"config key data.{key}: {data_cfg[key]} is not divisible by {self.world_size} "
                                  f"processes x {self.accumulate} accumulation steps (optim.accumulate)")
        if runtime["bf16"] and runtime["precision"] not in ("auto", "bf16"):
            raise ConfigError(f"config key runtime.bf16: true contradicts runtime.precision: {runtime['precision']}")
        self.autocast_dtype = autocast_dtype("bf16" if runtime["bf16"] else runtime["precision"], self.device)
        self.memory_format = memory_format(runtime["channels_last"], self.device)

        self.objective_cls = objective_class(cfg["method"]["name"])
        params = method_params(cfg, self.objective_cls.defaults)
        if self.objective_cls.unlabeled_streams and data_cfg["batch_unlabeled"] < 1:
            raise ConfigError(f"config key data.batch_unlabeled: method {self.objective_cls.name!r} needs unlabeled data")

        self.split = read_split(data_cfg["split"])
        dataset = build_dataset(data_cfg["dataset"], "train")
        self.labeled = dataset.subset(self.split.labeled, labeled=True)
        self.unlabeled = dataset.subset(self.split.unlabeled) if self.objective_cls.unlabeled_streams else None
        if self.unlabeled is not None and len(self.unlabeled) == 0:
            raise ConfigError(f"config key data.split: {data_cfg['split']} has no unlabeled ids")
        self.num_classes = dataset.num_classes
        self.config_hash = config_hash(cfg)
        set_determinism(cfg["deterministic"], self.device)
        torch.manual_seed(cfg["seed"])

        self.objective = self.objective_cls(cfg, params, dataset.classes, self.device)
        for model in (*self.objective.trainable.values(), *self.objective.frozen.values()):
            model.to(self.device, memory_format=self.memory_format)
        for model in self.objective.frozen.values():
            model.requires_grad_(False)
        optim_cfg = cfg["optim"]
        use_scaler = needs_grad_scaler(self.autocast_dtype)
        self.optimizer = torch.optim.SGD(
            sgd_param_groups(list(self.objective.trainable.values()), optim_cfg["weight_decay"]),
            lr=optim_cfg["lr"],
            momentum=optim_cfg["momentum"],
            # the fused CUDA kernel takes the scaler's inf check on the device (no host sync per step)
            fused=True if use_scaler and self.device.type == "cuda" else None,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.scheduler = poly_schedule(self.optimizer, optim_cfg["iterations"], optim_cfg["poly_power"])
        self.start_iteration = self._resume()
        if self.world_size > 1:
            self._wrap_distributed()
        if runtime["compile"]:
            # in place (nn.Module.compile): state_dict keys and the objectives' references stay
            for model in (*self.objective.trainable.values(), *self.objective.frozen.values()):
                model.compile()

    def _wrap_distributed(self) -> None:
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        for name, model in self.objective.trainable.items():
            if self.device.type == "cuda":
                model = sync_batchnorm(model)
            self.objective.trainable[name] = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def _unwrapped(self, name: str) -> nn.Module:
        model = self.objective.trainable[name]
        return getattr(model, "module", model)

    # -- checkpoints ---------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.output_dir / CHECKPOINT_NAME

    def _save_checkpoint(self, iteration: int, elapsed: float) -> None:
        if not self.is_main:
            return
        state = {
            "iteration": iteration,
            "config_hash": self.config_hash,
            "split_hash": self.split.hash,
            "elapsed_s": elapsed,
            "resumed_at": list(self.resumed_at),
            "trainable": {name: self._unwrapped(name).state_dict() for name in self.objective.trainable},
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        torch_save_atomic(state, self.checkpoint_path)

    def _resume(self) -> int:
        self.elapsed_before = 0.0
        #: the iterations this run resumed at, earliest first (train.json reports them)
        self.resumed_at: list[int] = []
        if not self.checkpoint_path.exists():
            return 0
        state = self._load_checkpoint()
        if state["config_hash"] != self.config_hash or state["split_hash"] != self.split.hash:
            raise CheckpointError(
                f"checkpoint {self.checkpoint_path} was written by a different config or split; "
                "delete it or choose another output_dir"
            )
        try:
            for name, model_state in state["trainable"].items():
                self.objective.trainable[name].load_state_dict(model_state)
            self.objective.load_state_dict(state["objective"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, KeyError, ValueError, TypeError) as error:
            raise CheckpointError(f"checkpoint {self.checkpoint_path} does not fit this run: "
                                  f"{str(error).splitlines()[0]}") from error
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.elapsed_before = state["elapsed_s"]
        # a checkpoint written before resumed_at was recorded has none
        self.resumed_at = [*state.get("resumed_at", []), int(state["iteration"])]
        return state["iteration"]

    def _load_checkpoint(self) -> dict:
        """checkpoint.pt with ``weights_only=True``: tensors and plain containers only, so a planted
        file cannot run code; then the keys a resume needs are checked."""
        path = self.checkpoint_path
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # a corrupt or unsafe file must not be silently overwritten
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CheckpointError(f"checkpoint {path} cannot be read as a weights-only checkpoint: {reason}") from error
        if not isinstance(state, dict):
            raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a checkpoint mapping")
        missing = [key for key in CHECKPOINT_KEYS if key not in state]
        if missing:
            raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}; delete it to start the run over")
        if not isinstance(state["trainable"], dict):
            raise CheckpointError(f"checkpoint {path}: 'trainable' is not a mapping of model states")
        if set(state["trainable"]) != set(self.objective.trainable):
            raise CheckpointError(f"checkpoint {path} holds models {sorted(state['trainable'])}, "
                                  f"the run trains {sorted(self.objective.trainable)}")
        return state

    # -- data ------------------------------------------------------------------------------------
    def _loaders(self):
        data_cfg = self.cfg["data"]
        transform = train_transform(data_cfg["crop_size"], scales=tuple(data_cfg["scales"]))
        common = dict(
            seed=self.cfg["seed"], start_iteration=self.start_iteration, rank=self.rank,
            world_size=self.world_size, num_workers=data_cfg["num_workers"], pin_memory=self.device.type == "cuda",
            # the views of a teacher cache, for the distillation objectives that use one
            replay=self.objective.view_replay,
        )
        labeled = stream_loader(self.labeled, transform, True, data_cfg["batch_labeled"], stream="labeled", **common)
        unlabeled = [
            stream_loader(self.unlabeled, transform, False, data_cfg["batch_unlabeled"], stream=f"unlabeled{index}", **common)
            for index in range(self.objective.unlabeled_streams)
        ]
        return iter(labeled), [iter(loader) for loader in unlabeled]

    def _batch(self, iteration: int, labeled_iter, unlabeled_iters) -> TrainBatch:
        cuda = self.device.type == "cuda"

        def to_device(tensor: torch.Tensor) -> torch.Tensor:
            # loader tensors are pinned on CUDA (pin_memory), so the copy does not block the host
            return tensor.to(self.device, non_blocking=True)

        def image_to_device(image: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
            # uint8 crops, normalised (and their padding set to 0) on the device
            return images_to_device(image, self.device, padding, self.memory_format)

        def keys(sample: dict) -> ViewKeys:
            return ViewKeys(list(sample["id"]), sample["view"].tolist())

        labeled = next(labeled_iter)
        views = []
        for stream in unlabeled_iters:
            view = next(stream)
            padding = to_device(view["padding"])
            views.append(UnlabeledView(image_to_device(view["image"], padding), ~padding, keys(view)))
        cutmix = None
        if len(views) == 2:
            crop = views[0].image.shape[-2:]
            local = views[0].image.shape[0]
            # Boxes for the whole global batch from one generator, this process's slice taken: the
            # boxes of a sample do not depend on the number of processes.
            generator = torch.Generator().manual_seed(derive_seed(self.cfg["seed"], "cutmix", iteration, 0))
            boxes = cutmix_box_masks(local * self.world_size, crop[0], crop[1], generator)
            boxes = boxes[self.rank * local:(self.rank + 1) * local]
            cutmix = to_device(boxes.pin_memory() if cuda else boxes)
        return TrainBatch(iteration, image_to_device(labeled["image"], labeled["padding"]),
                          to_device(labeled["mask"]).long(), views, cutmix, keys(labeled))

    def batches(self):
        """The run's batches from ``start_iteration`` on, as the loop consumes them."""
        labeled_iter, unlabeled_iters = self._loaders()
        iteration = self.start_iteration
        while True:
            yield self._batch(iteration, labeled_iter, unlabeled_iters)
            iteration += 1

    def _gradient_sync(self, final: bool):
        """DDP all-reduces gradients only on the last micro-batch of a step."""
        if final or self.world_size == 1:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        for model in self.objective.trainable.values():
            stack.enter_context(model.no_sync())
        return stack

    def step(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        """One optimiser step on ``batch`` (over ``optim.accumulate`` micro-batches): the loss terms
        by name, detached, still on the device (reading them would wait for the step to finish)."""
        micro_batches = batch.split(self.accumulate)
        self.optimizer.zero_grad(set_to_none=True)
        logged: dict[str, torch.Tensor] = {}
        enabled = self.autocast_dtype is not None
        for index, micro in enumerate(micro_batches):
            with self._gradient_sync(index == len(micro_batches) - 1):
                with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32, enabled=enabled):
                    terms = self.objective.losses(micro)
                total = sum(terms.values()) / self.accumulate
                self.scaler.scale(total).backward()
            for name, value in terms.items():
                value = value.detach().float() / self.accumulate
                logged[name] = logged[name] + value if name in logged else value
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.objective.after_step(batch.iteration)
        return logged

    # -- the loop -------------------------------------------------------------------------------
    def run(self, stop: StopSignals | None = None) -> dict:
        """Train to the last iteration; with ``stop`` (installed), a stop signal ends the run after
        the step in flight with a checkpoint and ``StopRequested``."""
        cfg, runtime = self.cfg, self.cfg["runtime"]
        iterations = cfg["optim"]["iterations"]
        self.output_dir.mkdir(parents=True, exist_ok=True)
        log = ScalarLog(self.output_dir, self.start_iteration, runtime["tensorboard"]) if self.is_main else None
        self.objective.set_modes()
        batches = self.batches()
        run_start = time.perf_counter()
        images_seen = 0
        progress = progress_bar(
            total=iterations, initial=self.start_iteration, disable=not self.is_main,
            desc=f"{cfg['method']['name']} {cfg['model']['backbone']}",
        )
        window = LossWindow()
        stop = stop or StopSignals()
        try:
            for iteration in range(self.start_iteration, iterations):
                batch = next(batches)
                lr = self.optimizer.param_groups[0]["lr"]
                window.add(iteration + 1, self.step(batch), lr, batch.num_images * self.world_size)
                images_seen += batch.num_images * self.world_size
                progress.update(1)
                done = iteration + 1
                stopping = stop.requested(done, self.device, self.world_size, runtime["log_every"]) and done < iterations
                checkpoint_due = done % runtime["checkpoint_every"] == 0 or done == iterations or stopping
                if done % runtime["log_every"] == 0 or checkpoint_due:
                    rows = window.collect()  # the one host-device sync, every log_every steps
                    if log is not None:
                        for row in rows:
                            log.write(row.pop("iteration"), row)
                        progress.set_postfix(loss=f"{rows[-1]['loss']:.4f}", lr=f"{rows[-1]['lr']:.2e}")
                if checkpoint_due:
                    if log is not None:
                        log.flush()
                    self._save_checkpoint(done, self.elapsed_before + time.perf_counter() - run_start)
                if stopping:
                    self._stop(log, done, stop.received)
        finally:  # the bar ends its line, so an error message starts on its own
            progress.close()
        wall = self.elapsed_before + time.perf_counter() - run_start
        summary = self._finish(iterations, wall, images_seen, time.perf_counter() - run_start)
        if log is not None:
            log.close()
        if dist.is_initialized():
            dist.barrier()
        return summary

    def _stop(self, log: ScalarLog | None, done: int, signal_name: str) -> None:
        """After the checkpoint of a stop: close the log, wait for rank 0's write, raise StopRequested."""
        if log is not None:
            log.close()
        if dist.is_initialized():
            dist.barrier()
        raise StopRequested(done, signal_name)

    def _finish(self, iterations: int, wall: float, images_seen: int, session_time: float) -> dict:
        summary = {
            "method": self.cfg["method"]["name"],
            "backbone": self.cfg["model"]["backbone"],
            "config_hash": self.config_hash,
            "split_hash": self.split.hash,
            "iterations": iterations,
            "resumed_at": self.resumed_at,
            "wall_time_s": wall,
            "images_per_s": images_seen / session_time if images_seen else None,
            "world_size": self.world_size,
            "accumulate": self.accumulate,
            "device": str(self.device),
            "precision": str(self.autocast_dtype or torch.float32).removeprefix("torch."),
            "channels_last": self.memory_format == torch.channels_last,
            "num_classes": self.num_classes,
            "labeled_images": len(self.labeled),
            "unlabeled_images": len(self.unlabeled) if self.unlabeled is not None else 0,
        }
        if self.is_main:
            exported = self.objective.exported_model()
            save_model(self.output_dir / MODEL_NAME, getattr(exported, "module", exported).to("cpu"), classes=self.labeled.classes)
            write_json_atomic(self.output_dir / SUMMARY_NAME, summary)
        return summary


class LossWindow:
    """Loss terms of the steps since the last ``collect``, kept on the device until then."""

    def __init__(self):
        self.steps: list[tuple[int, dict[str, torch.Tensor], float]] = []
        self.images = 0
        self.start = time.perf_counter()

    def add(self, iteration: int, terms: dict[str, torch.Tensor], lr: float, images: int) -> None:
        self.steps.append((iteration, terms, lr))
        self.images += images

    def collect(self) -> list[dict]:
        """Log rows (iteration, loss, loss/<term>, lr, images_per_s over the window) of the
        pending steps; NonFiniteLossError at the first step whose loss is not finite."""
        names = list(dict.fromkeys(name for _, terms, _ in self.steps for name in terms))
        absent = torch.tensor(float("nan"), device=next(iter(self.steps[0][1].values())).device)
        values = torch.stack([torch.stack([terms.get(name, absent) for name in names])
                              for _, terms, _ in self.steps]).cpu()  # waits for the window's steps
        now = time.perf_counter()
        rate = self.images / max(now - self.start, 1e-9)
        rows = []
        for (iteration, terms, lr), row in zip(self.steps, values.tolist(), strict=True):
            by_name = {name: value for name, value in zip(names, row, strict=True) if name in terms}
            loss = sum(by_name.values())
            if not all(map(math.isfinite, [loss, *by_name.values()])):
                detail = ", ".join(f"{name}={value:.4g}" for name, value in by_name.items())
                raise NonFiniteLossError(
                    f"loss became {loss} at iteration {iteration} ({detail}); try a lower optim.lr, "
                    "runtime.precision: fp32, or check the data and teacher weights"
                )
            rows.append({"iteration": iteration, "loss": loss, **{f"loss/{k}": v for k, v in by_name.items()},
                         "lr": lr, "images_per_s": rate})
        self.steps, self.images, self.start = [], 0, now
        return rows


class ScalarLog:
    """Per-iteration scalars to log.csv and TensorBoard. Each flush appends only the rows written
    since the last one (rewriting the whole file each flush made the bytes written grow with the
    square of the run length); the file is rewritten only when a new column appears and once on
    resume, where rows past the checkpoint (and a line cut short by a kill) go."""

    def __init__(self, output_dir: Path, start_iteration: int, tensorboard: bool):
        self.path = output_dir / LOG_NAME
        self.fields: list[str] = []
        self.pending: list[dict] = []
        kept = self._read(start_iteration) if start_iteration > 0 else []
        if kept:
            self.fields = list(dict.fromkeys(key for row in kept for key in row))
            self._rewrite(kept)
        elif self.path.exists():
            self.path.unlink()  # a fresh run (or nothing logged before the checkpoint): the old log goes
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(output_dir / "tensorboard"), purge_step=start_iteration + 1)
        self.last_flush = time.monotonic()

    def _read(self, up_to: int | None = None) -> list[dict]:
        """The complete rows of log.csv (``up_to``: those up to that iteration)."""
        if not self.path.exists():
            return []
        lines = self.path.read_text().splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines.pop()  # the last append was cut short
        rows = [{key: value for key, value in row.items() if value != ""} for row in csv.DictReader(lines)]
        return [row for row in rows if up_to is None or int(row["iteration"]) <= up_to]

    def _rewrite(self, rows: list[dict]) -> None:
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, iteration: int, scalars: dict[str, float]) -> None:
        self.pending.append({"iteration": iteration, **scalars})
        if self.writer is not None:
            for name, value in scalars.items():
                self.writer.add_scalar(name, value, iteration)
        if time.monotonic() - self.last_flush > 10:
            self.flush()

    def flush(self) -> None:
        """Append the pending rows (a new column: rewrite the file once with the wider header)."""
        if self.pending:
            new = [key for key in dict.fromkeys(key for row in self.pending for key in row) if key not in self.fields]
            if new or not self.path.exists():
                self.fields += new
                self._rewrite(self._read() + self.pending)
            else:
                with open(self.path, "a", newline="") as handle:
                    csv.DictWriter(handle, fieldnames=self.fields).writerows(self.pending)
            self.pending = []
        self.last_flush = time.monotonic()

    def close(self) -> None:
        self.flush()
        if self.writer is not None:
            self.writer.close()
