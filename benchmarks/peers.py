"""``python -m benchmarks.peers``: the project's DDPM side by side with diffusers, in one run.

The peer is diffusers itself (``benchmarks/diffusers_peer.py`` run in a virtual environment
this script makes, never the project's): its ``UNet2DModel`` sized like params.yaml's DDPM UNet
(3 levels 28 -> 14 -> 7, attention in the middle block, parameter count within a few per cent),
trained the way diffusers' ``train_unconditional.py`` does (``DDPMScheduler.add_noise``, MSE on
the noise, grad clipping, ``EMAModel``), sampled with ``DDIMPipeline`` / ``DDIMScheduler``. Both
sides get the same data, batch, Adam (lr, betas), cosine schedule with T steps, the unweighted
noise MSE (the project's ``min_snr_gamma`` is switched off here), EMA decay, grad clip and thread count.

Both sides are measured in the same run, interleaved so that machine load hits them alike:

1. training: rounds of ``--chunk-steps`` project steps (``fit``) then the peer for the same
   wall time, until the project has trained ``--budget-s`` seconds; images/s is the median of
   the rounds after the first (warm-up), and both sides end with the same wall-clock budget;
2. sampling: DDIM with the same step count, batch by batch alternately, images/s of each;
3. FID of each side's ``--fid-samples`` images against as many real test images, in the
   feature space of the project's classifier (``--classifier``'s checkpoint, else one trained here
   the way ``sample_speed`` does).

Prints Markdown tables and ratios (project / diffusers), then one JSON line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import (
    ROOT,
    classifier_config,
    common_args,
    emit_json,
    family_configs,
    machine,
    median,
    parse,
    print_table,
    timed,
    with_settings,
)
from components.data.loader import TensorLoader
from components.data.spec import DataSpec
from components.metrics.features import apply_batched
from components.metrics.fid import fid_numpy
from components.models import build_model
from components.training.loop import fit

DIFFUSERS = "0.42.1"  # the version verified with this script (2026-12-01, torch 2.13.0+cpu)
PEER_SCRIPT = Path(__file__).with_name("diffusers_peer.py")
# 3 levels like the project's [1, 2, 2] x 16 UNet; 195,417 parameters against its 199,729 (0.98x).
# Widths differ because diffusers' up blocks have layers_per_block + 1 res blocks (the project's 1).
PEER_CHANNELS = (12, 28, 28)
DEFAULT_VENV = Path.home() / ".cache" / "genmodels" / "peers-venv"


# --------------------------------------------------------------------------- the peer's venv
def peer_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(venv: Path) -> Path:
    """A venv at ``venv`` with diffusers ``DIFFUSERS``; it sees this interpreter's torch through a .pth file.

    Made once (about 1.5 min: pip resolves and downloads diffusers and its few dependencies);
    later runs reuse it. Returns its python.
    """
    python = peer_python(venv)
    check = f"import diffusers, sys; sys.exit(diffusers.__version__ != {DIFFUSERS!r})"
    if python.exists() and subprocess.run([python, "-c", check], check=False, capture_output=True).returncode == 0:
        return python
    print(f"making the peer venv {venv} (diffusers=={DIFFUSERS}) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # The project's torch (the same build, so both sides run the same kernels), no second copy.
    torch_site = Path(torch.__file__).resolve().parents[1]
    (Path(site) / "genmodels-project-torch.pth").write_text(f"{torch_site}\n")
    pip = subprocess.run([python, "-m", "pip", "install", "--quiet", f"diffusers=={DIFFUSERS}"],
                         check=False, capture_output=True, text=True)
    if pip.returncode != 0:
        tail = (pip.stderr or pip.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise SystemExit(f"error: pip could not install diffusers=={DIFFUSERS} into {venv}: {tail[0]}")
    return python


class PeerProcess:
    """``diffusers_peer.py`` as a subprocess speaking its JSON-lines protocol."""

    def __init__(self, python: Path, data: Path, cfg: Any, threads: int, device: torch.device):
        args = [str(python), str(PEER_SCRIPT), "--data", str(data), "--batch-size", str(cfg.batch_size),
                "--lr", str(cfg.lr), "--betas", *map(str, cfg.adam_betas),
                "--ema-decay", str(cfg.ema_decay), "--timesteps", str(cfg.timesteps),
                "--beta-schedule", "squaredcos_cap_v2" if cfg.schedule == "cosine" else "linear",
                "--block-out-channels", *map(str, PEER_CHANNELS), "--threads", str(threads),
                "--device", str(device), "--seed", str(cfg.seed)]
        if cfg.grad_clip:
            args += ["--grad-clip", str(cfg.grad_clip)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"error: the diffusers peer exited (code {self.proc.wait()}); see its stderr above")
        answer = json.loads(line)
        if "error" in answer:
            raise SystemExit(f"error: diffusers peer: {answer['error']}")
        return answer

    def ask(self, **cmd: Any) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"cmd": "quit"}\n')
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


# --------------------------------------------------------------------------- the project side
class Chunks:
    """``k`` batches per "epoch" of a TensorLoader, continuing through its epochs: ``fit`` in short rounds."""

    def __init__(self, loader: TensorLoader, k: int):
        self.loader, self.k, self.epoch = loader, k, 0
        self.batch_size = loader.batch_size
        self.batches = self._forever()

    def _forever(self) -> Iterator[Any]:
        epoch = 0
        while True:
            self.loader.set_epoch(epoch)
            yield from self.loader
            epoch += 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.k

    def __iter__(self) -> Iterator[Any]:
        for _ in range(self.k):
            yield next(self.batches)


def load_data(quick: bool, data_dir: Path, n_real: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train images/labels and real test images/labels: the prepared data set, or synthetic when quick."""
    if quick:
        from components.data.synthetic import make_synthetic

        train_images, train_labels = make_synthetic(512, seed=0)
        test_images, test_labels = make_synthetic(max(n_real, 256), seed=1)
        return train_images, train_labels, test_images, test_labels
    from components.data.dataset import DataError, load_split

    try:
        train, test = load_split(data_dir, "train"), load_split(data_dir, "test")
    except (DataError, OSError) as exc:
        raise SystemExit(f"error: no prepared data in {data_dir} ({exc}); run `dvc repro fetch` or pass --data") from None
    return train.images, train.labels, test.images, test.labels


