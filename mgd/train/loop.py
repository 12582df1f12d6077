"""The one training loop every method runs through.

SGD with momentum (no weight decay on norm layers and biases), poly learning-rate decay per
iteration, a labeled batch and (for semi-supervised and distillation methods) two unlabeled batches
per step, optional bf16 autocast and channels_last, atomic checkpoints every N iterations and
resume from the last one, CSV + TensorBoard scalars, tqdm progress, and DistributedDataParallel when
launched by torchrun (WORLD_SIZE > 1).

Multi-process recipe: the configured batches are global; each of the N processes takes 1/N of them
and DDP averages gradients, so a recipe gives the same effective learning rate on 1 or N processes
(the public CPS/MGD code instead keeps the per-GPU batch and divides each loss by the world size,
which is why its scripts scale the learning rate by the number of GPUs).
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from mgd.data import build_dataset
from mgd.data.transforms import cutmix_box_masks, train_transform
from mgd.errors import CheckpointError, ConfigError
from mgd.io import atomic_path, torch_save_atomic, write_json_atomic
from mgd.models import save_model
from mgd.splits import read_split
from mgd.train.config import config_hash, method_params
from mgd.train.data import TrainBatch, UnlabeledView, ViewKeys, derive_seed, stream_loader
from mgd.train.objectives import objective_class

CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.pt"
SUMMARY_NAME = "train.json"
LOG_NAME = "log.csv"


def select_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key runtime.device: 'cuda' requested but no CUDA device is available")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and dist.is_initialized():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(choice)


def init_distributed(device_choice: str) -> tuple[int, int]:
    """Join the process group when launched by torchrun; (rank, world size)."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size > 1 and not dist.is_initialized():
        use_cuda = device_choice != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def set_determinism(deterministic: bool) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: bilinear upsampling has no deterministic CUDA backward; the rest is enforced.
        torch.use_deterministic_algorithms(True, warn_only=True)
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


def poly_factor(iteration: int, iterations: int, power: float) -> float:
    return (1.0 - iteration / iterations) ** power


