"""The report stage: leaderboard contents and order, reference rows, embedded images, missing
inputs, and the page rendering in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from project import run_stage

from components.report.leaderboard import (
    _gap_closed,
    collect_rows,
    consistency_warnings,
    fmt,
    load_inputs,
    training_compute,
)
from components.report.seeds import has_seeds, seed_groups

REPO = Path(__file__).resolve().parents[1]
EXTRACTOR = "feedc0ffee123456"
FLOOR_FID = 2.5
# name -> (FID, bootstrap std, untrained ceiling FID); gan and cgan are within noise of each other.
MODELS = {"gan": (80.0, 3.0, 410.0), "cgan": (81.0, 3.0, 420.0), "dcgan": (40.0, 0.5, 430.0),
          "vae": (120.0, 1.0, 300.0), "ddpm": (12.5, 0.2, 450.0)}
BY_FID = sorted(MODELS, key=lambda n: MODELS[n][0])  # ddpm, dcgan, gan, cgan, vae
CLASSES = ["circle", "square", "triangle", "cross", "h-stripes", "v-stripes", "diagonal", "ring", "checker", "blob"]


# --------------------------------------------------------------------------- fixture project
def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="png")
    return buf.getvalue()


def _grid_png(seed: int) -> bytes:
    """A 4x4 grid of random blocky 'samples', greyscale (like make_grid's output)."""
    rng = np.random.default_rng(seed)
    tiles = rng.integers(0, 256, (16, 7, 7), dtype=np.uint8).repeat(4, axis=1).repeat(4, axis=2)  # (16, 28, 28)
    grid = np.full((4 * 30 + 2, 4 * 30 + 2), 255, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, 4)
        grid[2 + 30 * r : 30 * r + 30, 2 + 30 * c : 30 * c + 30] = tile
    return _png(Image.fromarray(grid))


def _loss_png(seed: int) -> bytes:
    """A small RGB 'loss curve': a falling line on white."""
    img = np.full((80, 140, 3), 255, dtype=np.uint8)
    xs = np.arange(10, 130)
    ys = (10 + 60 * np.exp(-(xs - 10) / (20 + 5 * seed))).astype(int)
    img[ys, xs] = (31, 119, 180)
    return _png(Image.fromarray(img))


def _metrics(name: str, i: int) -> dict:
    fid, std, ceiling = MODELS[name]
    out = {"model": name, "family": name, "kind": "gan", "num_samples": 512, "ceiling_samples": 2000,
           "extractor_checksum": EXTRACTOR, "parameters": 1000 * (i + 1), "train_steps": 32,
           "fid": fid, "fid_mean": fid + 1, "fid_std": std, "kid": fid / 100, "kid_std": 0.01,
           "precision": 0.5, "recall": 0.4, "density": 0.6, "coverage": 0.3,
           "ceiling_fid": ceiling, "ceiling_fid_mean": ceiling, "ceiling_fid_std": 5.0,
           "ceiling_kid": 4.0, "ceiling_kid_std": 0.5, "floor_fid": FLOOR_FID, "floor_fid_std": 0.3,
           "registered_model": f"genmodels-{name}", "model_version": i + 1}
    extra = {"cgan": {"cond_acc": 0.875}, "vae": {"test_elbo": -250.5}, "ddpm": {"test_noise_loss": 0.0425}}
    return {**out, **extra.get(name, {})}


def _history(i: int) -> list[dict]:
    """Two epochs: (1.5 s + 0.5 s) * (i + 1) at 1024 images/s -> 2 (i + 1) s and 2,048 (i + 1) images seen."""
    rows: list[dict] = []
    for epoch, seconds in ((1, 1.5 * (i + 1)), (2, 0.5 * (i + 1))):
        rows += [{"step": 16 * (epoch - 1) + s, "loss": 1.0 / (s + epoch + i)} for s in (4, 8, 12, 16)]
        rows.append({"epoch": epoch, "step": 16 * epoch, "epoch_seconds": seconds, "images_per_s": 1024.0})
    return rows


def make_project(root: Path) -> str:
    """Write every input of the report stage for five models into ``root``; return its git commit."""
    (root / "params.yaml").write_text(
        "data: {source: synthetic}\ntrain:\n" + "".join(f"  {n}: {{family: {n}}}\n" for n in MODELS))
    (root / "data/prepared").mkdir(parents=True)
    (root / "data/prepared/meta.json").write_text(json.dumps(
        {"name": "synthetic", "source": "synthetic", "counts": {"train": 1024, "test": 512}, "class_names": CLASSES}))
    (root / "metrics").mkdir()
    floor = {"fid": FLOOR_FID, "fid_mean": 3.0, "fid_std": 0.3, "kid": 0.001, "kid_std": 0.002,
             "precision": 0.94, "recall": 0.93, "density": 1.03, "coverage": 0.88}
    (root / "metrics/classifier.json").write_text(json.dumps(
        {"test_accuracy": 0.951, "extractor_checksum": EXTRACTOR, "num_samples": 512, "data": "synthetic",
         "floor": floor}))
    for i, name in enumerate(MODELS):
        (root / "metrics" / f"{name}.json").write_text(json.dumps(_metrics(name, i)))
        model_dir, sample_dir = root / "models" / name, root / "samples" / name
        model_dir.mkdir(parents=True)
        sample_dir.mkdir(parents=True)
        (model_dir / "history.json").write_text(json.dumps(_history(i)))
        (model_dir / "config.json").write_text(json.dumps(
            {"name": name, "config": {"family": name, "seed": 0, "batch_size": 64}, "data_checksum": "fea64be680919c93"}))
        (model_dir / "mlflow_run.json").write_text(json.dumps(
            {"run_id": f"run{name}0123456789", "experiment": "genmodels-default-synthetic",
             "tracking_uri": "http://mlflow.example:5000" if name == "ddpm" else "sqlite:///mlflow.db"}))
        (model_dir / "loss.png").write_bytes(_loss_png(i))
        (sample_dir / "grid.png").write_bytes(_grid_png(i))
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "fixture"], cwd=root, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, check=True, capture_output=True,
                          text=True).stdout.strip()