def classifier(classifier_dir: Path, quick: bool, images: np.ndarray, labels: np.ndarray, device: torch.device,
              epochs: int | None = None) -> tuple[Any, str]:
    """The project's feature extractor: the classifier stage's checkpoint, else a classifier trained here."""
    from components.training.checkpoint import CHECKPOINT_FILE, model_from_checkpoint

    path = classifier_dir / CHECKPOINT_FILE
    if path.is_file():
        return model_from_checkpoint(path, device).feature_extractor().to(device), str(classifier_dir)
    from benchmarks.sample_speed import train

    cfg = classifier_config(quick)
    if epochs:
        from benchmarks.common import with_settings

        cfg = with_settings(cfg, epochs=epochs)
    return train(cfg, images, labels, device).feature_extractor().to(device), f"trained here ({cfg.epochs} epochs)"


# --------------------------------------------------------------------------- the comparison
def train_both(model: Any, cfg: Any, loader: Chunks, peer: PeerProcess, budget_s: float) -> dict[str, Any]:
    """Interleaved rounds until the project has trained ``budget_s`` s; the peer gets each round's time."""
    rounds: list[dict[str, Any]] = []
    spent = 0.0
    while spent < budget_s or len(rounds) < 2:
        stats = fit(model, loader, epochs=len(rounds) + 1, start_epoch=len(rounds), seed=cfg.seed,
                    log_every=cfg.log_every)[0]
        theirs = peer.ask(cmd="train", seconds=stats.seconds)
        rounds.append({"project_images": stats.images, "project_s": stats.seconds, "peer": theirs,
                       "load_avg_1m": round(os.getloadavg()[0], 2)})
        spent += stats.seconds
        print(f"round {len(rounds)}: project {stats.images / stats.seconds:.3g} img/s, "
              f"diffusers {theirs['images'] / theirs['seconds']:.3g} img/s (load {rounds[-1]['load_avg_1m']})",
              flush=True)
    project = median([r["project_images"] / r["project_s"] for r in rounds[1:]])
    diffusers = median([r["peer"]["images"] / r["peer"]["seconds"] for r in rounds[1:]])
    return {"rounds": rounds, "project_images_per_s": project, "diffusers_images_per_s": diffusers,
            "project_seconds": spent, "diffusers_seconds": sum(r["peer"]["seconds"] for r in rounds),
            "project_steps": model.step, "diffusers_steps": sum(r["peer"]["steps"] for r in rounds)}