class Trainer:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.output_dir = Path(cfg["output_dir"])
        self.rank, self.world_size = init_distributed(cfg["runtime"]["device"])
        self.device = select_device(cfg["runtime"]["device"])
        self.is_main = self.rank == 0
        data_cfg = cfg["data"]
        for key in ("batch_labeled", "batch_unlabeled"):
            if data_cfg[key] % self.world_size:
                raise ConfigError(f"config key data.{key}: {data_cfg[key]} is not divisible by {self.world_size} processes")

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
        set_determinism(cfg["deterministic"])
        torch.manual_seed(cfg["seed"])

        self.objective = self.objective_cls(cfg, params, self.num_classes, self.device)
        runtime = cfg["runtime"]
        memory_format = torch.channels_last if runtime["channels_last"] else torch.contiguous_format
        for model in (*self.objective.trainable.values(), *self.objective.frozen.values()):
            model.to(self.device, memory_format=memory_format)
        for model in self.objective.frozen.values():
            model.requires_grad_(False)
        optim_cfg = cfg["optim"]
        self.optimizer = torch.optim.SGD(
            sgd_param_groups(list(self.objective.trainable.values()), optim_cfg["weight_decay"]),
            lr=optim_cfg["lr"],
            momentum=optim_cfg["momentum"],
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda it: poly_factor(min(it, optim_cfg["iterations"]), optim_cfg["iterations"], optim_cfg["poly_power"])
        )
        self.start_iteration = self._resume()
        if self.world_size > 1:
            self._wrap_distributed()

    def _wrap_distributed(self) -> None:
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        for name, model in self.objective.trainable.items():
            if self.device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
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
            "trainable": {name: self._unwrapped(name).state_dict() for name in self.objective.trainable},
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        torch_save_atomic(state, self.checkpoint_path)

    def _resume(self) -> int:
        self.elapsed_before = 0.0
        if not self.checkpoint_path.exists():
            return 0
        try:
            state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        except Exception as error:  # a corrupt file must not be silently overwritten
            raise CheckpointError(f"checkpoint {self.checkpoint_path} cannot be read: {error}") from error
        if state["config_hash"] != self.config_hash or state["split_hash"] != self.split.hash:
            raise CheckpointError(
                f"checkpoint {self.checkpoint_path} was written by a different config or split; "
                "delete it or choose another output_dir"
            )
        for name, model_state in state["trainable"].items():
            self.objective.trainable[name].load_state_dict(model_state)
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.elapsed_before = state["elapsed_s"]
        return state["iteration"]

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
        memory_format = torch.channels_last if self.cfg["runtime"]["channels_last"] else torch.contiguous_format

        def to_device(image: torch.Tensor) -> torch.Tensor:
            return image.to(self.device, non_blocking=True).contiguous(memory_format=memory_format)

        def keys(sample: dict) -> ViewKeys:
            return ViewKeys(list(sample["id"]), sample["view"].tolist())

        labeled = next(labeled_iter)
        views = []
        for stream in unlabeled_iters:
            view = next(stream)
            views.append(UnlabeledView(to_device(view["image"]), view["mask"].to(self.device) != 255, keys(view)))
        cutmix = None
        if len(views) == 2:
            crop = views[0].image.shape[-2:]
            generator = torch.Generator().manual_seed(derive_seed(self.cfg["seed"], "cutmix", iteration, self.rank))
            cutmix = cutmix_box_masks(views[0].image.shape[0], crop[0], crop[1], generator).to(self.device)
        return TrainBatch(iteration, to_device(labeled["image"]), labeled["mask"].to(self.device), views, cutmix,
                          keys(labeled))

    def batches(self):
        """The run's batches from ``start_iteration`` on, as the loop consumes them."""
        labeled_iter, unlabeled_iters = self._loaders()
        iteration = self.start_iteration
        while True:
            yield self._batch(iteration, labeled_iter, unlabeled_iters)
            iteration += 1

    def step(self, batch: TrainBatch) -> tuple[torch.Tensor, dict[str, float], float]:
        """One optimiser step on ``batch``: (total loss, loss terms by name, learning rate used)."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg["runtime"]["bf16"]):
            terms = self.objective.losses(batch)
        total = sum(terms.values())
        logged = {name: float(value.detach()) for name, value in terms.items()}
        if not torch.isfinite(total):
            raise FloatingPointError(f"loss became {float(total.detach())} at iteration {batch.iteration}: {self._format(logged)}")
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.objective.after_step(batch.iteration)
        return total.detach(), logged, lr

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg, runtime = self.cfg, self.cfg["runtime"]
        iterations = cfg["optim"]["iterations"]
        self.output_dir.mkdir(parents=True, exist_ok=True)
        log = ScalarLog(self.output_dir, self.start_iteration, runtime["tensorboard"]) if self.is_main else None
        self.objective.set_modes()
        batches = self.batches()
        run_start = time.perf_counter()
        images_seen = 0
        progress = tqdm(
            total=iterations, initial=self.start_iteration, disable=not self.is_main,
            desc=f"{cfg['method']['name']} {cfg['model']['backbone']}", dynamic_ncols=True,
        )
        for iteration in range(self.start_iteration, iterations):
            step_start = time.perf_counter()
            batch = next(batches)
            total, logged, lr = self.step(batch)
            images = batch.num_images * self.world_size
            images_seen += images
            step_time = time.perf_counter() - step_start
            progress.update(1)
            if log is not None:
                scalars = {"loss": float(total), **{f"loss/{k}": v for k, v in logged.items()},
                           "lr": lr, "images_per_s": images / step_time}
                log.write(iteration + 1, scalars)
                if (iteration + 1) % runtime["log_every"] == 0:
                    progress.set_postfix(loss=f"{float(total):.4f}", lr=f"{lr:.2e}")
            done = iteration + 1
            if done % runtime["checkpoint_every"] == 0 or done == iterations:
                if log is not None:
                    log.flush()
                self._save_checkpoint(done, self.elapsed_before + time.perf_counter() - run_start)
        progress.close()
        wall = self.elapsed_before + time.perf_counter() - run_start
        summary = self._finish(iterations, wall, images_seen, time.perf_counter() - run_start)
        if log is not None:
            log.close()
        if dist.is_initialized():
            dist.barrier()
        return summary

    @staticmethod
    def _format(terms: dict) -> str:
        return ", ".join(f"{name}={value:.4g}" for name, value in terms.items())

    def _finish(self, iterations: int, wall: float, images_seen: int, session_time: float) -> dict:
        summary = {
            "method": self.cfg["method"]["name"],
            "backbone": self.cfg["model"]["backbone"],
            "config_hash": self.config_hash,
            "split_hash": self.split.hash,
            "iterations": iterations,
            "wall_time_s": wall,
            "images_per_s": images_seen / session_time if images_seen else None,
            "world_size": self.world_size,
            "device": str(self.device),
            "num_classes": self.num_classes,
            "labeled_images": len(self.labeled),
            "unlabeled_images": len(self.unlabeled) if self.unlabeled is not None else 0,
        }
        if self.is_main:
            exported = self.objective.exported_model()
            save_model(self.output_dir / MODEL_NAME, getattr(exported, "module", exported).to("cpu"))
            write_json_atomic(self.output_dir / SUMMARY_NAME, summary)
        return summary


class ScalarLog:
    """Per-iteration scalars to log.csv and TensorBoard; on resume, rows past the checkpoint go."""

    def __init__(self, output_dir: Path, start_iteration: int, tensorboard: bool):
        self.path = output_dir / LOG_NAME
        self.rows: list[dict] = []
        if self.path.exists() and start_iteration > 0:
            with open(self.path, newline="") as handle:
                self.rows = [row for row in csv.DictReader(handle) if int(row["iteration"]) <= start_iteration]
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(output_dir / "tensorboard"), purge_step=start_iteration + 1)
        self.last_flush = time.monotonic()

    def write(self, iteration: int, scalars: dict[str, float]) -> None:
        self.rows.append({"iteration": iteration, **scalars})
        if self.writer is not None:
            for name, value in scalars.items():
                self.writer.add_scalar(name, value, iteration)
        if time.monotonic() - self.last_flush > 10:
            self.flush()

    def flush(self) -> None:
        fields = list(dict.fromkeys(key for row in self.rows for key in row))
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self.rows)
        self.last_flush = time.monotonic()

    def close(self) -> None:
        self.flush()
        if self.writer is not None:
            self.writer.close()