def run_report(root: Path, *args: str) -> subprocess.CompletedProcess:
    return run_stage(root, "report", *args, env={"MPLBACKEND": "Agg"}, check=False, timeout=120, tracking="local")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run the stage once on the fixture project: ``{root, commit, html, md}``."""
    root = tmp_path_factory.mktemp("report_project")
    commit = make_project(root)
    proc = run_report(root)
    assert proc.returncode == 0, proc.stderr
    return {"root": root, "commit": commit, "html": (root / "reports/index.html").read_text(encoding="utf-8"),
            "md": (root / "reports/leaderboard.md").read_text(encoding="utf-8")}


def markdown_rows(md: str) -> list[dict[str, str]]:
    """The leaderboard table of ``leaderboard.md`` as dicts keyed by header."""
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    split = lambda ln: [c.strip() for c in re.split(r"(?<!\\)\|", ln.strip())[1:-1]]
    header = split(lines[0])
    assert set(lines[1].replace("|", "")) == {"-"}
    return [dict(zip(header, split(ln), strict=True)) for ln in lines[2:]]


# --------------------------------------------------------------------------- pure helpers
def test_training_compute_sums_epoch_rows_only() -> None:
    history = [{"step": 4, "loss": 1.0}, {"epoch": 1, "step": 8, "epoch_seconds": 2.0, "images_per_s": 500.0},
               {"epoch": 2, "step": 16, "epoch_seconds": 1.0, "images_per_s": 1000.0}]
    assert training_compute(history) == (3.0, 2000)
    assert training_compute([{"step": 4, "loss": 1.0}]) == (None, None)


def test_rgb_sample_grid_stays_rgb(tmp_path: Path) -> None:
    from components.report.grid import make_grid

    images = np.zeros((4, 3, 8, 8), np.uint8)
    images[:, 0] = 255  # pure red
    grid = make_grid(images, rows=2)
    assert grid.shape == (2 * 10 + 2, 2 * 10 + 2, 3) and grid[2:10, 2:10].tolist() == [[[255, 0, 0]] * 8] * 8
    Image.fromarray(grid).save(tmp_path / "grid.png")
    assert Image.open(tmp_path / "grid.png").mode == "RGB"
    assert make_grid(images[:, :1], rows=2).ndim == 2  # grayscale stays one plane

def test_gap_closed_is_log_position_between_ceiling_and_floor() -> None:
    assert _gap_closed(400.0, 4.0, 400.0) == pytest.approx(0.0)
    assert _gap_closed(4.0, 4.0, 400.0) == pytest.approx(1.0)
    assert _gap_closed(40.0, 4.0, 400.0) == pytest.approx(0.5)  # 10x from each end on a log scale
    assert _gap_closed(800.0, 4.0, 400.0) < 0  # worse than untrained
    assert _gap_closed(10.0, 0.0, 400.0) is None
    assert fmt(None) == fmt(float("nan")) == "—"
    assert fmt(0.012345) == "0.0123" and fmt(6464.2) == "6,464" and fmt(1.5e-5) == "1.50e-05"


# --------------------------------------------------------------------------- the stage
def test_markdown_leaderboard_rows_values_and_order(report: dict) -> None:
    rows = markdown_rows(report["md"])
    assert len(rows) == 1 + 2 * len(MODELS)  # floor, five models, five ceilings
    assert rows[0]["model"] == "*data floor*" and rows[0]["FID ± std"] == "2.50 ± 0.30"
    models = rows[1 : 1 + len(MODELS)]
    assert [r["model"] for r in models] == BY_FID
    for r in models:
        fid, std, _ = MODELS[r["model"]]
        assert r["FID ± std"] == f"{fid:.2f} ± {std:.2f}"
    ranks = {r["model"]: r["#"] for r in models}
    assert ranks == {"ddpm": "1", "dcgan": "2", "gan": "3", "cgan": "4 ≈ gan", "vae": "5"}
    ceilings = rows[1 + len(MODELS) :]
    assert [r["model"] for r in ceilings] == [f"*{n} untrained*" for n in sorted(MODELS, key=lambda n: MODELS[n][2])]
    assert {r["FID ± std"] for r in ceilings} == {f"{c:.2f} ± 5.00" for _, _, c in MODELS.values()}
    by_name = {r["model"]: r for r in models}
    assert by_name["cgan"]["cond. acc"] == "0.875" and by_name["gan"]["cond. acc"] == "—"
    assert by_name["vae"]["test_elbo"] == "-250" and by_name["ddpm"]["test_noise_loss"] == "0.0425"
    assert by_name["dcgan"]["train s"] == "6.0" and by_name["dcgan"]["images seen"] == "6,144"
    assert by_name["dcgan"]["parameters"] == "3,000"
    assert by_name["dcgan"]["gap closed"] == f"{100 * _gap_closed(40.0, FLOOR_FID, 430.0):.0f}%"


def test_markdown_header_names_data_extractor_seeds_commit(report: dict) -> None:
    md = report["md"]
    for text in ("synthetic", EXTRACTOR, "test accuracy 95.1%", report["commit"], "512 generated images per model",
                 "data 0", "sample 1234", "evaluate 7", "rungan0123456789", "genmodels-default-synthetic"):
        assert text in md, text


def test_html_page_has_models_references_and_embedded_images(report: dict) -> None:
    page = report["html"]
    for name in MODELS:
        assert f'id="model-{name}"' in page and f"run{name}0123456789" in page
    assert page.count('<tr class="floor">') == 1
    assert page.count('<tr class="ceiling">') == len(MODELS)
    assert EXTRACTOR in page and report["commit"] in page
    model_rows = re.findall(r'<tr class="model"><td[^>]*>.*?</td><td>([^<]+)</td>', page)
    assert model_rows == BY_FID
    # self-contained: every image is inline, nothing refers to another file or the network
    refs = re.findall(r'\b(?:src|href)="([^"]*)"', page)
    refs = [r for r in refs if not r.startswith("http://mlflow.example:5000/#/models/")]  # registry links
    assert len(refs) == 2 * len(MODELS) + 1  # grids, loss curves, the compute plot
    assert all(r.startswith("data:image/png;base64,") for r in refs)
    assert "<link" not in page and "<script" not in page and "@import" not in page and "url(" not in page
    sizes = {Image.open(io.BytesIO(base64.b64decode(r.split(",", 1)[1]))).size for r in refs}
    assert (122, 122) in sizes and (140, 80) in sizes  # the fixture's grids and loss curves, byte for byte


def test_each_model_row_names_its_registered_version(report: dict) -> None:
    rows = {r["model"]: r for r in markdown_rows(report["md"])}
    for i, name in enumerate(MODELS):
        assert rows[name]["registered"] == f"models:/genmodels-{name}/{i + 1}"
    assert rows["*data floor*"]["registered"] == ""
    ddpm_version = list(MODELS).index("ddpm") + 1  # on a server: a link to the version's page
    assert f'<a href="http://mlflow.example:5000/#/models/genmodels-ddpm/versions/{ddpm_version}">' in report["html"]
    assert "<code>models:/genmodels-gan/" in report["html"]  # a local store: the URI to load


def test_report_is_deterministic(report: dict) -> None:
    proc = run_report(report["root"], "--out", "again")
    assert proc.returncode == 0, proc.stderr
    assert (report["root"] / "again/leaderboard.md").read_text(encoding="utf-8") == report["md"]
    assert (report["root"] / "again/index.html").read_text(encoding="utf-8") == report["html"]


def test_missing_input_is_one_line_naming_file_and_stage(tmp_path: Path) -> None:
    make_project(tmp_path)
    (tmp_path / "samples/dcgan/grid.png").unlink()
    proc = run_report(tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: samples/dcgan/grid.png missing: run the sample stage (dvc repro sample@dcgan) first"]
    assert not (tmp_path / "reports").exists()
    (tmp_path / "metrics/vae.json").write_text("{not json")
    (tmp_path / "samples/dcgan/grid.png").write_bytes(_grid_png(0))
    proc = run_report(tmp_path)
    assert proc.returncode == 1 and "metrics/vae.json is not valid JSON" in proc.stderr
    assert "evaluate@vae" in proc.stderr and "Traceback" not in proc.stderr


def test_warnings_for_stale_extractor_and_untrained_level_model(tmp_path: Path) -> None:
    make_project(tmp_path)
    vae = json.loads((tmp_path / "metrics/vae.json").read_text())
    (tmp_path / "metrics/vae.json").write_text(json.dumps({**vae, "fid": 350.0, "ceiling_fid": 300.0}))
    gan = json.loads((tmp_path / "metrics/gan.json").read_text())
    (tmp_path / "metrics/gan.json").write_text(json.dumps({**gan, "extractor_checksum": "0000000000000000"}))
    inputs = load_inputs(list(MODELS), tmp_path)
    rows = collect_rows(inputs)
    warnings = consistency_warnings(inputs, rows)
    assert len(warnings) == 2
    assert "gan was scored with extractor 0000000000000000" in warnings[0] and "evaluate@gan" in warnings[0]
    assert warnings[1] == "vae is no better than untrained (FID 350.00 vs ceiling 300.00)."
    assert next(r for r in rows if r.label == "vae").gap_closed < 0
    clean = load_inputs(["ddpm", "dcgan"], tmp_path)
    assert consistency_warnings(clean, collect_rows(clean)) == []


# --------------------------------------------------------------------------- seeds
def add_seed_replica(root: Path, model: str, name: str, seed: int, fid: float) -> None:
    """A model trained like ``model`` but under ``seed``: its own outputs, FID ``fid``."""
    shutil.copytree(root / "models" / model, root / "models" / name)
    shutil.copytree(root / "samples" / model, root / "samples" / name)
    config = json.loads((root / "models" / name / "config.json").read_text())
    config["name"], config["config"]["seed"] = name, seed
    (root / "models" / name / "config.json").write_text(json.dumps(config))
    metrics = json.loads((root / "metrics" / f"{model}.json").read_text())
    (root / "metrics" / f"{name}.json").write_text(json.dumps({**metrics, "model": name, "fid": fid}))


def test_seed_groups_mean_std_rank_and_the_pairs_seeds_cannot_tell_apart(tmp_path: Path) -> None:
    make_project(tmp_path)
    # gan: 80, 90, 85 (mean 85, std 5); vae: 120, then 88 and 92 -> mean 100 over three; cgan 81 alone
    add_seed_replica(tmp_path, "gan", "gan_seed1", 1, 90.0)
    add_seed_replica(tmp_path, "gan", "gan_seed2", 2, 85.0)
    add_seed_replica(tmp_path, "vae", "vae_seed1", 1, 88.0)
    add_seed_replica(tmp_path, "vae", "vae_seed2", 2, 92.0)
    names = [*MODELS, "gan_seed1", "gan_seed2", "vae_seed1", "vae_seed2"]
    inputs = load_inputs(names, tmp_path)
    groups = seed_groups(inputs, collect_rows(inputs))
    assert has_seeds(groups)
    by_label = {g.label: g for g in groups}
    assert [g.label for g in groups] == ["ddpm", "dcgan", "cgan", "gan", "vae"]  # by mean FID
    gan, vae, cgan = by_label["gan"], by_label["vae"], by_label["cgan"]
    assert gan.models == ["gan", "gan_seed1", "gan_seed2"] and gan.seeds == [0, 1, 2]
    assert gan.fid_mean == pytest.approx(85.0) and gan.fid_seed_std == pytest.approx(5.0)
    assert gan.boot_std == pytest.approx(3.0)  # the models' bootstrap std, beside the seeds' spread
    assert vae.fid_mean == pytest.approx(100.0) and vae.fid_seed_std == pytest.approx(17.436, abs=1e-3)
    assert cgan.fid_seed_std is None and cgan.rank == 3
    # gan (85 ± 5, 3 seeds) vs cgan (81, 1 seed: borrows gan's spread): |4| < 2 * sqrt(25/1 + 25/3)
    assert gan.tied_with == "cgan"
    # vae (100 ± 17.4, 3 seeds) vs gan: |15| < 2 * sqrt(17.4^2/3 + 5^2/3)
    assert vae.tied_with == "gan"
    # dcgan (40, 1 seed) vs ddpm (12.5, 1 seed): no seed spread known, no claim either way
    assert by_label["dcgan"].tied_with is None


def test_report_shows_the_table_across_seeds_only_when_a_model_has_several(tmp_path: Path, report: dict) -> None:
    assert "Across seeds" not in report["md"] and 'id="seeds"' not in report["html"]
    make_project(tmp_path)
    add_seed_replica(tmp_path, "dcgan", "dcgan_seed7", 7, 44.0)
    params = tmp_path / "params.yaml"
    params.write_text(params.read_text() + "  dcgan_seed7: {family: dcgan, seed: 7}\n")
    proc = run_report(tmp_path)
    assert proc.returncode == 0, proc.stderr
    md = (tmp_path / "reports/leaderboard.md").read_text(encoding="utf-8")
    seeds = md.split("## Across seeds", 1)[1]
    dcgan = next(line for line in seeds.splitlines() if line.startswith("| ") and "| dcgan |" in line)
    assert "| 0, 7 |" in dcgan and "42.00 ± 2.83" in dcgan  # mean and sample std of 40 and 44
    assert 'id="seeds"' in (tmp_path / "reports/index.html").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- the browser
CHECK_SCRIPT = """<script>
window.addEventListener("load", () => {
  const broken = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt);
  console.log("report-check images=" + document.images.length + " broken=" + JSON.stringify(broken));
});
</script></body>"""


@pytest.mark.slow
def test_report_opens_in_headless_chromium(report: dict, tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.fail("headless Chromium is needed to check the report renders: install it with `make setup` "
                    "(apt-get install chromium)")
    # A copy of the page with a probe that reports broken images on the console (the report has no script).
    page = tmp_path / "index.html"
    page.write_text(report["html"].replace("</body>", CHECK_SCRIPT), encoding="utf-8")
    shot = tmp_path / "report.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={tmp_path / 'profile'}",
           "--enable-logging=stderr", "--v=0", f"--screenshot={shot}", "--window-size=1280,2000",
           page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln]
    assert any(f"report-check images={2 * len(MODELS) + 1} broken=[]" in ln for ln in console), proc.stderr[-2000:]
    assert [ln for ln in console if "report-check" not in ln] == []  # no errors, warnings or logs of the page
    with Image.open(shot) as img:
        assert img.size == (1280, 2000)
        pixels = np.asarray(img.convert("L"), dtype=np.float64)
    assert pixels.std() > 10 and len(np.unique(pixels)) > 50  # text, tables and images, not a blank page
    print(f"screenshot: {shot}")