def sample_both(model: Any, peer: PeerProcess, n: int, batch: int, steps: int, device: torch.device,
                folder: Path) -> dict[str, Any]:
    """DDIM with ``steps`` steps on both sides, batch by batch alternately (one warm-up batch each first)."""
    model.eval()

    def ours(k: int, seed: int) -> torch.Tensor:
        gen = torch.Generator(device=device).manual_seed(seed)
        return model.sample(k, generator=gen, sampler="ddim", steps=steps, eta=0.0)

    ours(min(batch, 8), 0)
    peer.ask(cmd="sample", n=min(batch, 8), batch=batch, steps=steps, seed=0, out=str(folder / "warmup.npy"))
    mine, theirs, t_mine, t_theirs = [], [], 0.0, 0.0
    for j, first in enumerate(range(0, n, batch)):
        k = min(batch, n - first)
        images, seconds = timed(lambda k=k, j=j: ours(k, 1000 + j), device)
        mine.append(images.cpu().numpy())
        t_mine += seconds
        out = folder / f"peer-{j}.npy"
        t_theirs += peer.ask(cmd="sample", n=k, batch=batch, steps=steps, seed=1000 + j, out=str(out))["seconds"]
        theirs.append(np.load(out))
    return {"steps": steps, "n": n, "batch": batch, "project_images_per_s": n / t_mine,
            "diffusers_images_per_s": n / t_theirs, "project": np.concatenate(mine), "diffusers": np.concatenate(theirs)}


