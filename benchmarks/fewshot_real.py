"""Few-shot adaptation on real photos: the MetaIQA claim measured on BIQ2021.

K labelled BIQ2021 *train* photos -> adapt -> SROCC / PLCC on the official BIQ2021 *test*
split (reporting only), median and min-max over random draws of the K photos.

Protocol (cheap enough for a CPU; the same for every network and every K):
- Each network's backbone is frozen. Features (the backbone output, ResNet-18's 1000-d fc)
  are computed once per image on one 224x224 view: the whole photo downscaled so its short
  side is 224 (`to_viewing_scale`), centre 224 crop; eval mode, no grad. Cached per model.
- Images: a fixed pool of `--pool` train photos (seed 0) from which the K shots are drawn
  (draw d of K is the same photos for every model), plus the 2,000 test photos.
- Adaptation: the model's own regression head (MetaIQA head: Linear-BN-PReLU-Dropout; the
  prior's weights, or a random head for `random`) trained on the K shots' features with Adam,
  loss MSE(sigmoid(head(f)), mos) + ranking_hinge across the batch (margin 0.02, min_diff 0.05),
  a FIXED schedule (`--steps`, `--batch`, `--lr`) chosen before any test result was seen; then
  the head's BatchNorm statistics are re-estimated on all K shots with dropout off.
- `brisque_svr`: the 36 BRISQUE features (native resolution, grey, 2 scales; PyPI `brisque`)
  -> StandardScaler -> RBF SVR; C / gamma / epsilon by 5-fold CV (MSE) inside the K shots only.
- K = 0 is the prior's zero-shot score on the same test features (no draws).

Resumable: features are cached in `--cache` in chunks; results are merged into `--out` after
every (model, K) and finished entries are skipped on a re-run.

    python benchmarks/fewshot_real.py --model metaiqa-prior=metaiqa-prior --model random \
        --peers brisque_svr --shots 25 50 100 250 1000 --draws 5 --out benchmarks/results/fewshot_real.json
"""

import argparse
import copy
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_TRAIN = "biq2021-train:/work/data/biq2021"
DEFAULT_TEST = "biq2021:/work/data/biq2021"
PEERS = ("brisque_svr",)
CHUNK = 250


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=[], metavar="LABEL=CKPT",
                   help="a network: LABEL=checkpoint (path, run's best.safetensors, or bundled name); "
                        "`random` (or LABEL=random) = metaiqa_resnet18(input_norm=mscn) from a seeded "
                        "random initialisation. Repeatable.")
    p.add_argument("--peers", nargs="*", default=[], choices=PEERS, help="classical baselines")
    p.add_argument("--shots", nargs="+", type=int, default=[25, 50, 100, 250, 1000])
    p.add_argument("--draws", type=int, default=5, help="random draws of the K photos per K")
    p.add_argument("--pool", type=int, default=2000, help="train photos the shots are drawn from")
    p.add_argument("--train-data", default=DEFAULT_TRAIN, help="data spec the shots come from")
    p.add_argument("--test-data", default=DEFAULT_TEST, help="data spec reported on (never fitted)")
    p.add_argument("--test-limit", type=int, default=0, help="first N test photos only (smoke tests)")
    p.add_argument("--steps", type=int, default=200, help="head adaptation steps (fixed)")
    p.add_argument("--batch", type=int, default=32, help="batch size, min(K, this)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the head")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default="/work/data/fewshot_real_cache", help="feature cache folder")
    p.add_argument("--out", default=str(HERE / "results" / "fewshot_real.json"))
    p.add_argument("--plot", default=str(HERE / "results" / "fewshot_real.png"))
    p.add_argument("--features-only", action="store_true", help="fill the caches, adapt nothing")
    p.add_argument("--part", default="0/1", metavar="I/N",
                   help="with --features-only: compute only chunks i, i+N, ... (N processes side by side)")
    p.add_argument("--report-only", action="store_true", help="table and plot from --out, compute nothing")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- data


def load_images(args) -> tuple[list, np.ndarray, int]:
    """(paths of pool + test, their MOS, pool size): the fixed image list every model sees."""
    from metaiqa.data.formats import parse_data_spec

    train, test = parse_data_spec(args.train_data), parse_data_spec(args.test_data)
    rng = np.random.default_rng(args.seed)
    pool = [train[i] for i in sorted(rng.choice(len(train), size=min(args.pool, len(train)), replace=False))]
    if args.test_limit:
        test = test[: args.test_limit]
    images = pool + test
    return [Path(s.path) for s in images], np.array([s.mos for s in images], np.float32), len(pool)


def image_list_key(paths: list) -> str:
    return hashlib.sha256("\n".join(p.name for p in paths).encode()).hexdigest()[:12]