def main() -> None:
    p = common_args(__doc__.split("\n")[0])
    p.add_argument("--venv", default=str(DEFAULT_VENV), help="the peer's virtual environment (made when missing)")
    p.add_argument("--data", default=str(ROOT / "data" / "prepared"), help="the prepared data set (fetch stage)")
    p.add_argument("--classifier", default=str(ROOT / "models" / "classifier"), help="the classifier stage's folder")
    p.add_argument("--budget-s", type=float, default=None, help="training seconds per side (default 600, quick 4)")
    p.add_argument("--chunk-steps", type=int, default=None, help="project steps per round (default 20, quick 2)")
    p.add_argument("--fid-samples", type=int, default=None, help="images per side for FID (default 1000, quick 32)")
    p.add_argument("--sample-batch", type=int, default=None, help="images per sampling call (default 500, quick 16)")
    p.add_argument("--ddim-steps", type=int, default=None, help="DDIM steps on both sides (default: params.yaml's)")
    p.add_argument("--classifier-epochs", type=int, default=None,
                   help="epochs of the classifier trained here when --classifier has none (default: params.yaml's)")
    args, device, threads, _ = parse(p)
    q = args.quick
    cfg = family_configs(q, ["ddpm"])["ddpm"]
    if q:  # the smoke DDPM is smaller; compare at params.yaml's architecture, briefly
        cfg = with_settings(family_configs(False, ["ddpm"])["ddpm"], batch_size=16)
    # The peer trains on diffusers' unweighted noise MSE: the project side does the same, so both run one algorithm.
    cfg = with_settings(cfg, min_snr_gamma=None)
    budget, chunk = args.budget_s or (4 if q else 600), args.chunk_steps or (2 if q else 20)
    n, batch = args.fid_samples or (32 if q else 1000), args.sample_batch or (16 if q else 500)
    ddim_steps = args.ddim_steps or (5 if q else cfg.sample_steps)
    result: dict[str, Any] = {"benchmark": "peers", "peer": f"diffusers {DIFFUSERS}", **machine(), "device": str(device),
                              "threads": threads, "quick": q, "batch_size": cfg.batch_size, "budget_s": budget}
    train_images, train_labels, test_images, _ = load_data(q, Path(args.data), n)
    folder = Path(tempfile.mkdtemp(prefix="peers-"))
    peer = None
    try:
        np.save(folder / "train.npy", np.ascontiguousarray(train_images))
        python = ensure_venv(Path(args.venv))
        spec = DataSpec(channels=train_images.shape[1], height=train_images.shape[2], width=train_images.shape[3],
                        num_classes=10)
        model = build_model(cfg, spec, device)
        peer = PeerProcess(python, folder / "train.npy", cfg, threads, device)
        result["parameters"] = {"project": model.num_parameters(), "diffusers": peer.info["parameters"]}
        result["peer_info"] = peer.info
        loader = Chunks(TensorLoader(train_images, train_labels, cfg.batch_size, device, seed=cfg.seed), chunk)
        result["train"] = train_both(model, cfg, loader, peer, budget)
        sampled = sample_both(model, peer, n, batch, ddim_steps, device, folder)
        print(f"DDIM {ddim_steps} steps: project {sampled['project_images_per_s']:.3g} img/s, diffusers "
              f"{sampled['diffusers_images_per_s']:.3g} img/s; scoring FID", flush=True)
        extractor, source = classifier(Path(args.classifier), q, train_images, train_labels, device, args.classifier_epochs)
        real = apply_batched(extractor, test_images[:n], 500, device)
        result["sample"] = {k: v for k, v in sampled.items() if not isinstance(v, np.ndarray)}
        result["fid"] = {side: fid_numpy(real, apply_batched(extractor, sampled[side], 500, device))
                         for side in ("project", "diffusers")}
        result["classifier"] = source
        result["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    finally:
        if peer is not None:
            peer.close()
        shutil.rmtree(folder, ignore_errors=True)
    report(result)
    emit_json(result, args.json)


def report(r: dict[str, Any]) -> None:
    tr, sa, fid, params = r["train"], r["sample"], r["fid"], r["parameters"]
    print(f"\npeers on {r['device']} ({r.get('gpu') or r['cpu']}), {r['threads']} thread(s), batch {r['batch_size']}, "
          f"torch {r['torch']}, {r['peer']}, load {r['load_avg_1m']} -> {r['load_avg_1m_end']}; "
          f"UNet parameters: project {params['project']:,}, diffusers {params['diffusers']:,} "
          f"({params['project'] / params['diffusers']:.3f}x)")
    rows = [("train images/s", tr["project_images_per_s"], tr["diffusers_images_per_s"]),
            (f"DDIM {sa['steps']} steps images/s (batch {sa['batch']})", sa["project_images_per_s"],
             sa["diffusers_images_per_s"]),
            (f"FID, {sa['n']} images, after {tr['project_seconds']:.0f} s / {tr['diffusers_seconds']:.0f} s "
             + f"({tr['project_steps']} / {tr['diffusers_steps']} steps)", fid["project"], fid["diffusers"])]
    print_table(["measure", "project", "diffusers", "project / diffusers"],
                [(m, a, b, a / b if b else None) for m, a, b in rows])
    print(f"FID in the feature space of the classifier: {r['classifier']}")


if __name__ == "__main__":
    main()