def one_view(path: Path, size: int = 224) -> np.ndarray:
    """The whole photo at short side `size`, centre `size` crop: uint8 size x size x 3."""
    from PIL import Image

    from metaiqa.data.transforms import to_viewing_scale

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    arr = to_viewing_scale(arr, size, size)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top : top + size, left : left + size]


# ----------------------------------------------------------------------------- models


def parse_model(spec: str) -> tuple[str, str]:
    label, _, ckpt = spec.partition("=")
    return label, (ckpt or label)


def load_model(ckpt: str, seed: int):
    """(IQAModel in eval mode, identity string for the cache)."""
    import torch

    from metaiqa.models import create_model, load_checkpoint
    from metaiqa.models.pretrained import resolve_checkpoint

    if ckpt == "random":
        torch.manual_seed(seed)
        model = create_model("metaiqa_resnet18", input_norm="mscn").eval()
        return model, f"random-seed{seed}"
    loaded = load_checkpoint(resolve_checkpoint(ckpt))
    return loaded.model.eval(), str(loaded.meta["sha256"])[:16]


def extract_chunk(model, paths: list) -> np.ndarray:
    import torch

    feats = []
    with torch.no_grad():
        for i in range(0, len(paths), 16):
            views = np.stack([one_view(p) for p in paths[i : i + 16]])
            x = torch.from_numpy(views).permute(0, 3, 1, 2).float().div_(255.0)
            feats.append(model.backbone(model.input_norm(x)).float().numpy())
    return np.concatenate(feats)


def cached_chunks(name: str, paths: list, cache: Path, compute, part: str = "0/1") -> np.ndarray | None:
    """compute(paths) -> array, in CHUNK-sized pieces saved as they finish (resumable).

    `part` "i/n" computes only every n-th chunk from the i-th; None until all chunks exist.
    """
    final = cache / f"{name}.npy"
    if final.is_file():
        return np.load(final)
    parts = cache / f"{name}.parts"
    parts.mkdir(parents=True, exist_ok=True)
    mine, every = (int(v) for v in part.split("/"))
    t0 = time.time()
    starts = list(range(0, len(paths), CHUNK))
    for n, start in enumerate(starts):
        part_file = parts / f"{start:06d}.npy"
        if n % every != mine or part_file.is_file():
            continue
        tmp = parts / f"{start:06d}.tmp{os.getpid()}.npy"
        np.save(tmp, compute(paths[start : start + CHUNK]))
        os.replace(tmp, part_file)
        print(f"  {name}: chunk {n + 1}/{len(starts)} done, {time.time() - t0:.0f} s", flush=True)
    files = [parts / f"{start:06d}.npy" for start in starts]
    if not all(f.is_file() for f in files):
        print(f"  {name}: {sum(f.is_file() for f in files)}/{len(files)} chunks so far", flush=True)
        return None
    arr = np.concatenate([np.load(f) for f in files])
    np.save(final, arr)
    return arr


def model_features(label: str, ckpt: str, paths: list, args) -> np.ndarray:
    model, ident = load_model(ckpt, args.seed)
    name = f"feat-{label}-{ident}-{image_list_key(paths)}"
    return cached_chunks(name, paths, Path(args.cache), lambda ps: extract_chunk(model, ps), args.part)


# ----------------------------------------------------------------------------- BRISQUE + SVR


def brisque_extractor():
    """rgb uint8 -> the 36 BRISQUE features (brisque 0.2.0 `score`'s, without its SVR)."""
    import cv2
    import skimage.color
    from brisque import BRISQUE

    model = BRISQUE(url=False)

    def one_scale(gray: np.ndarray) -> list[float]:
        return [float(np.ravel(v)[0]) for v in model.calculate_brisque_features(gray, 7, 7 / 6)]

    def features(rgb: np.ndarray) -> np.ndarray:
        gray = skimage.color.rgb2gray(rgb)
        half = cv2.resize(gray, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_CUBIC)
        return np.array(one_scale(gray) + one_scale(half), np.float64)

    return features


def brisque_chunk(paths: list) -> np.ndarray:
    from PIL import Image

    features = brisque_extractor()
    rows = []
    for p in paths:
        with Image.open(p) as im:
            rows.append(features(np.asarray(im.convert("RGB"))))
    return np.stack(rows)


def fit_svr(x: np.ndarray, y: np.ndarray, seed: int):
    """StandardScaler + RBF SVR, hyper-parameters by 5-fold CV (MSE) on the shots only."""
    from sklearn.model_selection import GridSearchCV, KFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVR

    grid = {"svr__C": [0.1, 1.0, 10.0, 100.0], "svr__gamma": [0.003, 0.01, 0.03, 0.1],
            "svr__epsilon": [0.01, 0.05]}
    pipe = make_pipeline(StandardScaler(), SVR(kernel="rbf"))
    search = GridSearchCV(pipe, grid, cv=KFold(5, shuffle=True, random_state=seed),
                          scoring="neg_mean_squared_error", n_jobs=1)
    search.fit(x, y)
    return search.best_estimator_, search.best_params_


# ----------------------------------------------------------------------------- adaptation


def adapt_head(head, x, y, args, seed: int):
    """Train a copy of `head` on (features, mos) with the fixed schedule; returns it in eval mode."""
    import torch

    from metaiqa.meta.losses import ranking_hinge

    head = copy.deepcopy(head).train()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout masks
    opt = torch.optim.Adam(head.parameters(), lr=args.lr)
    xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y).float()
    batch = min(len(xt), args.batch)
    for _ in range(args.steps):
        idx = torch.randperm(len(xt), generator=gen)[:batch]
        pred = torch.sigmoid(head(xt[idx]))
        loss = torch.mean((pred - yt[idx]) ** 2) + ranking_hinge(pred, yt[idx], None, margin=0.02, min_diff=0.05)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return recalibrate_bn(head, xt)


def recalibrate_bn(head, xt):
    """Head BatchNorm statistics re-estimated on all K shots with dropout off, then eval mode.

    Without it the running averages (EMA of the last dropout-on batches) made eval-mode scores
    unstable from draw to draw (seen on held-out *train* photos of the pool; see the README).
    """
    import torch

    head.eval()
    for m in head.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over this one pass
            m.train()
    with torch.no_grad():
        head(xt)
    return head.eval()


def predict_head(head, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return torch.sigmoid(head.eval()(torch.from_numpy(x).float())).numpy()


def correlations(pred: np.ndarray, y: np.ndarray) -> dict:
    from scipy.stats import pearsonr, spearmanr

    if np.std(pred) < 1e-12:
        return {"srocc": 0.0, "plcc": 0.0, "constant": True}
    return {"srocc": float(spearmanr(pred, y)[0]), "plcc": float(pearsonr(pred, y)[0])}


def draw_shots(n_pool: int, k: int, d: int, seed: int) -> np.ndarray:
    """Draw d of K photos: the same indices into the pool for every model."""
    return np.random.default_rng([seed, k, d]).choice(n_pool, size=k, replace=False)


# ----------------------------------------------------------------------------- results file


def protocol(args, key: str) -> dict:
    return {"images": key, "pool": args.pool, "test_limit": args.test_limit, "steps": args.steps,
            "batch": args.batch, "lr": args.lr, "seed": args.seed, "view": "short side 224, centre 224",
            "loss": "mse(sigmoid)+ranking_hinge(margin=0.02,min_diff=0.05)",
            "svr": "5-fold CV in the shots: C,gamma,epsilon grid", "head_bn": "recalibrated on the K shots"}


def load_results(path: Path, proto: dict) -> dict:
    if not path.is_file():
        return {"protocol": proto, "models": {}}
    res = json.loads(path.read_text())
    if res.get("protocol") != proto:
        sys.exit(f"{path} was measured under another protocol {res.get('protocol')}; pass another --out")
    return res


def save_results(path: Path, res: dict, label: str) -> None:
    """Merge this run's entry for `label` into the file on disk (other processes may add theirs)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        disk = json.loads(path.read_text()) if path.is_file() else {"protocol": res["protocol"], "models": {}}
        disk["models"][label] = res["models"][label]
        res["models"] = {**disk["models"], **{label: res["models"][label]}}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(disk, indent=1))
        os.replace(tmp, path)


def summarise(draws: list[dict]) -> dict:
    out = {}
    for m in ("srocc", "plcc"):
        v = np.array([d[m] for d in draws])
        out[m] = {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max())}
    return out


# ----------------------------------------------------------------------------- runs


def run_network(label, ckpt, feats, mos, n_pool, args, res, out):
    import torch

    entry = res["models"].setdefault(label, {"kind": "network", "checkpoint": ckpt, "shots": {}})
    model, ident = load_model(ckpt, args.seed)
    entry["identity"] = ident
    x_pool, x_test, y_pool, y_test = feats[:n_pool], feats[n_pool:], mos[:n_pool], mos[n_pool:]
    if "0" not in entry["shots"]:
        entry["shots"]["0"] = {"draws": [correlations(predict_head(model.head, x_test), y_test)]}
    for k in args.shots:
        if str(k) in entry["shots"] and len(entry["shots"][str(k)]["draws"]) >= args.draws:
            continue
        torch.manual_seed(args.seed)
        draws = []
        for d in range(args.draws):
            t0 = time.time()
            idx = draw_shots(n_pool, k, d, args.seed)
            head = adapt_head(model.head, x_pool[idx], y_pool[idx], args, seed=1000 * k + d)
            draws.append({**correlations(predict_head(head, x_test), y_test), "seconds": time.time() - t0})
        entry["shots"][str(k)] = {"draws": draws, **summarise(draws)}
        save_results(out, res, label)
        print(f"  {label} K={k}: SROCC {entry['shots'][str(k)]['srocc']['median']:.3f}", flush=True)


def run_svr(feats, mos, n_pool, args, res, out):
    entry = res["models"].setdefault("brisque_svr", {"kind": "peer", "shots": {}})
    x_pool, x_test, y_pool, y_test = feats[:n_pool], feats[n_pool:], mos[:n_pool], mos[n_pool:]
    for k in args.shots:
        if str(k) in entry["shots"] and len(entry["shots"][str(k)]["draws"]) >= args.draws:
            continue
        draws = []
        for d in range(args.draws):
            t0 = time.time()
            idx = draw_shots(n_pool, k, d, args.seed)
            svr, params = fit_svr(x_pool[idx], y_pool[idx], seed=d)
            r = correlations(svr.predict(x_test), y_test)
            draws.append({**r, "params": params, "seconds": time.time() - t0})
        entry["shots"][str(k)] = {"draws": draws, **summarise(draws)}
        save_results(out, res, "brisque_svr")
        print(f"  brisque_svr K={k}: SROCC {entry['shots'][str(k)]['srocc']['median']:.3f}", flush=True)


# ----------------------------------------------------------------------------- report


def fmt(cell: dict | None) -> str:
    if not cell:
        return "–"
    if "srocc" not in cell or not isinstance(cell["srocc"], dict):
        d = cell["draws"][0]
        return f"{d['srocc']:.3f} / {d['plcc']:.3f}"
    return f"{cell['srocc']['median']:.3f} / {cell['plcc']['median']:.3f}"


def table(res: dict) -> str:
    ks = sorted({int(k) for e in res["models"].values() for k in e["shots"]})
    head = ["model"] + [f"K={k}" if k else "zero-shot" for k in ks]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, e in res["models"].items():
        lines.append("| " + " | ".join([label] + [fmt(e["shots"].get(str(k))) for k in ks]) + " |")
    rng = ["| " + " | ".join(["SROCC min–max"] + [""] * (len(head) - 1)) + " |"]
    for label, e in res["models"].items():
        cells = [f"{c['srocc']['min']:.3f}–{c['srocc']['max']:.3f}" if "min" in c.get("srocc", {}) else "–"
                 for c in (e["shots"].get(str(k), {}) for k in ks)]
        rng.append("| " + " | ".join([label] + cells) + " |")
    return "\n".join(lines + rng)


def plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, e in res["models"].items():
        ks = sorted(int(k) for k, c in e["shots"].items() if int(k) > 0 and "srocc" in c)
        if not ks:
            continue
        s = [e["shots"][str(k)]["srocc"] for k in ks]
        line = ax.plot(ks, [c["median"] for c in s], marker="o", label=label)[0]
        ax.fill_between(ks, [c["min"] for c in s], [c["max"] for c in s], color=line.get_color(), alpha=0.15)
    ax.set_xscale("log")
    ax.set_xlabel("K labelled BIQ2021 train photos")
    ax.set_ylabel("SROCC on BIQ2021 test (2,000 photos)")
    ax.set_title("Few-shot adaptation on real photos (median, min–max over draws)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


# ----------------------------------------------------------------------------- main


def compute(args, res, out) -> None:
    paths, mos, n_pool = load_images(args)
    cache = Path(args.cache)
    print(f"{n_pool} pool + {len(paths) - n_pool} test photos; cache {cache}", flush=True)
    for spec in args.model:
        label, ckpt = parse_model(spec)
        t0 = time.time()
        feats = model_features(label, ckpt, paths, args)
        if feats is None:
            continue
        print(f"{label}: features {feats.shape} ready ({time.time() - t0:.0f} s)", flush=True)
        if not args.features_only:
            run_network(label, ckpt, feats, mos, n_pool, args, res, out)
    if "brisque_svr" in args.peers:
        name = f"brisque36-{image_list_key(paths)}"
        feats = cached_chunks(name, paths, cache, brisque_chunk, args.part)
        if feats is not None and not args.features_only:
            print(f"brisque_svr: features {feats.shape} ready", flush=True)
            run_svr(feats, mos, n_pool, args, res, out)


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.report_only:
        res = json.loads(out.read_text())
    else:
        key = f"pool{args.pool}-seed{args.seed}-test{args.test_limit or 'all'}"
        res = load_results(out, protocol(args, key))
        compute(args, res, out)
    if args.features_only:
        return
    if out.is_file():  # other processes may have added models
        res = json.loads(out.read_text())
    print(table(res))
    if args.plot:
        plot(res, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
